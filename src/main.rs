//! The `runnel` command.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use runnel::config::{Config, FileConfig};
use runnel::generate::{GenKind, ProduceOptions, produce, write_lines};
use runnel::server::{App, http};

#[derive(Parser)]
#[command(
    name = "runnel",
    version,
    about = "Continuous windowed SQL over Kafka streams"
)]
struct Cli {
    /// Log format on stderr: `text` (human-readable) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        env = "RUNNEL_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at startup: the size of `serve`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Config file (TOML); flags and RUNNEL_* variables override it.
        #[arg(long, env = "RUNNEL_CONFIG", default_value = "runnel.toml")]
        config: PathBuf,
        /// HTTP listen address (port 0 picks a free port) [default:
        /// 127.0.0.1:8080].
        #[arg(long, env = "RUNNEL_LISTEN")]
        listen: Option<String>,
        /// Default Kafka bootstrap servers [default: 127.0.0.1:9092].
        #[arg(long, env = "RUNNEL_BROKERS")]
        brokers: Option<String>,
        /// Directory of the embedded store [default: runnel-data].
        #[arg(long, env = "RUNNEL_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Keep catalog, checkpoints and results in PostgreSQL
        /// (`postgres://user:password@host/database`) instead of SQLite.
        #[arg(long, env = "RUNNEL_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Join cluster NAME: servers with the same name and PostgreSQL store
        /// share streams, queries and results, and split each topic's
        /// partitions through Kafka's consumer-group protocol.
        #[arg(long, env = "RUNNEL_CLUSTER")]
        cluster: Option<String>,
        /// Require `Authorization: Bearer <token>` on every mutating call.
        #[arg(long, env = "RUNNEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Require the token for reads too.
        #[arg(long, env = "RUNNEL_PROTECT_READS")]
        protect_reads: bool,
        /// Serve an address other hosts can reach without a token. Without
        /// it, listening beyond loopback with no --token refuses to start.
        #[arg(long, env = "RUNNEL_NO_AUTH")]
        no_auth: bool,
        /// Let file tables and file streams read files under DIR (repeatable;
        /// RUNNEL_ALLOW_FILES takes a ':'-separated list, like PATH). By
        /// default no directory is allowed.
        #[arg(
            long = "allow-files",
            value_name = "DIR",
            env = "RUNNEL_ALLOW_FILES",
            value_delimiter = ':'
        )]
        allow_files: Vec<PathBuf>,
        /// Also accept requests whose `Host` is NAME (`name` for any port,
        /// `name:port` for one, `*` for any host); repeatable, or
        /// comma-separated in the environment variable.
        #[arg(
            long = "allow-host",
            value_name = "NAME",
            env = "RUNNEL_ALLOW_HOSTS",
            value_delimiter = ','
        )]
        allow_hosts: Vec<String>,
        /// Memory pull queries and roll-ups may use together, e.g. `256MB`
        /// or `1GiB` (default 256 MiB); a query needing more gets 422.
        #[arg(long, value_name = "SIZE", env = "RUNNEL_PULL_MEMORY", value_parser = runnel::config::limits::parse_size)]
        pull_memory: Option<u64>,
        /// Most rows one pull query returns (default 100000); a larger
        /// answer gets 422 suggesting LIMIT.
        #[arg(long, value_name = "N", env = "RUNNEL_PULL_ROWS", value_parser = clap::value_parser!(u64).range(1..))]
        pull_rows: Option<u64>,
        /// Most server-sent-event connections open at once (default 256);
        /// the next gets 503 with Retry-After.
        #[arg(long, value_name = "N", env = "RUNNEL_MAX_SSE", value_parser = clap::value_parser!(u64).range(1..))]
        max_sse: Option<u64>,
        /// Let streams connect to HOST (any port) or HOST:PORT: brokers a
        /// stream names, socket sources, and so INTO TOPIC. The server's own
        /// --brokers are always allowed; nothing else is by default.
        /// Repeatable, or comma-separated in the environment variable.
        /// librdkafka properties (SASL, TLS) come from `[kafka]` in
        /// runnel.toml and RUNNEL_KAFKA_<PROP> variables
        /// (RUNNEL_KAFKA_SASL_MECHANISM is sasl.mechanism).
        #[arg(
            long = "allow-connect",
            value_name = "HOST[:PORT]",
            env = "RUNNEL_ALLOW_CONNECT",
            value_delimiter = ','
        )]
        allow_connect: Vec<String>,
        /// Also speak PostgreSQL's wire protocol on ADDR (e.g.
        /// 127.0.0.1:5433; port 0 picks a free port): psql, Grafana and
        /// PostgreSQL drivers connect directly. Off by default.
        #[arg(long, value_name = "ADDR", env = "RUNNEL_PG_LISTEN")]
        pg_listen: Option<String>,
        /// PEM certificate chain for TLS on the PostgreSQL protocol.
        #[arg(long, value_name = "FILE", env = "RUNNEL_PG_TLS_CERT")]
        pg_tls_cert: Option<PathBuf>,
        /// PEM private key for TLS on the PostgreSQL protocol.
        #[arg(long, value_name = "FILE", env = "RUNNEL_PG_TLS_KEY")]
        pg_tls_key: Option<PathBuf>,
    },
    /// Run everything on embedded defaults: a Kafka-protocol broker, the
    /// impression generator, the server and the canonical query.
    Demo {
        /// HTTP listen address.
        #[arg(long, env = "RUNNEL_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// PostgreSQL wire protocol listen address.
        #[arg(long, env = "RUNNEL_PG_LISTEN", default_value = "127.0.0.1:5433")]
        pg_listen: String,
        /// Impressions per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Keep the demo's store (in the system's temporary directory) when
        /// it stops; by default it is removed.
        #[arg(long)]
        keep: bool,
    },
    /// Interactive SQL client for a running server (psql-like).
    Sql {
        #[command(flatten)]
        opts: runnel::repl::Options,
    },
    /// Benchmark the engine on the ad-network query (see BENCHMARKS.md).
    Bench(runnel::bench::BenchArgs),
    /// Generate records into a Kafka topic (or stdout with `--brokers -`).
    Gen {
        /// What to generate.
        #[arg(value_enum)]
        kind: GenKind,
        /// Kafka bootstrap servers, or `-` for stdout.
        #[arg(long, env = "RUNNEL_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Topic (default: adnetwork-topic, activity or access-log).
        #[arg(long)]
        topic: Option<String>,
        /// Records per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Records to produce (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Partitions of the topic when it does not exist yet and is created;
        /// records are then spread round-robin over them.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"))
        // sqlparser's debug lines carry whole statements, passwords given
        // as stream options included: they are never logged.
        .add_directive("sqlparser=info".parse().expect("a valid directive"));
    // Colours only on a terminal: a log file or collector gets plain text.
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
}

