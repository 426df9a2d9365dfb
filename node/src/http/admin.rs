//! The admin listener: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (serving).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::{
    body::{self, Body},
    cluster::membership::Membership,
    metrics::Registrar,
    tier::memory::MemoryTier,
};

pub struct Admin {
    pub registrar: Registrar,
    pub memory: Arc<MemoryTier>,
    /// Set once the node can serve (listeners bound, membership loaded); cleared on shutdown so
    /// load balancers stop sending new requests while in-flight ones drain.
    pub ready: Arc<AtomicBool>,
    pub membership: Membership,
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => {
                self.memory.refresh_gauges();
                let mut res = Response::new(body::full(self.registrar.render()));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            "/healthz" => Response::new(body::full("ok\n")),
            "/readyz" if !self.membership.is_loaded() => body::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster membership not loaded yet",
            ),
            "/readyz" if self.ready.load(Ordering::Relaxed) => Response::new(body::full("ready\n")),
            "/readyz" => body::error(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
            _ => body::error(
                StatusCode::NOT_FOUND,
                "admin endpoints are /metrics, /healthz and /readyz",
            ),
        }
    }
}
