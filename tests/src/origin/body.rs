//! Response bodies generated frame by frame, with pacing, stalls and truncation.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::watch;
use tokio::time::Instant;

use super::content::{Content, FRAME_SIZE};
use super::faults::STALL_DURATION;
use super::stats::{InFlight, Registry};

/// See the truncation branch of `State::next`.
const TRUNCATE_FLUSH_PAUSE: Duration = Duration::from_millis(100);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What a GET response body sends.
#[derive(Debug, Clone)]
pub(crate) struct BodyPlan {
    pub content: Content,
    /// First byte offset in the object.
    pub start: u64,
    /// Exclusive end offset.
    pub end: u64,
    pub throttle: Option<u64>,
    /// The origin's total capacity, shared with every other body.
    pub capacity: std::sync::Arc<super::capacity::Capacity>,
    pub stall_after: Option<u64>,
    pub truncate_after: Option<u64>,
}

pub(crate) fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn text(s: impl Into<String>) -> Body {
    http_body_util::Full::new(Bytes::from(s.into()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

struct State {
    plan: BodyPlan,
    sent: u64,
    started: Instant,
    buf: BytesMut,
    stats: Registry,
    path: String,
    shutdown: watch::Receiver<bool>,
    _in_flight: InFlight,
    done: bool,
}

/// Resolves when the origin shuts down (or its handle is gone).
pub(crate) async fn shut_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

impl State {
    /// Offset (relative to the body) at which sending stops for good or for a stall.
    fn limit(&self) -> u64 {
        let len = self.plan.end - self.plan.start;
        [Some(len), self.plan.stall_after, self.plan.truncate_after]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(len)
    }

    fn frame_len(&self) -> usize {
        // Slow throttles get small frames so pacing stays smooth instead of one sleep per 64 KiB.
        let cap = match self.plan.throttle {
            Some(rate) => (rate / 20).clamp(1024, FRAME_SIZE as u64) as usize,
            None => FRAME_SIZE,
        };
        cap.min((self.limit() - self.sent) as usize)
    }

    async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        if self.done {
            return None;
        }
        let len = self.plan.end - self.plan.start;
        if self.sent >= self.limit() {
            self.done = true;
            if self.sent >= len {
                return None;
            }
            if self.plan.stall_after.is_some_and(|s| self.sent >= s) {
                tokio::select! {
                    _ = tokio::time::sleep(STALL_DURATION) => {}
                    _ = shut_down(&mut self.shutdown) => {}
                }
                return Some(Err("test origin: stalled body abandoned".into()));
            }
            // hyper drops its unflushed write buffer when a body errors, so give it time to
            // flush what was "sent" first; then the error makes it abort the connection and the
            // client sees a short body rather than none.
            tokio::select! {
                _ = tokio::time::sleep(TRUNCATE_FLUSH_PAUSE) => {}
                _ = shut_down(&mut self.shutdown) => {}
            }
            return Some(Err("test origin: truncated body".into()));
        }
        let n = self.frame_len();
        if let Some(rate) = self.plan.throttle.filter(|r| *r > 0) {
            // Pace against the start time rather than per frame so timer slack doesn't accumulate.
            let due =
                self.started + Duration::from_secs_f64((self.sent + n as u64) as f64 / rate as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shut_down(&mut self.shutdown) => {
                    self.done = true;
                    return Some(Err("test origin: shutting down".into()));
                }
            }
        }
        if let Some(slot) = self.plan.capacity.reserve(n as u64) {
            tokio::select! {
                _ = tokio::time::sleep_until(slot) => {}
                _ = shut_down(&mut self.shutdown) => {
                    self.done = true;
                    return Some(Err("test origin: shutting down".into()));
                }
            }
        }
        // Reuses the allocation once hyper has dropped the previous frames.
        self.buf.reserve(n);
        self.buf.resize(n, 0);
        self.plan
            .content
            .fill(self.plan.start + self.sent, &mut self.buf[..n]);
        let frame = self.buf.split().freeze();
        self.sent += n as u64;
        self.stats
            .update(&self.path, |s| s.body_bytes_sent += n as u64);
        Some(Ok(Frame::data(frame)))
    }
}

/// `in_flight` marks the request as being answered until the body ends.
pub(crate) fn generated(
    plan: BodyPlan,
    stats: Registry,
    path: &str,
    shutdown: watch::Receiver<bool>,
    in_flight: InFlight,
) -> Body {
    let state = State {
        _in_flight: in_flight,
        plan,
        sent: 0,
        started: Instant::now(),
        buf: BytesMut::with_capacity(FRAME_SIZE),
        stats,
        path: path.to_string(),
        shutdown,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    });
    body_from_stream(stream)
}

fn body_from_stream(
    stream: impl Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static,
) -> Body {
    StreamBody::new(stream).boxed_unsync()
}
