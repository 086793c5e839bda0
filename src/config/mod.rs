//! Server settings: command-line flags, `RUNNEL_*` environment variables and
//! an optional `runnel.toml`, in that order of precedence.
//!
//! ```
//! let c: runnel::config::FileConfig = toml::from_str("listen = '0.0.0.0:8080'\nbrokers = 'kafka:9092'").unwrap();
//! assert_eq!(c.brokers.as_deref(), Some("kafka:9092"));
//! ```

pub mod limits;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::connect::hosts::HostRules;
use crate::connect::kafka::{KafkaConn, KafkaProps};
use crate::error::{Error, Result};
use crate::model::duration::{parse_duration, parse_duration_or_zero};
use crate::model::{SourceKind, StreamDef};

/// Effective server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: String,
    /// Default Kafka bootstrap servers.
    pub brokers: String,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// The PostgreSQL store's URL; the embedded SQLite store when `None`.
    pub store: Option<String>,
    /// Cluster this server is a member of (needs the PostgreSQL store).
    pub cluster: Option<String>,
    /// Longest time between checkpoints while records flow.
    pub checkpoint_interval: Duration,
    /// Quiet time after which windows close on the wall clock.
    pub idle_after: Duration,
    /// Most partial-state rows (groups × open windows) one query may hold.
    pub max_state_rows: usize,
    /// How long closed windows' partial states are kept for roll-ups
    /// (zero keeps none).
    pub window_state_retention: Duration,
    /// How long late records are kept in each query's late table, by
    /// write time (zero keeps none: they are only counted).
    pub late_record_retention: Duration,
    /// Bearer token required for mutating calls when set.
    pub token: Option<String>,
    /// Require the token for reads too.
    pub protect_reads: bool,
    /// Directories whose files user SQL may read as file tables and file
    /// streams; none when empty (every file table and stream is refused).
    pub allow_files: Vec<PathBuf>,
    /// `Host` names accepted besides the listen address and loopback names
    /// (`name` for any port, `name:port` for one, `*` for any host).
    pub allow_hosts: Vec<String>,
    /// Bounds on the work of one request (see [`limits`]).
    pub limits: limits::Limits,
    /// Hosts (`host` for any port, `host:port` for one) streams may connect
    /// to besides `brokers`: their own brokers and socket sources.
    pub allow_connect: Vec<String>,
    /// librdkafka properties of every Kafka client (SASL, TLS, ...).
    pub kafka: KafkaProps,
    /// PostgreSQL wire protocol listen address; off when `None`.
    pub pg_listen: Option<String>,
    /// PEM certificate chain and private key for the PostgreSQL protocol's
    /// TLS (both or neither).
    pub pg_tls: Option<(PathBuf, PathBuf)>,
    /// Whether the queries over a Kafka stream share one reader (see
    /// `runtime::shared`); off, each reads with a consumer of its own
    /// (what `runnel bench --runs queries` compares with).
    pub shared_reads: bool,
    /// Records of its latest polls a shared reader keeps for queries that
    /// join a little behind it (zero keeps none).
    pub shared_read_keep: usize,
    /// Whether Runnel fetches Kafka records itself on plain connections
    /// (`source::kafka::wire`); off, librdkafka fetches them.
    pub own_fetch: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            brokers: "127.0.0.1:9092".into(),
            data_dir: PathBuf::from("runnel-data"),
            store: None,
            cluster: None,
            checkpoint_interval: Duration::from_secs(1),
            idle_after: Duration::from_secs(1),
            max_state_rows: 10_000_000,
            window_state_retention: Duration::from_secs(24 * 3600),
            late_record_retention: Duration::from_secs(24 * 3600),
            token: None,
            protect_reads: false,
            allow_files: Vec::new(),
            allow_hosts: Vec::new(),
            limits: Default::default(),
            allow_connect: Vec::new(),
            kafka: KafkaProps::default(),
            pg_listen: None,
            pg_tls: None,
            shared_reads: true,
            shared_read_keep: crate::runtime::shared::KEEP,
            own_fetch: true,
        }
    }
}

