//! One client connection's life: the first-bytes deadline, request tracking, and closing
//! connections that sit idle, so idle or half-open sockets cannot pile up until file
//! descriptors run out.
//!
//! hyper bounds the HTTP/1 request head (`header_read_timeout`) and answers dead HTTP/2 peers
//! with keep-alive pings, but it has no deadline for the HTTP/2-or-1 detection read, nor an
//! idle timeout for a live HTTP/2 connection that never opens a stream; those are here.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    net::TcpStream,
    sync::watch,
    time::{sleep_until, Instant},
};

use crate::body::{Body, BoxError, Parts};

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An idle connection asked to close gracefully gets this long to do so before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A client that started the HTTP/2 preface has this long to finish it (24 bytes, sent in one
/// packet by every real client), rather than holding its slot for the whole first-byte timeout.
const PREFACE_REST: Duration = Duration::from_secs(1);

/// Waits until the client has sent enough to tell HTTP/2 from HTTP/1 (the whole preface, or a
/// byte that rules it out). Returns false on EOF, or when a started preface does not complete
/// within [`PREFACE_REST`]. Peeking leaves the bytes for hyper.
pub async fn first_bytes(stream: &TcpStream) -> std::io::Result<bool> {
    first_bytes_within(stream, PREFACE_REST).await
}

async fn first_bytes_within(stream: &TcpStream, rest: Duration) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut partial_since: Option<Instant> = None;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return Ok(true);
        }
        if partial_since.get_or_insert_with(Instant::now).elapsed() > rest {
            tracing::debug!("HTTP/2 preface not completed within {rest:?}; closing");
            return Ok(false);
        }
        // A partial preface: peek would return the same bytes at once, so wait a little.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Requests in flight on one connection, when the last one started or ended, and when a
