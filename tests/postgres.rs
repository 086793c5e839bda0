//! The PostgreSQL store: it answers exactly as the SQLite store does, and a
//! server on it keeps its catalog, checkpoints and results in the database
//! (readable with `psql`), whatever its local data dir.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use common::postgres::Postgres;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use runnel::model::Emission;
use runnel::store::{ResultFilter, Store};
use runnel::window::delta::{Saved, StateOp, StatePiece};

fn schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    Arc::new(Schema::new(vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("geo", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
        Field::new("u", DataType::UInt64, true),
        Field::new("avg_bid", DataType::Float64, true),
        Field::new("hot", DataType::Boolean, true),
        Field::new("sketch", DataType::Binary, true),
    ]))
}

/// A piece of window state of the 10 s window starting at `start`.
fn piece(start: i64, kept: bool, state: &[u8]) -> StatePiece {
    StatePiece {
        window: (start, start + 10_000),
        kept,
        state: state.to_vec(),
    }
}

/// One window's rows: `geos` with counts `n0, n0 + 1, ...`.
fn window(start: i64, geos: &[Option<&str>], n0: i64) -> Emission {
    let k = geos.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(vec![start; k])),
        Arc::new(TimestampMillisecondArray::from(vec![start + 10_000; k])),
        Arc::new(StringArray::from(geos.to_vec())),
        Arc::new(Int64Array::from_iter_values(n0..n0 + k as i64)),
        Arc::new(UInt64Array::from(vec![Some(7); k])),
        Arc::new(Float64Array::from(
            (0..k)
                .map(|i| (i % 2 == 0).then_some(0.25 * i as f64))
                .collect::<Vec<_>>(),
        )),
        Arc::new(BooleanArray::from(
            (0..k).map(|i| Some(i % 2 == 1)).collect::<Vec<_>>(),
        )),
        Arc::new(BinaryArray::from_iter(
            (0..k).map(|i| (i != 1).then(|| vec![i as u8, 0xff, 0])),
        )),
    ];
    Emission {
        batch: RecordBatch::try_new(schema(), cols).unwrap(),
        cumulative: false,
        state: None,
        window: Some((start, start + 10_000)),
        open_sessions: false,
    }
}

