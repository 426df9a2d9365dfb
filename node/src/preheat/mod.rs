//! Preheat: `POST /preheat` on the admin listener fetches every chunk of the objects it names
//! into the cluster before clients ask, and `GET /preheat/<id>` reports how far it got.
//!
//! Nothing here fetches by itself: each object is looked up and each of its chunks opened the way
//! a client request does (`Route::Cluster`), so the metadata's owner probes the object and every
//! chunk is fetched once for the cluster, by its owner, from the upstream; chunks already cached
//! anywhere in the cluster cost the upstream nothing. Bounded: a few chunk fetches at a time per
//! node (whatever the number of preheats), a bounded number of paths per preheat and of
//! preheats remembered.

mod progress;
pub mod request;
mod run;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use regex::RegexSet;
use tokio::sync::Semaphore;

use crate::{cache::Cache, fetch::ChunkFetcher, metrics::Registrar};
pub use progress::Report;
use progress::{Job, ObjectState};

/// Chunks being preheated at once on this node, across every preheat: enough to keep the
/// owners' upstream fetches busy, few enough that clients' own fetches keep their share.
const CHUNK_FETCHES: usize = 8;
/// Objects of one preheat worked on at once (their chunks share [`CHUNK_FETCHES`]).
const OBJECTS_AT_ONCE: usize = 4;
/// Preheats remembered for `GET /preheat/<id>`; the oldest finished one is forgotten first, and
/// a new preheat is refused while all of them still run.
pub const REMEMBERED: usize = 64;

#[derive(Clone)]
pub struct PreheatMetrics {
    pub started: prometheus::IntCounter,
    pub running: prometheus::IntGauge,
    pub objects: prometheus::IntCounterVec,
    pub chunks: prometheus::IntCounterVec,
    pub bytes: prometheus::IntCounter,
}

impl PreheatMetrics {
    pub fn new(r: &Registrar) -> Self {
        PreheatMetrics {
            started: r.counter(
                "casserole_preheat_started_total",
                "Preheats started (POST /preheat)",
            ),
            running: r.gauge("casserole_preheat_running", "Preheats not finished yet"),
            objects: r.counter_vec(
                "casserole_preheat_objects_total",
                "Preheated objects by result (done: every chunk cached; failed)",
                &["result"],
            ),
            chunks: r.counter_vec(
                "casserole_preheat_chunks_total",
                "Preheated chunks by where their bytes came from (failed: not fetched)",
                &["source"],
            ),
            bytes: r.counter(
                "casserole_preheat_bytes_total",
                "Body bytes read by preheats",
            ),
        }
    }
}

/// Why a preheat was not started.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{REMEMBERED} preheats are still running; try again once one finished")]
    Busy,
}

pub struct Preheater {
    cache: Arc<Cache>,
    fetcher: Arc<ChunkFetcher>,
    pass_through: RegexSet,
    /// Oldest first.
    jobs: Mutex<VecDeque<Arc<Job>>>,
    fetches: Arc<Semaphore>,
    metrics: PreheatMetrics,
}

impl Preheater {
    pub fn new(
        cache: Arc<Cache>,
        fetcher: Arc<ChunkFetcher>,
        pass_through: RegexSet,
        metrics: PreheatMetrics,
    ) -> Arc<Self> {
        Arc::new(Preheater {
            cache,
            fetcher,
            pass_through,
            jobs: Mutex::new(VecDeque::new()),
            fetches: Arc::new(Semaphore::new(CHUNK_FETCHES)),
            metrics,
        })
    }

    /// The paths of a `POST /preheat` body, or why it is refused (see [`request::parse`]).
    pub fn parse(&self, body: &[u8]) -> Result<Vec<String>, String> {
        request::parse(body, &self.pass_through)
    }

    /// Starts preheating `paths` in the background; returns the new preheat's id.
    pub fn start(
        self: &Arc<Self>,
        paths: Vec<String>,
        requested_by: String,
    ) -> Result<String, Refused> {
        let id = format!("{:016x}", rand::random::<u64>());
        let job = Arc::new(Job::new(id.clone(), requested_by, paths));
        {
            let mut jobs = self.jobs.lock().expect("preheat jobs lock");
            if jobs.len() >= REMEMBERED {
                let finished = jobs.iter().position(|j| j.is_finished());
                jobs.remove(finished.ok_or(Refused::Busy)?);
            }
            jobs.push_back(job.clone());
        }
        self.metrics.started.inc();
        self.metrics.running.inc();
        tracing::info!(preheat = %id, objects = job.paths().len(), requested_by = %job.requested_by,
            "preheat started");
        tokio::spawn(self.clone().run(job));
        Ok(id)
    }

    /// The progress of preheat `id`, while it is remembered.
    pub fn report(&self, id: &str) -> Option<Report> {
        let jobs = self.jobs.lock().expect("preheat jobs lock");
        jobs.iter().find(|j| j.id == id).map(|j| j.report())
    }

    fn count_object(&self, state: ObjectState) {
        let result = match state {
            ObjectState::Done => "done",
            _ => "failed",
        };
        self.metrics.objects.with_label_values(&[result]).inc();
    }
}
