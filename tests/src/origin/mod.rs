//! A test origin that serves generated objects: any size, any range, no storage, with
//! injectable faults, throttling and request statistics.
//!
//! ```no_run
//! # async fn demo() {
//! use casserole_tests::origin::{Fault, ObjectSpec, Origin};
//! let origin = Origin::start().await;
//! let info = origin.put("/big.bin", ObjectSpec::new(256 << 20).seed(7));
//! origin.set_fault("/big.bin", Fault::Status(503), Some(1)); // the next GET fails, then it heals
//! println!("{}/big.bin has sha256 {}", origin.url(), info.sha256());
//! # }
//! ```

mod body;
mod capacity;
pub mod content;
mod faults;
mod handler;
mod spec;
mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use content::Content;
pub use faults::{
    Fault, FaultScope, CONTENT_LENGTH_LIE_EXTRA, STALL_DURATION, WRONG_CONTENT_RANGE_SHIFT,
};
pub use spec::{EtagMode, ObjectInfo, ObjectSpec};
pub use stats::Stats;

use faults::FaultRule;
use spec::ObjectState;

/// How long shutdown lets open connections finish before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct State {
    objects: HashMap<String, ObjectState>,
    faults: HashMap<String, Vec<FaultRule>>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    stats: stats::Registry,
    /// `true` once the origin is stopping; bodies that pace, stall or delay watch it so
    /// shutdown never waits on them.
    shutdown: watch::Sender<bool>,
    /// Bytes/s for objects without their own throttle; 0 = unlimited.
    default_throttle: AtomicU64,
    /// Microseconds every answer waits for objects without their own latency; 0 = none.
    default_latency_us: AtomicU64,
    /// The cap on all bodies together (`set_total_throttle`).
    capacity: Arc<capacity::Capacity>,
}

impl Shared {
    fn default_throttle(&self) -> Option<u64> {
        Some(self.default_throttle.load(Ordering::Relaxed)).filter(|r| *r > 0)
    }

    fn default_latency(&self) -> Duration {
        Duration::from_micros(self.default_latency_us.load(Ordering::Relaxed))
    }
}

/// Stops the server when the last `Origin` handle is dropped.
struct StopOnDrop {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Handle to a running test origin; clones share the server, which stops when the last
/// handle drops or on [`Origin::shutdown`].
#[derive(Clone)]
pub struct Origin {
    shared: Arc<Shared>,
    stop: Arc<StopOnDrop>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("addr", &self.addr).finish()
    }
}

