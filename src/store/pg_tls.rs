//! TLS for the PostgreSQL store, following libpq's `sslmode`: `disable`,
//! `allow` and `prefer` (the default: TLS when the server offers it,
//! unverified), `require` (TLS or no connection; unverified unless
//! `sslrootcert` is given, which makes it `verify-ca`), `verify-ca` (the
//! server's certificate must chain to `sslrootcert`, or to the system's
//! roots) and `verify-full` (and name the host). tokio-postgres itself knows
//! only `disable`, `prefer` and `require`, so the URL it is given says
//! `require` for the verifying modes and the connector does the checking.
//!
//! ```
//! use runnel::store::pg_tls::{SslMode, split_tls};
//! let (url, tls) = split_tls("postgres://ann@db/r?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
//! assert_eq!(url, "postgres://ann@db/r?sslmode=require");
//! assert_eq!(tls.mode, SslMode::VerifyFull);
//! assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));
//! ```

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (`allow` too), without checks.
    Prefer,
    /// TLS or no connection, without checks.
    Require,
    /// TLS with a certificate chaining to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

/// The TLS settings of a store URL.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// How much TLS and checking.
    pub mode: SslMode,
    /// PEM file of the roots to trust (`sslrootcert`).
    pub root_cert: Option<String>,
}

fn mode(value: &str) -> Result<SslMode> {
    Ok(match value {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(Error::BadRequest(format!(
                "store: sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    })
}

/// What tokio-postgres is told for `mode`.
fn wire_mode(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    }
}

/// Takes `sslmode` and `sslrootcert` out of a store URL (or `key=value`
/// string) and returns the URL tokio-postgres understands with them.
pub fn split_tls(url: &str) -> Result<(String, TlsSettings)> {
    let mut tls = TlsSettings {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => tls.mode = mode(value)?,
            "sslrootcert" => tls.root_cert = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let url = if url.contains("://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v)? {
                kept.push(pair.to_string());
            }
        }
        kept.push(format!("sslmode={}", wire_mode(tls.mode)));
        format!("{base}?{}", kept.join("&"))
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v.trim_matches('\''))? {
                kept.push(pair.to_string());
            }
        }
        kept.push(format!("sslmode={}", wire_mode(tls.mode)));
        kept.join(" ")
    };
    Ok((url, tls))
}

/// The connector for `tls`: checks certificates only in the verifying
/// modes (or `require` with a root certificate, as libpq does).
pub fn connector(tls: &TlsSettings) -> Result<MakeTlsConnector> {
    let tls_error = |e: openssl::error::ErrorStack| Error::BadRequest(format!("store TLS: {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_error)?;
    if let Some(ca) = &tls.root_cert {
        builder.set_ca_file(ca).map_err(|e| {
            Error::BadRequest(format!("store TLS: sslrootcert '{ca}' cannot be read: {e}"))
        })?;
    }
    let verify = match tls.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require => tls.root_cert.is_some(),
        SslMode::Disable | SslMode::Prefer => false,
    };
    if !verify {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    let check_name = tls.mode == SslMode::VerifyFull;
    connector.set_callback(move |config, _| {
        config.set_verify_hostname(check_name);
        Ok(())
    });
    Ok(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_reach_tokio_postgres_as_it_knows_them() {
        let (url, tls) = split_tls("postgres://ann:pw@db/r").unwrap();
        assert_eq!(url, "postgres://ann:pw@db/r?sslmode=prefer");
        assert_eq!(tls.mode, SslMode::Prefer);
        let (url, tls) = split_tls("postgres://db/r?user=ann&sslmode=require").unwrap();
        assert_eq!(url, "postgres://db/r?user=ann&sslmode=require");
        assert_eq!(tls.mode, SslMode::Require);
        let (url, tls) = split_tls("host=db sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(url, "host=db sslmode=require");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some("/ca.pem"));
        let (url, _) = split_tls("postgres://db/r?sslmode=disable").unwrap();
        assert!(url.ends_with("sslmode=disable"), "{url}");
        let e = split_tls("postgres://db/r?sslmode=always").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("verify-full"), "{e}");
    }

    #[test]
    fn a_missing_root_certificate_is_named() {
        let tls = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let e = connector(&tls).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