/// The optional `runnel.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// HTTP listen address.
    pub listen: Option<String>,
    /// Kafka bootstrap servers.
    pub brokers: Option<String>,
    /// Store directory.
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL store URL (`postgres://...`).
    pub store: Option<String>,
    /// Cluster name.
    pub cluster: Option<String>,
    /// Checkpoint interval, e.g. `1s`.
    pub checkpoint_interval: Option<String>,
    /// Idle time before wall-clock window close, e.g. `1s`.
    pub idle_after: Option<String>,
    /// Per-query state limit in partial-state rows.
    pub max_state_rows: Option<usize>,
    /// How long window states are kept for roll-ups, e.g. `24h` (`0s`: none).
    pub window_state_retention: Option<String>,
    /// How long late records are kept, e.g. `24h` (`0s`: none).
    pub late_record_retention: Option<String>,
    /// Require the token for reads too.
    pub protect_reads: Option<bool>,
    /// Directories file tables and file streams may read under.
    pub allow_files: Option<Vec<PathBuf>>,
    /// Extra accepted `Host` names, e.g. `["runnel.internal", "*"]`.
    pub allow_hosts: Option<Vec<String>>,
    /// Memory pull queries may use together, e.g. `256MB`.
    pub pull_memory: Option<String>,
    /// Most rows one pull query returns.
    pub pull_rows: Option<usize>,
    /// Most server-sent-event connections at once.
    pub max_sse: Option<usize>,
    /// Hosts streams may connect to, e.g. `["kafka-2:9092", "logs.internal"]`.
    pub allow_connect: Option<Vec<String>>,
    /// librdkafka properties, e.g. `"security.protocol" = "SASL_SSL"`.
    pub kafka: Option<BTreeMap<String, toml::Value>>,
    /// PostgreSQL wire protocol listen address, e.g. `127.0.0.1:5433`.
    pub pg_listen: Option<String>,
    /// PEM certificate chain for the PostgreSQL protocol's TLS.
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key for the PostgreSQL protocol's TLS.
    pub pg_tls_key: Option<PathBuf>,
    /// `false`: each query reads its stream with a consumer of its own.
    pub shared_reads: Option<bool>,
    /// Records a shared reader keeps for queries that join behind it.
    pub shared_read_keep: Option<usize>,
    /// `false`: librdkafka fetches Kafka records on plain connections too.
    pub own_fetch: Option<bool>,
}

impl FileConfig {
    /// Reads `path`; a missing file is an error only when `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Error::BadRequest(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(e) => Err(Error::BadRequest(format!("{}: {e}", path.display()))),
        }
    }

    /// Merges flags/env (`Some` wins; an empty store or cluster counts as
    /// unset; a non-empty `allow_files` replaces the file's list) over this
    /// file over defaults.
    pub fn resolve(
        self,
        listen: Option<String>,
        brokers: Option<String>,
        data_dir: Option<PathBuf>,
        store: Option<String>,
        cluster: Option<String>,
        allow_files: Vec<PathBuf>,
    ) -> Result<Config> {
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        let d = Config::default();
        Ok(Config {
            listen: listen.or(self.listen).unwrap_or(d.listen),
            brokers: brokers.or(self.brokers).unwrap_or(d.brokers),
            data_dir: data_dir.or(self.data_dir).unwrap_or(d.data_dir),
            store: set(store).or(set(self.store)),
            cluster: set(cluster).or(set(self.cluster)),
            checkpoint_interval: duration(
                "checkpoint_interval",
                self.checkpoint_interval,
                d.checkpoint_interval,
                parse_duration,
            )?,
            idle_after: duration("idle_after", self.idle_after, d.idle_after, parse_duration)?,
            max_state_rows: self.max_state_rows.unwrap_or(d.max_state_rows),
            // Zero keeps no window states at all.
            window_state_retention: duration(
                "window_state_retention",
                self.window_state_retention,
                d.window_state_retention,
                parse_duration_or_zero,
            )?,
            // Zero keeps no late records: they are only counted.
            late_record_retention: duration(
                "late_record_retention",
                self.late_record_retention,
                d.late_record_retention,
                parse_duration_or_zero,
            )?,
            token: None,
            protect_reads: self.protect_reads.unwrap_or(false),
            shared_reads: self.shared_reads.unwrap_or(d.shared_reads),
            shared_read_keep: self.shared_read_keep.unwrap_or(d.shared_read_keep),
            own_fetch: self.own_fetch.unwrap_or(d.own_fetch),
            allow_files: if allow_files.is_empty() {
                self.allow_files.unwrap_or_default()
            } else {
                allow_files
            }
            .into_iter()
            .filter(|d| !d.as_os_str().is_empty())
            .collect(),
            allow_hosts: self.allow_hosts.unwrap_or_default(),
            limits: limits::Limits::from_file(
                self.pull_memory.as_deref(),
                self.pull_rows,
                self.max_sse,
            )?,
            allow_connect: self.allow_connect.unwrap_or_default(),
            kafka: kafka_props(self.kafka.unwrap_or_default())?,
            pg_listen: self.pg_listen.filter(|l| !l.is_empty()),
            pg_tls: pg_tls(self.pg_tls_cert, self.pg_tls_key)?,
        })
    }
}

