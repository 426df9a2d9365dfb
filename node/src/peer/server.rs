//! The peer API, on its own listener, for cluster members only: every request carries the shared
//! peer token. Answers come from this node's own tiers, never from another peer, and only for
//! objects of this node's own upstream.
//!
//! The server sees this node's tiers through two small traits, so the protocol does not depend
//! on the fetcher (which depends on the protocol's client side).

use std::sync::Arc;

use bytes::Bytes;
use futures::{future::BoxFuture, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{
    wire::{
        self, MetaAnswer, MAX_META_BODY, META_PATH, PATH_HEADER, RELAYED_HEADER, SOURCE_HEADER,
        UPSTREAM_TARGET_HEADER,
    },
    PeerMetrics,
};
use crate::{
    body::{self, Body},
    object::ObjectMeta,
    source::{ChunkStream, FetchError, SourceKind},
    upstream::UpstreamError,
};

/// This node's chunks, from its own tiers only.
pub trait LocalChunks: Send + Sync {
    /// Chunk `index` of `meta`: where its first bytes came from, and all its bytes.
    fn open_local(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Result<(SourceKind, ChunkStream), FetchError>>;
}

/// This node's metadata, from its own tiers and upstream only.
pub trait LocalMetadata: Send + Sync {
    /// `path`'s metadata; `upstream_target`: what the upstream is asked for when it is not
    /// `path` (see `ObjectMeta::upstream_target`).
    fn lookup_local<'a>(
        &'a self,
        path: &'a str,
        upstream_target: Option<Arc<str>>,
    ) -> BoxFuture<'a, Result<MetaAnswer, UpstreamError>>;

    /// Whether `meta` describes an object of this node's own upstream, cut in its chunk size.
    fn is_own(&self, meta: &ObjectMeta) -> bool;

    /// Whether the client target `target` is cached under `key` on this node.
    fn keys_to(&self, target: &str, key: &str) -> bool;
}

/// A request's `UPSTREAM_TARGET_HEADER` that is not a target of the path it asks for.
struct BadTarget;

pub struct PeerApi {
    pub token: String,
    /// Accepted too (never sent) during a rotation: `--peer-token-previous-file`.
    pub previous_token: Option<String>,
    pub chunks: Arc<dyn LocalChunks>,
    pub metadata: Arc<dyn LocalMetadata>,
    /// Whether a path is a request target this node would accept from a client.
    pub path_is_valid: fn(&str) -> bool,
    pub metrics: PeerMetrics,
}

impl PeerApi {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let has_body = body::has_body(&req);
        body::after_body(has_body, self.route(req).await)
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let tokens = std::iter::once(self.token.as_str()).chain(self.previous_token.as_deref());
        if !crate::bearer::accepts(req.headers(), tokens) {
            self.count("any", "unauthorized");
            let mut res = body::error(StatusCode::UNAUTHORIZED, "missing or wrong peer token");
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, META_PATH) => self.meta(req).await,
            (Method::POST, p) if p.starts_with(wire::CHUNK_PREFIX) => match wire::chunk_index(p) {
                Some(index) => self.chunk(req, index).await,
                None => body::error(StatusCode::BAD_REQUEST, "chunk index must be a number"),
            },
            _ => body::error(
                StatusCode::NOT_FOUND,
                "peer API: POST /v1/chunk/<index>, GET /v1/meta",
            ),
        }
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics
            .api_requests
            .with_label_values(&[kind, result])
            .inc();
    }

    async fn meta(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(path) = req.headers().get(PATH_HEADER).and_then(|v| v.to_str().ok()) else {
            self.count("meta", "bad_request");
            return body::error(StatusCode::BAD_REQUEST, "x-casserole-path header required");
        };
        if !(self.path_is_valid)(path) {
            self.count("meta", "bad_request");
            return body::error(
                StatusCode::BAD_REQUEST,
                "x-casserole-path must be a clean absolute path",
            );
        }
        let Ok(target) = self.upstream_target(req.headers(), path) else {
            return self.bad_target("meta");
        };
        let answer = match self.metadata.lookup_local(path, target).await {
            Ok(answer) => answer,
            Err(e) => {
                self.count("meta", "upstream_error");
                return relayed(body::error(e.client_status(), e));
            }
        };
        self.count("meta", "ok");
        let json = serde_json::to_vec(&answer).expect("metadata serializes");
        let mut res = Response::new(body::full(json));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }

    /// The target a peer's request asks this node's upstream for, when it carries one
    /// (`UPSTREAM_TARGET_HEADER`): a clean target that this node caches under `key`, so a peer
    /// can only ask for bytes of the object the request names.
    fn upstream_target(
        &self,
        headers: &http::HeaderMap,
        key: &str,
    ) -> Result<Option<Arc<str>>, BadTarget> {
        let Some(value) = headers.get(UPSTREAM_TARGET_HEADER) else {
            return Ok(None);
        };
        match value.to_str() {
            Ok(target) if (self.path_is_valid)(target) && self.metadata.keys_to(target, key) => {
                Ok(Some(Arc::from(target)))
            }
            _ => Err(BadTarget),
        }
    }

    fn bad_target(&self, kind: &str) -> Response<Body> {
        self.count(kind, "bad_request");
        body::error(
            StatusCode::BAD_REQUEST,
            "x-casserole-upstream-target must be a clean target whose cache key is the path asked for",
        )
    }

    async fn chunk(&self, req: Request<Incoming>, index: u64) -> Response<Body> {
        let (parts, incoming) = req.into_parts();
        let raw: Bytes = match Limited::new(incoming, MAX_META_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return body::error(StatusCode::PAYLOAD_TOO_LARGE, "metadata body too large"),
        };
        let mut meta: ObjectMeta = match serde_json::from_slice(&raw) {
            Ok(meta) => meta,
            Err(e) => {
                self.count("chunk", "bad_request");
                return body::error(StatusCode::BAD_REQUEST, format_args!("bad metadata: {e}"));
            }
        };
        let Ok(target) = self.upstream_target(&parts.headers, &meta.path) else {
            return self.bad_target("chunk");
        };
        meta.upstream_target = target;
        // Only what this node could have fetched itself: a clean path on its own upstream, its
        // own chunk size, a version that matches.
        if meta.length == 0 || !(self.path_is_valid)(&meta.path) || !self.metadata.is_own(&meta) {
            self.count("chunk", "inconsistent");
            return body::error(
                StatusCode::CONFLICT,
                "metadata does not match this node's upstream or chunk size",
            );
        }
        if index >= meta.chunk_count() {
            self.count("chunk", "bad_request");
            return body::error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "chunk index past the object",
            );
        }
        let length = meta.chunk_len(index);
        let (source, stream) = match self.chunks.open_local(Arc::new(meta), index).await {
            Ok(opened) => opened,
            Err(e) => {
                self.count("chunk", e.party());
                let res = body::error(e.client_status(), &e);
                return match e.party() {
                    "upstream" => relayed(res),
                    _ => res,
                };
            }
        };
        self.count("chunk", "ok");
        let sent = self.metrics.bytes.with_label_values(&["sent"]);
        let stream = stream.inspect(move |piece| {
            if let Ok(p) = piece {
                sent.inc_by(p.len() as u64);
            }
        });
        let mut res = Response::new(body::streaming(stream));
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        res.headers_mut()
            .insert(SOURCE_HEADER, HeaderValue::from_static(source.label()));
        res
    }
}

/// `res` marked as the upstream's failure, relayed by a working owner.
fn relayed(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(RELAYED_HEADER, HeaderValue::from_static("upstream"));
    res
}
