//! The admin listener: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (serving), and
//! `POST /purge` (with `--admin-token`).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::RemoteAddr;
use crate::{
    body::{self, Body},
    cluster::membership::Membership,
    metrics::Registrar,
    purge::{Purger, Target},
    tier::memory::MemoryTier,
};

/// A purge request is one small JSON object.
const MAX_PURGE_BODY: usize = 16 * 1024;

pub struct Admin {
    pub registrar: Registrar,
    pub memory: Arc<MemoryTier>,
    /// Set once the node can serve (listeners bound, membership loaded); cleared on shutdown so
    /// load balancers stop sending new requests while in-flight ones drain.
    pub ready: Arc<AtomicBool>,
    pub membership: Membership,
    pub purger: Arc<Purger>,
    /// `None`: the purge API is off.
    pub token: Option<String>,
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
            "/purge" => self.purge(req).await,
            _ => body::error(
                StatusCode::NOT_FOUND,
                "admin endpoints are /metrics, /healthz, /readyz and /purge",
            ),
        }
    }

    /// `POST /purge` with `{"path": "/a/b.iso"}` or `{"prefix": "/a/"}` and
    /// `Authorization: Bearer <admin token>`. 200 when every member confirmed, 202 when some
    /// did not (yet); the JSON answer says which.
    async fn purge(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(token) = &self.token else {
            return body::error(
                StatusCode::NOT_FOUND,
                "the purge API is off: start the node with --admin-token or --admin-token-file",
            );
        };
        // Authentication first: an unauthenticated caller learns nothing else.
        if !crate::bearer::accepts(req.headers(), [token.as_str()]) {
            tracing::warn!(from = %requester(&req), "purge refused: missing or wrong admin token");
            let mut res = body::error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
        if req.method() != Method::POST {
            return body::error(StatusCode::METHOD_NOT_ALLOWED, "use POST /purge");
        }
        let who = requester(&req);
        let raw = match Limited::new(req.into_body(), MAX_PURGE_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return body::error(StatusCode::BAD_REQUEST, format_args!("body: {e}")),
        };
        let target: Target = match serde_json::from_slice(&raw) {
            Ok(t) => t,
            Err(e) => {
                return body::error(
                    StatusCode::BAD_REQUEST,
                    format_args!(r#"expected {{"path": "/..."}} or {{"prefix": "/..."}}: {e}"#),
                )
            }
        };
        let target = match target.canonical() {
            Ok(target) => target,
            Err(why) => return body::error(StatusCode::BAD_REQUEST, why),
        };
        let outcome = self.purger.purge(target, &who).await;
        let status = if outcome.pending.is_empty() && outcome.warning.is_none() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        let mut json = serde_json::to_vec_pretty(&outcome).expect("outcome serializes");
        json.push(b'\n');
        let mut res = Response::new(body::full(json));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

/// Who asked, for the log line and the purge record: the client address and its User-Agent.
fn requester(req: &Request<Incoming>) -> String {
    let addr = req
        .extensions()
        .get::<RemoteAddr>()
        .map(|a| a.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    match req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        Some(ua) => format!("{addr} ({ua})"),
        None => addr,
    }
}