impl Origin {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub async fn start() -> Origin {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`; panics if it cannot bind (use [`Origin::try_start_on`] to handle that).
    pub async fn start_on(addr: SocketAddr) -> Origin {
        Self::try_start_on(addr)
            .await
            .unwrap_or_else(|e| panic!("test origin cannot bind {addr}: {e}"))
    }

    pub async fn try_start_on(addr: SocketAddr) -> std::io::Result<Origin> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stats: stats::Registry::default(),
            shutdown: watch::Sender::new(false),
            default_throttle: AtomicU64::new(0),
            default_latency_us: AtomicU64::new(0),
            capacity: Arc::default(),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        let stop = Arc::new(StopOnDrop {
            shared: shared.clone(),
            task: Mutex::new(Some(task)),
        });
        Ok(Origin { shared, stop, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds or replaces the object at `path` (path, or path with query). Replacing keeps the
    /// content version, so changing only headers keeps the bytes; a new seed or size gives new
    /// bytes, a new `ETag` and a later `Last-Modified`.
    pub fn put(&self, path: &str, spec: ObjectSpec) -> ObjectInfo {
        let mut state = self.shared.state.lock().unwrap();
        let obj = match state.objects.remove(path) {
            Some(old) => {
                let same_bytes = old.spec.seed == spec.seed && old.spec.size == spec.size;
                let modified = if same_bytes {
                    old.modified
                } else {
                    spec::later(old.modified)
                };
                ObjectState {
                    spec,
                    version: old.version,
                    modified,
                }
            }
            // An hour in the past, so a fresh object is not "modified in the future" for anyone.
            None => ObjectState {
                spec,
                version: 0,
                modified: spec::whole_seconds(SystemTime::now() - Duration::from_secs(3600)),
            },
        };
        let info = obj.info(path);
        state.objects.insert(path.to_string(), obj);
        info
    }

    /// Removes the object (it answers 404 from now on).
    pub fn remove(&self, path: &str) {
        self.shared.state.lock().unwrap().objects.remove(path);
    }

    /// Current version of the object; panics if there is none.
    pub fn info(&self, path: &str) -> ObjectInfo {
        let state = self.shared.state.lock().unwrap();
        state
            .objects
            .get(path)
            .unwrap_or_else(|| panic!("test origin has no object {path}"))
            .info(path)
    }

    /// New content version: new bytes, `ETag` and `Last-Modified`. Panics on an unknown path.
    pub fn bump_version(&self, path: &str) -> ObjectInfo {
        let mut state = self.shared.state.lock().unwrap();
        let obj = state
            .objects
            .get_mut(path)
            .unwrap_or_else(|| panic!("test origin has no object {path}"));
        obj.bump();
        obj.info(path)
    }

    /// Injects `fault` for the path with its default scope ([`Fault::default_scope`]).
    /// `times`: `None` until cleared, `Some(n)` for the next n matching requests.
    pub fn set_fault(&self, path: &str, fault: Fault, times: Option<u32>) {
        let scope = fault.default_scope();
        self.set_fault_scoped(path, fault, scope, times);
    }

    /// Like [`Origin::set_fault`] with an explicit scope (e.g. only range GETs).
    pub fn set_fault_scoped(
        &self,
        path: &str,
        fault: Fault,
        scope: FaultScope,
        times: Option<u32>,
    ) {
        if times == Some(0) {
            return;
        }
        if fault == Fault::ChangeVersionAfter(0) {
            self.bump_version(path);
            return;
        }
        let mut state = self.shared.state.lock().unwrap();
        state
            .faults
            .entry(path.to_string())
            .or_default()
            .push(FaultRule {
                fault,
                scope,
                remaining: times,
            });
    }

    pub fn clear_faults(&self, path: &str) {
        self.shared.state.lock().unwrap().faults.remove(path);
    }

    pub fn clear_all_faults(&self) {
        self.shared.state.lock().unwrap().faults.clear();
    }

    /// Pace every body of objects without their own throttle; `None` = unlimited.
    pub fn set_default_throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .default_throttle
            .store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// Caps the bytes/s of all bodies together, whatever their own throttle (`None` = no cap):
    /// an origin whose total capacity does not grow with more connections.
    pub fn set_total_throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared.capacity.set(bytes_per_sec);
    }

    /// Wait this long before answering every request (headers included) about objects without
    /// their own latency, like an origin in another region; `None` = answer at once.
    pub fn set_default_latency(&self, latency: Option<Duration>) {
        let micros = latency.map_or(0, |l| l.as_micros().min(u64::MAX as u128) as u64);
        self.shared
            .default_latency_us
            .store(micros, Ordering::Relaxed);
    }

    /// Counters over all paths (unknown ones included).
    pub fn stats(&self) -> Stats {
        self.shared.stats.total()
    }

    pub fn path_stats(&self, path: &str) -> Stats {
        self.shared.stats.path(path)
    }

    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Stops accepting, ends stalled and paced bodies, gives open connections a short grace
    /// period and waits for the server task. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let task = self.stop.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = body::shut_down(&mut stop) => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // E.g. EMFILE: back off instead of spinning.
                        tracing::warn!("test origin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |req| handler::handle(shared.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    let _ = conn.await;
                });
            }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    connections.shutdown().await;
}

#[cfg(test)]
mod tests;