/// The `[kafka]` table as property strings (TOML numbers and booleans as
/// librdkafka writes them), checked for properties Runnel manages.
fn kafka_props(table: BTreeMap<String, toml::Value>) -> Result<KafkaProps> {
    let props = table
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            toml::Value::Integer(i) => Ok((k, i.to_string())),
            toml::Value::Float(f) => Ok((k, f.to_string())),
            toml::Value::Boolean(b) => Ok((k, b.to_string())),
            _ => Err(Error::BadRequest(format!(
                "[kafka] {k}: expected a string, number or boolean"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let props = KafkaProps::new(props);
    props.check_server("[kafka] in runnel.toml")?;
    Ok(props)
}

/// Applies the operator's connection settings from the environment and
/// flags over the file's: `RUNNEL_KAFKA_<PROP>` variables over `[kafka]`,
/// and a non-empty `allow_connect` list replacing the file's. Checks both.
pub fn apply_connect(
    config: &mut Config,
    allow_connect: Vec<String>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<()> {
    let allow_connect: Vec<String> = allow_connect
        .into_iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if !allow_connect.is_empty() {
        config.allow_connect = allow_connect;
    }
    for rule in &config.allow_connect {
        HostRules::validate(rule)?;
    }
    let env = KafkaProps::from_env(vars);
    env.check_server("RUNNEL_KAFKA_* variables")?;
    config.kafka = config.kafka.merged(&env);
    KafkaConn {
        brokers: String::new(),
        props: config.kafka.clone(),
        librdkafka_fetch: false,
    }
    .check()
    .map_err(|e| Error::BadRequest(format!("server-wide Kafka properties: {e}")))
}

/// Refuses to serve an address other hosts can reach without a token
/// (unless `no_auth` says the operator means it): anyone reaching it could
/// create queries and read results.
pub fn check_open_door(listen: &str, token: Option<&str>, no_auth: bool) -> Result<()> {
    if token.is_some() || no_auth {
        return Ok(());
    }
    use std::net::ToSocketAddrs;
    let loopback_only = listen
        .to_socket_addrs()
        .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    if loopback_only {
        return Ok(());
    }
    Err(Error::BadRequest(format!(
        "refusing to listen on {listen} without a token: other hosts could reach it and change queries or read results; \
         set --token (RUNNEL_TOKEN), listen on loopback (127.0.0.1), or pass --no-auth (RUNNEL_NO_AUTH=true) to run open on purpose"
    )))
}

/// The PostgreSQL protocol's certificate and key: both or neither.
pub fn pg_tls(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<(PathBuf, PathBuf)>> {
    let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    match (set(cert), set(key)) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err(Error::BadRequest(
            "PostgreSQL TLS needs both pg_tls_cert and pg_tls_key (--pg-tls-cert, --pg-tls-key)"
                .into(),
        )),
    }
}

/// The duration setting `key`, read by `parse` when set, else `default`.
fn duration(
    key: &str,
    value: Option<String>,
    default: Duration,
    parse: fn(&str) -> std::result::Result<i64, String>,
) -> Result<Duration> {
    match value {
        Some(s) => parse(&s)
            .map(|ms| Duration::from_millis(ms as u64))
            .map_err(|e| Error::BadRequest(format!("{key}: {e}"))),
        None => Ok(default),
    }
}

impl Config {
    /// How the Kafka clients of stream `def` connect: its brokers (the
    /// server's by default) with the server-wide properties and its own over
    /// them.
    pub fn kafka_conn(&self, def: &StreamDef) -> KafkaConn {
        KafkaConn {
            brokers: def.brokers.clone().unwrap_or_else(|| self.brokers.clone()),
            props: self.kafka.merged(&KafkaProps::of_stream(&def.options)),
            librdkafka_fetch: !self.own_fetch,
        }
    }

    /// Refuses a stream that would connect where the operator did not allow
    /// (its brokers, and so its `INTO TOPIC` producer, or its socket's
    /// `host:port`), or whose Kafka properties librdkafka rejects.
    pub fn check_stream(&self, def: &StreamDef) -> Result<()> {
        let hosts = HostRules::new(&self.allow_connect, &self.brokers);
        match def.source {
            SourceKind::Kafka => {
                let conn = self.kafka_conn(def);
                hosts.check_brokers(&conn.brokers)?;
                conn.check()
            }
            SourceKind::Socket => {
                let host = def.options.get("host").map(String::as_str).unwrap_or("");
                let port = def.options.get("port").and_then(|p| p.parse().ok());
                hosts.check_socket(host, port.unwrap_or(0))
            }
            SourceKind::File => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str) -> Result<Config> {
        let file: FileConfig = toml::from_str(toml).unwrap();
        file.resolve(None, None, None, None, None, Vec::new())
    }

    #[test]
    fn no_open_door_by_accident() {
        for open in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080"] {
            let e = check_open_door(open, None, false).unwrap_err().to_string();
            assert!(e.contains("--token") && e.contains("--no-auth"), "{e}");
            assert!(check_open_door(open, Some("s3cret"), false).is_ok());
            assert!(check_open_door(open, None, true).is_ok());
        }
        for local in ["127.0.0.1:8080", "[::1]:0", "localhost:0"] {
            assert!(check_open_door(local, None, false).is_ok(), "{local}");
        }
    }

    #[test]
    fn allow_files() {
        assert!(resolve("").unwrap().allow_files.is_empty());
        let c = resolve("allow_files = ['/srv/data', '']").unwrap();
        assert_eq!(c.allow_files, [PathBuf::from("/srv/data")]);
        // Flags and environment replace the file's list.
        let file: FileConfig = toml::from_str("allow_files = ['/srv/data']").unwrap();
        let c = file
            .resolve(None, None, None, None, None, vec!["/a".into(), "/b".into()])
            .unwrap();
        assert_eq!(c.allow_files, [PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn shared_reads_on_unless_turned_off() {
        assert!(resolve("").unwrap().shared_reads);
        assert!(!resolve("shared_reads = false").unwrap().shared_reads);
        let c = resolve("shared_read_keep = 5000").unwrap();
        assert_eq!(c.shared_read_keep, 5000);
    }

    #[test]
    fn late_record_retention() {
        let c = resolve("").unwrap();
        assert_eq!(c.late_record_retention, Duration::from_secs(24 * 3600));
        let c = resolve("late_record_retention = '90m'").unwrap();
        assert_eq!(c.late_record_retention, Duration::from_secs(90 * 60));
        assert!(
            resolve("late_record_retention = '0s'")
                .unwrap()
                .late_record_retention
                .is_zero()
        );
        let e = resolve("late_record_retention = 'forever'").unwrap_err();
        assert!(e.to_string().starts_with("late_record_retention: "), "{e}");
    }

    #[test]
    fn window_state_retention() {
        let c = resolve("").unwrap();
        assert_eq!(c.window_state_retention, Duration::from_secs(24 * 3600));
        let c = resolve("window_state_retention = '2h'").unwrap();
        assert_eq!(c.window_state_retention, Duration::from_secs(2 * 3600));
        // `0s` keeps none: the query runtime then stores no window states.
        for zero in ["0s", "0ms", "0 hours"] {
            let c = resolve(&format!("window_state_retention = '{zero}'")).unwrap();
            assert!(c.window_state_retention.is_zero(), "{zero}");
        }
        let e = resolve("window_state_retention = 'forever'").unwrap_err();
        assert!(e.to_string().starts_with("window_state_retention: "), "{e}");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn allow_hosts() {
        assert!(resolve("").unwrap().allow_hosts.is_empty());
        let c = resolve("allow_hosts = ['runnel.internal', 'proxy:443']").unwrap();
        assert_eq!(c.allow_hosts, ["runnel.internal", "proxy:443"]);
    }

    #[test]
    fn allow_connect() {
        assert!(resolve("").unwrap().allow_connect.is_empty());
        let mut c = resolve("allow_connect = ['kafka-2:9092', 'logs']").unwrap();
        assert_eq!(c.allow_connect, ["kafka-2:9092", "logs"]);
        apply_connect(&mut c, Vec::new(), []).unwrap();
        assert_eq!(c.allow_connect, ["kafka-2:9092", "logs"]);
        // Flags and environment replace the file's list.
        apply_connect(&mut c, vec!["a".into(), " ".into()], []).unwrap();
        assert_eq!(c.allow_connect, ["a"]);
        let e = apply_connect(&mut c, vec!["a:port".into()], []).unwrap_err();
        assert!(e.to_string().contains("a:port"), "{e}");
    }

    #[test]
    fn kafka_properties() {
        let mut c =
            resolve("[kafka]\n\"security.protocol\" = 'SASL_PLAINTEXT'\n\"sasl.mechanism\" = 'PLAIN'\n\"sasl.username\" = 'u'\n\"sasl.password\" = 'p'\n\"socket.timeout.ms\" = 10000")
                .unwrap();
        assert_eq!(c.kafka.get("socket.timeout.ms"), Some("10000"));
        // The environment wins over the file, property by property.
        let env = [(
            "RUNNEL_KAFKA_SASL_MECHANISM".to_string(),
            "SCRAM-SHA-256".to_string(),
        )];
        apply_connect(&mut c, Vec::new(), env).unwrap();
        assert_eq!(c.kafka.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.kafka.get("security.protocol"), Some("SASL_PLAINTEXT"));
        let e = resolve("[kafka]\n\"group.id\" = 'mine'").unwrap_err();
        assert!(e.to_string().contains("group.id"), "{e}");
        let env = [(
            "RUNNEL_KAFKA_ENABLE_AUTO_COMMIT".to_string(),
            "true".to_string(),
        )];
        let e = apply_connect(&mut c, Vec::new(), env).unwrap_err();
        assert!(e.to_string().contains("enable.auto.commit"), "{e}");
        // librdkafka's own verdict on a value stops the server from starting.
        let env = [(
            "RUNNEL_KAFKA_SASL_MECHANISM".to_string(),
            "NOPE".to_string(),
        )];
        let e = apply_connect(&mut c, Vec::new(), env).unwrap_err();
        assert!(e.to_string().contains("NOPE"), "{e}");
    }

    #[test]
    fn intervals_stay_positive() {
        let c = resolve("checkpoint_interval = '500ms'\nidle_after = '2s'").unwrap();
        assert_eq!(c.checkpoint_interval, Duration::from_millis(500));
        assert_eq!(c.idle_after, Duration::from_secs(2));
        for key in ["checkpoint_interval", "idle_after"] {
            let e = resolve(&format!("{key} = '0s'")).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
        }
    }
}
