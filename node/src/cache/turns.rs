//! One open of a path at a time on this node, as pingora's cache key lock: the open whose lookup
//! probes the upstream hands the probe's body to the fetcher before any other request for the
//! path opens the object's chunks — which would otherwise find no fetch of the probed chunk yet
//! and fetch it a second time. Lookups of one path are collapsed below anyway (the metadata
//! store's), so a waiter here waits no longer than for the lookup it would have shared.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Mutex as PathLock, OwnedMutexGuard};

type Locks = Arc<Mutex<HashMap<String, Arc<PathLock<()>>>>>;

/// The paths being opened, each with its lock; an entry lives while someone holds or awaits it.
#[derive(Default)]
pub(super) struct OpenTurns {
    locks: Locks,
}

/// This request's turn to open a path; the next waiter's comes when it is dropped.
pub(super) struct OpenTurn {
    guard: Option<OwnedMutexGuard<()>>,
    locks: Locks,
    path: String,
}

impl OpenTurns {
    pub(super) async fn take(&self, path: &str) -> OpenTurn {
        let lock = self
            .locks
            .lock()
            .expect("open turns lock")
            .entry(path.to_string())
            .or_default()
            .clone();
        OpenTurn {
            guard: Some(lock.lock_owned().await),
            locks: self.locks.clone(),
            path: path.to_string(),
        }
    }

    /// Waits for an open of `path` in progress, if any, to end (without opening anything).
    pub(super) async fn wait_for_open(&self, path: &str) {
        let opening = self
            .locks
            .lock()
            .expect("open turns lock")
            .contains_key(path);
        if opening {
            drop(self.take(path).await);
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.locks.lock().expect("open turns lock").len()
    }
}

impl Drop for OpenTurn {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().expect("open turns lock");
        drop(self.guard.take());
        // Only the map holds it: nobody waits for this path.
        if locks
            .get(&self.path)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_open_of_a_path_at_a_time_and_nothing_left_behind() {
        let turns = Arc::new(OpenTurns::default());
        let first = turns.take("/a").await;
        let other_path = turns.take("/b").await;
        let waiter = tokio::spawn({
            let turns = turns.clone();
            async move { drop(turns.take("/a").await) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the second open of /a waits for the first"
        );
        drop(first);
        waiter.await.unwrap();
        drop(other_path);
        assert_eq!(turns.held(), 0);
    }

    #[tokio::test]
    async fn waiting_for_an_open_waits_only_while_one_is_in_progress() {
        let turns = Arc::new(OpenTurns::default());
        tokio::time::timeout(Duration::from_secs(1), turns.wait_for_open("/a"))
            .await
            .expect("nobody opens /a: no wait");
        assert_eq!(turns.held(), 0, "waiting opened nothing");
        let opening = turns.take("/a").await;
        let waiter = tokio::spawn({
            let turns = turns.clone();
            async move { turns.wait_for_open("/a").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while /a is being opened");
        drop(opening);
        waiter.await.unwrap();
        assert_eq!(turns.held(), 0);
    }
}
