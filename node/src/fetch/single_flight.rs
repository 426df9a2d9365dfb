//! Single flight, written once: one fetch per chunk per node, whoever starts it (a range fetch,
//! the probe's body, a whole-object stream).
//!
//! A fetch is *claimed* in the in-flight map; readers that want the chunk meanwhile *join* it;
//! the claim holds the chunk's share of the fetch memory budget (shown in
//! `casserole_fetch_flight_bytes`) and ends in one of two ways:
//! * *complete*: the memory tier keeps the chunk, then the readers get its last bytes (held back
//!   until now, so a client that has every byte and asks again finds a hit), then the other
//!   stores keep it, and only then does the flight leave the map (until then it answers as a
//!   hit: the memory tier may have turned the chunk away while the disk still writes it);
//! * *fail* (or dropped: a panic, a cancelled task): the flight leaves the map and its readers
//!   see the failure, so the next request fetches the chunk afresh.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::flight::{ChunkReader, Flight};
use crate::{
    object::ChunkKey,
    source::{Chunk, ChunkSource, FetchError, SourceKind},
    tier::memory::MemoryTier,
};

/// The chunks being fetched on this node, and the memory their bytes may use.
pub(super) struct Flights {
    map: Mutex<HashMap<ChunkKey, Arc<Flight>>>,
    memory: Arc<MemoryTier>,
    /// Bytes of chunks being fetched, not yet in the memory tier: with the tier's own bound this
    /// keeps all chunk memory within `--max-memory-usage`, however many requests are in flight.
    budget: Arc<Semaphore>,
    /// `casserole_fetch_flight_bytes`: the budget held by fetches under way.
    gauge: prometheus::IntGauge,
    /// How long a fetch that may wait waits for memory before failing with `Busy` (503).
    wait: Duration,
    /// Versions purged while fetches of theirs may still run: those fetches finish for their
    /// readers, but no store keeps their chunks (a purge is not undone by a late chunk).
    /// When each was purged: fetches claimed later (the version looked up again, unchanged)
    /// keep theirs.
    forgotten: moka::future::Cache<Arc<str>, Instant>,
}

/// Purged versions remembered (a version is never fetched again once its metadata is gone, so
/// this only has to outlive the fetches already running).
const FORGOTTEN_VERSIONS: u64 = 100_000;
const FORGOTTEN_FOR: Duration = Duration::from_secs(3600);

/// How often a fetch waiting for memory has the memory tier release what it evicted.
const SETTLE_EVERY: Duration = Duration::from_millis(20);

/// What a caller that wants a chunk gets.
pub(super) enum Claimed {
    /// In memory, or a finished flight whose stores are still writing.
    Hit(Chunk),
    /// Another fetch has it: this reader follows that fetch.
    Joined(ChunkReader),
    /// The caller fetches it.
    Led(Claim),
}

impl Flights {
    pub(super) fn new(
        memory: Arc<MemoryTier>,
        budget_bytes: u64,
        gauge: prometheus::IntGauge,
        wait: Duration,
    ) -> Arc<Self> {
        Arc::new(Flights {
            map: Mutex::default(),
            memory,
            budget: Arc::new(Semaphore::new(budget_bytes as usize)),
            gauge,
            wait,
            forgotten: moka::future::Cache::builder()
                .max_capacity(FORGOTTEN_VERSIONS)
                .time_to_live(FORGOTTEN_FOR)
                .build(),
        })
    }

    /// From now on no chunk of `version` is kept, whatever fetch of it is still running.
    pub(super) async fn forget(&self, version: &str) {
        self.forgotten
            .insert(Arc::from(version), Instant::now())
            .await;
    }

    /// Whether `key`'s version was purged after a fetch claimed at `claimed` began.
    async fn forgotten_since(&self, key: &ChunkKey, claimed: Instant) -> bool {
        self.forgotten
            .get(&key.version)
            .await
            .is_some_and(|purged| purged >= claimed)
    }

    /// A hit, the running fetch to join, or a new fetch for the caller to run (its memory share
    /// is reserved with [`Claim::reserve`]).
    pub(super) fn claim(self: &Arc<Self>, key: &ChunkKey) -> Claimed {
        if let Some(chunk) = self.memory.ready(key) {
            return Claimed::Hit(chunk);
        }
        let mut map = self.map.lock().expect("flights lock");
        match self.had(&map, key) {
            Some(had) => had,
            None => Claimed::Led(self.insert(&mut map, key, None)),
        }
    }

