//! HTTP API behaviour that needs no broker: errors, catalog statements.

mod common;

use common::TestServer;

const STREAM: &str = "CREATE STREAM clicks (ts TIMESTAMP, page TEXT, ms BIGINT)
  WITH (kafka_topic = 'clicks', event_time = 'ts')";

#[tokio::test]
async fn errors_are_4xx_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    // No broker listens here: queries wait for their topic, the API still answers.
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    s.sql(STREAM).await;

    let (st, v) = s
        .post(
            "/sql",
            "SELECT page,\n  count(* FROM clicks GROUP BY page WINDOW 10s",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "sql_error");
    assert_eq!(v["error"]["line"], 2);
    assert!(v["error"]["column"].as_u64().unwrap() > 1);

    let (st, v) = s
        .post(
            "/sql",
            "SELECT page, count(*) FROM clicks\nGROUP BY page WINDOW 10 fortnights",
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        (v["error"]["line"].as_u64(), v["error"]["column"].as_u64()),
        (Some(2), Some(15)),
        "{v}"
    );

    // A window each record would fall into a million times over is refused
    // before the query runs, on both ways of starting one.
    for path in ["/sql", "/queries"] {
        let (st, v) = s
            .post(
                path,
                "SELECT page, count(*) FROM clicks\nGROUP BY page WINDOW 1d SLIDE 1ms",
            )
            .await;
        assert_eq!(st, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "sql_error", "{v}");
        assert_eq!(v["error"]["line"], 2, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("86400000 windows (1d / 1ms)") && message.contains("limit is 1000"),
            "{v}"
        );
    }

    let (st, v) = s
        .post(
            "/sql",
            "SELECT page, count(*) FROM clicks\nGROUP BY nope WINDOW 10s",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    assert_eq!(v["error"]["line"], 2, "{v}");

    let (st, v) = s
        .post(
            "/sql",
            "SELECT a, count(*) FROM nowhere GROUP BY a WINDOW 10s",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["column"], 25);

    let (st, v) = s
        .post(
            "/queries",
            "CREATE STREAM x (a INT) WITH (kafka_topic = 'x')",
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = s.get("/queries/missing").await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/no/such/route").await;
    assert_eq!(st, 404);
    let (st, v) = s.post("/healthz", "").await;
    assert_eq!(st, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed");

    // Duplicate names and dropping a stream in use are conflicts.
    let (st, _) = s.post("/sql", STREAM).await;
    assert_eq!(st, 409);
    let (st, v) = s
        .post(
            "/queries",
            "SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s",
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let cols: Vec<&str> = v["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["window_start", "window_end", "page", "n"]);
    let (st, v) = s.post("/sql", "DROP STREAM clicks").await;
    assert_eq!(st, 409);
    assert!(v["error"]["message"].as_str().unwrap().contains(&id));

    let (st, v) = s.get(&format!("/queries/{id}/results?limit=0")).await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = s.get(&format!("/queries/{id}/results?after=xyz")).await;
    assert_eq!(st, 400);
    let (st, v) = s.get(&format!("/queries/{id}/results")).await;
    assert_eq!(st, 200);
    assert_eq!(v["rows"].as_array().unwrap().len(), 0);

    let v = s.sql("SHOW QUERIES; DESCRIBE clicks; EXPLAIN SELECT page, count(*) FROM clicks GROUP BY page WINDOW 10s").await;
    let r = v["results"].as_array().unwrap();
    assert_eq!(r[0]["rows"][0][0], id.as_str());
    assert_eq!(r[1]["rows"].as_array().unwrap().len(), 3);
    let plan: String = r[2]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[0].as_str().unwrap().to_string() + "\n")
        .collect();
    assert!(
        plan.contains("mode=Partial") && plan.contains("mode=Final"),
        "{plan}"
    );

    let (st, _) = s.client_delete(&format!("/queries/{id}")).await;
    assert_eq!(st, 200);
    s.sql("DROP STREAM clicks; SHOW STREAMS").await;
    let (_, v) = s.get("/streams").await;
    assert_eq!(v["streams"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn limits_and_sql_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    // A body over the limit is refused from its Content-Length, before it is sent.
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    write!(
        conn,
        "POST /sql HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 << 20
    )
    .unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut response = String::new();
    let mut buf = [0u8; 4096];
    while !response.ends_with('}') {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    for sql in [
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "SELECT * FROM '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "INSERT INTO runnel_streams VALUES ('a', 'b', 'c')",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let (st, v) = s.post("/sql", sql).await;
        assert_eq!(st, 400, "{sql}: {v}");
        assert!(v["error"]["message"].is_string());
    }
    // A one-shot SELECT without tables runs in DataFusion, with nothing to reach.
    let v = s.sql("SELECT 1 + 1 AS two").await;
    assert_eq!(v["results"][0]["rows"][0][0], 2);
}

#[tokio::test]
async fn token_guards_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(dir.path(), "127.0.0.1:1", &[("RUNNEL_TOKEN", "s3cret")]);
    let (st, v) = s.post("/sql", STREAM).await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    let (st, _) = s.post_auth("/sql", STREAM, "wrong").await;
    assert_eq!(st, 401);
    let (st, v) = s.post_auth("/sql", STREAM, "s3cret").await;
    assert_eq!(st, 200, "{v}");
    // Reads stay open unless --protect-reads.
    let (st, _) = s.get("/streams").await;
    assert_eq!(st, 200);
    let (st, _) = s.get("/healthz").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn cross_origin_mutations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    // What a form or `fetch` on another site sends: no preflight for text/plain.
    let evil = [
        ("Origin", "http://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    let (st, v) = s
        .request(reqwest::Method::POST, "/sql", &evil, STREAM)
        .await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Origin"),
        "{v}"
    );
    let (st, v) = s.get("/streams").await;
    assert_eq!(st, 200);
    assert_eq!(
        v["streams"].as_array().unwrap().len(),
        0,
        "nothing created: {v}"
    );
    let (st, v) = s
        .request(reqwest::Method::POST, "/queries", &evil, "SELECT 1")
        .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = s
        .request(reqwest::Method::DELETE, "/queries/q", &evil, "")
        .await;
    assert_eq!(st, 403, "{v}");
    // `null` (sandboxed frames, files) is not the server's origin either.
    let (st, v) = s
        .request(reqwest::Method::POST, "/sql", &[("Origin", "null")], STREAM)
        .await;
    assert_eq!(st, 403, "{v}");

    // The server's own pages send its own origin.
    let own = s.url.clone();
    let (st, v) = s
        .request(
            reqwest::Method::POST,
            "/sql",
            &[("Origin", &own), ("Content-Type", "text/plain")],
            STREAM,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.get("/streams").await;
    assert_eq!(v["streams"].as_array().unwrap().len(), 1, "{v}");
    // Reads stay readable with any Origin: no CORS headers let a page see them.
    let (st, _) = s.request(reqwest::Method::GET, "/streams", &evil, "").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn foreign_host_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_args(
        dir.path(),
        "127.0.0.1:1",
        &[],
        &["--allow-host", "runnel.internal"],
    );
    let port = s.port();
    for host in ["evil.example", &format!("evil.example:{port}")] {
        let (st, v) = s
            .request(reqwest::Method::GET, "/streams", &[("Host", host)], "")
            .await;
        assert_eq!(st, 403, "{host}: {v}");
        assert_eq!(v["error"]["code"], "forbidden");
        // A rebound name cannot change anything either, Origin or not.
        let (st, _) = s
            .request(reqwest::Method::POST, "/sql", &[("Host", host)], STREAM)
            .await;
        assert_eq!(st, 403, "{host}");
    }
    let (_, v) = s.get("/streams").await;
    assert_eq!(v["streams"].as_array().unwrap().len(), 0, "{v}");

    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "runnel.internal".to_string(),
        format!("runnel.internal:{port}"),
    ] {
        let (st, v) = s
            .request(reqwest::Method::GET, "/streams", &[("Host", &host)], "")
            .await;
        assert_eq!(st, 200, "{host}: {v}");
    }
    // The dashboard reached as localhost posts with its own origin.
    let (st, v) = s
        .request(
            reqwest::Method::POST,
            "/sql",
            &[
                ("Host", &format!("localhost:{port}")),
                ("Origin", &format!("http://localhost:{port}")),
            ],
            STREAM,
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn allowed_hosts_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(
        dir.path(),
        "127.0.0.1:1",
        &[("RUNNEL_ALLOW_HOSTS", "a.internal,b.internal:1")],
    );
    let ok = |host: &'static str| async {
        s.request(reqwest::Method::GET, "/streams", &[("Host", host)], "")
            .await
            .0
    };
    assert_eq!(ok("a.internal").await, 200);
    assert_eq!(ok("b.internal:1").await, 200);
    assert_eq!(ok("b.internal:2").await, 403);
    assert_eq!(ok("c.internal").await, 403);
}

/// Listening beyond loopback without a token refuses to start, naming
/// `--token` and `--no-auth`; with either it serves.
#[tokio::test]
async fn no_open_door_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("RUNNEL_TOKEN")
            .env_remove("RUNNEL_NO_AUTH")
            .env_remove("RUNNEL_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = run(&[]).wait_with_output().unwrap();
    assert!(!out.status.success(), "it started without a token");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0:0") && err.contains("--token") && err.contains("--no-auth"),
        "{err}"
    );
    for flags in [&["--token", "s3cret"][..], &["--no-auth"][..]] {
        let mut child = run(flags);
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            line.starts_with("runnel listening on"),
            "{flags:?}: {line:?}"
        );
    }
}
