//! The peer API, on its own listener, for cluster members only: every request carries the shared
//! peer token. Answers come from this node's own tiers (`Route::LocalOnly`), never from another
//! peer, and only for objects of this node's own upstream.
//!
//! * `POST /v1/chunk/<index>` with the object's metadata as JSON: the chunk's bytes, streamed.
//! * `GET /v1/meta` with `x-casserole-path`: this node's metadata verdict for that path.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::{self, Body};
use crate::{
    fetch::{ChunkFetcher, Route},
    metadata::{LookupError, MetadataStore},
    metrics::Metrics,
    object::ObjectMeta,
    tier::peer::{MetaAnswer, PATH_HEADER, SOURCE_HEADER},
};

/// Metadata records are small; anything bigger is not one.
const MAX_META_BODY: usize = 64 * 1024;

pub struct PeerApi {
    pub token: String,
    pub fetcher: Arc<ChunkFetcher>,
    pub metadata: Arc<MetadataStore>,
    pub metrics: Arc<Metrics>,
}

/// Compares in constant time, so the token cannot be guessed byte by byte from response timing.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}

impl PeerApi {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !token_matches(presented.as_bytes(), self.token.as_bytes()) {
            self.count("any", "unauthorized");
            let mut res = body::error(StatusCode::UNAUTHORIZED, "missing or wrong peer token");
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/v1/meta") => self.meta(req).await,
            (Method::POST, p) if p.starts_with("/v1/chunk/") => {
                match p["/v1/chunk/".len()..].parse::<u64>() {
                    Ok(index) => self.chunk(req, index).await,
                    Err(_) => body::error(StatusCode::BAD_REQUEST, "chunk index must be a number"),
                }
            }
            _ => body::error(
                StatusCode::NOT_FOUND,
                "peer API: POST /v1/chunk/<index>, GET /v1/meta",
            ),
        }
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics
            .peer_api_requests
            .with_label_values(&[kind, result])
            .inc();
    }

    async fn meta(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(path) = req.headers().get(PATH_HEADER).and_then(|v| v.to_str().ok()) else {
            return body::error(StatusCode::BAD_REQUEST, "x-casserole-path header required");
        };
        if !path.starts_with('/') {
            return body::error(StatusCode::BAD_REQUEST, "x-casserole-path must be a path");
        }
        let answer = match self.metadata.lookup(path, Route::LocalOnly).await {
            Ok((meta, _)) => MetaAnswer::Cacheable((*meta).clone()),
            Err(LookupError::Uncacheable(why)) => MetaAnswer::Uncacheable(why),
            Err(LookupError::Upstream(e)) => {
                self.count("meta", "upstream_error");
                return body::error(e.client_status(), e);
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

    async fn chunk(&self, req: Request<Incoming>, index: u64) -> Response<Body> {
        let raw: Bytes = match Limited::new(req.into_body(), MAX_META_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return body::error(StatusCode::PAYLOAD_TOO_LARGE, "metadata body too large"),
        };
        let meta: ObjectMeta = match serde_json::from_slice(&raw) {
            Ok(meta) => meta,
            Err(e) => {
                return body::error(StatusCode::BAD_REQUEST, format_args!("bad metadata: {e}"))
            }
        };
        // Only what this node could have fetched itself: same upstream, same chunk size.
        if !self.metadata.is_consistent(&meta, &meta.path) {
            self.count("chunk", "inconsistent");
            return body::error(
                StatusCode::CONFLICT,
                "metadata does not match this node's upstream or chunk size",
            );
        }
        if index >= meta.chunk_count() {
            return body::error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "chunk index past the object",
            );
        }
        let length = meta.chunk_len(index);
        let range = meta.chunk_range(index);
        let mut reader = self
            .fetcher
            .stream_range(Arc::new(meta), range, Route::LocalOnly);
        let first = match reader.next().await {
            Some(Ok(piece)) => piece,
            Some(Err(e)) => {
                self.count("chunk", "upstream_error");
                return body::error(e.client_status(), e);
            }
            None => Bytes::new(),
        };
        self.count("chunk", "ok");
        let source = reader.source().map_or("upstream", |(s, _)| s.label());
        let sent = self.metrics.peer_bytes.with_label_values(&["sent"]);
        sent.inc_by(first.len() as u64);
        let rest = futures::StreamExt::inspect(reader.into_stream(), move |piece| {
            if let Ok(p) = piece {
                sent.inc_by(p.len() as u64);
            }
        });
        let stream =
            futures::StreamExt::chain(futures::stream::once(async move { Ok(first) }), rest);
        let mut res = Response::new(body::streaming(super::serve::sync_stream(stream)));
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        res.headers_mut()
            .insert(SOURCE_HEADER, HeaderValue::from_static(source));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_must_match_exactly() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"s3creT", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }
}
