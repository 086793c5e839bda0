//! Measuring a run: CPU time of this process or another, and of each of
//! this process's threads (what each part of a server spent: its reader,
//! librdkafka, each query), peak resident memory, and what a run did
//! ([`RunStats`], one line of the report).

use std::time::{Duration, Instant};

/// User plus system CPU time of this process so far.
pub fn process_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

/// User plus system CPU time of process `pid` (zero when unknown).
pub fn cpu_of_pid(pid: u32) -> Duration {
    cpu_of(&format!("/proc/{pid}/stat"))
}

fn cpu_of(path: &str) -> Duration {
    std::fs::read_to_string(path)
        .map(|stat| parse_stat(&stat).1)
        .unwrap_or(Duration::ZERO)
}

/// The command name and user plus system CPU time of a `stat` file of
/// `/proc` (a process's or a thread's).
fn parse_stat(stat: &str) -> (String, Duration) {
    // The name is in parentheses and may itself hold spaces or parentheses.
    let (head, rest) = stat.rsplit_once(')').unwrap_or(("", ""));
    let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
    (name, Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

/// The time on CPU a `schedstat` file of `/proc` gives (its first field,
/// in nanoseconds).
fn parse_schedstat(schedstat: &str) -> Option<Duration> {
    let ns = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Every live thread of this process: id, name and CPU time so far. The
/// time is `schedstat`'s, exact to the nanosecond; `stat`'s user and
/// system ticks (10 ms) only where the kernel keeps no `schedstat`: they
/// read each thread started since up to 20 ms short, which summed over a
/// server's dozen new threads is as much as a light query's whole work.
pub fn thread_cpu() -> Vec<(u64, String, Duration)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let (name, ticks) = parse_stat(&stat);
            let exact = std::fs::read_to_string(t.path().join("schedstat")).ok();
            let cpu = exact.as_deref().and_then(parse_schedstat).unwrap_or(ticks);
            Some((tid, name, cpu))
        })
        .collect()
}

/// CPU seconds each live thread spent since `before` (a [`thread_cpu`]
/// taken earlier; all of it for threads started since), summed per part
/// after `class` maps each thread's name to its part (e.g. all librdkafka
/// threads to one), largest first. Threads that ended meanwhile are not in it.
pub fn threads_cpu_since(
    before: &[(u64, String, Duration)],
    class: impl Fn(&str) -> String,
) -> Vec<(String, f64)> {
    let old: std::collections::HashMap<u64, Duration> = before.iter().map(|t| (t.0, t.2)).collect();
    let mut parts: std::collections::BTreeMap<String, f64> = Default::default();
    for (tid, name, cpu) in thread_cpu() {
        let spent = cpu.saturating_sub(old.get(&tid).copied().unwrap_or_default());
        *parts.entry(class(&name)).or_default() += spent.as_secs_f64();
    }
    let mut parts: Vec<(String, f64)> = parts.into_iter().filter(|p| p.1 > 0.0).collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    parts
}

/// Peak resident set size of this process in bytes (`VmHWM`).
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak resident set size, so the next [`peak_rss`] covers only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU and wall time of a measured section.
pub struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    /// Starts measuring (and resets the peak RSS).
    pub fn start() -> Meter {
        reset_peak_rss();
        Meter {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// (wall seconds, CPU seconds) since the start.
    pub fn stop(&self) -> (f64, f64) {
        (
            self.wall.elapsed().as_secs_f64(),
            process_cpu().saturating_sub(self.cpu).as_secs_f64(),
        )
    }
}

/// What a measured run did.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// What was run.
    pub name: String,
    /// Records fed in.
    pub records: usize,
    /// Wall seconds.
    pub wall_s: f64,
    /// CPU seconds of this process.
    pub cpu_s: f64,
    /// Result rows of closed windows.
    pub rows: usize,
    /// Windows closed.
    pub windows: u64,
    /// Records that could not be decoded.
    pub bad: usize,
    /// Peak resident set size during the run, bytes.
    pub peak_rss: u64,
    /// Per-window latency samples in ms (see each run).
    pub latency_ms: Vec<f64>,
    /// Most partial-state bytes held at once (in memory).
    pub state_bytes: usize,
    /// CPU seconds of other processes (the broker), when measured.
    pub other_cpu_s: Option<f64>,
    /// CPU seconds of the run's own threads by part (see `threads_cpu_since`).
    pub threads: Vec<(String, f64)>,
}

