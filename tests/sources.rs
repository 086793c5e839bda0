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
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
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
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
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
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    append(&path, &json[330..]);
    let (counts, sums) = user_totals(&records);
    wait_for(&s, "SELECT user, c FROM totals ORDER BY user", &counts).await;
    wait_for(&s, "SELECT user, s FROM totals ORDER BY user", &sums).await;
}
