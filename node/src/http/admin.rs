//! The admin listener: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (serving),
//! and with `--admin-token`: `POST /purge`, `POST /preheat` and `GET /preheat/<id>`.

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
    preheat::{self, Preheater},
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
    pub preheater: Arc<Preheater>,
    /// `None`: the purge and preheat APIs are off.
    pub token: Option<String>,
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let has_body = body::has_body(&req);
        body::after_body(has_body, self.route(req).await)
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
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
            "/preheat" => self.preheat(req).await,
            path if path.starts_with("/preheat/") => self.preheat_report(req),
            _ => body::error(
                StatusCode::NOT_FOUND,
                "admin endpoints are /metrics, /healthz, /readyz, /purge and /preheat",
            ),
        }
    }

    /// `None` when `req` presents the admin token, else the answer that refuses it. The token is
    /// checked before anything else: an unauthenticated caller learns nothing more.
    fn refuse_unauthorized<B>(&self, req: &Request<B>, api: &str) -> Option<Response<Body>> {
        let Some(token) = &self.token else {
            return Some(body::error(
                StatusCode::NOT_FOUND,
                format_args!(
                    "the {api} API is off: start the node with --admin-token or --admin-token-file"
                ),
            ));
        };
        if crate::bearer::accepts(req.headers(), [token.as_str()]) {
            return None;
        }
        tracing::warn!(from = %requester(req), api, "refused: missing or wrong admin token");
        let mut res = body::error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(res)
    }

    /// `POST /purge` with `{"path": "/a/b.iso"}` or `{"prefix": "/a/"}` and
    /// `Authorization: Bearer <admin token>`. 200 when every member confirmed, 202 when some
    /// did not (yet); the JSON answer says which.
    async fn purge(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(refused) = self.refuse_unauthorized(&req, "purge") {
            return refused;
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
        json_response(status, &outcome)
    }

    /// `POST /preheat` with a JSON list of paths, `["/models/a.bin", ...]`: `202` with the
    /// preheat's id and where to follow it (`GET /preheat/<id>`).
    async fn preheat(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(refused) = self.refuse_unauthorized(&req, "preheat") {
            return refused;
        }
        if req.method() != Method::POST {
            return body::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST /preheat, and GET /preheat/<id>",
            );
        }
        let who = requester(&req);
        let raw = match Limited::new(req.into_body(), preheat::request::MAX_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return body::error(StatusCode::BAD_REQUEST, format_args!("body: {e}")),
        };
        let paths = match self.preheater.parse(&raw) {
            Ok(paths) => paths,
            Err(why) => return body::error(StatusCode::BAD_REQUEST, why),
        };
        let objects = paths.len();
        match self.preheater.start(paths, who) {
            Ok(id) => json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({
                    "id": id,
                    "objects": objects,
                    "status": format!("/preheat/{id}"),
                }),
            ),
            Err(busy) => body::error(StatusCode::TOO_MANY_REQUESTS, busy),
        }
    }

    /// `GET /preheat/<id>`: the preheat's progress (see `preheat::Report`).
    fn preheat_report(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(refused) = self.refuse_unauthorized(&req, "preheat") {
            return refused;
        }
        if req.method() != Method::GET {
            return body::error(StatusCode::METHOD_NOT_ALLOWED, "use GET /preheat/<id>");
        }
        let id = req.uri().path().trim_start_matches("/preheat/");
        match self.preheater.report(id) {
            Some(report) => json_response(StatusCode::OK, &report),
            None => body::error(
                StatusCode::NOT_FOUND,
                format_args!(
                    "no preheat {id:?} on this node (the last {} are remembered)",
                    preheat::REMEMBERED
                ),
            ),
        }
    }
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut json = serde_json::to_vec_pretty(value).expect("answers serialize");
    json.push(b'\n');
    let mut res = Response::new(body::full(json));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Who asked, for the log line and the purge record: the client address and its User-Agent.
fn requester<B>(req: &Request<B>) -> String {
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