impl RunStats {
    /// Records per second of wall time.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.wall_s.max(1e-9)
    }

    /// Records per CPU-second of this process.
    pub fn per_cpu(&self) -> f64 {
        self.records as f64 / self.cpu_s.max(1e-9)
    }

    /// The `q` quantile of the latency samples.
    pub fn latency(&self, q: f64) -> Option<f64> {
        percentile(&self.latency_ms, q)
    }

    /// One line of the report.
    pub fn line(&self) -> String {
        let lat = match (self.latency(0.5), self.latency(0.99)) {
            (Some(a), Some(b)) => format!("  latency p50 {a:.1} ms p99 {b:.1} ms"),
            _ => String::new(),
        };
        let mut other = self
            .other_cpu_s
            .map(|c| format!("  broker cpu {c:.2} s"))
            .unwrap_or_default();
        if !self.threads.is_empty() {
            let parts: Vec<String> = self
                .threads
                .iter()
                // Parts under 5 ms would print as 0.00.
                .filter(|(_, s)| *s >= 0.005)
                .map(|(name, s)| format!("{name} {s:.2}"))
                .collect();
            other.push_str(&format!("\n    cpu s by thread: {}", parts.join(", ")));
        }
        format!(
            "{:<28} {:>10} rec  {:>7.3} s wall {:>7.3} s cpu  {:>11.0} rec/s {:>11.0} rec/cpu-s  rows {} windows {} bad {}  peak rss {:.0} MiB  state {:.1} MiB{lat}{other}",
            self.name,
            self.records,
            self.wall_s,
            self.cpu_s,
            self.rate(),
            self.per_cpu(),
            self.rows,
            self.windows,
            self.bad,
            self.peak_rss as f64 / 1048576.0,
            self.state_bytes as f64 / 1048576.0,
        )
    }
}

/// The `q` quantile (nearest rank) of `v`.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_may_hold_spaces_and_parentheses() {
        // utime 250 and stime 50 ticks: 3 s.
        let stat = "42 (query (a) b) S 1 42 1 0 -1 4194304 122 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(
            parse_stat(stat),
            ("query (a) b".to_string(), Duration::from_secs(3))
        );
    }

    #[test]
    fn schedstat_gives_nanoseconds_on_cpu() {
        assert_eq!(
            parse_schedstat("1234567890 5000 17\n"),
            Some(Duration::from_nanos(1_234_567_890))
        );
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn each_live_thread_is_counted_until_it_ends() {
        let before = thread_cpu();
        assert!(!before.is_empty(), "this thread at least");
        let (started, stop) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("measured-part".into())
            .spawn(move || {
                // Busy until its own CPU time shows (10 ms ticks).
                let own = || cpu_of("/proc/thread-self/stat");
                let mut x = 0u64;
                while own().is_zero() {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                started.send(()).unwrap();
                let _ = held.recv();
            })
            .unwrap();
        stop.recv().unwrap();
        let parts = threads_cpu_since(&before, |n| n.to_string());
        assert!(parts.iter().any(|(n, _)| n == "measured-part"), "{parts:?}");
        drop(release);
        t.join().unwrap();
        let after = threads_cpu_since(&before, |n| n.to_string());
        assert!(
            after.iter().all(|(n, _)| n != "measured-part"),
            "ended: {after:?}"
        );
    }
}
