//! `runnel sql` end to end: the real binary against a real server (no broker
//! needed: streams and queries can be created, queries just wait for input).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TestServer;
use expectrl::{Eof, Expect, Session};

const STREAM: &str = "CREATE STREAM clicks (ts TIMESTAMP, url TEXT, ms BIGINT) \
                      WITH (kafka_topic = 'clicks', format = 'json', event_time = 'ts')";

/// `runnel sql` with a clean environment: history in `home`, no pager.
fn sql_command(home: &Path, server: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runnel"));
    c.arg("sql")
        .arg("--server")
        .arg(server)
        .env("HOME", home)
        .env("RUNNEL_HISTORY", home.join("history"))
        .env("PAGER", "cat")
        .env("RUNNEL_LOG", "warn")
        .env_remove("RUNNEL_PAGER")
        .env_remove("RUNNEL_SERVER")
        .env_remove("RUNNEL_TOKEN");
    c
}

fn run(home: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = sql_command(home, server);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start runnel sql");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn command_creates_a_stream_and_shows_an_aligned_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let cmd = format!("{STREAM}; SHOW STREAMS");
    let out = run(home.path(), &s.url, &["-c", &cmd], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let expected = "\
stream clicks created
  name  |  topic | format | event_time | queries
--------+--------+--------+------------+---------
 clicks | clicks | json   | ts         |       0
(1 row)
";
    assert!(stdout.starts_with(expected), "got:\n{stdout}");
}

#[test]
fn file_error_stops_with_caret_and_nonzero_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("bad.sql");
    std::fs::write(
        &file,
        "SELECT 1 AS one\nFORM nothing;\nCREATE STREAM never (a TEXT) WITH (kafka_topic = 'n');\n",
    )
    .unwrap();
    let out = run(home.path(), &s.url, &["-f", file.to_str().unwrap()], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("LINE 2: FORM nothing"))
        .unwrap_or_else(|| panic!("no LINE 2 context in:\n{stderr}"));
    assert!(
        lines[at - 1].contains("bad.sql:2: ERROR:  "),
        "no file:line prefix in:\n{stderr}"
    );
    // The caret sits under the reported column of line 2.
    let caret = lines[at + 1];
    assert!(caret.trim() == "^", "{stderr}");
    assert!(caret.len() > "LINE 2: ".len(), "{stderr}");
    // Nothing after the failing statement ran.
    let streams = run(home.path(), &s.url, &["-c", "\\ds"], None);
    assert!(
        text(&streams.stdout).contains("Did not find any streams"),
        "{}",
        text(&streams.stdout)
    );
}

#[test]
fn command_error_exits_one_and_points_at_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let out = run(home.path(), &s.url, &["-c", "SELECT * FROM nowhere"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("ERROR:  "), "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
}

#[test]
fn statements_piped_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let input = format!(
        "-- a comment; not a statement\n{STREAM};\n\
         CREATE QUERY per_url AS\n  SELECT url, count(*) AS n FROM clicks\n  GROUP BY url WINDOW 10s;\n\
         \\d\n\\d per_url\nSHOW QUERIES"
    );
    let out = run(home.path(), &s.url, &[], Some(&input));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("query per_url created"), "{stdout}");
    assert!(stdout.contains("List of streams and queries"), "{stdout}");
    assert!(stdout.contains(" per_url | query  | clicks"), "{stdout}");
    assert!(stdout.contains("Query \"per_url\""), "{stdout}");
    assert!(stdout.contains("Window: TUMBLING 10s"), "{stdout}");
    assert!(stdout.contains("Records in: 0"), "{stdout}");
    // The unterminated last statement runs at end of input, as in psql.
    assert!(stdout.contains("windows_closed"), "{stdout}");
    assert!(stdout.trim_end().ends_with("(1 row)"), "{stdout}");
}

