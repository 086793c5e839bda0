//! Queries that start together: the queries one SQL script creates (or a
//! server restores from its store) each take a [`Ticket`] of one
//! [`StartGate`]; each waits at the gate until the script is done and
//! every other ticket holder has arrived (or ended), then all subscribe to
//! their streams' readers at once (a query over a file or a socket arrives
//! once connected to its source, one over Kafka before: joining a reader
//! needs no consumer). Queries over the same stream then join one reader
//! at the same offsets and share one read from their first record: one of
//! them connects and starts it (see [`super::shared`]). Started one
//! by one, a backlog read while the next query is planned, saved and
//! connected leaves each later query behind the reader, to catch up on a
//! reader of its own.
//!
//! A query that never arrives (its topic does not exist yet, say) holds
//! the others back at most [`MAX_WAIT`] after the gate opens.
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//! use runnel::runtime::gate::StartGate;
//! let gate = StartGate::default();
//! let (a, b) = (gate.ticket(), gate.ticket());
//! gate.open();
//! let t = std::thread::spawn(move || a.wait(&AtomicBool::new(false)));
//! b.wait(&AtomicBool::new(false));
//! t.join().unwrap();
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a query waits for the others once the gate is open.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Where the queries of one script meet before they subscribe.
#[derive(Clone, Default)]
pub struct StartGate(Arc<(Mutex<State>, Condvar)>);

#[derive(Default)]
struct State {
    /// When the script was done.
    opened: Option<Instant>,
    /// Tickets not arrived yet and not ended.
    pending: usize,
}

impl StartGate {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ticket for one more query to wait for.
    pub fn ticket(&self) -> Ticket {
        self.state().pending += 1;
        Ticket {
            gate: self.clone(),
            arrived: AtomicBool::new(false),
        }
    }

    /// The script is done: its queries start once all have arrived.
    pub fn open(&self) {
        self.state().opened.get_or_insert_with(Instant::now);
        self.0.1.notify_all();
    }
}

/// One query's place at a [`StartGate`].
pub struct Ticket {
    gate: StartGate,
    arrived: AtomicBool,
}

impl Ticket {
    /// Arrives at the gate and waits until it is open and every other
    /// ticket holder has arrived or ended, for at most [`MAX_WAIT`] after
    /// it opened, or until `stop` is set. Later calls return at once.
    pub fn wait(&self, stop: &AtomicBool) {
        if self.arrived.swap(true, Ordering::Relaxed) {
            return;
        }
        let (_, cv) = &*self.gate.0;
        let mut s = self.gate.state();
        s.pending -= 1;
        cv.notify_all();
        while !stop.load(Ordering::Relaxed) {
            match s.opened {
                Some(at) if s.pending == 0 || at.elapsed() >= MAX_WAIT => return,
                _ => {}
            }
            s = cv
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Ticket {
    /// A query that ends before it arrives holds no one back.
    fn drop(&mut self) {
        if !self.arrived.load(Ordering::Relaxed) {
            self.gate.state().pending -= 1;
            self.gate.0.1.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queries wait for the script and for each other; one that ends
    /// without arriving lets the others go.
    #[test]
    fn queries_start_once_the_script_is_done_and_all_have_arrived() {
        let gate = StartGate::default();
        let (a, b, c) = (gate.ticket(), gate.ticket(), gate.ticket());
        let no = AtomicBool::new(false);
        let started = Arc::new(AtomicBool::new(false));
        let waiter = {
            let started = started.clone();
            std::thread::spawn(move || {
                a.wait(&AtomicBool::new(false));
                started.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !started.load(Ordering::SeqCst),
            "started before the script was done"
        );
        gate.open();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !started.load(Ordering::SeqCst),
            "started before the others arrived"
        );
        // `c` ends without arriving, `b` arrives: nothing is left to wait
        // for (not the time limit).
        drop(c);
        assert_eq!(gate.state().pending, 1);
        b.wait(&no);
        assert_eq!(gate.state().pending, 0);
        waiter.join().unwrap();
        assert!(started.load(Ordering::SeqCst));
        // Arriving again does not wait.
        b.wait(&no);
    }

    /// A stopped query does not wait.
    #[test]
    fn a_stopped_query_does_not_wait() {
        let gate = StartGate::default();
        let (a, _b) = (gate.ticket(), gate.ticket());
        a.wait(&AtomicBool::new(true));
    }
}
