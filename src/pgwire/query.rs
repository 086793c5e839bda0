//! Statements over the PostgreSQL protocol, simple and extended: each goes
//! to the statement execution `POST /sql` uses ([`App::execute_statement`]),
//! except what only a PostgreSQL session means (SET, BEGIN/COMMIT, SHOW of
//! a setting) and catalog queries ([`super::catalog`]).
//!
//! In the extended protocol bound parameters are written into the
//! statement as SQL literals of their types ([`super::params`]). A portal
//! described before it runs (psycopg, node-postgres and JDBC all do) is run
//! at Describe, when its columns are needed, and its answer is kept for
//! the Execute that follows.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DescribePortalResponse, DescribeStatementResponse, Response, Tag};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::response::NoticeResponse;

use super::auth::{Access, access};
use super::encode::{Rows, arrow_rows, error_info, fields, json_rows, pg_error, response};
use super::{catalog, params};
use crate::server::{Answer, App};
use crate::sql::parse_sql;

/// What one statement answered.
#[derive(Debug, Clone)]
enum Outcome {
    /// Rows.
    Rows(Rows),
    /// A command's tag, with what the client should be told.
    Command(String, Vec<String>),
    /// BEGIN.
    Begin,
    /// COMMIT or ROLLBACK (the tag).
    End(String),
    /// Nothing but comments (pgx's ping is `-- ping`).
    Empty,
}

/// A described statement's answer, kept for the Execute that follows it
/// (drivers send both in one round trip); an Execute later than
/// [`DESCRIBED_FRESH`] runs the statement again, so a statement prepared
/// once and executed later reads the results as they are then.
#[derive(Default)]
struct Described(Mutex<Option<(String, Outcome, Instant)>>);

/// How long a described statement's answer stands in for its Execute.
const DESCRIBED_FRESH: Duration = Duration::from_secs(1);

/// The handler of every connection.
pub struct Backend {
    app: Arc<App>,
    parser: Arc<NoopQueryParser>,
}

impl Backend {
    /// A handler running statements on `app`.
    pub fn new(app: Arc<App>) -> Self {
        Backend {
            app,
            parser: Arc::new(NoopQueryParser::new()),
        }
    }

    /// Runs one statement (`sql`, without its `;`).
    async fn run(&self, access: Access, sql: &str) -> Result<Outcome, Box<ErrorInfo>> {
        let words: Vec<String> = sql
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty())
            .take(2)
            .map(str::to_ascii_lowercase)
            .collect();
        let first = words.first().map(String::as_str).unwrap_or("");
        let second = words.get(1).map(String::as_str).unwrap_or("");
        let command = |tag: &str| Ok(Outcome::Command(tag.to_string(), vec![]));
        if sql
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
        {
            return Ok(Outcome::Empty);
        }
        match first {
            "begin" | "start" => return Ok(Outcome::Begin),
            "commit" | "end" => return Ok(Outcome::End("COMMIT".into())),
            "rollback" | "abort" => return Ok(Outcome::End("ROLLBACK".into())),
            "set" => return command("SET"),
            "reset" => return command("RESET"),
            "discard" => return command("DISCARD ALL"),
            "deallocate" => return command("DEALLOCATE"),
            "close" => return command("CLOSE CURSOR"),
            "listen" | "unlisten" => return command(&first.to_ascii_uppercase()),
            "show" if !matches!(second, "streams" | "queries" | "tables") => {
                return catalog::show(second.trim_matches('"')).map(Outcome::Rows);
            }
            _ => {}
        }
        if catalog::is_catalog_query(sql) {
            return catalog::query(&self.app, sql)
                .await
                .map(Outcome::Rows)
                .map_err(|e| error_info(&e, sql));
        }
        let parsed = parse_sql(sql).map_err(|e| error_info(&e, sql))?;
        let mut last = Outcome::Command("EMPTY".into(), vec![]);
        for p in parsed {
            let changes = self
                .app
                .changes_catalog(&p)
                .map_err(|e| error_info(&e, sql))?;
            if changes && access == Access::Read {
                return Err(pg_error(
                    "42501",
                    "this statement changes Runnel's catalog: connect with the server's token as the password",
                ));
            }
            let answer = self
                .app
                .execute_statement(&p)
                .await
                .map_err(|e| error_info(&e, sql))?;
            last = match answer {
                Answer::Rows {
                    schema, batches, ..
                } => Outcome::Rows(arrow_rows(&schema, &batches).map_err(|e| error_info(&e, sql))?),
                Answer::Json(v) => match v["kind"].as_str().unwrap_or("") {
                    "rows" => Outcome::Rows(json_rows(&v)),
                    kind => {
                        let mut notices: Vec<String> = v["message"]
                            .as_str()
                            .map(String::from)
                            .into_iter()
                            .collect();
                        for key in ["warnings", "notes"] {
                            if let Some(ws) = v[key].as_array() {
                                notices
                                    .extend(ws.iter().filter_map(|w| w.as_str().map(String::from)));
                            }
                        }
                        if let Some(ns) = v["query"]["notes"].as_array() {
                            notices.extend(ns.iter().filter_map(|w| w.as_str().map(String::from)));
                        }
                        notices.dedup();
                        Outcome::Command(kind.replace('_', " ").to_ascii_uppercase(), notices)
                    }
                },
            };
        }
        Ok(last)
    }

    /// Sends `outcome`'s notices, then answers it as a response in `format`.
    async fn respond<C>(client: &mut C, outcome: Outcome, format: &Format) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(match outcome {
            Outcome::Rows(rows) => Response::Query(response(rows, format)?),
            Outcome::Command(tag, notices) => {
                for n in notices {
                    let notice = ErrorInfo::new("NOTICE".into(), "00000".into(), n);
                    client
                        .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                            notice,
                        )))
                        .await?;
                }
                Response::Execution(Tag::new(&tag))
            }
            Outcome::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Outcome::End(tag) => Response::TransactionEnd(Tag::new(&tag)),
            Outcome::Empty => Response::EmptyQuery,
        })
    }

    /// Whether running `sql` at Describe is safe: it only reads.
    fn reads_only(&self, sql: &str) -> bool {
        let first = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if first == "show" || catalog::is_catalog_query(sql) {
            return true;
        }
        if !matches!(
            first.as_str(),
            "select" | "with" | "explain" | "describe" | "values"
        ) {
            return false;
        }
        match parse_sql(sql) {
            Ok(ps) => ps
                .iter()
                .all(|p| self.app.changes_catalog(p).is_ok_and(|c| !c)),
            // Running it only reports the error.
            Err(_) => true,
        }
    }
}

