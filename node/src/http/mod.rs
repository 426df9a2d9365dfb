//! HTTP listeners: the client front, the admin endpoints, and the server loop they share with
//! the peer API.

pub mod admin;
pub mod cache_status;
mod conn;
mod invalidation;
mod paced;
mod per_client;
pub mod range;
mod redirect;
pub mod serve;

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};

use crate::body::Body;

/// The address a request came from, put into every request's extensions (for logs that say who
/// asked).
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// Bounds every listener applies to its connections.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_header_size: usize,
    /// Open connections per listener; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Open connections per client address (0: no cap); further ones are closed at once.
    pub max_connections_per_client: usize,
    /// A connection that sends no request bytes within this is closed.
    pub first_byte_timeout: Duration,
    /// A connection that sends no complete request head within this of opening is closed.
    pub request_head_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive and HTTP/2).
    pub idle_timeout: Duration,
    /// A response whose client takes no bytes for this long is closed.
    pub client_idle_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer is disconnected.
    pub http2_keepalive_interval: Duration,
}

/// Accepts connections until `shutdown` flips, then lets open connections finish for up to
/// `grace`. Returns whether every connection closed in time.
///
/// At most `limits.max_connections` connections are open at once: when all are taken, the
/// loop stops accepting, so further clients wait in the kernel's backlog (rather than being
/// accepted and closed) until a slot frees up. Each listener has its own slots, so a flood on
/// the client port leaves the admin and peer ports answering.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
    handler: Arc<H>,
    call: fn(Arc<H>, Request<Incoming>) -> F,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> bool
where
    H: Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let builder = Arc::new(connection_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = per_client::PerClient::new(limits.max_connections_per_client);
    let for_connections = shutdown.clone();
    let mut warned_full: Option<tokio::time::Instant> = None;
    loop {
        // Said at most every 10 s: under a flood the listener is full again after every close.
        if slots.available_permits() == 0
            && warned_full.is_none_or(|at| at.elapsed() > Duration::from_secs(10))
        {
            tracing::warn!(listener = name, max = limits.max_connections,
                "connection limit reached; new clients wait until a connection closes (--max-connections)");
            warned_full = Some(tokio::time::Instant::now());
        }
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
            _ = conn::stopped(&mut shutdown) => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(client_slot) = per_client.admit(peer.ip()) else {
                    tracing::debug!(listener = name, %peer, max = limits.max_connections_per_client,
                        "client has too many connections open; closing (--max-connections-per-client)");
                    continue;
                };
                tokio::spawn(connection(
                    name,
                    (stream, peer),
                    builder.clone(),
                    limits.clone(),
                    (handler.clone(), call),
                    for_connections.clone(),
                    (permit, client_slot),
                ));
            }
            _ = conn::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    tracing::info!(
        listener = name,
        "stopped accepting; draining open connections"
    );
    // Every connection holds a slot until it ends: all slots back means all connections done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => true,
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, ?grace, "grace period over; closing remaining connections");
            false
        }
    }
}

fn connection_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_size.max(8192))
        .header_read_timeout(limits.request_head_timeout)
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(limits.max_header_size as u32)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_interval.min(Duration::from_secs(20)))
        .timer(TokioTimer::new());
    builder
}

/// A listener's handler and the function that calls it.
type Handler<H, F> = (Arc<H>, fn(Arc<H>, Request<Incoming>) -> F);

/// Serves one connection, holding its listener and client slots (`_slots`) until it ends.
async fn connection<H, F>(
    name: &'static str,
    (stream, peer): (TcpStream, std::net::SocketAddr),
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ServerLimits,
    (handler, call): Handler<H, F>,
    shutdown: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, per_client::ClientSlot),
) where
    H: Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    match tokio::time::timeout(limits.first_byte_timeout, conn::first_bytes(&stream)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(listener = name, %peer, "no request bytes in time; closing");
            return;
        }
    }
    let _ = stream.set_nodelay(true);
    let activity = conn::Activity::new();
    let tracker = activity.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(RemoteAddr(peer));
        let (handler, tracker) = (handler.clone(), tracker.clone());
        async move { Ok::<_, Infallible>(tracker.track(call(handler, req).await)) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(paced::Paced::new(stream)), service)
        .into_owned();
    let deadlines = conn::Deadlines {
        request_head: limits.request_head_timeout,
        idle: limits.idle_timeout,
        stalled: limits.client_idle_timeout,
    };
    if let Err(e) = conn::drive(
        conn,
        |c| c.graceful_shutdown(),
        activity,
        deadlines,
        shutdown,
    )
    .await
    {
        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
    }
}
