//! How far each reader of a whole-only object has got, so its whole-object stream (`feed`) can
//! keep pace with the slowest one.
//!
//! A stream cuts the object into chunks at the upstream's pace; a reader follows the chunks it
//! has opened (each a flight that holds its bytes). A chunk the stream passed before a reader
//! opened it is only in the memory tier, which may not keep it: an object larger than the tier,
//! or a tier full of hotter entries. For a version without a validator no other response may
//! supply the chunk, so the reader's response would be cut short; with one, a second stream
//! would fetch the rest of the object again. So a stream cuts a chunk only once every reader
//! that will want it has opened it — a reader leads the stream by its read-ahead window, and
//! a slow client slows the upstream read as it would reading directly.
//!
//! A reader counts once it has handed out bytes, and no longer once it has not moved for
//! [`STALLED_AFTER`]: one stalled client must not stall every other client of the object, and a
//! reader that came too late for this stream (it waits for the stream to end, see
//! `feed::Joined::Passed`) must not hold it back.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// How long a reader may stand still before its stream stops waiting for it.
pub(super) const STALLED_AFTER: Duration = Duration::from_secs(5);

/// The readers of whole-only objects, by version.
pub(super) struct StreamReaders {
    by_version: Mutex<HashMap<Arc<str>, Arc<Readers>>>,
    /// What the readers' clocks count from (tokio's clock: tests can pause it).
    epoch: Instant,
}

/// The readers of one version.
#[derive(Default)]
struct Readers {
    positions: Mutex<Vec<Weak<Position>>>,
    /// Told when a reader opens a chunk or goes away.
    moved: Notify,
}

struct Position {
    /// The first chunk the reader has not opened yet.
    next: AtomicU64,
    /// The last chunk it will read.
    last: u64,
    /// When it last handed out bytes, in milliseconds since the registry's epoch ([`NEVER`]
    /// before its first).
    moved_at: AtomicU64,
}

const NEVER: u64 = u64::MAX;

/// One reader's place in a version's readers; leaves them when dropped.
pub struct Cursor {
    position: Arc<Position>,
    readers: Arc<Readers>,
    registry: Arc<StreamReaders>,
    version: Arc<str>,
}

impl StreamReaders {
    pub(super) fn new() -> Self {
        StreamReaders {
            by_version: Mutex::default(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A reader of `version` about to open chunk `first`, reading up to chunk `last`.
    pub(super) fn enter(self: &Arc<Self>, version: &Arc<str>, first: u64, last: u64) -> Cursor {
        let position = Arc::new(Position {
            next: AtomicU64::new(first),
            last,
            moved_at: AtomicU64::new(NEVER),
        });
        let readers = {
            let mut map = self.by_version.lock().expect("stream readers lock");
            map.entry(version.clone()).or_default().clone()
        };
        readers
            .positions
            .lock()
            .expect("stream readers lock")
            .push(Arc::downgrade(&position));
        Cursor {
            position,
            readers,
            registry: self.clone(),
            version: version.clone(),
        }
    }

    /// Waits until chunk `index` of `version` may be cut: every reader that will read it and
    /// has moved lately has opened it.
    pub(super) async fn until_opened(&self, version: &str, index: u64) {
        let Some(readers) = self.readers_of(version) else {
            return;
        };
        loop {
            let moved = readers.moved.notified();
            let mut moved = std::pin::pin!(moved);
            // Registered before the check: a reader moving in between still wakes it.
            moved.as_mut().enable();
            let Some(stalls_in) = self.lagging(&readers, index) else {
                return;
            };
            // A reader that stops moving is not announced: looked at again once it would
            // count as stalled.
            let _ = tokio::time::timeout(stalls_in, moved).await;
        }
    }

    fn readers_of(&self, version: &str) -> Option<Arc<Readers>> {
        let map = self.by_version.lock().expect("stream readers lock");
        map.get(version).cloned()
    }

    /// How long until the readers that have not opened chunk `index` yet (but will read it)
    /// all count as stalled; `None` when there are none of those left.
    fn lagging(&self, readers: &Readers, index: u64) -> Option<Duration> {
        let now = self.now_ms();
        let stalled_after = STALLED_AFTER.as_millis() as u64;
        let positions = readers.positions.lock().expect("stream readers lock");
        positions
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| p.last >= index && p.next.load(Ordering::Acquire) <= index)
            .map(|p| p.moved_at.load(Ordering::Relaxed))
            .filter(|moved_at| *moved_at != NEVER)
            .map(|moved_at| now.saturating_sub(moved_at))
            .filter(|still| *still < stalled_after)
            .map(|still| Duration::from_millis(stalled_after - still))
            .max()
    }
}

impl Cursor {
    /// The reader has opened every chunk before `next`.
    pub(super) fn opened_to(&self, next: u64) {
        if self.position.next.swap(next, Ordering::AcqRel) < next {
            self.readers.moved.notify_waiters();
        }
    }

    /// The reader handed out bytes.
    pub(super) fn moved(&self) {
        let now = self.registry.now_ms();
        self.position.moved_at.store(now, Ordering::Relaxed);
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        {
            let mut positions = self.readers.positions.lock().expect("stream readers lock");
            let me = Arc::downgrade(&self.position);
            positions.retain(|p| p.strong_count() > 0 && !p.ptr_eq(&me));
            if positions.is_empty() {
                let mut map = self
                    .registry
                    .by_version
                    .lock()
                    .expect("stream readers lock");
                // Still these readers (a new reader may have replaced an emptied entry).
                if map
                    .get(&self.version)
                    .is_some_and(|r| Arc::ptr_eq(r, &self.readers))
                {
                    map.remove(&self.version);
                }
            }
        }
        self.readers.moved.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_waits_for_a_moving_reader_to_open_the_chunk() {
        let registry = Arc::new(StreamReaders::new());
        let version: Arc<str> = Arc::from("v1");
        let reader = registry.enter(&version, 0, 9);
        reader.opened_to(3);
        // Not counted before its first bytes.
        registry.until_opened("v1", 3).await;
        reader.moved();
        // Chunks 0..3 are opened; chunk 3 is not.
        registry.until_opened("v1", 2).await;
        let waiting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.until_opened("v1", 3).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "cut before the reader opened it");
        reader.opened_to(4);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken when the reader opened it")
            .unwrap();
        // A chunk past the reader's range does not wait for it; other versions neither.
        registry.until_opened("v1", 10).await;
        registry.until_opened("v2", 0).await;
    }

    #[tokio::test]
    async fn a_reader_that_leaves_or_stalls_holds_nothing_back() {
        let registry = Arc::new(StreamReaders::new());
        let version: Arc<str> = Arc::from("v1");
        let reader = registry.enter(&version, 0, 9);
        reader.moved();
        let waiting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.until_opened("v1", 1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(reader);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken when the reader left")
            .unwrap();
        assert!(registry.readers_of("v1").is_none(), "entry removed");

        tokio::time::pause();
        let stalled = registry.enter(&version, 0, 9);
        stalled.moved();
        let started = Instant::now();
        // The clock is paused and moves on only when every task waits for a timer: the wait
        // ends because the reader came to count as stalled, not because it moved.
        registry.until_opened("v1", 1).await;
        assert!(
            started.elapsed() >= STALLED_AFTER,
            "{:?}",
            started.elapsed()
        );
        stalled.opened_to(2);
    }
}