/// The environment variables whose names and values are UTF-8.
fn utf8_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// How long open requests (event streams never end by themselves) may run
/// on after a shutdown signal.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `app` until Ctrl-C or SIGTERM, then lets open requests finish for
/// at most [`DRAIN`] and stops the queries, saying what it waits for.
async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    local: std::net::SocketAddr,
) -> anyhow_free::Result<()> {
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, http::router(app.clone(), local)).with_graceful_shutdown(
        async move {
            shutdown_signal().await;
            eprintln!("stopping: closing open requests and event streams");
            let _ = signalled.send(true);
        },
    );
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = on_signal.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN).await;
        } => {}
    }
    let n = app.queries().len();
    eprintln!("stopping: waiting for {n} queries to commit their last records");
    tokio::task::spawn_blocking(move || app.shutdown()).await?;
    eprintln!("stopped");
    Ok(())
}

async fn serve(config: Config) -> anyhow_free::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?.to_string();
    let local = listener.local_addr()?;
    let pg = runnel::pgwire::bind(&config).await?;
    let app = App::open(config).await?;
    log_startup(&app);
    println!("runnel listening on http://{addr}");
    runnel::pgwire::start(&app, pg);
    serve_until_signal(listener, app, local).await
}

/// Says what the server started with: its store, its brokers, and the
/// streams and queries it resumed, each query from its saved offsets.
fn log_startup(app: &App) {
    let c = &app.config;
    let store = match &c.store {
        Some(url) => runnel::connect::secret::redact_url(url),
        None => c.data_dir.join("runnel.db").display().to_string(),
    };
    let (streams, queries) = (app.streams(), app.queries());
    tracing::info!(
        store = %format!("{} {store}", app.store.kind()),
        brokers = %c.brokers,
        streams = streams.len(),
        queries = queries.len(),
        "runnel started"
    );
    for q in &queries {
        let offsets = match app.store.load_checkpoint(&q.name) {
            Ok(Some((offsets, _))) => offsets
                .iter()
                .map(|(p, o)| format!("{p}:{o}"))
                .collect::<Vec<_>>()
                .join(" "),
            Ok(None) => "none saved (starts as its stream says)".into(),
            Err(e) => format!("unreadable: {e}"),
        };
        tracing::info!(query = %q.name, offsets = %offsets, "resumed query");
    }
}

/// Errors of the command line, printed without a backtrace.
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