    /// Like [`Flights::claim`] for a chunk ahead of the one its reader waits for: a new fetch
    /// only with its `bytes` of memory free now, else `None`. Read-ahead that waited for memory
    /// could hold what the chunks readers wait for need.
    pub(super) fn claim_ahead(self: &Arc<Self>, key: &ChunkKey, bytes: u32) -> Option<Claimed> {
        if let Some(chunk) = self.memory.ready(key) {
            return Some(Claimed::Hit(chunk));
        }
        let permit = self.budget.clone().try_acquire_many_owned(bytes).ok();
        let mut map = self.map.lock().expect("flights lock");
        if let Some(had) = self.had(&map, key) {
            return Some(had);
        }
        let budget = Budget::new(permit?, &self.gauge, bytes);
        Some(Claimed::Led(self.insert(&mut map, key, Some(budget))))
    }

    /// A running or finished flight of `key`, or the chunk in memory, under the map's lock.
    fn had(&self, map: &HashMap<ChunkKey, Arc<Flight>>, key: &ChunkKey) -> Option<Claimed> {
        if let Some(flight) = map.get(key) {
            return Some(match flight.finished() {
                Some(chunk) => Claimed::Hit(chunk),
                None => Claimed::Joined(flight.follow(true)),
            });
        }
        // A flight completes by filling memory and then leaving the map, both before we took
        // the lock or both after: checking memory again here means a chunk is never fetched
        // twice.
        self.memory.ready(key).map(Claimed::Hit)
    }

    /// A new fetch of `key` for a caller that cannot wait for memory (a whole-object stream
    /// reading on): only when the chunk is neither held nor being fetched and `bytes` of memory
    /// are free now.
    pub(super) fn claim_now(self: &Arc<Self>, key: &ChunkKey, bytes: u32) -> Option<Claim> {
        if self.memory.contains(key) {
            return None;
        }
        let permit = self.budget.clone().try_acquire_many_owned(bytes).ok()?;
        let mut map = self.map.lock().expect("flights lock");
        if self.memory.contains(key) || map.contains_key(key) {
            return None;
        }
        let budget = Budget::new(permit, &self.gauge, bytes);
        Some(self.insert(&mut map, key, Some(budget)))
    }

    fn insert(
        self: &Arc<Self>,
        map: &mut HashMap<ChunkKey, Arc<Flight>>,
        key: &ChunkKey,
        budget: Option<Budget>,
    ) -> Claim {
        let flight = Arc::new(Flight::new());
        map.insert(key.clone(), flight.clone());
        Claim {
            flights: self.clone(),
            key: key.clone(),
            flight,
            budget,
            claimed: Instant::now(),
        }
    }

    /// Removes `flight` from the map unless a newer flight took its place.
    fn leave(&self, key: &ChunkKey, flight: &Arc<Flight>) {
        let mut map = self.map.lock().expect("flights lock");
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.map.lock().expect("flights lock").is_empty()
    }
}

/// A flight's share of the fetch memory budget, shown in `casserole_fetch_flight_bytes` while
/// the fetch runs.
struct Budget {
    permit: Option<OwnedSemaphorePermit>,
    gauge: prometheus::IntGauge,
    bytes: i64,
}

impl Budget {
    fn new(permit: OwnedSemaphorePermit, gauge: &prometheus::IntGauge, bytes: u32) -> Self {
        gauge.add(i64::from(bytes));
        Budget {
            permit: Some(permit),
            gauge: gauge.clone(),
            bytes: i64::from(bytes),
        }
    }

