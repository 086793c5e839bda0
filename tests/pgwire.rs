//! The PostgreSQL protocol (`--pg-listen`) driven by real clients against
//! the real binary: Debian's psql (`\d`, pull queries, an error's caret,
//! `\watch`, CREATE QUERY), psycopg with server-side parameters and
//! node-postgres, each answer checked against `POST /sql`'s, and the
//! catalog statements Grafana, Metabase and the JDBC driver send
//! (tests/pgwire_clients/, copied from their sources). A missing
//! client skips its test unless RUNNEL_REQUIRE_POSTGRES is set (`.ci/run`
//! installs them all).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

/// `tool` when installed; otherwise `None` (the test skips), or a failure
/// under RUNNEL_REQUIRE_POSTGRES.
fn require(test: &str, tool: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            std::env::var_os("RUNNEL_REQUIRE_POSTGRES").is_none(),
            "{tool} is required (RUNNEL_REQUIRE_POSTGRES) but missing; .ci/run installs it"
        );
        eprintln!("SKIPPED {test}: {tool} is not installed (.ci/run installs it)");
    }
    found
}

fn psql(test: &str) -> Option<PathBuf> {
    let mut found = vec![PathBuf::from("/usr/bin/psql")];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        found.extend(dirs.flatten().map(|d| d.path().join("bin/psql")));
    }
    require(test, "psql", found.into_iter().find(|p| p.exists()))
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// node-postgres's `node_modules` (RUNNEL_NODE_MODULES, as `.ci/run` sets it).
fn node_modules() -> PathBuf {
    std::env::var_os("RUNNEL_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/runnel-node/node_modules")
        })
}

/// A server speaking the protocol over a query `pages` with 8 result rows
/// (4 windows × 2 pages), created through psql when `psql` is given.
async fn server(dir: &Path, args: &[&str]) -> TestServer {
    let path = dir.join("clicks.json");
    let base = chrono::Utc::now().timestamp() / 10 * 10 - 3600;
    let lines: String = (0..40)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"page\": \"p{}\"}}\n",
                (base + i) * 1000,
                i % 2
            )
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    let allow = [("RUNNEL_ALLOW_FILES", dir.to_str().unwrap())];
    let mut all = vec!["--pg-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let s = TestServer::start_args(&dir.join("data"), "127.0.0.1:1", &allow, &all);
    let token = args
        .iter()
        .position(|a| *a == "--token")
        .map_or("", |i| args[i + 1]);
    s.post_auth(
        "/sql",
        &format!(
            "CREATE STREAM clicks (ts TIMESTAMP, page TEXT) WITH (source = 'file', path = '{}', \
             event_time = 'ts', start = 'earliest')",
            path.display()
        ),
        token,
    )
    .await;
    s
}

const PULL: &str = "SELECT page, n, window_start FROM pages ORDER BY window_start, page";

/// `POST /sql`'s rows for `sql` once there are `n`.
async fn http_rows(s: &TestServer, sql: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let (_, v) = s.post("/sql", sql).await;
        let rows = v["results"][0]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if rows.len() >= n {
            return rows;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs psql with `args` against `s`; (success, stdout, stderr).
fn run_psql(
    bin: &Path,
    s: &TestServer,
    password: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let port = s.pg_port.unwrap().to_string();
    let mut cmd = Command::new(bin);
    cmd.args([
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "runnel",
        "-d",
        "runnel",
    ])
    .args(args)
    .env_remove("PGPASSWORD")
    .env("PGCONNECT_TIMEOUT", "10");
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.arg("-w"),
    };
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The HTTP rows as psql's unaligned `page,n,window_start` lines.
fn as_lines(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            // The API writes 2024-01-01T00:00:10.000Z; psql a timestamp.
            let ts = r[2].as_str().unwrap().replace('T', " ").replace('Z', "");
            format!("{},{},{}", r[0].as_str().unwrap(), r[1], ts)
        })
        .collect()
}

