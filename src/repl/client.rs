//! A blocking client for Runnel's public HTTP API, as used by the REPL.
//!
//! Every call can be abandoned with Ctrl-C: the request runs on a helper
//! thread and the caller waits on it while watching the [`Interrupt`] flag.
//!
//! ```no_run
//! use runnel::repl::client::{Client, Interrupt};
//! let client = Client::new("http://127.0.0.1:8080", None, Interrupt::default()).unwrap();
//! for r in client.sql("SHOW STREAMS").unwrap() {
//!     println!("{} rows", r.rows.len());
//! }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::RequestBuilder;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Set when the user presses Ctrl-C outside line editing.
///
/// Line editing runs the terminal in raw mode, where Ctrl-C is an ordinary
/// key; everywhere else it is a SIGINT, which [`Interrupt::install`] turns
/// into this flag instead of letting it kill the process (so a running
/// `\watch`, a slow request or the pager can be stopped on its own).
#[derive(Clone, Default, Debug)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Routes SIGINT to this flag for the rest of the process's life.
    pub fn install(&self) {
        let flag = self.0.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let listen = async move {
            let mut sig =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ready_tx.send(());
                        return;
                    }
                };
            let _ = ready_tx.send(());
            while sig.recv().await.is_some() {
                flag.store(true, Ordering::SeqCst);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(listen);
            }
            Err(_) => {
                // Not inside a runtime (a library caller): give the listener one of its own.
                std::thread::spawn(move || {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        rt.block_on(listen);
                    }
                });
            }
        }
        // Wait until the handler is registered so an early Ctrl-C cannot kill us.
        let _ = ready_rx.recv_timeout(Duration::from_secs(2));
    }

    /// Whether Ctrl-C was pressed since the last [`Interrupt::clear`].
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Forgets an earlier Ctrl-C.
    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Raises the flag (as SIGINT does).
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Sleeps for `d`, returning early (with `true`) on Ctrl-C.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = std::time::Instant::now() + d;
        loop {
            if self.is_set() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= end {
                return false;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No HTTP exchange happened (refused, unresolvable, timed out).
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The innermost cause, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// The server answered with its error shape.
    Server {
        /// HTTP status.
        status: u16,
        /// Machine-readable code (`sql_error`, `not_found`, ...).
        code: String,
        /// Human-readable message.
        message: String,
        /// 1-based line in the statement, when known.
        line: Option<u64>,
        /// 1-based column in that line, when known.
        column: Option<u64>,
    },
    /// The answer was not what the API documents (e.g. a proxy's HTML page).
    Protocol(String),
    /// The user pressed Ctrl-C while waiting.
    Interrupted,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unreachable { url, reason } => {
                write!(f, "could not connect to the server at {url}: {reason}")
            }
            ApiError::Server { message, .. } => f.write_str(message),
            ApiError::Protocol(m) => f.write_str(m),
            ApiError::Interrupted => f.write_str("canceled by Ctrl-C"),
        }
    }
}

impl std::error::Error for ApiError {}

/// A column name and its type.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Name.
    pub name: String,
    /// Type (SQL as declared for streams, Arrow for results).
    #[serde(rename = "type", default)]
    pub data_type: String,
}

/// One entry of `POST /sql`'s `results`.
#[derive(Debug, Clone, Deserialize)]
pub struct StatementResult {
    /// The statement as the server saw it.
    #[serde(default)]
    pub statement: String,
    /// `rows`, `create_stream`, `create_query`, `drop_query` or `drop_stream`.
    pub kind: String,
    /// What happened, for statements without rows.
    #[serde(default)]
    pub message: Option<String>,
    /// Result columns (`rows` only).
    #[serde(default)]
    pub columns: Vec<ColumnInfo>,
    /// Result rows, in column order (`rows` only).
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    /// The query a `create_query` registered.
    #[serde(default)]
    pub query: Option<QueryInfo>,
}

