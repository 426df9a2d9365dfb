//! How long the upstream takes to answer: the time from sending a request to its response
//! headers, over every request the node makes (lookups included), as a moving average.
//!
//! The fetch window measures its own links chunk by chunk; this is what is known before any
//! chunk was measured: a cold object's first response is sized from the lookup that found it.

use std::{sync::Mutex, time::Duration};

/// Weight of a new sample, as in the fetch window's own averages.
const WEIGHT: f64 = 0.25;

#[derive(Default)]
pub struct RoundTrips {
    seconds: Mutex<Option<f64>>,
}

impl RoundTrips {
    pub fn observe(&self, elapsed: Duration) {
        let sample = elapsed.as_secs_f64();
        let mut avg = self.seconds.lock().expect("round trip lock");
        *avg = Some(avg.map_or(sample, |old| old + WEIGHT * (sample - old)));
    }

    /// Seconds from request to response headers, once one answer was seen.
    pub fn seconds(&self) -> Option<f64> {
        *self.seconds.lock().expect("round trip lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_average_of_answers() {
        let rt = RoundTrips::default();
        assert_eq!(rt.seconds(), None);
        rt.observe(Duration::from_millis(100));
        rt.observe(Duration::from_millis(20));
        assert!((rt.seconds().unwrap() - 0.08).abs() < 1e-9);
    }
}
