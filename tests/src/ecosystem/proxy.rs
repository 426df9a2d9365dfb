//! A transparent HTTP/1.1 proxy in front of an origin that records every exchange and counts
//! the response body bytes it passes: the origin's cost, measured the same way for nginx,
//! verdaccio, pypiserver and docker-registry.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// The request target as sent (path and query, encoding untouched).
    pub target: String,
    pub status: u16,
    /// Response body bytes passed so far.
    pub body_bytes: u64,
    pub range: Option<String>,
}

#[derive(Debug)]
struct Entry {
    method: String,
    target: String,
    range: Option<String>,
    status: AtomicU64,
    body_bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    log: Mutex<Vec<Arc<Entry>>>,
    /// Exchanges whose response body has not ended yet.
    in_flight: AtomicUsize,
    /// Bumped by every frame and every new request: `settle` waits for it to stand still.
    activity: AtomicU64,
}

/// The proxy; dropping it stops it.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on a free 127.0.0.1 port and forwards everything to `upstream` (host:port).
    pub async fn start(upstream: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        forward(req, upstream, shared.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CountingProxy { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, what the node's `--upstream` points at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every exchange so far, in arrival order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let log = self.shared.log.lock().unwrap();
        log.iter()
            .map(|e| Exchange {
                method: e.method.clone(),
                target: e.target.clone(),
                status: e.status.load(Ordering::Relaxed) as u16,
                body_bytes: e.body_bytes.load(Ordering::Relaxed),
                range: e.range.clone(),
            })
            .collect()
    }

    /// Response body bytes of the exchanges whose target `matches`.
    pub fn body_bytes(&self, matches: impl Fn(&str) -> bool) -> u64 {
        self.exchanges()
            .iter()
            .filter(|e| matches(&e.target))
            .map(|e| e.body_bytes)
            .sum()
    }

    /// A summary of the exchanges, one line each, for assertion messages.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for e in self.exchanges() {
            out.push_str(&format!(
                "{} {} -> {} {} B{}\n",
                e.method,
                e.target,
                e.status,
                e.body_bytes,
                e.range.map(|r| format!(" ({r})")).unwrap_or_default()
            ));
        }
        out
    }

    /// Waits (at most 30 s) until no response body is in flight and nothing moved for
    /// 500 ms: a node may still be filling its cache after its client is done.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.shared.activity.load(Ordering::SeqCst);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.shared.activity.load(Ordering::SeqCst);
            if now != last || self.shared.in_flight.load(Ordering::SeqCst) > 0 {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(500) {
                return;
            }
        }
        panic!("the origin was still busy after 30 s:\n{}", self.report());
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
        if std::thread::panicking() {
            eprintln!("--- what the origin saw ---\n{}--- end ---", self.report());
        }
    }
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let entry = Arc::new(Entry {
        method: req.method().to_string(),
        target: target.clone(),
        range: req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: AtomicU64::new(0),
        body_bytes: AtomicU64::new(0),
    });
    shared.log.lock().unwrap().push(entry.clone());
    shared.activity.fetch_add(1, Ordering::SeqCst);
    let (mut parts, body) = req.into_parts();
    parts.uri = target.parse().expect("origin-form target");
    let response = match send(Request::from_parts(parts, body), upstream).await {
        Ok(r) => r,
        Err(e) => {
            entry.status.store(502, Ordering::Relaxed);
            let body = Full::new(Bytes::from(format!("proxy: upstream failed: {e}\n")))
                .map_err(|never| match never {})
                .boxed_unsync();
            return Ok(Response::builder().status(502).body(body).unwrap());
        }
    };
    entry
        .status
        .store(u64::from(response.status().as_u16()), Ordering::Relaxed);
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    Ok(response.map(|inner| {
        CountingBody {
            inner,
            entry,
            shared,
            ended: false,
        }
        .boxed_unsync()
    }))
}

async fn send(req: Request<Incoming>, upstream: SocketAddr) -> anyhow::Result<Response<Incoming>> {
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

/// The origin's response body, counted frame by frame.
struct CountingBody {
    inner: Incoming,
    entry: Arc<Entry>,
    shared: Arc<Shared>,
    ended: bool,
}

impl CountingBody {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.shared.activity.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.entry
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.shared.activity.fetch_add(1, Ordering::SeqCst);
                }
            }
            Poll::Ready(_) => self.end(),
            Poll::Pending => {}
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

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.end();
    }
}