/// Everything the store answers after a fixed sequence of calls.
fn scenario(store: &Store) -> Vec<String> {
    let mut seen = Vec::new();
    let t0 = 1_700_000_000_000;
    store
        .save_stream(
            "imps",
            "CREATE STREAM imps (geo TEXT) WITH (kafka_topic = 'i')",
        )
        .unwrap();
    store
        .save_table("pubs", "CREATE TABLE pubs (p TEXT) WITH (path = 'p.csv')")
        .unwrap();
    store
        .save_query("q", "CREATE QUERY q AS SELECT ...", &schema())
        .unwrap();
    store
        .save_query("gone", "CREATE QUERY gone AS SELECT ...", &schema())
        .unwrap();
    let offsets = BTreeMap::from([(0, 10), (1, 12)]);
    store
        .commit(
            "q",
            &[
                window(t0, &[Some("FR"), None, Some("it's")], 1),
                window(t0 + 10_000, &[Some("US")], 5),
            ],
            &offsets,
            &Saved {
                header: b"state-1".to_vec(),
                ops: vec![
                    StateOp::Clear,
                    StateOp::Append(piece(t0, false, b"a1")),
                    StateOp::Append(piece(t0 + 10_000, false, b"b1")),
                    StateOp::Append(piece(t0, false, b"a2")),
                    StateOp::Replace(piece(t0 - 10_000, true, b"kept")),
                ],
            },
        )
        .unwrap();
    // A window written again (after a restore) replaces its rows.
    store
        .commit(
            "q",
            &[window(t0, &[Some("FR"), Some("DE")], 3)],
            &BTreeMap::from([(0, 20)]),
            &Saved {
                header: Vec::new(),
                ops: vec![
                    StateOp::Remove((t0, t0 + 10_000), false),
                    StateOp::Replace(piece(t0 + 10_000, false, b"b-merged")),
                    StateOp::Replace(piece(t0 - 10_000, true, b"kept2")),
                ],
            },
        )
        .unwrap();
    // Left: the merged piece of the second window and the second kept one.
    let pieces = store.load_state_pieces("q").unwrap();
    assert_eq!(
        pieces,
        [
            piece(t0 + 10_000, false, b"b-merged"),
            piece(t0 - 10_000, true, b"kept2")
        ]
    );
    seen.push(format!("{pieces:?}"));
    store.delete_query("gone", None).unwrap();
    seen.push(format!("{:?}", store.list_streams().unwrap()));
    seen.push(format!("{:?}", store.list_tables().unwrap()));
    seen.push(format!("{:?}", store.list_queries().unwrap()));
    seen.push(format!("{:?}", store.load_checkpoint("q").unwrap()));
    seen.push(format!("{:?}", store.load_checkpoint("gone").unwrap()));
    let all = store
        .read_results(
            "q",
            &schema(),
            &ResultFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap();
    seen.push(format!("{all:?}"));
    let page = store
        .read_results(
            "q",
            &schema(),
            &ResultFilter {
                from: Some(runnel::store::format_ts(t0)),
                to: Some(runnel::store::format_ts(t0 + 10_000)),
                after: Some(all.seqs[0]),
                limit: 1,
                final_only: false,
            },
        )
        .unwrap();
    seen.push(format!("{page:?}"));
    let batch = store.load_results("q", &schema()).unwrap();
    seen.push(format!("{batch:?}"));
    // Sessions' provisional rows (EMIT EVERY) replace all earlier
    // provisional rows and no final row.
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let sessions = Arc::new(Schema::new(vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("k", DataType::Utf8, true),
        Field::new("final", DataType::Boolean, false),
    ]));
    let rows = |rows: &[(i64, i64, &str, bool)], open_sessions: bool| Emission {
        batch: RecordBatch::try_new(
            sessions.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| t0 + r.0),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| t0 + r.1),
                )),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.3)))),
            ],
        )
        .unwrap(),
        cumulative: false,
        state: None,
        window: None,
        open_sessions,
    };
    store
        .save_query("s", "CREATE QUERY s AS SELECT ...", &sessions)
        .unwrap();
    let emissions = [
        rows(&[(0, 5_000, "a", false), (1_000, 6_000, "b", false)], true),
        rows(&[(0, 5_000, "a", true)], false),
        rows(&[(7_000, 12_000, "c", false)], true),
    ];
    let saved = Saved {
        header: Vec::new(),
        ops: vec![],
    };
    store.commit("s", &emissions, &offsets, &saved).unwrap();
    let filter = ResultFilter {
        limit: 100,
        ..Default::default()
    };
    let left = store.read_results("s", &sessions, &filter).unwrap();
    assert_eq!(left.batch.num_rows(), 2, "{left:?}");
    seen.push(format!("{:?}", left.batch));
    store.delete_checkpoint("q").unwrap();
    seen.push(format!("{:?}", store.load_checkpoint("q").unwrap()));
    seen.push(format!("{:?}", store.load_state_pieces("q").unwrap()));
    // Results kept under a name already taken (two drops in one second)
    // are kept under the name with `_2`, `_3`, ...
    for expected in ["kept_old", "kept_old_2", "kept_old_3"] {
        (store.save_query("kept", "CREATE QUERY kept AS SELECT ...", &schema())).unwrap();
        let kept = store.delete_query("kept", Some("kept_old")).unwrap();
        assert_eq!(kept.as_deref(), Some(expected));
        seen.push(format!("{kept:?}"));
    }
    store.delete_stream("imps").unwrap();
    seen.push(format!("{:?}", store.list_streams().unwrap()));
    seen
}