#[tokio::test]
async fn psql_creates_describes_reads_and_shows_carets() {
    let Some(bin) = psql("psql_creates_describes_reads_and_shows_carets") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    let create =
        "CREATE QUERY pages AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s";
    let (ok, out, err) = run_psql(&bin, &s, None, &["-c", create]);
    assert!(ok && out.contains("CREATE QUERY"), "{out}{err}");
    assert!(err.contains("NOTICE:  query pages created"), "{err}");
    let rows = http_rows(&s, PULL, 8).await;

    // A pull query's rows are the HTTP answer's.
    let (ok, out, err) = run_psql(&bin, &s, None, &["-A", "-t", "-F", ",", "-c", PULL]);
    assert!(ok, "{err}");
    let got: Vec<String> = out.lines().map(|l| l.replace(".000000", "")).collect();
    let want: Vec<String> = as_lines(&rows)
        .iter()
        .map(|l| l.replace(".000", ""))
        .collect();
    assert_eq!(got, want);

    // \d lists the results table; \d pages its columns and types.
    let (ok, out, err) = run_psql(&bin, &s, None, &["-c", "\\d"]);
    assert!(ok && out.contains("public | pages | table"), "{out}{err}");
    let (ok, out, err) = run_psql(&bin, &s, None, &["-c", "\\d pages"]);
    assert!(ok && out.contains("Table \"public.pages\""), "{out}{err}");
    for col in [
        "window_start | timestamp without time zone",
        "page         | text",
        "n            | bigint",
    ] {
        assert!(out.contains(col), "{col}: {out}");
    }

    // An error carries its SQLSTATE and position: psql draws the caret.
    let (ok, _, err) = run_psql(&bin, &s, None, &["-c", "SELECT page, nope FROM pages"]);
    assert!(!ok, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("LINE 1: "))
        .expect(&err);
    assert_eq!(lines[at], "LINE 1: SELECT page, nope FROM pages");
    assert_eq!(
        lines[at + 1],
        format!("{}^", " ".repeat("LINE 1: SELECT page, ".len()))
    );
    let (_, _, err) = run_psql(
        &bin,
        &s,
        None,
        &["-v", "VERBOSITY=verbose", "-c", "SELECT * FROM nowhere"],
    );
    assert!(err.contains("ERROR:  42P01"), "{err}");

    // What drivers ask at connect time.
    let (ok, out, err) = run_psql(
        &bin,
        &s,
        None,
        &[
            "-A",
            "-t",
            "-c",
            "SHOW server_version",
            "-c",
            "BEGIN",
            "-c",
            "SET application_name = 'x'",
            "-c",
            "COMMIT",
            "-c",
            "SHOW QUERIES",
        ],
    );
    assert!(ok && out.starts_with("16.6 (Runnel"), "{out}{err}");
    assert!(out.contains("pages|clicks|running"), "{out}");

    // \watch reads again and again, the same rows each time.
    let port = s.pg_port.unwrap().to_string();
    let mut child = Command::new(&bin)
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "runnel",
            "-d",
            "runnel",
            "-w",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(
        child.stdin.as_mut().unwrap(),
        "SELECT count(*) AS windows FROM pages \\watch 0.2"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.lines().filter(|l| l.trim() == "8").collect();
    assert!(
        answers.len() >= 3,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn psycopg_and_node_postgres_bind_parameters() {
    let test = "psycopg_and_node_postgres_bind_parameters";
    let python = runs("python3", &["-c", "import psycopg"]).then(|| PathBuf::from("python3"));
    let Some(python) = require(test, "python3 with psycopg", python) else {
        return;
    };
    let modules = node_modules();
    let node = (runs("node", &["--version"]) && modules.join("pg").exists())
        .then(|| PathBuf::from("node"));
    let Some(node) = require(test, "node with node-postgres (npm install pg)", node) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    s.sql("CREATE QUERY pages AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s")
        .await;
    http_rows(&s, PULL, 8).await;
    let want = http_rows(
        &s,
        "SELECT page, n, window_start FROM pages WHERE page = 'p1' AND n >= 5 ORDER BY window_start",
        4,
    )
    .await;
    let port = s.pg_port.unwrap().to_string();

    // psycopg binds %s on the server (extended protocol), text and binary.
    let script = r#"
import json, sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="runnel", dbname="runnel") as c:
    out = []
    for binary in (False, True):
        cur = c.cursor(binary=binary)
        cur.execute("SELECT page, n, window_start FROM pages WHERE page = %s AND n >= %s ORDER BY window_start", ("p1", 5))
        out.append([[r[0], r[1], r[2].strftime("%Y-%m-%dT%H:%M:%S.000Z")] for r in cur.fetchall()])
    try:
        c.execute("SELECT * FROM nowhere WHERE x = %s", (1,))
    except psycopg.Error as e:
        out.append(e.sqlstate)
    print(json.dumps(out))
"#;
    let out = Command::new(&python)
        .args(["-c", script, &port])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got[0], Value::Array(want.clone()));
    assert_eq!(got[1], Value::Array(want.clone()));
    assert_eq!(got[2], "42P01");

    // node-postgres sends $1 untyped, as text.
    let script = r#"
const { Client } = require("pg");
(async () => {
  const c = new Client({ host: "127.0.0.1", port: +process.argv[1], user: "runnel", database: "runnel" });
  await c.connect();
  const r = await c.query("SELECT page, n, window_start FROM pages WHERE page = $1 AND n >= $2 ORDER BY window_start", ["p1", 5]);
  console.log(JSON.stringify(r.rows.map(x => [x.page, Number(x.n), x.window_start])));
  await c.end();
})().catch(e => { console.error(e); process.exit(1); });
"#;
    let out = Command::new(&node)
        .args(["-e", script, &port])
        .env("NODE_PATH", &modules)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, Value::Array(want));
}