#[test]
fn formats_output_file_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let setup = format!(
        "{STREAM}; CREATE QUERY per_url AS SELECT url, count(*) AS n FROM clicks GROUP BY url WINDOW 10s"
    );
    let out = run(home.path(), &s.url, &["-q", "-c", &setup], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    let out = run(home.path(), &s.url, &["--csv", "-c", "SHOW STREAMS"], None);
    assert_eq!(
        text(&out.stdout),
        "name,topic,format,event_time,queries\nclicks,clicks,json,ts,1\n"
    );

    let out = run(
        home.path(),
        &s.url,
        &["-c", "\\pset format json", "-c", "DESCRIBE clicks"],
        None,
    );
    assert!(
        text(&out.stdout).contains("{\"column\":\"ts\",\"type\":\"TIMESTAMP\"},"),
        "{}",
        text(&out.stdout)
    );

    let out = run(home.path(), &s.url, &["-x", "-c", "SHOW STREAMS"], None);
    assert!(
        text(&out.stdout).starts_with("-[ RECORD 1 ]-"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("\nname       | clicks\n"));

    let file = home.path().join("out.txt");
    let redirect = format!("\\o {}", file.display());
    let out = run(
        home.path(),
        &s.url,
        &["-c", &redirect, "-c", "SHOW QUERIES"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains(" per_url |"), "{written}");

    // No broker: the watch waits, polls twice more and stops on its count.
    let out = run(
        home.path(),
        &s.url,
        &["-c", "\\watch 0.2 c=3 per_url"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Waiting for per_url's next window to close"),
        "{}",
        text(&out.stdout)
    );

    let out = run(home.path(), &s.url, &["-c", "\\watch 1 nosuch"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let out = run(
        home.path(),
        "http://127.0.0.1:1",
        &["-c", "SHOW STREAMS"],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(
            "runnel sql: error: could not connect to the server at http://127.0.0.1:1"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn interactive_session_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let mut cmd = sql_command(home.path(), &s.url);
    cmd.env("TERM", "xterm");
    let mut p = Session::spawn(cmd).expect("spawn in a pty");
    p.get_process_mut().set_window_size(160, 50).unwrap();
    p.set_expect_timeout(Some(Duration::from_secs(20)));

    p.expect("Type \"\\?\" for help").unwrap();
    p.expect("runnel=> ").unwrap();
    // A statement over three lines, ended by ';'.
    p.send_line("CREATE STREAM clicks (ts TIMESTAMP, url TEXT)")
        .unwrap();
    p.expect("runnel-> ").unwrap();
    p.send_line("  WITH (kafka_topic = 'clicks',").unwrap();
    p.expect("runnel(> ").unwrap();
    p.send_line("        event_time = 'ts');").unwrap();
    p.expect("stream clicks created").unwrap();
    p.expect("runnel=> ").unwrap();

    p.send_line("SHOW STREAMS;").unwrap();
    p.expect(" clicks | clicks | json").unwrap();
    p.expect("(1 row)").unwrap();

    p.send_line("\\d").unwrap();
    p.expect("List of streams and queries").unwrap();
    p.expect(" clicks | stream | topic clicks (json)").unwrap();

    // Tab completes the stream name the server reported.
    p.send("\\d cli\t").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.send_line("").unwrap();
    p.expect("Stream \"clicks\"").unwrap();
    p.expect("Event time: ts").unwrap();

    // Ctrl-C drops a half-typed statement.
    p.send_line("SELECT oops").unwrap();
    p.expect("runnel-> ").unwrap();
    p.send(expectrl::ControlCode::EndOfText).unwrap();
    p.expect("runnel=> ").unwrap();

    // Errors point at the line and column of the statement.
    p.send_line("SELECT url").unwrap();
    p.expect("runnel-> ").unwrap();
    p.send_line("  FROM nowhere;").unwrap();
    p.expect("ERROR:  ").unwrap();
    p.expect("LINE 2:   FROM nowhere").unwrap();
    p.expect("runnel=> ").unwrap();

    p.send_line("\\q").unwrap();
    p.expect(Eof).unwrap();

    let history = std::fs::read_to_string(home.path().join("history")).unwrap();
    assert!(history.contains("CREATE STREAM clicks"), "{history}");
    assert!(history.contains("\\d"), "{history}");
    assert!(!history.contains("oops"), "{history}");
}

#[test]
fn long_output_goes_through_the_pager_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let mut cmd = sql_command(home.path(), &s.url);
    cmd.env("TERM", "xterm")
        .env("LINES", "10")
        .env("COLUMNS", "100")
        .env("PAGER", "sed s/^/PAGED:/");
    let mut p = Session::spawn(cmd).expect("spawn in a pty");
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("runnel=> ").unwrap();
    p.send_line("\\?").unwrap();
    p.expect("PAGED:General").unwrap();
    p.expect("runnel=> ").unwrap();
    // Short output is written directly.
    p.send_line("SHOW QUERIES;").unwrap();
    p.expect("(0 rows)").unwrap();
    // Ctrl-D at the next prompt quits.
    p.expect("runnel=> ").unwrap();
    p.send(expectrl::ControlCode::EndOfTransmission).unwrap();
    p.expect(Eof).unwrap();
}

/// A one-route stand-in for the server that records request headers.
fn fake_server() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let json = if head.starts_with("POST /sql") {
                r#"{"results":[{"statement":"SHOW QUERIES","kind":"rows","columns":[{"name":"n","type":"Int64"}],"rows":[[7]]}]}"#
            } else {
                r#"{"status":"ok"}"#
            };
            let _ = tx.send(head);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
            );
        }
    });
    (url, rx)
}

#[test]
fn token_and_server_come_from_the_environment() {
    let (url, requests) = fake_server();
    let home = tempfile::tempdir().unwrap();
    // No --server: RUNNEL_SERVER (here without a scheme) names the server.
    let out = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["sql", "-c", "SHOW QUERIES"])
        .env("HOME", home.path())
        .env("RUNNEL_HISTORY", home.path().join("history"))
        .env("RUNNEL_SERVER", url.trim_start_matches("http://"))
        .env("RUNNEL_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), " n\n---\n 7\n(1 row)\n\n");
    let heads: Vec<String> = requests.try_iter().collect();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[0].starts_with("GET /healthz"), "{heads:?}");
    assert!(heads[1].starts_with("POST /sql"), "{heads:?}");
    for h in &heads {
        assert!(
            h.to_ascii_lowercase()
                .contains("authorization: bearer s3cret\r\n"),
            "{h}"
        );
    }
}

