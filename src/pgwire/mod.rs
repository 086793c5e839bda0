//! PostgreSQL's wire protocol: psql, Grafana, Metabase and PostgreSQL
//! drivers connect to Runnel directly (`runnel serve --pg-listen ADDR`).
//!
//! This file holds the listener and TLS; [`auth`] decides who may connect
//! and what a session may do, [`query`] runs statements (simple and
//! extended protocol) through the server's statement execution, [`params`]
//! handles statement text and bound parameters, [`encode`] writes answers
//! and errors in PostgreSQL's types and SQLSTATEs, and [`catalog`] answers
//! `pg_catalog` and `information_schema` with the functions of
//! [`functions`], after [`rewrite`] puts a catalog query in DataFusion's SQL.
//!
//! ```text
//! runnel serve --pg-listen 127.0.0.1:5433
//! psql -h 127.0.0.1 -p 5433 -c 'SHOW QUERIES'
//! ```

pub mod auth;
pub mod catalog;
pub mod encode;
pub mod functions;
pub mod params;
pub mod query;
pub mod rewrite;

use std::path::Path;
use std::sync::Arc;

use pgwire::api::PgWireServerHandlers;
use pgwire::api::auth::StartupHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
pub use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls::ServerConfig;
use pgwire::tokio::tokio_rustls::rustls::pki_types::pem::PemObject;
use pgwire::tokio::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::App;

/// The handlers every connection shares.
struct Handlers {
    backend: Arc<query::Backend>,
    startup: Arc<auth::Startup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// A TLS acceptor for the PEM certificate chain `cert` and private key `key`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        Error::BadRequest(format!("PostgreSQL TLS: {}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(pgwire::tokio::tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(cert, &e))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A bound PostgreSQL listener, with its TLS when configured.
pub struct Listener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// Binds `--pg-listen` (and loads its TLS certificate) when configured, so
/// that a taken port fails the start before anything runs.
pub async fn bind(config: &Config) -> Result<Option<Listener>> {
    let Some(addr) = &config.pg_listen else {
        return Ok(None);
    };
    let tls = match &config.pg_tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::BadRequest(format!("--pg-listen {addr}: {e}")))?;
    Ok(Some(Listener { listener, tls }))
}

/// Starts serving the PostgreSQL protocol on `listener` and says where.
pub fn start(app: &Arc<App>, listener: Option<Listener>) -> Option<std::net::SocketAddr> {
    let Listener { listener, tls } = listener?;
    let addr = listener.local_addr().ok()?;
    let tls_note = if tls.is_some() { " (TLS)" } else { "" };
    println!("runnel accepting PostgreSQL connections on {addr}{tls_note}");
    tokio::spawn(serve(app.clone(), listener, tls));
    Some(addr)
}

/// Serves PostgreSQL connections on `listener` until the task is dropped.
pub async fn serve(app: Arc<App>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let handlers = Arc::new(Handlers {
        startup: Arc::new(auth::Startup::new(
            app.config.token.clone(),
            app.config.protect_reads,
        )),
        backend: Arc::new(query::Backend::new(app)),
    });
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("PostgreSQL listener: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handlers, tls) = (handlers.clone(), tls.clone());
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!(%peer, "PostgreSQL connection: {e}");
            }
        });
    }
}
