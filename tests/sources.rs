//! Socket and file sources end to end: the real server with no broker, a
//! word count over a TCP server's lines and a cumulative query over a JSON
//! file that grows, compared with counts computed here.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

/// Rows of a pull query as (first column, second column as i64).
async fn pairs(s: &TestServer, sql: &str) -> BTreeMap<String, i64> {
    let (status, v) = s.post("/sql", sql).await;
    if status != 200 {
        return BTreeMap::new();
    }
    v["results"][0]["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap_or_default().to_string(),
                        r[1].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `sql` until it returns `want`, failing with the last answer after 30 s.
async fn wait_for(s: &TestServer, sql: &str, want: &BTreeMap<String, i64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = pairs(s, sql).await;
        if &got == want {
            return;
        }
        if Instant::now() > deadline {
            let (_, q) = s.get("/queries").await;
            panic!("{sql}:\n got  {got:?}\n want {want:?}\n queries: {q}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn word_counts(lines: &[String]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        for w in l.split(' ') {
            *m.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_word_count() {
    let dir = tempfile::tempdir().unwrap();
    // The operator lets streams reach this machine's sockets.
    let s = TestServer::start_args(
        dir.path(),
        "127.0.0.1:1",
        &[],
        &["--allow-connect", "127.0.0.1"],
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let words = [
        "spark", "runnel", "stream", "kafka", "socket", "word", "count",
    ];
    let lines: Vec<String> = (0..300)
        .map(|i| {
            (0..1 + i % 5)
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    s.sql(&format!(
        "CREATE STREAM lines (line TEXT) WITH (source = 'socket', host = '127.0.0.1', port = '{port}', format = 'lines')"
    ))
    .await;
    // A continuous query reads its stream directly in FROM (a derived table
    // is not accepted), so the split happens in the grouped select list.
    s.sql(
        "CREATE QUERY wc AS SELECT unnest(string_to_array(line, ' ')) AS word, count(*) AS n FROM lines GROUP BY word EMIT EVERY 1s",
    )
    .await;
    // The server side of `nc -lk`: half the lines, a dropped connection, the rest.
    let sent = lines.clone();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        for chunk in sent[..150].chunks(30) {
            for l in chunk {
                writeln!(c, "{l}").unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(c);
        let (mut c, _) = listener.accept().unwrap();
        for l in &sent[150..] {
            writeln!(c, "{l}").unwrap();
        }
        c.flush().unwrap();
        // Keep the connection open while the test reads the results.
        std::thread::sleep(Duration::from_secs(30));
    });
    wait_for(
        &s,
        "SELECT word, n FROM wc ORDER BY word",
        &word_counts(&lines),
    )
    .await;
    let (_, q) = s.get("/queries/wc").await;
    assert_eq!(q["counters"]["records_in"], Value::from(300), "{q}");
    drop(s);
    drop(server);
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

fn user_totals(records: &[(String, i64)]) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let (mut counts, mut sums) = (BTreeMap::new(), BTreeMap::new());
    for (u, n) in records {
        *counts.entry(u.clone()).or_insert(0) += 1;
        *sums.entry(u.clone()).or_insert(0) += n;
    }
    (counts, sums)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_follows_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("events.jsonl");
    let records: Vec<(String, i64)> = (0..400)
        .map(|i| (format!("u{}", i % 7), (i * 13 % 10) as i64))
        .collect();
    let json: Vec<String> = records
        .iter()
        .map(|(u, n)| format!(r#"{{"user": "{u}", "n": {n}}}"#))
        .collect();
    append(&path, &json[..100]);
    let allow = [("RUNNEL_ALLOW_FILES", data.path().to_str().unwrap())];
    let s = TestServer::start_with(dir.path(), "127.0.0.1:1", &allow);
    s.sql(&format!(
        "CREATE STREAM events (user TEXT, n BIGINT) WITH (source = 'file', path = '{}', format = 'json', start = 'earliest')",
        path.display()
    ))
    .await;
    s.sql("CREATE QUERY totals AS SELECT user, count(*) AS c, sum(n) AS s FROM events GROUP BY user EMIT EVERY 1s").await;
    // Appended over time, with one line written in two halves.
    for chunk in json[100..190].chunks(30) {
        append(&path, chunk);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let (a, b) = json[190].split_at(10);
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.write_all(format!("{b}\n").as_bytes()).unwrap();
    append(&path, &json[191..250]);
    let (counts, sums) = user_totals(&records[..250]);
    wait_for(&s, "SELECT user, c FROM totals ORDER BY user", &counts).await;
    wait_for(&s, "SELECT user, s FROM totals ORDER BY user", &sums).await;
    let (_, q) = s.get("/queries/totals").await;
    assert_eq!(q["counters"]["bad_records"], Value::from(0), "{q}");
    // Stop, grow the file while the server is down, restart: every line
    // counts exactly once.
    s.stop();
    append(&path, &json[250..330]);
    let s = TestServer::start_with(dir.path(), "127.0.0.1:1", &allow);
    append(&path, &json[330..]);
    let (counts, sums) = user_totals(&records);
    wait_for(&s, "SELECT user, c FROM totals ORDER BY user", &counts).await;
    wait_for(&s, "SELECT user, s FROM totals ORDER BY user", &sums).await;
}

/// File tables and file streams read only regular files under the
/// directories the server allows: by default none; with `--allow-files`
/// (here `RUNNEL_ALLOW_FILES`) a path outside, a `..` escape, a symbolic
/// link leading outside, a device, a FIFO and a directory are all 400s
/// naming the allowed directory, while a file inside is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_read_only_under_allowed_directories() {
    let root = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let inside = root.path().join("users.csv");
    std::fs::write(&inside, "id,name\n1,ann\n2,bob\n").unwrap();
    let secret = other.path().join("secret.csv");
    std::fs::write(&secret, "id,name\n9,root\n").unwrap();
    let link = root.path().join("link.csv");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let fifo = root.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let rootname = root.path().to_str().unwrap().to_string();
    let escape = format!(
        "{rootname}/../{}/secret.csv",
        other.path().file_name().unwrap().to_str().unwrap()
    );
    let table = |name: &str, path: &str| {
        format!(
            "CREATE TABLE {name} (name TEXT) WITH (source = 'file', path = '{path}', format = 'csv', delimiter = ':', header = false)"
        )
    };
    let stream = |name: &str, path: &str| {
        format!(
            "CREATE STREAM {name} (user TEXT) WITH (source = 'file', path = '{path}', format = 'json')"
        )
    };
    let refused = |status: u16, v: &Value, what: &str, needle: &str| {
        assert_eq!(status, 400, "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{what}: {message}");
    };

    // By default no directory is allowed.
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let inside_s = inside.to_str().unwrap();
    let (st, v) = s.post("/sql", &table("t", inside_s)).await;
    refused(st, &v, "table by default", "--allow-files");
    let (st, v) = s.post("/sql", &stream("e", inside_s)).await;
    refused(st, &v, "stream by default", "--allow-files");
    s.stop();

    let dir = tempfile::tempdir().unwrap();
    let allow = [("RUNNEL_ALLOW_FILES", rootname.as_str())];
    let s = TestServer::start_with(dir.path(), "127.0.0.1:1", &allow);
    let bad = [
        "/etc/passwd".to_string(),
        escape,
        link.to_str().unwrap().to_string(),
        "/dev/zero".to_string(),
        fifo.to_str().unwrap().to_string(),
        rootname.clone(),
        format!("{}/later.jsonl", other.path().display()),
    ];
    for (i, path) in bad.iter().enumerate() {
        let (st, v) = s.post("/sql", &table(&format!("t{i}"), path)).await;
        refused(st, &v, &format!("table {path}"), &rootname);
        let (st, v) = s.post("/sql", &stream(&format!("e{i}"), path)).await;
        refused(st, &v, &format!("stream {path}"), &rootname);
    }
    let (_, v) = s.get("/streams").await;
    assert!(!v.to_string().contains("\"e0\""), "{v}");

    // Inside the allowed directory: the table is read, and a stream may name
    // a file that does not exist yet.
    s.sql(&table("users", inside_s)).await;
    let v = s.sql("SELECT name FROM users ORDER BY name").await;
    assert_eq!(
        v["results"][0]["rows"],
        serde_json::json!([["1,ann"], ["2,bob"], ["id,name"]])
    );
    s.sql(&stream("later", &format!("{rootname}/later.jsonl")))
        .await;
    // ... but when it appears as a link leading outside, its query fails.
    s.sql("CREATE QUERY peek AS SELECT user, count(*) AS n FROM later GROUP BY user EMIT EVERY 1s")
        .await;
    std::os::unix::fs::symlink(&secret, root.path().join("later.jsonl")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, q) = s.get("/queries/peek").await;
        let error = q["error"].as_str().unwrap_or_default().to_string();
        if !error.is_empty() {
            assert!(error.contains(&rootname), "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "query still running: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop();

    // A stored stream or table whose file is no longer allowed stops the
    // server from starting, with a message naming the setting.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--brokers",
            "127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUNNEL_LOG", "warn")
        .env_remove("RUNNEL_CONFIG")
        .env_remove("RUNNEL_ALLOW_FILES")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stored stream later") && err.contains("--allow-files"),
        "{err}"
    );
}