    /// The fetch is over: its memory share now goes with the chunk (see `Chunk::pinned`).
    fn into_pin(mut self) -> Arc<OwnedSemaphorePermit> {
        Arc::new(self.permit.take().expect("taken once"))
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// One claimed fetch. However it ends (completed, failed, or dropped by a panic or a cancelled
/// task), its flight leaves the map and no reader waits forever.
pub(super) struct Claim {
    flights: Arc<Flights>,
    key: ChunkKey,
    flight: Arc<Flight>,
    budget: Option<Budget>,
    claimed: Instant,
}

impl Claim {
    /// Whether a purge removed this fetch's version since it was claimed.
    async fn purged(&self) -> bool {
        self.flights.forgotten_since(&self.key, self.claimed).await
    }

    pub(super) fn flight(&self) -> &Flight {
        &self.flight
    }

    /// The flight itself, to see later whether anyone still follows it.
    pub(super) fn shared_flight(&self) -> Arc<Flight> {
        self.flight.clone()
    }

    pub(super) fn key(&self) -> &ChunkKey {
        &self.key
    }

    /// The claimant's own reader: it leads the fetch (not collapsed onto another's).
    pub(super) fn follow(&self) -> ChunkReader {
        self.flight.follow(false)
    }

    /// Reserves the chunk's `bytes` of the memory budget, waiting for readers to let go of
    /// theirs for a while; `Busy` if they do not.
    pub(super) async fn reserve(&mut self, bytes: u32) -> Result<(), FetchError> {
        if self.budget.is_some() {
            return Ok(());
        }
        let wait = self.flights.wait;
        let acquire = async {
            let acquire = self.flights.budget.clone().acquire_many_owned(bytes);
            tokio::pin!(acquire);
            loop {
                // The memory tier lets go of what it evicts (and of its memory) in moka's
                // deferred maintenance, which storing or reading a chunk runs; while every
                // reader waits for memory nothing does, and a fetch could wait for memory the
                // tier was about to free (measured: 16 clients of a disk-tier object on a 16Mi
                // node stalled for seconds at a time until something touched the tier).
                self.flights.memory.settle();
                if let Ok(permit) = tokio::time::timeout(SETTLE_EVERY, &mut acquire).await {
                    break permit;
                }
            }
        };
        match tokio::time::timeout(wait, acquire).await {
            Ok(permit) => {
                let permit = permit.expect("the flight budget is never closed");
                self.budget = Some(Budget::new(permit, &self.flights.gauge, bytes));
                Ok(())
            }
            Err(_) => {
                tracing::warn!(chunk = %self.key, ?wait, "no memory budget for a chunk fetch");
                Err(FetchError::Busy(wait))
            }
        }
    }

    /// Reserves the chunk's `bytes` of the memory budget only if they are free now.
    pub(super) fn try_reserve(&mut self, bytes: u32) -> bool {
        if self.budget.is_some() {
            return true;
        }
        match self.flights.budget.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => {
                self.budget = Some(Budget::new(permit, &self.flights.gauge, bytes));
                true
            }
            Err(_) => false,
        }
    }

    /// The whole chunk is here: the memory tier keeps it, then the readers get its last bytes
    /// (`tail`). The other stores keep it with [`Completing::store`].
    pub(super) async fn complete(
        mut self,
        chunk: Chunk,
        tail: Bytes,
        served_by: SourceKind,
    ) -> Completing {
        // The chunk's bytes stay counted while the tier or any reader holds them, so chunks
        // pinned by readers (stalled ones included) hold back new fetches instead of growing
        // the process past --max-memory-usage.
        let budget = self
            .budget
            .take()
            .expect("a completed fetch reserved its memory");
        let pin = budget.into_pin();
        let chunk = chunk.pinned(pin.clone());
        self.flight.hold(pin);
        if !self.purged().await {
            self.flights.memory.keep(&self.key, &chunk, served_by).await;
        }
        self.flight.finish(chunk.clone(), tail);
        Completing {
            claim: self,
            chunk,
            served_by,
        }
    }

    /// The fetch failed: the flight leaves the map first, so a reader retrying after the
    /// failure starts a new one.
    pub(super) fn fail(self, error: FetchError) {
        self.flights.leave(&self.key, &self.flight);
        self.flight.fail(error);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.flights.leave(&self.key, &self.flight);
        if self.flight.is_running() {
            self.flight.fail(FetchError::Abandoned);
        }
    }
}

/// A completed fetch whose chunk the other stores have yet to keep; its flight answers as a hit
/// until they have.
pub(super) struct Completing {
    claim: Claim,
    chunk: Chunk,
    served_by: SourceKind,
}

impl Completing {
    /// The other stores keep the chunk; then the flight leaves the map (dropping the claim).
    pub(super) async fn store(self, stores: &[Arc<dyn ChunkSource>]) {
        for store in stores {
            if store.kind() != SourceKind::Memory && !self.claim.purged().await {
                store
                    .keep(&self.claim.key, &self.chunk, self.served_by)
                    .await;
            }
        }
    }
}