/// The seed jobs `runnel demo` registers, as shipped in `queries/`.
const DEMO_JOBS: &[(&str, &str)] = &[
    ("adnetwork.sql", include_str!("../queries/adnetwork.sql")),
    ("dstreams.sql", include_str!("../queries/dstreams.sql")),
    (
        "popular_users.sql",
        include_str!("../queries/popular_users.sql"),
    ),
    (
        "access_logs.sql",
        include_str!("../queries/access_logs.sql"),
    ),
];
const PUBLISHERS_CSV: &str = include_str!("../queries/publishers.csv");

/// (generator, topic, divisor of the demo rate)
const DEMO_FEEDS: &[(GenKind, &str, u64)] = &[
    (GenKind::Impressions, "adnetwork-topic", 1),
    (GenKind::Activity, "activity", 2),
    (GenKind::AccessLog, "access-log", 4),
];

async fn demo(listen: String, pg_listen: String, rate: u64, keep: bool) -> anyhow_free::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    for (_, topic, _) in DEMO_FEEDS {
        cluster.create_topic(topic, 4, 1)?;
    }
    cluster.create_topic("popular_users", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let data_dir = std::env::temp_dir().join(format!("runnel-demo-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    // The reference files live apart from the store: only they are readable.
    let files = data_dir.join("files");
    std::fs::create_dir_all(&files)?;
    let publishers = files.join("publishers.csv");
    std::fs::write(&publishers, PUBLISHERS_CSV)?;
    let config = Config {
        listen,
        brokers: brokers.clone(),
        data_dir: data_dir.clone(),
        allow_files: vec![files],
        pg_listen: Some(pg_listen),
        ..Config::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut generators = Vec::new();
    for (i, (kind, topic, share)) in DEMO_FEEDS.iter().enumerate() {
        let opts = ProduceOptions {
            brokers: brokers.clone(),
            topic: topic.to_string(),
            rate: Some((rate / share).max(1)),
            count: None,
            seed: 42 + i as u64,
            partitions: None,
        };
        let (kind, gen_stop) = (*kind, stop.clone());
        generators.push(tokio::spawn(async move {
            if let Err(e) = produce(kind, &opts, Some(gen_stop)).await {
                eprintln!("generator stopped: {e}");
            }
        }));
    }
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let local = listener.local_addr()?;
    let addr = local.to_string();
    let pg = runnel::pgwire::bind(&config).await?;
    let app = App::open(config).await?;
    for (file, sql) in DEMO_JOBS {
        let sql = sql.replace("queries/publishers.csv", &publishers.to_string_lossy());
        app.execute_sql(&sql)
            .await
            .map_err(|e| format!("queries/{file}: {e}"))?;
    }
    println!("Runnel demo");
    println!("  broker (Kafka protocol): {brokers}");
    for (kind, topic, share) in DEMO_FEEDS {
        println!(
            "    topic {topic}: {kind:?} records, {}/s",
            (rate / share).max(1)
        );
    }
    println!(
        "  store: {} (removed on exit unless --keep)",
        data_dir.join("runnel.db").display()
    );
    let names: Vec<String> = app.queries().iter().map(|q| q.name.clone()).collect();
    println!("  queries: {}", names.join(", "));
    println!("  dashboard: http://{addr}/");
    if let Some(pg) = runnel::pgwire::start(&app, pg) {
        println!(
            "  psql: psql -h {} -p {} -c 'SELECT * FROM adnetwork ORDER BY imps DESC LIMIT 5'",
            pg.ip(),
            pg.port()
        );
    }
    println!();
    println!("  curl http://{addr}/queries");
    println!("  curl 'http://{addr}/queries/adnetwork/results?limit=20'");
    println!("  curl -d \"SELECT * FROM adnetwork ORDER BY imps DESC LIMIT 5\" http://{addr}/sql");
    println!();
    println!("Results appear as each 10 s window closes. Ctrl-C stops.");
    let served = serve_until_signal(listener, app, local).await;
    // The generators flush while the broker is still there.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for g in generators {
        let _ = g.await;
    }
    drop(cluster);
    if keep {
        eprintln!("kept the demo's store in {}", data_dir.display());
    } else {
        std::fs::remove_dir_all(&data_dir)?;
        eprintln!(
            "removed the demo's store {} (--keep keeps it)",
            data_dir.display()
        );
    }
    served
}

/// Keeps freed memory for reuse instead of handing it back to the kernel
/// at once. glibc's defaults give blocks over 128 KiB their own mapping
/// and trim a heap's free top beyond 128 KiB (both raised only as freed
/// blocks show larger sizes), so librdkafka's fetch responses and per
/// record events, and the engine's batches, are mapped, zeroed by the
/// kernel page by page, and unmapped again, over and over. Blocks up to
/// 32 MiB (glibc's largest threshold) come from the heaps, and up to
/// 128 MiB of a heap's free top is kept: a third fewer page faults and
/// 5–12 % less CPU in the benchmarks (BENCHMARKS.md). `GLIBC_TUNABLES`
/// naming malloc settings wins.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters; it is MT-safe.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        }
    }
}