/// A query's live counters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Counters {
    /// Records read from the stream.
    pub records_in: u64,
    /// Records dropped for arriving after their window closed.
    pub late_records: u64,
    /// Records that failed to decode.
    pub bad_records: u64,
    /// Windows closed so far.
    pub windows_closed: u64,
    /// Result rows written.
    pub rows_emitted: u64,
}

/// `GET /queries/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct QueryInfo {
    /// Identifier (same as the name).
    pub id: String,
    /// Name, also the results table.
    pub name: String,
    /// Its `CREATE QUERY` statement.
    pub sql: String,
    /// The stream it reads.
    pub stream: String,
    /// `starting`, `waiting_for_topic`, `running`, `stopped` or `failed`.
    pub status: String,
    /// Window description, e.g. `TUMBLING 10s`.
    pub window: String,
    /// Output columns.
    pub columns: Vec<ColumnInfo>,
    /// Live counters.
    pub counters: Counters,
    /// Current watermark, when one exists.
    pub watermark: Option<String>,
    /// End of the last closed window.
    pub last_window_end: Option<String>,
    /// Why it failed (status `failed`).
    pub error: Option<String>,
    /// The plan (single-query endpoint only).
    pub plan: Option<String>,
}

/// `GET /streams/{name}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamInfo {
    /// Name.
    pub name: String,
    /// Kafka topic.
    pub topic: String,
    /// Payload format.
    pub format: String,
    /// Event-time column (arrival time when absent).
    pub event_time: Option<String>,
    /// Watermark delay in ms.
    pub watermark_delay_ms: Option<i64>,
    /// `earliest` or `latest`.
    pub start: Option<String>,
    /// Declared columns.
    pub columns: Vec<ColumnInfo>,
    /// The `WITH (...)` options as written.
    pub options: serde_json::Map<String, Value>,
    /// Queries reading it.
    pub queries: Vec<String>,
    /// Records read (the most any of its queries read).
    pub records_in: u64,
    /// Records that failed to decode.
    pub bad_records: u64,
}

/// One page of `GET /queries/{id}/results`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResultsPage {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows as objects keyed by column name.
    pub rows: Vec<serde_json::Map<String, Value>>,
    /// Pass back as `after` to get only rows written since; empty when there are none.
    pub cursor: String,
}

#[derive(Deserialize)]
struct SqlResponse {
    results: Vec<StatementResult>,
}

#[derive(Deserialize)]
struct QueriesResponse {
    queries: Vec<QueryInfo>,
}

#[derive(Deserialize)]
struct StreamsResponse {
    streams: Vec<StreamInfo>,
}

/// The server's base URL plus an HTTP client.
#[derive(Clone, Debug)]
pub struct Client {
    base: Url,
    http: reqwest::blocking::Client,
    token: Option<String>,
    interrupt: Interrupt,
}

/// Normalises a server address: adds `http://` when no scheme is given and
/// rejects schemes this build cannot speak.
///
/// ```
/// use runnel::repl::client::parse_server;
/// assert_eq!(parse_server("localhost:8080").unwrap().as_str(), "http://localhost:8080/");
/// assert!(parse_server("ftp://x").is_err());
/// ```
pub fn parse_server(s: &str) -> Result<Url, String> {
    let s = s.trim();
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| format!("invalid server URL '{s}': {e}"))?;
    match url.scheme() {
        "http" => Ok(url),
        "https" => Err(format!(
            "invalid server URL '{s}': this build speaks plain http only; use http:// or a local TLS-terminating proxy"
        )),
        other => Err(format!(
            "invalid server URL '{s}': unsupported scheme '{other}'"
        )),
    }
}

