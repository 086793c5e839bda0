//! The HTTP API's first-hour rough edges: request bodies, cursors, page
//! caps, timestamps and column order, roll-up options, and what catalog
//! statements say back.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestServer;
use reqwest::Method;
use serde_json::Value;

const STREAM: &str = "CREATE STREAM clicks (ts TIMESTAMP, page TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts', start = 'earliest')";

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// `POST /sql` takes `{"sql": ...}` when it is declared JSON, as `POST
/// /queries` does; an empty body says so.
#[tokio::test]
async fn sql_takes_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let body = serde_json::json!({ "sql": STREAM }).to_string();
    let (st, v) = s.request(Method::POST, "/sql", &[JSON], &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["kind"], "create_stream", "{v}");

    let body = serde_json::json!({ "sql": "SHOW STREAMS" }).to_string();
    let (st, v) = s.request(Method::POST, "/sql", &[JSON], &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["rows"][0][0], "clicks", "{v}");

    let (st, v) = s.request(Method::POST, "/sql", &[JSON], "{\"q\": 1}").await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("{\"sql\": \"...\"}"),
        "{v}"
    );

    for (path, headers) in [
        ("/sql", &[][..]),
        ("/sql", &[JSON][..]),
        ("/queries", &[][..]),
    ] {
        let (st, v) = s.request(Method::POST, path, headers, "  \n").await;
        assert_eq!(st, 400, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("empty request body"), "{path}: {v}");
    }
    let (st, v) = s
        .request(Method::POST, "/sql", &[JSON], "{\"sql\": \" \"}")
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("empty request body")
    );
}

/// A server reading a JSON-lines file stream of clicks, one record per key
/// and second of event time, with a 1 s tumbling count per page.
struct Clicks {
    s: TestServer,
    path: PathBuf,
    base: i64,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

const PAGES: [&str; 4] = ["a", "b", "c", "d"];

impl Clicks {
    async fn start(query: &str) -> Clicks {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let path = data.path().join("clicks.jsonl");
        std::fs::write(&path, "").unwrap();
        let allow = [("RUNNEL_ALLOW_FILES", data.path().to_str().unwrap())];
        let s = TestServer::start_with(dir.path(), "127.0.0.1:1", &allow);
        s.sql(&format!(
            "CREATE STREAM clicks (ts TIMESTAMP, page TEXT) WITH (source = 'file', \
             path = '{}', format = 'json', event_time = 'ts', start = 'earliest')",
            path.display()
        ))
        .await;
        s.sql(query).await;
        // Two hours ago, on a whole hour, so roll-ups have known buckets.
        let now = chrono::Utc::now().timestamp_millis();
        let base = (now / 3_600_000 - 2) * 3_600_000;
        Clicks {
            s,
            path,
            base,
            _dirs: (dir, data),
        }
    }

    /// Appends one record per page for each second in `from..to`.
    fn append(&self, from: i64, to: i64) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        for sec in from..to {
            for p in PAGES {
                let ts = self.base + sec * 1000 + 100;
                writeln!(f, r#"{{"ts": {ts}, "page": "{p}"}}"#).unwrap();
            }
        }
        f.flush().unwrap();
    }

