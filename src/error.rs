//! Runnel's error type and `Result` alias.
//!
//! Every fallible public function returns [`Result`]. Errors caused by the
//! caller (bad SQL, unknown names, bad parameters) are distinguished from
//! internal failures so the HTTP layer can map them to 4xx and 5xx in one
//! place ([`Error::status`]).
//!
//! ```
//! use runnel::error::Error;
//! let e = Error::sql("Expected: an expression", Some((1, 8)));
//! assert_eq!(e.status(), 400);
//! assert_eq!(e.location(), Some((1, 8)));
//! ```

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// Result alias used throughout Runnel.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// All errors Runnel reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement that does not parse or plan; `location` is (line, column), 1-based.
    #[error("{message}")]
    Sql {
        /// What is wrong.
        message: String,
        /// Where in the statement, when known.
        location: Option<(u64, u64)>,
    },
    /// A stream, table or query that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (name taken, object in use).
    #[error("{0}")]
    Conflict(String),
    /// A malformed request parameter or body.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// A request the server refuses to act on whoever sends it: a foreign
    /// `Host` or a cross-origin mutation.
    #[error("{0}")]
    Forbidden(String),
    /// The request body is larger than the server accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A valid request whose work exceeds a server limit (memory, rows,
    /// roll-up range): the caller must ask for less.
    #[error("{0}")]
    LimitExceeded(String),
    /// The server is at capacity for this kind of request; retry later.
    #[error("{0}")]
    Busy(String),
    /// The store cannot be reached for now (PostgreSQL restarting or cut
    /// off, SQLite busy or its disk full); queries pause and retry.
    #[error("the store is unavailable: {0}; retrying")]
    Unavailable(String),
    /// Query execution failed inside DataFusion or arrow.
    #[error("execution error: {0}")]
    Execution(String),
    /// The SQLite store failed.
    #[error("store error: {0}")]
    Store(#[from] rusqlite::Error),
    /// The PostgreSQL store failed.
    #[error("store error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Kafka client failure.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// I/O failure.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A SQL error with an optional (line, column).
    pub fn sql(message: impl Into<String>, location: Option<(u64, u64)>) -> Self {
        Error::Sql {
            message: message.into(),
            location,
        }
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            Error::Sql { .. } | Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::PayloadTooLarge(_) => 413,
            Error::Conflict(_) => 409,
            Error::LimitExceeded(_) => 422,
            Error::Busy(_) | Error::Unavailable(_) => 503,
            Error::Execution(_)
            | Error::Store(_)
            | Error::Postgres(_)
            | Error::Kafka(_)
            | Error::Io(_) => 500,
        }
    }

    /// A short machine-readable code for the JSON error shape.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Sql { .. } => "sql_error",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::LimitExceeded(_) => "limit_exceeded",
            Error::Busy(_) => "busy",
            Error::Unavailable(_) => "store_unavailable",
            Error::Execution(_) => "execution_error",
            Error::Store(_) | Error::Postgres(_) => "store_error",
            Error::Kafka(_) => "kafka_error",
            Error::Io(_) => "io_error",
        }
    }

    /// Whether this is the store being unavailable for now, which a query
    /// waits out rather than fails on.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// (line, column) of a SQL error, when known.
    pub fn location(&self) -> Option<(u64, u64)> {
        match self {
            Error::Sql { location, .. } => *location,
            _ => None,
        }
    }
}

/// The message a panic carried (`unknown panic` when it is not text).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// DataFusion errors are classified by their root cause: what the SQL asked
/// for (planning, schema, a value that does not cast or divides by zero) is
/// the caller's mistake; exhausted memory is a limit; the rest is internal.
impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        let root = e.find_root();
        let message = root.strip_backtrace();
        match root {
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::SQL(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_)
            | DataFusionError::Execution(_) => Error::BadRequest(message),
            DataFusionError::ArrowError(a, _) if caller_arrow_error(a) => {
                Error::BadRequest(message)
            }
            DataFusionError::ResourcesExhausted(_) => Error::LimitExceeded(message),
            _ => Error::Execution(e.strip_backtrace()),
        }
    }
}

/// Arrow errors a query's values cause rather than a fault of the server.
fn caller_arrow_error(e: &datafusion::arrow::error::ArrowError) -> bool {
    use datafusion::arrow::error::ArrowError as A;
    matches!(
        e,
        A::CastError(_) | A::ParseError(_) | A::DivideByZero | A::ArithmeticOverflow(_)
    )
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::Execution(e.to_string())
    }
}
/// Turns a sqlparser error into a located Runnel error.
pub fn parser_error(e: ParserError) -> Error {
    let msg = match &e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        other => other.to_string(),
    };
    let location = parse_location(&msg);
    let message = match msg.find(" at Line: ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    Error::sql(message, location)
}

fn parse_location(msg: &str) -> Option<(u64, u64)> {
    let i = msg.find("Line: ")?;
    let rest = &msg[i + 6..];
    let line: u64 = rest.split(',').next()?.trim().parse().ok()?;
    let j = rest.find("Column: ")?;
    let col: String = rest[j + 8..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((line, col.parse().ok()?))
}