/// Splits a simple query into statements at top-level `;`.
fn statements(sql: &str) -> Vec<&str> {
    params::split(sql)
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect()
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let access = access(client);
        let mut out = Vec::new();
        for stmt in statements(query) {
            match self.run(access, stmt).await {
                Ok(outcome) => {
                    out.push(Self::respond(client, outcome, &Format::UnifiedText).await?)
                }
                Err(mut e) => {
                    // Positions count from the start of the whole query text.
                    let before = query[..offset_in(query, stmt)].chars().count();
                    e.position = e
                        .position
                        .and_then(|p| p.parse::<usize>().ok())
                        .map(|p| (p + before).to_string());
                    out.push(Response::Error(e));
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The byte offset of `part` (a slice of `whole`) in `whole`.
fn offset_in(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = params::bind(portal)?;
        let described = client
            .session_extensions()
            .get_or_insert_with(Described::default);
        let kept = described.0.lock().expect("lock").take();
        let outcome = match kept {
            Some((s, outcome, at)) if s == sql && at.elapsed() < DESCRIBED_FRESH => Ok(outcome),
            _ => {
                self.run(access(client), sql.trim_end_matches([';', ' ', '\n']))
                    .await
            }
        };
        match outcome {
            Ok(o) => Self::respond(client, o, &portal.result_column_format).await,
            Err(e) => Err(PgWireError::UserError(e)),
        }
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let n = params::count(&stmt.statement);
        let types = (0..n)
            .map(|i| {
                stmt.parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let sql = params::with_nulls(&stmt.statement);
        let mut columns = vec![];
        if self.reads_only(&sql)
            && let Ok(Outcome::Rows(rows)) =
                self.run(access(client), sql.trim_end_matches(';')).await
        {
            columns = fields(&rows, &Format::UnifiedBinary);
            if n == 0 {
                let described = client
                    .session_extensions()
                    .get_or_insert_with(Described::default);
                *described.0.lock().expect("lock") =
                    Some((sql, Outcome::Rows(rows), Instant::now()));
            }
        }
        Ok(DescribeStatementResponse::new(types, columns))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = params::bind(portal)?;
        if !self.reads_only(&sql) {
            return Ok(DescribePortalResponse::new(vec![]));
        }
        let outcome = self
            .run(access(client), sql.trim_end_matches([';', ' ', '\n']))
            .await
            .map_err(PgWireError::UserError)?;
        let columns = match &outcome {
            Outcome::Rows(rows) => fields(rows, &portal.result_column_format),
            _ => vec![],
        };
        let described = client
            .session_extensions()
            .get_or_insert_with(Described::default);
        *described.0.lock().expect("lock") = Some((sql, outcome, Instant::now()));
        Ok(DescribePortalResponse::new(columns))
    }
}
