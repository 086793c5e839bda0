//! Measuring a run: CPU time of this process or another, peak resident
//! memory, and what a run did ([`RunStats`], one line of the report).

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
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
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
        let other = self
            .other_cpu_s
            .map(|c| format!("  broker cpu {c:.2} s"))
            .unwrap_or_default();
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