/// response body last made progress.
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` of the last request start or end; 0 = none yet.
    last_change_ms: AtomicU64,
    /// Milliseconds after `started` of the last body frame taken by the client (or response
    /// start).
    last_progress_ms: AtomicU64,
    /// Response bodies whose last poll found no bytes ready: the node, not the client, is
    /// what they wait for, so the connection does not count as stalled meanwhile.
    waiting_on_node: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            waiting_on_node: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64).max(1)
    }

    fn touch(&self) {
        let ms = self.now_ms();
        self.last_change_ms.store(ms, Ordering::Relaxed);
        self.last_progress_ms.store(ms, Ordering::Relaxed);
    }

    fn progressed(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// When a connection with a response in flight counts as stalled if its client takes no
    /// more bytes meanwhile.
    fn stall_deadline(&self, stalled: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) == 0
            || self.waiting_on_node.load(Ordering::Relaxed) > 0
        {
            return None;
        }
        let ms = self.last_progress_ms.load(Ordering::Relaxed);
        Some(self.started + Duration::from_millis(ms) + stalled)
    }

    /// Marks a request as started; it ends when the response body is finished or dropped.
    pub fn track(self: &Arc<Self>, res: Response<Body>) -> Response<Body> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        let guard = RequestGuard(self.clone());
        res.map(|inner| {
            let waiting = Arc::new(NodeWait {
                activity: self.clone(),
                waiting: Default::default(),
                task: Default::default(),
            });
            http_body_util::BodyExt::boxed_unsync(TrackedBody {
                inner,
                _guard: guard,
                node_waker: futures::task::waker(waiting.clone()),
                waiting,
            })
        })
    }

    /// When the connection counts as idle if nothing happens meanwhile: `head` after the
    /// connection opened while no request came yet, `idle` after the last response otherwise.
    fn idle_deadline(&self, head: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(match self.last_change_ms.load(Ordering::Relaxed) {
            0 => self.started + head,
            ms => self.started + Duration::from_millis(ms) + idle,
        })
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that ends its request's tracking when hyper drops it.
struct TrackedBody {
    inner: Body,
    _guard: RequestGuard,
    /// Whether the body waits for the node (its last poll found nothing ready), shared with
    /// the waker that ends the wait.
    waiting: Arc<NodeWait>,
    /// The waker the body is polled with: ends the wait, then wakes hyper's task.
    node_waker: std::task::Waker,
}

/// A body's wait for the node's bytes. While it lasts the connection does not count as
/// stalled; when the node's bytes become ready the stall clock starts from that moment, so a
/// client that then takes nothing is still caught.
struct NodeWait {
    activity: Arc<Activity>,
    waiting: std::sync::atomic::AtomicBool,
    /// hyper's waker for this body's task.
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl NodeWait {
    fn start(&self) {
        if !self.waiting.swap(true, Ordering::AcqRel) {
            self.activity
                .waiting_on_node
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The node has bytes for the client (or the body is done): from now on, it is up to the
    /// client to take them.
    fn end(&self) {
        if self.waiting.swap(false, Ordering::AcqRel) {
            self.activity.progressed();
            self.activity
                .waiting_on_node
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl futures::task::ArcWake for NodeWait {
    fn wake_by_ref(this: &Arc<Self>) {
        this.end();
        if let Some(task) = this.task.lock().expect("waker lock").as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.waiting.end();
    }
}

impl HttpBody for TrackedBody {
    type Data = Parts;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Parts>, BoxError>>> {
        {
            let mut task = self.waiting.task.lock().expect("waker lock");
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let this = &mut *self;
        let polled =
            Pin::new(&mut this.inner).poll_frame(&mut Context::from_waker(&this.node_waker));
        match &polled {
            Poll::Pending => self.waiting.start(),
            Poll::Ready(item) => {
                self.waiting.end();
                if matches!(item, Some(Ok(_))) {
                    self._guard.0.progressed();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once `shutdown` flips (or its sender is gone); holds no borrow of the value.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pub struct Deadlines {
    pub request_head: Duration,
    pub idle: Duration,
    /// A response whose client takes no bytes for this long is dropped, with the chunks it
    /// holds (`--client-idle-timeout`).
    pub stalled: Duration,
}

/// Drives `conn` to its end. It is asked to close gracefully (`close`) when the listener shuts down or
/// when it has been idle (no request in flight) past its deadline; an idle connection that does
/// not close within [`CLOSE_GRACE`] is dropped.
pub async fn drive<C, E>(
    conn: C,
    close: impl Fn(Pin<&mut C>),
    activity: Arc<Activity>,
    deadlines: Deadlines,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let mut drop_at: Option<Instant> = None;
    loop {
        let idle_at = match (
            closing,
            activity.idle_deadline(deadlines.request_head, deadlines.idle),
        ) {
            (false, Some(at)) => at,
            // Busy (or already closing): look again later.
            _ => Instant::now() + deadlines.idle.min(deadlines.request_head),
        };
        let stall_at = activity
            .stall_deadline(deadlines.stalled)
            .unwrap_or_else(|| Instant::now() + deadlines.stalled);
        tokio::select! {
            done = conn.as_mut() => return done,
            _ = sleep_until(stall_at) => {
                let stalled = activity
                    .stall_deadline(deadlines.stalled)
                    .is_some_and(|at| at <= Instant::now());
                if stalled {
                    // A client that stopped reading will not take a graceful close either.
                    tracing::debug!("client took no bytes for {:?}; closing", deadlines.stalled);
                    return Ok(());
                }
            }
            _ = stopped(&mut shutdown), if !closing => {
                close(conn.as_mut());
                closing = true;
            }
            _ = sleep_until(idle_at), if !closing => {
                let still_idle = activity
                    .idle_deadline(deadlines.request_head, deadlines.idle)
                    .is_some_and(|at| at <= Instant::now());
                if still_idle {
                    close(conn.as_mut());
                    closing = true;
                    drop_at = Some(Instant::now() + CLOSE_GRACE);
                }
            }
            _ = sleep_until(drop_at.unwrap_or_else(Instant::now)), if drop_at.is_some() => {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::connected_pair;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_preface_left_half_sent_is_given_up_on() {
        let (mut client, server) = connected_pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let started = std::time::Instant::now();
        let rest = Duration::from_millis(200);
        assert!(!first_bytes_within(&server, rest).await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(2));
        // A whole preface, or HTTP/1, is told at once.
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        assert!(first_bytes_within(&server, rest).await.unwrap());
    }
}
