//! Test helpers: a `TestServer` running the real `runnel` binary on port 0.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub mod feed;
pub mod oracle;
pub mod postgres;
pub mod sse;

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `runnel serve` binary, started on a free port.
pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub data_dir: PathBuf,
    /// The PostgreSQL protocol's port, when started with `--pg-listen`.
    pub pg_port: Option<u16>,
    client: reqwest::Client,
}

impl TestServer {
    /// Starts `runnel serve` on `data_dir` with `brokers` and waits until it listens.
    pub fn start(data_dir: &Path, brokers: &str) -> Self {
        Self::start_with(data_dir, brokers, &[])
    }

    /// Like [`start`](Self::start) with extra environment variables.
    pub fn start_with(data_dir: &Path, brokers: &str, env: &[(&str, &str)]) -> Self {
        Self::start_args(data_dir, brokers, env, &[])
    }

    /// Like [`start_with`](Self::start_with) with extra `runnel serve` flags.
    pub fn start_args(data_dir: &Path, brokers: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_logged(data_dir, brokers, env, args, None)
    }

    /// Like [`start_args`](Self::start_args), writing the server's log
    /// (stderr) to `log` when given.
    pub fn start_logged(
        data_dir: &Path,
        brokers: &str,
        env: &[(&str, &str)],
        args: &[&str],
        log: Option<&Path>,
    ) -> Self {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        };
        // Measurements (ignored tests) may start another build's binary.
        let bin = std::env::var("RUNNEL_TEST_BIN");
        let mut child = Command::new(bin.as_deref().unwrap_or(env!("CARGO_BIN_EXE_runnel")))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--brokers",
                brokers,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .env("RUNNEL_LOG", "warn")
            .env_remove("RUNNEL_CONFIG")
            .env_remove("RUNNEL_TOKEN")
            .env_remove("RUNNEL_ALLOW_HOSTS")
            .env_remove("RUNNEL_ALLOW_CONNECT")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start runnel");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("runnel listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        let pg_port = args.contains(&"--pg-listen").then(|| {
            let mut pg = String::new();
            reader.read_line(&mut pg).unwrap();
            let addr = pg
                .trim()
                .strip_prefix("runnel accepting PostgreSQL connections on ")
                .unwrap_or_else(|| panic!("unexpected second line: {pg:?}"));
            let addr = addr.split(' ').next().unwrap();
            addr.rsplit(':').next().unwrap().parse().unwrap()
        });
        TestServer {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            pg_port,
            client: reqwest::Client::new(),
        }
    }

    /// Stops the server the way Ctrl-C does, letting it checkpoint.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not stop on SIGINT");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL: no checkpoint, no cleanup.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        Self::send(self.client.post(url).body(body.to_string())).await
    }

    pub async fn post_auth(&self, path: &str, body: &str, token: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        Self::send(
            self.client
                .post(url)
                .bearer_auth(token)
                .body(body.to_string()),
        )
        .await
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A request to `path` with extra headers (`Host`, `Origin`, ...).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::send(req).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::send(self.client.get(format!("{}{path}", self.url))).await
    }

    /// The body of `GET path` as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        let r = self.client.get(format!("{}{path}", self.url)).send();
        r.await.unwrap().text().await.unwrap()
    }

    /// The end of the last window query `name` has closed, in ms (`None`
    /// before the first).
    pub async fn last_window_end(&self, name: &str) -> Option<i64> {
        let (_, q) = self.get(&format!("/queries/{name}")).await;
        let t = q["last_window_end"].as_str()?;
        Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis(),
        )
    }

    pub async fn client_delete(&self, path: &str) -> (u16, Value) {
        Self::send(self.client.delete(format!("{}{path}", self.url))).await
    }

    pub async fn sql(&self, sql: &str) -> Value {
        let (status, v) = self.post("/sql", sql).await;
        assert_eq!(status, 200, "{sql}: {v}");
        v
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