    /// Waits until query `q` has at least `n` result rows and returns them all.
    async fn rows(&self, q: &str, n: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (st, v) = self
                .s
                .get(&format!("/queries/{q}/results?limit=100000"))
                .await;
            assert_eq!(st, 200, "{v}");
            if v["rows"].as_array().unwrap().len() >= n {
                return v;
            }
            assert!(Instant::now() < deadline, "fewer than {n} rows: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const PER_PAGE: &str =
    "CREATE QUERY per_page AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 1s";

/// A minimal server-sent events reader.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn connect(url: &str) -> Sse {
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), 200);
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next `row` event's id and data.
    async fn row(&mut self) -> (i64, Value) {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut id, mut data, mut event) = (None, String::new(), "");
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<i64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if line.starts_with("event: row") {
                        event = "row";
                    }
                }
                if event == "row" {
                    return (id.unwrap(), serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.resp.chunk())
                .await
                .expect("an event within 60 s")
                .unwrap()
                .expect("stream still open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// A cursor the query never issued is refused naming the newest one, on
/// results and on the event stream; `after=now` starts after the newest row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_checked_and_now_starts_at_the_newest_row() {
    let c = Clicks::start(PER_PAGE).await;
    c.append(0, 10);
    // Nine of the ten windows close on the watermark.
    let all = c.rows("per_page", 36).await;
    let newest: i64 = all["cursor"].as_str().unwrap().parse().unwrap();

    let (st, v) = c.s.get("/queries/per_page/results?after=999999999").await;
    assert_eq!(st, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cursor 999999999 was never issued"), "{msg}");
    assert!(
        msg.contains("newest is ") && msg.contains("after=now"),
        "{msg}"
    );
    let (st, v) = c.s.get("/queries/per_page/results?after=-3").await;
    assert_eq!(st, 400, "{v}");

    // Issued cursors still work, the newest included.
    let (st, v) =
        c.s.get(&format!("/queries/per_page/results?after={newest}"))
            .await;
    assert_eq!(st, 200, "{v}");

    let (st, v) = c.s.get("/queries/per_page/results?after=now").await;
    assert_eq!(st, 200, "{v}");
    let now: i64 = v["cursor"].as_str().unwrap().parse().unwrap();
    assert!(now >= newest, "{v}");
    assert!(v["rows"].as_array().unwrap().is_empty(), "{v}");

    let url = format!("{}/queries/per_page/stream", c.s.url);
    let r = reqwest::get(format!("{url}?after=999999999"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::Client::new()
        .get(&url)
        .header("Last-Event-ID", "999999999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // From now, the stream's first row is one written after it connected.
    let mut live = Sse::connect(&format!("{url}?after=now")).await;
    let before = c.rows("per_page", 36).await;
    let before: i64 = before["cursor"].as_str().unwrap().parse().unwrap();
    c.append(10, 20);
    let (id, row) = live.row().await;
    assert!(id > before, "{id} <= {before}: {row}");
    // Without a cursor the stream starts at the first row.
    let mut all = Sse::connect(&url).await;
    let (first, _) = all.row().await;
    let (_, v) = c.s.get("/queries/per_page/results?limit=1").await;
    assert_eq!(v["cursor"].as_str().unwrap(), first.to_string());
}

/// Pages stop at their limit (1000 by default) and say whether more rows follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_say_when_more_rows_follow() {
    let c = Clicks::start(PER_PAGE).await;
    c.append(0, 10);
    c.rows("per_page", 36).await;
    let (_, v) = c.s.get("/queries/per_page/results?limit=10").await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 10, "{v}");
    assert_eq!(v["has_more"], true, "{v}");
    let (_, v) = c.s.get("/queries/per_page/results?limit=100000").await;
    assert_eq!(v["has_more"], false, "{v}");
    let r = reqwest::get(format!(
        "{}/queries/per_page/results?limit=10&format=csv",
        c.s.url
    ))
    .await
    .unwrap();
    assert_eq!(r.headers()["x-runnel-has-more"], "true");
}

/// Catalog statements take PostgreSQL's `IF [NOT] EXISTS` and `OR REPLACE`
/// and say what they did.
#[tokio::test]
async fn catalog_statements_say_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let message = |v: &Value| v["results"][0]["message"].as_str().unwrap().to_string();

    let v = s.sql("DROP STREAM IF EXISTS nosuch").await;
    assert_eq!(
        message(&v),
        "stream nosuch does not exist; nothing dropped",
        "{v}"
    );
    assert_eq!(v["results"][0]["dropped"], false, "{v}");
    let v = s.sql("DROP QUERY IF EXISTS nosuch").await;
    assert_eq!(
        message(&v),
        "query nosuch does not exist; nothing dropped",
        "{v}"
    );

    let if_not_exists = STREAM.replace("STREAM clicks", "STREAM IF NOT EXISTS clicks");
    let v = s.sql(&if_not_exists).await;
    assert_eq!(message(&v), "stream clicks created", "{v}");
    let v = s.sql(&if_not_exists).await;
    assert_eq!(
        message(&v),
        "stream clicks already exists; nothing created",
        "{v}"
    );
    let (st, v) = s.post("/sql", STREAM).await;
    assert_eq!(st, 409, "{v}");

    let q = "QUERY per_page AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s";
    let v = s.sql(&format!("CREATE OR REPLACE {q}")).await;
    assert_eq!(message(&v), "query per_page created", "{v}");
    let v = s
        .sql(&q.replace("QUERY per_page", "CREATE QUERY IF NOT EXISTS per_page"))
        .await;
    assert_eq!(
        message(&v),
        "query per_page already exists; nothing created",
        "{v}"
    );
    // Replacing changes the definition and says the results were reset.
    let v = s
        .sql(&format!("CREATE OR REPLACE {}", q.replace("10s", "1m")))
        .await;
    assert_eq!(
        message(&v),
        "query per_page replaced; its previous results were deleted",
        "{v}"
    );
    assert_eq!(v["results"][0]["query"]["window"], "TUMBLING 1m", "{v}");
    // A replacement that does not plan leaves the old query in place.
    let (st, v) = s
        .post(
            "/sql",
            &format!("CREATE OR REPLACE {}", q.replace("page,", "nope,")),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.get("/queries/per_page").await;
    assert_eq!(
        (st, v["window"].as_str()),
        (200, Some("TUMBLING 1m")),
        "{v}"
    );
    // The window says when early rows come, in every listing.
    let v = s
        .sql(&format!(
            "CREATE OR REPLACE {}",
            q.replace("10s", "1h EMIT EVERY 10s")
        ))
        .await;
    assert_eq!(
        v["results"][0]["query"]["window"], "TUMBLING 1h EMIT EVERY 10s",
        "{v}"
    );
    let (_, v) = s.get("/queries/per_page").await;
    assert_eq!(v["window"], "TUMBLING 1h EMIT EVERY 10s", "{v}");
    let (st, v) = s
        .post(
            "/sql",
            "CREATE OR REPLACE STREAM clicks (a INT) WITH (kafka_topic = 'x')",
        )
        .await;
    assert_eq!(st, 400, "{v}");

    let v = s.sql("DROP QUERY per_page").await;
    assert_eq!(
        message(&v),
        "query per_page dropped with its results table",
        "{v}"
    );
}

/// `DROP QUERY ... KEEP RESULTS` keeps the rows in a renamed table, and a
/// new query of the same name starts with its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_query_can_keep_its_results() {
    let c = Clicks::start(PER_PAGE).await;
    c.append(0, 10);
    c.rows("per_page", 36).await;
    let v = c.s.sql("DROP QUERY per_page KEEP RESULTS").await;
    let table = v["results"][0]["results_table"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(table.starts_with("per_page_kept_"), "{v}");
    let msg = v["results"][0]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("kept in table {table}")), "{v}");
    c.s.sql(PER_PAGE).await;
    c.rows("per_page", 36).await;
    let db = rusqlite::Connection::open(c.s.data_dir.join("runnel.db")).unwrap();
    let kept: i64 = db
        .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(kept >= 36, "{kept}");

    // Dropped twice within a second, keeping its results each time: each
    // drop keeps them in a table of its own, and the name is free again.
    let mut kept = Vec::new();
    for _ in 0..3 {
        c.s.sql(
            "CREATE QUERY again AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 1s",
        )
        .await;
        let (st, v) = c.s.post("/sql", "DROP QUERY again KEEP RESULTS").await;
        assert_eq!(st, 200, "{v}");
        kept.push(
            v["results"][0]["results_table"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    kept.dedup();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let (st, v) = c.s.get("/queries/again").await;
    assert_eq!(st, 404, "{v}");
    let (st, v) =
        c.s.post(
            "/sql",
            "CREATE QUERY again AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 1s",
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// Every refusal is the API's JSON error, says what was given, and keeps
/// its status: a reset without a known start, and paths and query strings
/// the router itself cannot read.
#[tokio::test]
async fn refusals_are_json_errors_saying_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    s.sql(STREAM).await;
    s.sql("CREATE QUERY q AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 1s")
        .await;
    for (path, says) in [
        (
            "/queries/q/reset?from=middle",
            "?from=earliest or ?from=latest, not 'middle'",
        ),
        ("/queries/q/reset", "?from=earliest or ?from=latest"),
    ] {
        let (st, v) = s.post(path, "").await;
        assert_eq!(st, 400, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.ends_with(says), "{path}: {v}");
    }
    for (path, says) in [
        ("/queries/%FF%FE/results", "UTF-8"),
        ("/queries/q/results?limit=1&limit=2", "duplicate field"),
        ("/queries/q/results?limit=-1", "limit"),
    ] {
        let (st, v) = s.get(path).await;
        assert_eq!(st, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{path}: {v}");
    }
}

/// A query's name names its results table, URLs and metrics, and is read
/// back from the store at start: names that could not be, or that could
/// name another query's tables, are refused with a 400 on every path, and
/// a name given in a JSON body is read as an unquoted SQL name, across a
/// restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_names_are_checked_and_read_as_sql_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    s.sql(STREAM).await;
    let select = "SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 1s";
    for name in [
        "",
        " ",
        "my query",
        "a/b",
        "x:late",
        "q\"x",
        "a;DROP QUERY q",
        "1st",
        &"n".repeat(41),
    ] {
        let body = serde_json::json!({ "sql": select, "name": name }).to_string();
        let (st, v) = s.request(Method::POST, "/queries", &[JSON], &body).await;
        assert_eq!(st, 400, "{name:?}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("query name"),
            "{v}"
        );
    }
    // Quoted, a name could hold anything, and upper case that lookups
    // by name (lower-cased, as unquoted names are) would never find.
    for name in ["x:late", "PerPage"] {
        let sql = format!("CREATE QUERY \"{name}\" AS {select}");
        let (st, v) = s.post("/sql", &sql).await;
        assert_eq!(st, 400, "{v}");
    }
    // A name in a JSON body is read as an unquoted one.
    let body = serde_json::json!({ "sql": select, "name": "PerPage" }).to_string();
    let (st, v) = s.request(Method::POST, "/queries", &[JSON], &body).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["name"], "perpage", "{v}");
    let data_dir = s.data_dir.clone();
    s.stop();
    let s = TestServer::start(&data_dir, "127.0.0.1:1");
    // Stored queries start after the server listens.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = s.get("/queries/PerPage").await;
        if st == 200 {
            assert_eq!(v["name"], "perpage", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{st} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A statement whose expressions nest deeper than the server can plan is
/// refused with a 400 before anything recurses through it, however long;
/// a long chain within the bound is planned.
#[tokio::test]
async fn expressions_nested_too_deeply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    for terms in [2_000, 100_000] {
        let sql = format!("SELECT {}", vec!["1"; terms].join("+"));
        let (st, v) = s.post("/sql", &sql).await;
        assert_eq!(st, 400, "{terms}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("nest too deeply"), "{v}");
    }
    // 200 alternatives: 399 operators in one chain.
    let ors: Vec<String> = (0..200).map(|i| format!("x = {i}")).collect();
    let sql = format!(
        "SELECT count(*) AS n FROM (VALUES (7), (300)) AS t(x) WHERE {}",
        ors.join(" OR ")
    );
    let (st, v) = s.post("/sql", &sql).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["rows"][0][0], 1, "{v}");
    let (st, v) = s.post("/sql", "SHOW STREAMS").await;
    assert_eq!(st, 200, "{v}");
}

/// Timestamps are RFC 3339 in UTC with milliseconds everywhere, and JSON
/// rows keep the select list's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_and_column_order_are_the_same_everywhere() {
    let c = Clicks::start(
        "CREATE QUERY per_page AS SELECT page, max(ts) AS last_ts, count(*) AS n \
         FROM clicks GROUP BY page WINDOW 1s",
    )
    .await;
    c.append(0, 3);
    c.rows("per_page", 8).await;
    let start = runnel::store::format_api_ts(c.base);
    let end = runnel::store::format_api_ts(c.base + 1000);
    let last = runnel::store::format_api_ts(c.base + 100);
    assert!(
        start.ends_with(":00.000Z") && start.contains('T'),
        "{start}"
    );

    let text = reqwest::get(format!("{}/queries/per_page/results?limit=1", c.s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let want = format!(
        r#""rows":[{{"window_start":"{start}","window_end":"{end}","page":"a","last_ts":"{last}","n":1}}]"#
    );
    assert!(text.contains(&want), "{text}\nwant {want}");

    let csv = reqwest::get(format!(
        "{}/queries/per_page/results?limit=1&format=csv",
        c.s.url
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(
        csv,
        format!("window_start,window_end,page,last_ts,n\n{start},{end},a,{last},1\n")
    );

    let mut sse = Sse::connect(&format!("{}/queries/per_page/stream", c.s.url)).await;
    let (_, row) = sse.row().await;
    assert_eq!(row["window_start"], start.as_str(), "{row}");
    assert_eq!(row["last_ts"], last.as_str(), "{row}");

    let v = c
        .s
        .sql("SELECT window_end, last_ts, page FROM per_page ORDER BY window_start, page LIMIT 1")
        .await;
    assert_eq!(
        v["results"][0]["rows"][0],
        serde_json::json!([end, last, "a"]),
        "{v}"
    );
    // Results tables are found inside subqueries (as Metabase wraps a
    // question) and CTE bodies too; a CTE's own name is not a table.
    for sql in [
        r#"SELECT "source"."page" AS "page" FROM (SELECT "public"."per_page"."page" AS "page" FROM "public"."per_page") AS "source" ORDER BY 1 LIMIT 1"#,
        "WITH w AS (SELECT page FROM per_page) SELECT page FROM w ORDER BY page LIMIT 1",
        "SELECT page FROM per_page WHERE page IN (SELECT page FROM per_page) ORDER BY page LIMIT 1",
    ] {
        let v = c.s.sql(sql).await;
        assert_eq!(
            v["results"][0]["rows"],
            serde_json::json!([["a"]]),
            "{sql}: {v}"
        );
    }
}

/// CREATE answers warn about what a new user would not expect: a query
/// without WINDOW is a cumulative table, and a topic that does not exist.
#[tokio::test]
async fn create_answers_warn_of_cumulative_queries_and_missing_topics() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &brokers);
    let v = s
        .sql("CREATE STREAM typo (ts TIMESTAMP, page TEXT) WITH (kafka_topic = 'clikcs', event_time = 'ts')")
        .await;
    let w = v["results"][0]["warnings"][0].as_str().unwrap_or_default();
    assert!(w.contains("topic 'clikcs' does not exist"), "{v}");
    let v = s
        .sql("CREATE STREAM clicks (ts TIMESTAMP, page TEXT) WITH (kafka_topic = 'clicks', event_time = 'ts')")
        .await;
    assert!(v["results"][0].get("warnings").is_none(), "{v}");
    let v = s
        .sql("CREATE QUERY per_page AS SELECT page, count(*) AS n FROM clicks GROUP BY page")
        .await;
    let w = v["results"][0]["warnings"][0].as_str().unwrap_or_default();
    assert!(w.contains("no WINDOW: a cumulative table"), "{v}");
    let v = s.sql("DESCRIBE per_page").await;
    assert!(
        v["results"][0]["notes"][0]
            .as_str()
            .unwrap_or_default()
            .contains("cumulative"),
        "{v}"
    );
    let v = s
        .sql("CREATE QUERY per_page_10s AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s")
        .await;
    assert!(v["results"][0].get("warnings").is_none(), "{v}");
    let v = s
        .sql("CREATE QUERY waits AS SELECT page, count(*) AS n FROM typo GROUP BY page WINDOW 10s")
        .await;
    let w = v["results"][0]["warnings"][0].as_str().unwrap_or_default();
    assert!(w.contains("topic 'clikcs' does not exist"), "{v}");
}

/// A query without WINDOW is a cumulative table: its rows belong to no
/// window, so `window_start` is NULL in every answer (results pages, CSV,
/// server-sent events, pull queries over the results table) instead of a
/// made-up 1970-01-01, and `window_end` is the event time the table was
/// computed as of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_rows_carry_no_window_start() {
    let c = Clicks::start(
        "CREATE QUERY totals AS SELECT page, count(*) AS n FROM clicks GROUP BY page EMIT EVERY 500ms",
    )
    .await;
    c.append(0, 3);
    let v = c.rows("totals", 4).await;
    let rows = v["rows"].as_array().unwrap();
    for r in rows {
        assert!(r["window_start"].is_null(), "{r}");
        let end = r["window_end"].as_str().unwrap_or_default();
        assert!(end.ends_with('Z') && !end.starts_with("1970"), "{r}");
    }

    let csv = reqwest::get(format!(
        "{}/queries/totals/results?limit=1&format=csv",
        c.s.url
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let line = csv.lines().nth(1).unwrap_or_default();
    assert!(line.starts_with(',') && !line.contains("1970"), "{csv}");

    let mut sse = Sse::connect(&format!("{}/queries/totals/stream", c.s.url)).await;
    let (_, row) = sse.row().await;
    assert!(row["window_start"].is_null(), "{row}");
    assert!(row["window_end"].is_string(), "{row}");

    let v =
        c.s.sql("SELECT count(*) AS n, count(window_start) AS starts FROM totals")
            .await;
    let counts = &v["results"][0]["rows"][0];
    assert!(counts[0].as_i64().unwrap_or(0) >= 4, "{v}");
    assert_eq!(counts[1], 0, "{v}");
}