#[tokio::test]
async fn the_token_is_the_password() {
    let Some(bin) = psql("the_token_is_the_password") else {
        return;
    };
    let create =
        "CREATE QUERY pages AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s";
    // Reads protected: SCRAM-SHA-256 with the token, nothing without it.
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &["--token", "s3cret", "--protect-reads"]).await;
    let (ok, _, err) = run_psql(&bin, &s, Some("wrong"), &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("authentication failed"), "{err}");
    let (ok, out, err) = run_psql(&bin, &s, Some("s3cret"), &["-c", create]);
    assert!(ok && out.contains("CREATE QUERY"), "{out}{err}");
    drop(s);
    // Reads open: another password reads, only the token changes things.
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &["--token", "s3cret"]).await;
    let (ok, out, err) = run_psql(&bin, &s, Some("guess"), &["-A", "-t", "-c", "SHOW STREAMS"]);
    assert!(ok && out.starts_with("clicks|"), "{out}{err}");
    let (ok, _, err) = run_psql(&bin, &s, Some("guess"), &["-c", create]);
    assert!(!ok && err.contains("token"), "{err}");
    let (ok, out, err) = run_psql(&bin, &s, Some("s3cret"), &["-c", create]);
    assert!(ok && out.contains("CREATE QUERY"), "{out}{err}");
}

/// A self-signed certificate and its key for `localhost`, made by openssl
/// in `dir` under `name`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    (crt, key)
}

/// With a certificate configured, psql connects over TLS and verifies the
/// server's certificate; a client trusting another certificate is refused.
#[tokio::test]
async fn tls_with_a_configured_certificate() {
    let Some(bin) = psql("tls_with_a_configured_certificate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = certificate(dir.path(), "server");
    let (other, _) = certificate(dir.path(), "other");
    let (crt_arg, key_arg) = (crt.to_str().unwrap(), key.to_str().unwrap());
    let s = server(
        dir.path(),
        &["--pg-tls-cert", crt_arg, "--pg-tls-key", key_arg],
    )
    .await;
    let port = s.pg_port.unwrap().to_string();
    let connect = |root: &Path| {
        let out = Command::new(&bin)
            .args(["-X", "-w", "-A", "-t", "-c", "SHOW STREAMS"])
            .arg(format!(
                "host=127.0.0.1 port={port} user=runnel dbname=runnel sslmode=verify-full sslrootcert={}",
                root.display()
            ))
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, out, err) = connect(&crt);
    assert!(ok && out.starts_with("clicks|"), "{out}{err}");
    let (ok, _, err) = connect(&other);
    assert!(!ok && err.contains("certificate"), "{err}");
}

/// One statement of a client's fixture (tests/pgwire_clients/*.sql).
#[derive(Debug)]
struct ClientStatement {
    sql: String,
    extended: bool,
    bind: Vec<Value>,
    expect: Vec<String>,
}

/// The statements of fixture `name` with their directives (see the
/// comment at the top of tests/pgwire_clients/grafana.sql).
fn client_statements(name: &str) -> Vec<ClientStatement> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pgwire_clients")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut out, mut extended) = (vec![], false);
    let (mut sql, mut raw, mut bind, mut expect) = (String::new(), None, vec![], vec![]);
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(p) = trimmed.strip_prefix("-- protocol: ") {
            extended = p.trim() == "extended";
        } else if let Some(b) = trimmed.strip_prefix("-- bind: ") {
            bind = serde_json::from_str::<Vec<Value>>(b).unwrap();
        } else if let Some(e) = trimmed.strip_prefix("-- expect: ") {
            expect = e.split(", ").map(String::from).collect();
        } else if let Some(r) = trimmed.strip_prefix("-- raw: ") {
            raw = Some(r.to_string());
        } else if trimmed.starts_with("--") && sql.is_empty() {
            continue;
        } else {
            sql.push_str(line);
            sql.push('\n');
        }
        if trimmed.ends_with(';') && !trimmed.starts_with("--") {
            let body = sql.trim().trim_end_matches(';').to_string();
            out.push(ClientStatement {
                sql: raw.take().unwrap_or(body),
                extended,
                bind: std::mem::take(&mut bind),
                expect: std::mem::take(&mut expect),
            });
            sql.clear();
        }
    }
    assert!(
        sql.trim().is_empty(),
        "{name}: unterminated statement {sql}"
    );
    out
}

