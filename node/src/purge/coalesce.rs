//! Invalidations (a successful write, a reload that found a new version) coalesced per target:
//! requests add their target to the current window's set, and once a window one task writes the
//! set as records. N invalidations of one path in a window cost one record, whatever the request
//! rate; the set holds at most [`QUEUE_CAPACITY`] targets, and a target that finds it full is
//! counted and dropped (this node already forgot its metadata; the other members keep their copy
//! until it expires, as a cache that never saw the write would). A path longer than a record
//! holds is recorded as a prefix, which every member applies by scanning its metadata: a window
//! holds at most [`PREFIX_CAPACITY`] of those.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tracing::warn;

use super::{publish::Publisher, record::Record, PurgeMetrics, Target};

/// How long invalidations of one target are gathered into one record.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Distinct targets a window holds.
pub const QUEUE_CAPACITY: usize = 512;
/// Prefix targets (paths cut to a record's bound) a window holds.
pub const PREFIX_CAPACITY: usize = 4;

/// What became of one invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The first of its target in this window.
    Queued,
    /// Its target was already waiting: no new record.
    Coalesced,
    /// The window was full.
    Dropped,
}

impl Admission {
    pub fn label(self) -> &'static str {
        match self {
            Admission::Queued => "queued",
            Admission::Coalesced => "coalesced",
            Admission::Dropped => "dropped",
        }
    }
}

/// The current window's targets, each with why it was invalidated first.
pub struct Invalidations {
    pending: Mutex<HashMap<Target, &'static str>>,
    capacity: usize,
}

impl Invalidations {
    pub fn new(capacity: usize) -> Invalidations {
        Invalidations {
            pending: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn push(&self, target: Target, why: &'static str) -> Admission {
        let mut pending = self.pending.lock().expect("invalidations lock");
        if pending.contains_key(&target) {
            return Admission::Coalesced;
        }
        let prefixes = || pending.keys().filter(|t| t.kind() == "prefix").count();
        let prefix = matches!(target, Target::Prefix(_));
        if pending.len() >= self.capacity || (prefix && prefixes() >= PREFIX_CAPACITY) {
            return Admission::Dropped;
        }
        pending.insert(target, why);
        Admission::Queued
    }

    /// Empties the window.
    pub fn take(&self) -> Vec<(Target, &'static str)> {
        std::mem::take(&mut *self.pending.lock().expect("invalidations lock"))
            .into_iter()
            .collect()
    }

    /// Once a [`WINDOW`], writes the window's targets as records (until `stop`).
    pub async fn run(
        self: Arc<Self>,
        publisher: Arc<Publisher>,
        node_id: String,
        metrics: PurgeMetrics,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let window = self.take();
            if window.is_empty() {
                continue;
            }
            let records: Vec<Record> = window
                .into_iter()
                .map(|(target, why)| invalidation(target, why, &node_id))
                .collect();
            let outcome = match publisher.publish_invalidations(&records).await {
                Ok(()) => "published",
                Err(e) => {
                    metrics.errors.inc();
                    warn!(error = %e, records = records.len(),
                        "could not publish invalidations; other members keep their copies until they expire");
                    "failed"
                }
            };
            metrics
                .invalidations
                .with_label_values(&[outcome])
                .inc_by(records.len() as u64);
            if outcome == "published" {
                for r in &records {
                    metrics.applied(&r.target, "invalidation", Default::default());
                }
            }
        }
    }
}

fn invalidation(target: Target, why: &str, node_id: &str) -> Record {
    Record {
        id: super::purge_id(),
        target,
        requested_by: why.to_string(),
        origin: node_id.to_string(),
        at_unix_ms: super::unix_ms(),
        round: 1,
        versions: Vec::new(),
        invalidation: true,
    }
    .bounded()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Target {
        Target::Path(p.into())
    }

    #[test]
    fn invalidations_of_one_target_in_a_window_coalesce_into_one() {
        let q = Invalidations::new(8);
        assert_eq!(q.push(path("/a"), "w"), Admission::Queued);
        for _ in 0..1000 {
            assert_eq!(q.push(path("/a"), "w"), Admission::Coalesced);
        }
        assert_eq!(q.push(path("/b"), "w"), Admission::Queued);
        assert_eq!(q.push(Target::Prefix("/a".into()), "w"), Admission::Queued);
        let mut window: Vec<Target> = q.take().into_iter().map(|(t, _)| t).collect();
        window.sort_by(|a, b| (a.kind(), a.text()).cmp(&(b.kind(), b.text())));
        assert_eq!(
            window,
            vec![path("/a"), path("/b"), Target::Prefix("/a".into())]
        );
        // The next window starts empty: the same target is one record per window.
        assert!(q.take().is_empty());
        assert_eq!(q.push(path("/a"), "w"), Admission::Queued);
    }

    #[test]
    fn a_full_window_drops_new_targets_and_keeps_coalescing_known_ones() {
        let q = Invalidations::new(4);
        for i in 0..4 {
            assert_eq!(q.push(path(&format!("/{i}")), "w"), Admission::Queued);
        }
        for i in 4..100 {
            assert_eq!(q.push(path(&format!("/{i}")), "w"), Admission::Dropped);
        }
        assert_eq!(q.push(path("/0"), "w"), Admission::Coalesced);
        assert_eq!(
            q.take().len(),
            4,
            "the window never holds more than its capacity"
        );
        assert_eq!(q.push(path("/99"), "w"), Admission::Queued, "room again");
    }

    #[test]
    fn a_window_holds_few_prefixes_as_each_costs_every_member_a_scan() {
        let q = Invalidations::new(64);
        let prefix = |i: usize| Target::Prefix(format!("/long?{i}"));
        for i in 0..PREFIX_CAPACITY {
            assert_eq!(q.push(prefix(i), "w"), Admission::Queued);
        }
        assert_eq!(q.push(prefix(99), "w"), Admission::Dropped);
        assert_eq!(q.push(prefix(0), "w"), Admission::Coalesced);
        assert_eq!(
            q.push(path("/short"), "w"),
            Admission::Queued,
            "paths still fit"
        );
    }

    #[test]
    fn an_invalidation_record_is_bounded() {
        let long = format!("/a?{}", "x".repeat(5000));
        let r = invalidation(path(&long), "w", "n");
        assert!(r.invalidation && r.versions.is_empty());
        assert_eq!(r.target.kind(), "prefix");
        assert!(serde_json::to_vec(&r).unwrap().len() < 2 * 1024);
    }
}
