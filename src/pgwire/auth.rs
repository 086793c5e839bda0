//! Who may connect over the PostgreSQL protocol, and what a session may do.
//!
//! Without `--token` every connection is accepted with full rights, as the
//! HTTP API accepts every call. With a token the password is the token:
//!
//! - with `--protect-reads`, the client proves it knows the token through
//!   SCRAM-SHA-256 (the token never crosses the wire); a wrong password is
//!   `28P01 invalid_password` and the connection ends;
//! - without it, reads stay open as over HTTP: the password is asked in
//!   cleartext (as libpq's `password` method), the token opens a full
//!   session and any other password a read-only one, where statements that
//!   change the catalog get `42501 insufficient_privilege`.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::ClientInfo;
use pgwire::api::auth::mechanism::{AuthMechanism, AuthMechanismFactory, AuthState};
use pgwire::api::auth::sasl::SaslMechanisms;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every statement.
    Full,
    /// Statements that only read (pull queries, SHOW, DESCRIBE, EXPLAIN).
    Read,
}

/// The access of `client`'s session (full unless authentication said less).
pub fn access(client: &(impl ClientInfo + ?Sized)) -> Access {
    client
        .session_extensions()
        .get::<Access>()
        .map_or(Access::Full, |a| *a)
}

/// The server version clients are told: the PostgreSQL release whose
/// protocol and catalog Runnel answers as, then Runnel's own.
pub const SERVER_VERSION: &str = concat!("16.6 (Runnel ", env!("CARGO_PKG_VERSION"), ")");

/// Authenticates connections (see the module documentation).
pub struct Startup {
    driver: AuthDriver<DefaultServerParameterProvider>,
    factory: Box<dyn AuthMechanismFactory>,
}

impl Startup {
    /// The handler for a server with `token`, reads protected or not.
    pub fn new(token: Option<String>, protect_reads: bool) -> Self {
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = SERVER_VERSION.to_string();
        params.is_superuser = false;
        let factory: Box<dyn AuthMechanismFactory> = match token {
            None => Box::new(Trust),
            Some(token) if protect_reads => {
                let source = Arc::new(TokenSource { token });
                Box::new(SaslMechanisms::new(vec![Arc::new(ScramAuth::new(source))]))
            }
            Some(token) => Box::new(TokenPassword {
                token: Arc::new(token),
            }),
        };
        Startup {
            driver: AuthDriver::new(params),
            factory,
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let mechanism = self.factory.create();
                self.driver.begin_authentication(client, mechanism).await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.driver.advance_authentication(client, message).await?
            }
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated { final_message, .. } => {
                self.driver
                    .complete_authentication(client, final_message)
                    .await
            }
        }
    }
}

/// No token: everyone is let in.
struct Trust;

impl AuthMechanismFactory for Trust {
    fn create(&self) -> Box<dyn AuthMechanism> {
        Box::new(Trust)
    }
}

#[async_trait]
impl AuthMechanism for Trust {
    async fn begin(&mut self, _: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<AuthState> {
        Ok(AuthState::Ok {
            final_message: None,
            identity: None,
        })
    }

    async fn next(
        &mut self,
        _: &(dyn ClientInfo + Send + Sync),
        _: PasswordMessageFamily,
    ) -> PgWireResult<AuthState> {
        Ok(AuthState::Ok {
            final_message: None,
            identity: None,
        })
    }
}

/// Reads open: a cleartext password, the token for full rights.
struct TokenPassword {
    token: Arc<String>,
}

impl AuthMechanismFactory for TokenPassword {
    fn create(&self) -> Box<dyn AuthMechanism> {
        Box::new(TokenPassword {
            token: self.token.clone(),
        })
    }
}

#[async_trait]
impl AuthMechanism for TokenPassword {
    async fn begin(&mut self, _: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<AuthState> {
        Ok(AuthState::InProgress(Authentication::CleartextPassword))
    }

    async fn next(
        &mut self,
        client: &(dyn ClientInfo + Send + Sync),
        message: PasswordMessageFamily,
    ) -> PgWireResult<AuthState> {
        let given = message.into_password()?.password;
        let access = match constant_time_eq(given.as_bytes(), self.token.as_bytes()) {
            true => Access::Full,
            false => Access::Read,
        };
        client.session_extensions().insert(access);
        Ok(AuthState::Ok {
            final_message: None,
            identity: None,
        })
    }
}

/// Reads protected: SCRAM-SHA-256 against the token.
#[derive(Debug)]
struct TokenSource {
    token: String,
}

/// Salt of the token's SCRAM secret: the token is the only password, so a
/// fixed salt reveals nothing a per-user salt would hide.
const SALT: &[u8] = b"runnel-pgwire-token";

#[async_trait]
impl AuthSource for TokenSource {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        let salted = gen_salted_password(&self.token, SALT, SCRAM_ITERATIONS);
        Ok(Password::new(Some(SALT.to_vec()), salted))
    }
}

const SCRAM_ITERATIONS: usize = pgwire::api::auth::sasl::scram::SCRAM_ITERATIONS;

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