#[test]
fn postgres_store_answers_like_sqlite() {
    let Some(pg) = Postgres::start("postgres_store_answers_like_sqlite") else {
        return;
    };
    let url = pg.create_db("contract");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(dir.path()).unwrap();
    let postgres = Store::connect(Some(&url), dir.path()).unwrap();
    assert_eq!(postgres.kind(), "postgres");
    let expected = scenario(&sqlite);
    let got = scenario(&postgres);
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(e, g);
    }
    assert_eq!(expected.len(), got.len());
    // The rows are really there, typed, for psql.
    let rows = pg.psql(
        "contract",
        "SELECT window_start, geo, n, hot FROM q ORDER BY window_start, geo",
    );
    assert_eq!(
        rows,
        "2023-11-14 22:13:20|DE|4|t\n2023-11-14 22:13:20|FR|3|f\n2023-11-14 22:13:30|US|5|f\n"
    );
    let types = pg.psql(
        "contract",
        "SELECT string_agg(data_type, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'q'",
    );
    assert_eq!(
        types.trim(),
        "bigint,timestamp without time zone,timestamp without time zone,text,bigint,bigint,double precision,boolean,bytea"
    );
    // Reopening applies no migration twice and keeps everything.
    drop(postgres);
    let again = Store::connect(Some(&url), dir.path()).unwrap();
    assert_eq!(again.list_queries().unwrap().len(), 2);
    assert_eq!(
        pg.psql("contract", "SELECT max(version) FROM runnel_migrations")
            .trim(),
        "4"
    );
    // A store URL that is not PostgreSQL is refused with a clear message.
    let err = Store::connect(Some("mysql://x"), dir.path()).err().unwrap();
    assert!(err.to_string().contains("unsupported store"), "{err}");
}

