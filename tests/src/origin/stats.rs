//! Request and byte counters, for the whole origin and per path.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Counters since start (or the last `reset_stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every request, 404s and refused ones included.
    pub requests: u64,
    pub head_requests: u64,
    pub get_requests: u64,
    /// GETs carrying a `Range` header (whatever the answer).
    pub range_requests: u64,
    /// GETs answered 200 with the full body.
    pub full_gets: u64,
    /// Requests with `If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since` or `If-Range`.
    pub conditional_requests: u64,
    pub not_modified: u64,
    pub precondition_failed: u64,
    pub range_not_satisfiable: u64,
    pub unauthorized: u64,
    pub not_found: u64,
    /// Fault rules that fired (one request can fire several).
    pub faults_fired: u64,
    /// Body bytes handed to the connection, counted as frames are yielded.
    pub body_bytes_sent: u64,
    /// Every 206 answered, as inclusive `(start, end)`, in arrival order.
    pub ranges: Vec<(u64, u64)>,
    /// GETs being answered right now, from their arrival (latency included) to the end of
    /// the body.
    pub in_flight: u64,
    /// Highest `in_flight` seen: shows whether a client fetched in parallel.
    pub max_in_flight: u64,
    /// The headers of the latest request, in order, names lowercase.
    pub last_request_headers: Vec<(String, String)>,
}

impl Stats {
    /// How many times each distinct range was answered.
    pub fn range_counts(&self) -> BTreeMap<(u64, u64), u64> {
        let mut counts = BTreeMap::new();
        for r in &self.ranges {
            *counts.entry(*r).or_insert(0) += 1;
        }
        counts
    }
    /// How many times the inclusive range `start..=end` was answered with 206.
    pub fn range_count(&self, start: u64, end: u64) -> u64 {
        self.ranges.iter().filter(|r| **r == (start, end)).count() as u64
    }
    /// Bodies requested from the origin: full GETs plus 206s. A cache that works sends this
    /// once per chunk, however many clients ask.
    pub fn body_fetches(&self) -> u64 {
        self.full_gets + self.ranges.len() as u64
    }
}

#[derive(Debug, Default)]
struct Inner {
    total: Stats,
    per_path: HashMap<String, Stats>,
}

/// Shared registry; every update touches the total and the path's own counters together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registry {
    inner: Arc<Mutex<Inner>>,
}

impl Registry {
    pub fn update(&self, path: &str, f: impl Fn(&mut Stats)) {
        let mut inner = self.inner.lock().unwrap();
        f(&mut inner.total);
        f(inner.per_path.entry(path.to_string()).or_default());
    }
    pub fn total(&self) -> Stats {
        self.inner.lock().unwrap().total.clone()
    }
    pub fn path(&self, path: &str) -> Stats {
        self.inner
            .lock()
            .unwrap()
            .per_path
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
    /// Zeroes the counters but keeps `in_flight`, which running bodies will still decrement.
    pub fn reset(&self) {
        let mut inner = self.inner.lock().unwrap();
        let keep = |s: &Stats| Stats {
            in_flight: s.in_flight,
            max_in_flight: s.in_flight,
            ..Stats::default()
        };
        inner.total = keep(&inner.total);
        for s in inner.per_path.values_mut() {
            *s = keep(s);
        }
    }

    /// Marks a GET as in flight until the guard drops.
    pub fn in_flight(&self, path: &str) -> InFlight {
        self.update(path, |s| {
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        });
        InFlight {
            registry: self.clone(),
            path: path.to_string(),
        }
    }
}

pub(crate) struct InFlight {
    registry: Registry,
    path: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.registry
            .update(&self.path, |s| s.in_flight = s.in_flight.saturating_sub(1));
    }
}
