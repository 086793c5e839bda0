//! The commit run: what one commit costs with many groups open in a window
//! and 1 % of them changed since the last commit, writing the whole state
//! (every commit's cost before checkpoints became incremental) beside
//! writing only the changed pieces ([`crate::window::delta`]), each into a
//! SQLite store of its own, in the same run.
//!
//! ```no_run
//! # async fn f() -> runnel::error::Result<()> {
//! for c in runnel::bench::run_commit(100_000, 200).await? {
//!     println!("{}", c.line());
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use super::engine::engine_for;
use super::{BASE_MS, SCALE_SQL, percentile};
use crate::error::Result;
use crate::store::Store;
use crate::window::delta::Saved;

/// One way of committing, measured.
pub struct CommitCost {
    pub name: String,
    /// Open groups, and groups changed before each timed commit.
    pub groups: usize,
    pub changed: usize,
    /// Bytes a timed commit wrote (state header and pieces): the median,
    /// and the mean over all (which counts the commits that rewrite a
    /// window whole).
    pub bytes: usize,
    pub mean_bytes: f64,
    /// Time of a timed commit: saving the engine's state and the store
    /// transaction, ms: p50, p99 and mean.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

impl CommitCost {
    pub fn line(&self) -> String {
        format!(
            "{}: {} groups open, {} changed per commit: bytes per commit median {}, mean {:.0}; time p50 {:.1} ms, p99 {:.1} ms, mean {:.1} ms",
            self.name,
            self.groups,
            self.changed,
            self.bytes,
            self.mean_bytes,
            self.p50_ms,
            self.p99_ms,
            self.mean_ms
        )
    }
}

/// One impression of publisher `i` at `ts` (the fields `SCALE_SQL` reads).
fn record(i: usize, ts: i64) -> Vec<u8> {
    format!(
        r#"{{"ts":{ts},"publisher":"publisher_{i}","advertiser":"a","website":"w.com","geo":"FR","bid":{}.5,"cookie":"c{}"}}"#,
        i % 7,
        i.wrapping_mul(31) ^ ts as usize
    )
    .into_bytes()
}

/// Commits `rounds` times after changing 1 % of `groups` open groups, once
/// writing the whole state and once incrementally.
pub async fn run_commit(groups: usize, rounds: usize) -> Result<Vec<CommitCost>> {
    Ok(vec![
        measure(groups, rounds, false).await?,
        measure(groups, rounds, true).await?,
    ])
}

async fn measure(groups: usize, rounds: usize, incremental: bool) -> Result<CommitCost> {
    let (mut engine, mut decoder) = engine_for(SCALE_SQL).await?;
    if incremental {
        engine.save_incrementally();
    }
    let dir = std::env::temp_dir().join(format!(
        "runnel-bench-commit-{}-{incremental}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir)?;
    let offsets = BTreeMap::from([(0, 0)]);
    // Every record in the first window, far from closing (delay 5 s).
    let ts = BASE_MS + 1_000;
    let feed = async |engine: &mut crate::window::WindowEngine,
                      decoder: &mut crate::format::json::JsonDecoder,
                      ids: Vec<usize>|
           -> Result<()> {
        let payloads: Vec<Vec<u8>> = ids.iter().map(|&i| record(i, ts)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        if let (Some(b), _) = decoder.decode(&refs) {
            engine.process(0, b, 0).await?;
        }
        Ok(())
    };
    let save = async |engine: &mut crate::window::WindowEngine| -> Result<Saved> {
        match incremental {
            true => engine.save().await,
            false => Ok(Saved {
                header: engine.checkpoint().await?,
                ops: vec![],
            }),
        }
    };
    for start in (0..groups).step_by(100_000) {
        feed(
            &mut engine,
            &mut decoder,
            (start..(start + 100_000).min(groups)).collect(),
        )
        .await?;
    }
    let saved = save(&mut engine).await?;
    store.commit("bench", &[], &offsets, &saved)?;
    let changed = (groups / 100).max(1);
    let (mut times, mut bytes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // A different 1 % each round, spread over the groups.
        let ids = (0..changed).map(|k| (k * 100 + round) % groups).collect();
        feed(&mut engine, &mut decoder, ids).await?;
        let t = Instant::now();
        let saved = save(&mut engine).await?;
        store.commit("bench", &[], &offsets, &saved)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes.push(saved.bytes());
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mean_bytes = mean(&bytes.iter().map(|&b| b as f64).collect::<Vec<_>>());
    bytes.sort_unstable();
    Ok(CommitCost {
        name: format!(
            "commit, {}",
            if incremental {
                "changed pieces"
            } else {
                "whole state"
            }
        ),
        groups,
        changed,
        bytes: bytes.get(bytes.len() / 2).copied().unwrap_or(0),
        mean_bytes,
        mean_ms: mean(&times),
        p50_ms: percentile(&times, 0.5).unwrap_or(0.0),
        p99_ms: percentile(&times, 0.99).unwrap_or(0.0),
    })
}