/// `?` placeholders outside quotes as `$1`, `$2`, ... (what pgjdbc sends).
fn numbered(sql: &str) -> String {
    let (mut out, mut n, mut quote) = (String::new(), 0, None);
    for c in sql.chars() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('?', None) => {
                n += 1;
                out.push_str(&format!("${n}"));
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The catalog and schema statements Grafana, Metabase and the JDBC
/// driver send, copied from their sources (tests/pgwire_clients/), each
/// sent the way its client sends it: each answers without an error, and
/// an answer listing tables or columns lists the results table `pages`
/// and its columns.
#[tokio::test]
async fn grafana_metabase_and_jdbc_catalog_queries() {
    let test = "grafana_metabase_and_jdbc_catalog_queries";
    let python = runs("python3", &["-c", "import psycopg"]).then(|| PathBuf::from("python3"));
    let Some(python) = require(test, "python3 with psycopg", python) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    s.sql("CREATE QUERY pages AS SELECT page, count(*) AS n FROM clicks GROUP BY page WINDOW 10s")
        .await;
    http_rows(&s, PULL, 8).await;
    let mut statements = vec![];
    for file in ["grafana.sql", "metabase.sql", "pgjdbc.sql"] {
        for st in client_statements(file) {
            statements.push((file, st));
        }
    }
    assert!(statements.len() >= 15, "{statements:?}");
    let input: Vec<Value> = statements
        .iter()
        .map(|(_, st)| {
            serde_json::json!({
                "sql": if st.extended { numbered(&st.sql) } else { st.sql.clone() },
                "extended": st.extended,
                "bind": st.bind,
            })
        })
        .collect();
    // The simple protocol is libpq's PQexec, the extended PQexecParams
    // (Parse, Bind, Describe, Execute) with the values untyped, as text.
    let script = r#"
import json, sys, psycopg
from psycopg import pq
out = []
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="runnel", dbname="runnel", autocommit=True) as c:
    for st in json.load(sys.stdin):
        sql = st["sql"].encode()
        if st["extended"]:
            r = c.pgconn.exec_params(sql, [str(v).encode() for v in st["bind"]])
        else:
            r = c.pgconn.exec_(sql)
        if r.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY):
            cells = [[None if r.get_value(i, j) is None else r.get_value(i, j).decode()
                      for j in range(r.nfields)] for i in range(r.ntuples)]
            out.append({"ok": True, "rows": cells})
        else:
            out.append({"ok": False, "error": (r.error_message or b"").decode()})
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script, &s.pg_port.unwrap().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut failures = vec![];
    for ((file, st), answer) in statements.iter().zip(&answers) {
        let first_line: String = st.sql.chars().take(60).collect();
        if answer["ok"] != true {
            failures.push(format!("{file}: {first_line}: {}", answer["error"]));
            continue;
        }
        let cells: Vec<&str> = answer["rows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().filter_map(Value::as_str))
            .collect();
        for want in &st.expect {
            if !cells.contains(&want.as_str()) {
                failures.push(format!("{file}: {first_line}: no {want} in {cells:?}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