#[test]
fn pasted_lines_all_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let mut cmd = sql_command(home.path(), &s.url);
    cmd.env("TERM", "xterm");
    let mut p = Session::spawn(cmd).expect("spawn in a pty");
    p.get_process_mut().set_window_size(160, 50).unwrap();
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("runnel=> ").unwrap();
    // One write, as a terminal delivers a paste without bracketed-paste
    // markers: the lines after the first arrive while the first runs.
    p.send("SELECT 1 AS first_col; SELECT 2 AS second_col;\rSELECT 3 AS third_col;\rSELECT 4 AS fourth_col;\r")
        .unwrap();
    for col in ["first_col", "second_col", "third_col", "fourth_col"] {
        p.expect(col).unwrap();
        p.expect("(1 row)").unwrap();
    }
    p.expect("runnel=> ").unwrap();
    // The editor kept for the session must leave Ctrl-C to \watch.
    p.send_line("SELECT 5 AS five \\watch 0.3").unwrap();
    p.expect("(every 0.3s)").unwrap();
    p.expect("(every 0.3s)").unwrap();
    p.send(expectrl::ControlCode::EndOfText).unwrap();
    p.expect("runnel=> ").unwrap();
    p.send_line("\\q").unwrap();
    p.expect(Eof).unwrap();
}

#[test]
fn watch_reruns_the_query_buffer_like_psql() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    let headers = |out: &str| out.lines().filter(|l| l.ends_with("(every 0.2s)")).count();

    // The statement on the \watch line is the query buffer.
    let out = run(
        home.path(),
        &s.url,
        &["-c", "SELECT 40 + 2 AS answer \\watch 0.2 c=3"],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(headers(&stdout), 3, "{stdout}");
    assert_eq!(stdout.matches("     42\n").count(), 3, "{stdout}");

    // With an empty buffer, the last statement runs again.
    let input = "SELECT 7 AS seven;\n\\watch 0.2 c=2\n";
    let out = run(home.path(), &s.url, &[], Some(input));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(headers(&stdout), 2, "{stdout}");
    assert_eq!(stdout.matches("(1 row)").count(), 3, "{stdout}");

    // A statement that created a continuous query is followed, not re-run.
    let create = format!(
        "{STREAM}; CREATE QUERY per_url AS SELECT url, count(*) AS n FROM clicks GROUP BY url WINDOW 10s"
    );
    let out = run(
        home.path(),
        &s.url,
        &["-c", &create, "-c", "\\watch 0.2 c=2"],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("Waiting for per_url's next window to close"),
        "{stdout}"
    );

    let out = run(home.path(), &s.url, &["-c", "\\watch 1"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("\\watch cannot be used with an empty query"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dt_lists_reference_and_results_tables() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let csv = files.path().join("pages.csv");
    std::fs::write(&csv, "url,title\n/a,Home\n/b,About\n").unwrap();
    let allow = files.path().to_str().unwrap();
    let s = TestServer::start_args(dir.path(), "127.0.0.1:1", &[], &["--allow-files", allow]);
    let home = tempfile::tempdir().unwrap();
    let setup = format!(
        "{STREAM}; CREATE QUERY per_url AS SELECT url, count(*) AS n FROM clicks GROUP BY url WINDOW 10s;\
         CREATE TABLE pages (url TEXT, title TEXT) WITH (source = 'file', path = '{}', format = 'csv', header = true)",
        csv.display()
    );
    let out = run(
        home.path(),
        &s.url,
        &["-q", "-c", &setup, "-c", "\\dt"],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("List of tables"), "{stdout}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{stdout}"))
            .to_string()
    };
    assert!(row("pages").contains("| reference |"), "{stdout}");
    assert!(row("pages").contains("pages.csv"), "{stdout}");
    assert!(row("per_url").contains("| results "), "{stdout}");
    assert!(
        row("per_url").contains("query per_url over clicks"),
        "{stdout}"
    );
}

#[test]
fn e_edits_the_buffer_then_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), "127.0.0.1:1");
    let home = tempfile::tempdir().unwrap();
    // An "editor" that changes the statement and ends it with ';'.
    let editor = home.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/40/42/; s/$/;/' \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = sql_command(home.path(), &s.url)
        .args(["-c", "SELECT 40 AS answer \\e"])
        .env("EDITOR", &editor)
        .env_remove("RUNNEL_EDITOR")
        .env_remove("VISUAL")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(stdout, " answer\n--------\n     42\n(1 row)\n\n");
}