/// The innermost cause of an error, which is where the useful words are
/// (`Connection refused`), rather than reqwest's `error sending request`.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Client {
    /// A client for the server at `server` (e.g. `http://127.0.0.1:8080`),
    /// sending `token` as a bearer token when given.
    pub fn new(server: &str, token: Option<String>, interrupt: Interrupt) -> Result<Self, String> {
        let base = parse_server(server)?;
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Pull queries can be slow; Ctrl-C is the way out, not a timeout.
            .timeout(None)
            .user_agent(concat!("runnel-sql/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot create an HTTP client: {}", root_cause(&e)))?;
        Ok(Client {
            base,
            http,
            token: token.filter(|t| !t.is_empty()),
            interrupt,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// Whether a bearer token is sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// Sends `req` on a helper thread and waits for the JSON answer, giving
    /// up on Ctrl-C (the server may still finish the work).
    fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        req: RequestBuilder,
    ) -> Result<T, ApiError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let url = self.url();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(exchange::<T>(req, &url));
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => return r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.interrupt.is_set() {
                        return Err(ApiError::Interrupted);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ApiError::Protocol("the request thread stopped".into()));
                }
            }
        }
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Result<Value, ApiError> {
        self.call(self.http.get(self.endpoint(&["healthz"])))
    }

    /// `POST /sql` with `statements`; one result per statement.
    pub fn sql(&self, statements: &str) -> Result<Vec<StatementResult>, ApiError> {
        let req = self
            .http
            .post(self.endpoint(&["sql"]))
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(statements.to_string());
        self.call::<SqlResponse>(req).map(|r| r.results)
    }

    /// `GET /streams`.
    pub fn streams(&self) -> Result<Vec<StreamInfo>, ApiError> {
        self.call::<StreamsResponse>(self.http.get(self.endpoint(&["streams"])))
            .map(|r| r.streams)
    }

    /// `GET /streams/{name}`.
    pub fn stream(&self, name: &str) -> Result<StreamInfo, ApiError> {
        self.call(self.http.get(self.endpoint(&["streams", name])))
    }

    /// `GET /queries`.
    pub fn queries(&self) -> Result<Vec<QueryInfo>, ApiError> {
        self.call::<QueriesResponse>(self.http.get(self.endpoint(&["queries"])))
            .map(|r| r.queries)
    }

    /// `GET /queries/{id}` (with its plan).
    pub fn query(&self, id: &str) -> Result<QueryInfo, ApiError> {
        self.call(self.http.get(self.endpoint(&["queries", id])))
    }

    /// `GET /queries/{id}/results?after=&limit=`.
    pub fn results(
        &self,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ResultsPage, ApiError> {
        let mut url = self.endpoint(&["queries", id, "results"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(a) = after.filter(|a| !a.is_empty()) {
                q.append_pair("after", a);
            }
            q.append_pair("limit", &limit.to_string());
        }
        self.call(self.http.get(url))
    }
}

/// One request/response exchange, mapped onto [`ApiError`].
fn exchange<T: DeserializeOwned>(req: RequestBuilder, base: &str) -> Result<T, ApiError> {
    let resp = req.send().map_err(|e| {
        if e.is_timeout() {
            ApiError::Unreachable {
                url: base.to_string(),
                reason: "timed out".into(),
            }
        } else if e.is_connect() || e.is_request() {
            ApiError::Unreachable {
                url: base.to_string(),
                reason: root_cause(&e),
            }
        } else {
            ApiError::Protocol(format!("request failed: {}", root_cause(&e)))
        }
    })?;
    let status = resp.status();
    let body = resp.bytes().map_err(|e| ApiError::Unreachable {
        url: base.to_string(),
        reason: format!(
            "connection lost while reading the answer: {}",
            root_cause(&e)
        ),
    })?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            ApiError::Protocol(format!(
                "unexpected answer from the server (HTTP {status}): {e}"
            ))
        });
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let err = &v["error"];
    match err["message"].as_str() {
        Some(message) => Err(ApiError::Server {
            status: status.as_u16(),
            code: err["code"].as_str().unwrap_or("error").to_string(),
            message: message.to_string(),
            line: err["line"].as_u64(),
            column: err["column"].as_u64(),
        }),
        None => {
            let text = String::from_utf8_lossy(&body);
            let snippet: String = text.trim().chars().take(200).collect();
            Err(ApiError::Protocol(if snippet.is_empty() {
                format!("the server answered HTTP {status}")
            } else {
                format!("the server answered HTTP {status}: {snippet}")
            }))
        }
    }
}