async fn wait_for(
    s: &TestServer,
    path: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = s.get(path).await;
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn produce(producer: &BaseProducer, t0: i64, range: std::ops::Range<i64>) {
    for i in range {
        let rec = format!(
            r#"{{"ts": {}, "geo": "g{}", "cookie": "c{}"}}"#,
            t0 + i * 100,
            i % 3,
            i % 17
        );
        producer
            .send(
                BaseRecord::<(), str>::to("imps")
                    .payload(&rec)
                    .partition((i % 2) as i32),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn total(v: &serde_json::Value) -> u64 {
    v["rows"]
        .as_array()
        .map(|r| r.iter().map(|x| x["n"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keeps_catalog_checkpoints_and_results_in_postgres() {
    let Some(pg) = Postgres::start("server_keeps_catalog_checkpoints_and_results_in_postgres")
    else {
        return;
    };
    let url = pg.create_db("served");
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("imps", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    // Old event times: [20 s, 30 s) stays open across the restart unless
    // the stream were confirmed quiet for 6 s (24.9 s + 6.1 s − 1 s delay).
    let t0 = (chrono::Utc::now().timestamp_millis() / 10_000 - 60) * 10_000;
    let first = tempfile::tempdir().unwrap();
    let env = [("RUNNEL_STORE", url.as_str())];
    let s = TestServer::start_with(first.path(), &brokers, &env);
    s.sql(
        "CREATE STREAM imps (ts TIMESTAMP, geo TEXT, cookie TEXT)
           WITH (kafka_topic = 'imps', event_time = 'ts', watermark_delay = '1s', start = 'earliest');
         CREATE QUERY per_geo AS SELECT geo, count(*) AS n, approx_distinct(cookie) AS u
           FROM imps GROUP BY geo WINDOW 10s",
    )
    .await;
    // 100 ms apart: up to t0 + 24.9 s, so the first two windows close.
    produce(&producer, t0, 0..250);
    wait_for(
        &s,
        "/queries/per_geo/results?limit=1000",
        "two windows",
        |v| total(v) == 200,
    )
    .await;
    s.stop();

    // Another data dir: everything comes back from PostgreSQL.
    let second = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(second.path(), &brokers, &env);
    wait_for(&s, "/queries/per_geo", "the query restored", |q| {
        q["status"] == "running"
    })
    .await;
    // Up to t0 + 44.9 s: two more windows close.
    produce(&producer, t0, 250..450);
    let v = wait_for(
        &s,
        "/queries/per_geo/results?limit=1000",
        "four windows",
        |v| total(v) == 400,
    )
    .await;
    // Each (window, geo) once: the restart resumed from the saved offsets and state.
    let rows = v["rows"].as_array().unwrap();
    let mut keys: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["window_start"].to_string(), r["geo"].to_string()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), rows.len(), "{v}");
    assert_eq!(rows.len(), 12, "{v}");
    // Pull queries read the same table.
    let pulled = s.sql("SELECT sum(n) AS n FROM per_geo").await;
    assert_eq!(pulled["results"][0]["rows"][0][0], 400, "{pulled}");
    // psql sees the same rows and the checkpoint.
    assert_eq!(
        pg.psql("served", "SELECT sum(n) FROM per_geo").trim(),
        "400"
    );
    // The checkpoint catches up with every record read (the open window's
    // 50 records are in its state).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = pg.psql(
            "served",
            "SELECT offsets FROM runnel_checkpoints WHERE query = 'per_geo'",
        );
        let offsets: BTreeMap<String, i64> = serde_json::from_str(offsets.trim()).unwrap();
        if offsets.values().sum::<i64>() == 450 {
            break;
        }
        assert!(Instant::now() < deadline, "checkpoint behind: {offsets:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop();
}

/// Whether the store's connections (named `app` in the URL) use TLS, as the
/// server sees them.
fn store_uses_tls(pg: &Postgres, app: &str) -> String {
    pg.psql(
        "postgres",
        &format!(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}'"
        ),
    )
    .trim()
    .to_string()
}

/// The store's URL follows libpq's `sslmode`: `require` against a server
/// without TLS fails naming TLS instead of going on in plain text; against a
/// TLS server `require` encrypts, `verify-full` checks the certificate
/// against `sslrootcert` and the host name, and a certificate that does not
/// check out is refused. The password stays out of the messages.
#[test]
fn store_tls_follows_sslmode() {
    let Some(plain) = Postgres::start("store_tls_follows_sslmode") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = plain.create_db("plain");
    let url = url.replace("runnel@", "runnel:pg-secret@");
    let e = Store::connect(Some(&format!("{url}?sslmode=require")), dir.path())
        .err()
        .expect("require must not fall back to plain text");
    let m = e.to_string();
    assert!(m.contains("TLS"), "{m}");
    assert!(!m.contains("pg-secret") && m.contains("runnel:***@"), "{m}");
    // The default, `prefer`, still connects to a server without TLS.
    drop(Store::connect(Some(&url), dir.path()).unwrap());

    let Some(tls) = Postgres::start_tls("store_tls_follows_sslmode") else {
        return;
    };
    let url = tls.create_db("secure");
    let store = Store::connect(
        Some(&format!("{url}?sslmode=require&application_name=req")),
        dir.path(),
    )
    .unwrap();
    assert_eq!(store_uses_tls(&tls, "req"), "t");
    drop(store);
    let by_name = url.replace("127.0.0.1", "localhost");
    let cert = tls.cert();
    let store = Store::connect(
        Some(&format!(
            "{by_name}?sslmode=verify-full&sslrootcert={}&application_name=full",
            cert.display()
        )),
        dir.path(),
    )
    .unwrap();
    assert_eq!(store_uses_tls(&tls, "full"), "t");
    drop(store);
    // The certificate names localhost, not 127.0.0.1.
    let e = Store::connect(
        Some(&format!(
            "{url}?sslmode=verify-full&sslrootcert={}",
            cert.display()
        )),
        dir.path(),
    )
    .err()
    .expect("wrong host name");
    assert!(e.to_string().contains("certificate"), "{e}");
    // Self-signed: not trusted without sslrootcert.
    let e = Store::connect(Some(&format!("{by_name}?sslmode=verify-ca")), dir.path())
        .err()
        .expect("untrusted certificate");
    assert!(e.to_string().contains("certificate"), "{e}");
}
