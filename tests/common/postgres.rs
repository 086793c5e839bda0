//! A private PostgreSQL server per test, from Debian's `postgresql` package
//! (`.ci/run` installs it): `initdb` in a temporary directory, `pg_ctl start`
//! on a free port, `pg_ctl stop` when dropped. As root, the server runs as the
//! `postgres` user, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::free_port;

/// A running PostgreSQL server owned by one test.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
    /// The server's options, for starting it again.
    opts: String,
}

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn check(what: &str, out: std::io::Result<Output>) {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Starts a server, or `None` (saying so) when PostgreSQL is not
    /// installed; with `RUNNEL_REQUIRE_POSTGRES=1` (set by `.ci/run`) a
    /// missing PostgreSQL fails the test instead.
    pub fn start(test: &str) -> Option<Postgres> {
        Self::start_opts(test, false)
    }

    /// Like [`start`](Self::start), with TLS on: a self-signed certificate
    /// for `localhost`, whose PEM file is [`cert`](Self::cert).
    pub fn start_tls(test: &str) -> Option<Postgres> {
        Self::start_opts(test, true)
    }

    /// The server's certificate (TLS servers only).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    fn start_opts(test: &str, tls: bool) -> Option<Postgres> {
        let Some(bin) = find_bin() else {
            assert!(
                std::env::var_os("RUNNEL_REQUIRE_POSTGRES").is_none(),
                "PostgreSQL is required (RUNNEL_REQUIRE_POSTGRES) but /usr/lib/postgresql/*/bin is missing"
            );
            eprintln!(
                "SKIPPED {test}: PostgreSQL is not installed (apt-get install postgresql; .ci/run does this)"
            );
            return None;
        };
        let as_postgres = running_as_root();
        let dir =
            std::env::temp_dir().join(format!("runnel-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pg = Postgres {
            bin,
            dir,
            port: free_port(),
            as_postgres,
            opts: String::new(),
        };
        if as_postgres {
            check(
                "chown",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&pg.dir)
                    .output(),
            );
        }
        let mut tls_opts = String::new();
        if tls {
            let (crt, key) = (pg.cert(), pg.dir.join("server.key"));
            check(
                "openssl req",
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    ])
                    .args([
                        "-subj",
                        "/CN=localhost",
                        "-addext",
                        "subjectAltName=DNS:localhost",
                    ])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&crt)
                    .output(),
            );
            check("chmod", Command::new("chmod").arg("600").arg(&key).output());
            if as_postgres {
                check(
                    "chown",
                    Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&key)
                        .arg(&crt)
                        .output(),
                );
            }
            tls_opts = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                crt.display(),
                key.display()
            );
        }
        let data = pg.dir.join("data");
        check(
            "initdb",
            pg.command("initdb")
                .args([
                    "-U",
                    "runnel",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data)
                .output(),
        );
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            pg.port,
            pg.dir.display()
        ) + &tls_opts;
        pg.opts = opts;
        pg.start_again();
        Some(pg)
    }

    /// Starts the server (again, after [`stop_fast`](Self::stop_fast)) and
    /// waits until it accepts connections.
    pub fn start_again(&self) {
        check(
            "pg_ctl start",
            self.command("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-o", &self.opts, "start"])
                .output(),
        );
    }

    /// Stops the server as `pg_ctl stop -m fast` does: open sessions are
    /// ended, their transactions rolled back.
    pub fn stop_fast(&self) {
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .args(["-w", "-t", "60", "-m", "fast", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop")
                .output(),
        );
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://runnel@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` with `psql` on database `db`, returning its unaligned,
    /// tuples-only output (`|` between columns).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(db))
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates an empty database and returns its URL.
    pub fn create_db(&self, db: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        self.url(db)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether this process runs as root (PostgreSQL must then run as `postgres`).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
