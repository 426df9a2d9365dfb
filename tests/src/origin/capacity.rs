//! The origin's total capacity: one pacing clock shared by every response body, so that all
//! connections together never send faster than the cap (an origin behind a saturated uplink,
//! or one whose disks deliver so much and no more), however many there are.
//!
//! Each frame reserves the next free slot of the clock before it is sent, so bodies take turns
//! frame by frame in the order they asked: N connections each get about 1/N of the cap, as
//! TCP flows sharing one bottleneck do. Hand-written rather than a rate-limiter crate's token
//! bucket: those wake waiters in no particular order, and the fair turn is what is modelled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Capacity left unused is saved up for at most this long: a short burst, not an average.
const BURST: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub(crate) struct Capacity {
    /// Bytes per second for all bodies together; 0 = no cap.
    rate: AtomicU64,
    /// When the cap is free again after every reservation made so far.
    next_free: Mutex<Instant>,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            rate: AtomicU64::new(0),
            next_free: Mutex::new(Instant::now()),
        }
    }
}

impl Capacity {
    pub(crate) fn set(&self, bytes_per_sec: Option<u64>) {
        self.rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// Reserves `bytes` of the capacity: when they may be sent (`None` without a cap).
    pub(crate) fn reserve(&self, bytes: u64) -> Option<Instant> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let now = Instant::now();
        let mut next_free = self.next_free.lock().expect("capacity lock");
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let slot = (*next_free).max(earliest);
        *next_free = slot + Duration::from_secs_f64(bytes as f64 / rate as f64);
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_queue_one_behind_the_other_at_the_cap() {
        let cap = Capacity::default();
        assert_eq!(cap.reserve(1000), None, "no cap: no wait");
        cap.set(Some(1_000_000));
        let first = cap.reserve(100_000).unwrap();
        let second = cap.reserve(100_000).unwrap();
        let third = cap.reserve(100_000).unwrap();
        // 100 kB at 1 MB/s: 100 ms apart, whichever body asked.
        assert_eq!(second - first, Duration::from_millis(100));
        assert_eq!(third - second, Duration::from_millis(100));
        assert!(first <= Instant::now());
    }
}