#[tokio::main]
async fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result: anyhow_free::Result<()> = match cli.command {
        Command::Serve {
            config,
            listen,
            brokers,
            data_dir,
            store,
            cluster,
            token,
            protect_reads,
            no_auth,
            allow_files,
            allow_hosts,
            pull_memory,
            pull_rows,
            max_sse,
            allow_connect,
            pg_listen,
            pg_tls_cert,
            pg_tls_key,
        } => {
            let explicit = std::env::var_os("RUNNEL_CONFIG").is_some()
                || std::env::args().any(|a| a == "--config" || a.starts_with("--config="));
            match FileConfig::load(&config, explicit)
                .and_then(|f| f.resolve(listen, brokers, data_dir, store, cluster, allow_files))
            {
                Ok(mut c) => {
                    c.token = token.filter(|t| !t.is_empty());
                    if let Some(l) = pg_listen {
                        c.pg_listen = Some(l).filter(|l| !l.is_empty());
                    }
                    if pg_tls_cert.is_some() || pg_tls_key.is_some() {
                        let file = c.pg_tls.clone().unzip();
                        match runnel::config::pg_tls(pg_tls_cert.or(file.0), pg_tls_key.or(file.1))
                        {
                            Ok(t) => c.pg_tls = t,
                            Err(e) => {
                                eprintln!("error: {e}");
                                std::process::exit(1);
                            }
                        }
                    }
                    c.protect_reads |= protect_reads;
                    let allow_hosts: Vec<String> =
                        allow_hosts.into_iter().filter(|h| !h.is_empty()).collect();
                    if !allow_hosts.is_empty() {
                        c.allow_hosts = allow_hosts;
                    }
                    let count = |n: Option<u64>| n.map(|n| n as usize);
                    c.limits.set(pull_memory, count(pull_rows), count(max_sse));
                    match runnel::config::apply_connect(&mut c, allow_connect, utf8_env()).and_then(
                        |()| {
                            runnel::config::check_open_door(
                                &c.listen,
                                c.token.as_deref(),
                                no_auth,
                            )?;
                            match &c.pg_listen {
                                Some(pg) => {
                                    runnel::config::check_open_door(pg, c.token.as_deref(), no_auth)
                                }
                                None => Ok(()),
                            }
                        },
                    ) {
                        Ok(()) => serve(c).await,
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Bench(args) => runnel::bench::run(args).await.map_err(Into::into),
        Command::Demo {
            listen,
            pg_listen,
            rate,
            keep,
        } => demo(listen, pg_listen, rate, keep).await,
        // The REPL blocks (reqwest's blocking client), so it runs off the async workers.
        Command::Sql { opts } => {
            match tokio::task::spawn_blocking(move || runnel::repl::run(opts)).await {
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e.into()),
            }
        }
        Command::Gen {
            kind,
            brokers,
            topic,
            rate,
            count,
            seed,
            partitions,
        } => {
            if brokers == "-" {
                let mut out = std::io::stdout().lock();
                write_lines(kind, &mut out, rate, count, seed)
                    .map(|_| ())
                    .map_err(Into::into)
            } else {
                let topic = topic.unwrap_or_else(|| {
                    match kind {
                        GenKind::Impressions => "adnetwork-topic",
                        GenKind::Activity => "activity",
                        GenKind::AccessLog => "access-log",
                    }
                    .to_string()
                });
                // Producing into a missing topic would wait out every
                // delivery's timeout: create it, or say why not, first.
                let kafka = runnel::connect::kafka::KafkaConn::new(&brokers);
                let n = partitions.unwrap_or(1);
                use runnel::source::kafka::admin::{Ensured, ensure_topic};
                match ensure_topic(&kafka, &topic, n).await {
                    Ok(Ensured::Created) => {
                        eprintln!("created topic {topic} with {n} partition(s)")
                    }
                    Ok(Ensured::AutoCreated) => eprintln!(
                        "topic {topic} was created by the broker with its default partitions"
                    ),
                    Ok(Ensured::Existed) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        std::process::exit(1);
                    }
                }
                let opts = ProduceOptions {
                    brokers,
                    topic,
                    rate,
                    count,
                    seed,
                    partitions,
                };
                let stop = Arc::new(AtomicBool::new(false));
                let s2 = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    s2.store(true, std::sync::atomic::Ordering::Relaxed);
                });
                match produce(kind, &opts, Some(stop)).await {
                    Ok(n) => {
                        eprintln!("produced {n} records");
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
