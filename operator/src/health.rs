//! Liveness of the controller loop: `/healthz` fails while a reconcile has been running for
//! longer than any healthy one can (every request it makes has a read timeout), so the kubelet
//! restarts a replica whose loop is stuck.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reconciles in flight, by start time.
#[derive(Clone)]
pub struct Liveness {
    stuck_after: Duration,
    running: Arc<Mutex<Running>>,
}

#[derive(Default)]
struct Running {
    next: u64,
    started: HashMap<u64, Instant>,
}

impl Liveness {
    pub fn new(stuck_after: Duration) -> Liveness {
        Liveness {
            stuck_after,
            running: Arc::default(),
        }
    }

    /// Marks a reconcile as running until the returned guard is dropped.
    pub fn start(&self) -> InFlight {
        let mut running = self.running.lock().expect("not poisoned");
        running.next += 1;
        let id = running.next;
        running.started.insert(id, Instant::now());
        InFlight {
            id,
            running: self.running.clone(),
        }
    }

    /// `Err` with the reason when a reconcile has run for longer than `stuck_after`.
    pub fn check(&self) -> Result<(), String> {
        let running = self.running.lock().expect("not poisoned");
        match running.started.values().map(Instant::elapsed).max() {
            Some(longest) if longest > self.stuck_after => Err(format!(
                "a reconcile has been running for {}s (limit {}s)",
                longest.as_secs(),
                self.stuck_after.as_secs()
            )),
            _ => Ok(()),
        }
    }
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness::new(Duration::from_secs(300))
    }
}

/// A running reconcile; dropping it (however the reconcile ends) takes it off the list.
pub struct InFlight {
    id: u64,
    running: Arc<Mutex<Running>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.started.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_running_too_long_fails_the_check_until_it_ends() {
        let liveness = Liveness::new(Duration::from_millis(20));
        assert!(liveness.check().is_ok());
        let running = liveness.start();
        assert!(liveness.check().is_ok(), "just started");
        std::thread::sleep(Duration::from_millis(40));
        let err = liveness.check().unwrap_err();
        assert!(err.contains("running for"), "{err}");
        drop(running);
        assert!(liveness.check().is_ok(), "it ended");
    }
}
