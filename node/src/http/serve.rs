//! The client-facing handler: policy, metadata, conditional and range handling, streaming.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use regex::RegexSet;

use super::{
    body::{self, Body},
    range::{self, Multipart, RangeRequest},
};
use crate::{
    fetch::{ChunkFetcher, Route},
    metadata::{LookupError, MetaSource, MetadataStore},
    metrics::Metrics,
    object::{unix_now, ObjectMeta},
    policy::classify_request,
    tier::Source,
    upstream::{is_hop_by_hop, Upstream, UpstreamError},
};

pub struct Front {
    pub upstream: Arc<Upstream>,
    pub metadata: Arc<MetadataStore>,
    pub fetcher: Arc<ChunkFetcher>,
    pub pass_through: RegexSet,
    pub metrics: Arc<Metrics>,
}

const CACHE_STATUS: &str = "cache-status";

/// Keeps the in-flight gauge honest however a request ends.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.inflight_requests.inc();
        InFlight(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight_requests.dec();
    }
}

impl Front {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let _inflight = InFlight::new(&self.metrics);
        self.route(req).await.unwrap_or_else(|res| res)
    }

    fn count(&self, result: &str, tier: &str) {
        self.metrics
            .requests
            .with_label_values(&[result, tier])
            .inc();
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, Response<Body>> {
        let method = req.method().clone();
        if !matches!(
            method,
            Method::GET
                | Method::HEAD
                | Method::POST
                | Method::PUT
                | Method::DELETE
                | Method::PATCH
                | Method::OPTIONS
        ) {
            self.count("error", "none");
            return Err(body::error(
                StatusCode::NOT_IMPLEMENTED,
                format_args!("method {method} is not supported"),
            ));
        }
        // Only the path and query are used: an absolute-form target or a Host header never
        // chooses where the request goes.
        let path = validated_path(&req).map_err(|why| {
            self.count("error", "none");
            body::error(why.status(), why)
        })?;
        if let Some(bypass) = classify_request(&method, req.headers(), &path, &self.pass_through) {
            return self
                .pass(req, &path, bypass.cache_status(), bypass.label())
                .await;
        }
        let (meta, meta_source) = match self.metadata.lookup(&path, Route::Cluster).await {
            Ok(found) => found,
            Err(LookupError::Uncacheable(why)) => {
                tracing::debug!(path, reason = %why, "not cacheable, passing through");
                let status = format!("fwd=uri-miss; detail={}", why.detail());
                return self.pass(req, &path, &status, "uncacheable").await;
            }
            Err(LookupError::Upstream(e)) => {
                self.count("error", "upstream");
                tracing::warn!(path, error = %e, "metadata lookup failed");
                return Err(body::error(e.client_status(), e));
            }
        };
        self.serve_cached(&req, meta, meta_source).await
    }

    async fn serve_cached(
        &self,
        req: &Request<Incoming>,
        meta: Arc<ObjectMeta>,
        meta_source: MetaSource,
    ) -> Result<Response<Body>, Response<Body>> {
        let meta_status = match meta_source {
            MetaSource::Cached => "hit; detail=metadata",
            MetaSource::Upstream => "fwd=miss; detail=metadata",
        };
        if range::not_modified(req.headers(), &meta) {
            self.count("not_modified", "metadata");
            let mut res =
                self.cached_response(StatusCode::NOT_MODIFIED, &meta, meta_status, body::empty());
            res.headers_mut().remove(header::CONTENT_TYPE);
            return Ok(res);
        }
        if req.method() == Method::HEAD {
            let result = match meta_source {
                MetaSource::Cached => "hit",
                MetaSource::Upstream => "miss",
            };
            self.count(result, "metadata");
            let mut res = self.cached_response(StatusCode::OK, &meta, meta_status, body::empty());
            set_len(&mut res, meta.length);
            return Ok(res);
        }
        let (ranges, partial) = match range::resolve(req.headers(), &meta) {
            RangeRequest::Whole => (vec![0..=meta.length - 1], false),
            RangeRequest::Partial(ranges) => (ranges, true),
            RangeRequest::Unsatisfiable => {
                self.count("error", "none");
                let mut res = body::error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "no requested range overlaps the object",
                );
                res.headers_mut().insert(
                    header::CONTENT_RANGE,
                    value(&format!("bytes */{}", meta.length)),
                );
                res.headers_mut()
                    .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                return Err(res);
            }
        };
        let started = Instant::now();
        let mut first = self
            .fetcher
            .stream_range(meta.clone(), ranges[0].clone(), Route::Cluster);
        // Wait for the first bytes so an upstream failure can still be a clean 502/504.
        let first_piece = match first.next().await {
            Some(Ok(piece)) => piece,
            Some(Err(e)) => {
                let tier = first.source().map_or("none", |(s, _)| s.label());
                self.count("error", tier);
                return Err(body::error(e.client_status(), e));
            }
            None => Bytes::new(),
        };
        self.metrics
            .response_first_byte_seconds
            .observe(started.elapsed().as_secs_f64());
        let (source, collapsed) = first.source().unwrap_or((Source::Upstream, false));
        let status = cache_status(source, collapsed);
        self.count(
            if source == Source::Upstream {
                "miss"
            } else {
                "hit"
            },
            source.label(),
        );
        let head_stream = futures::stream::once(async move { Ok::<_, UpstreamError>(first_piece) })
            .chain(first.into_stream());
        if let [only] = ranges.as_slice() {
            let code = if !partial {
                StatusCode::OK
            } else {
                StatusCode::PARTIAL_CONTENT
            };
            let mut res = self.cached_response(
                code,
                &meta,
                &status,
                body::streaming(sync_stream(head_stream)),
            );
            set_len(&mut res, only.end() - only.start() + 1);
            if code == StatusCode::PARTIAL_CONTENT {
                res.headers_mut().insert(
                    header::CONTENT_RANGE,
                    value(&format!(
                        "bytes {}-{}/{}",
                        only.start(),
                        only.end(),
                        meta.length
                    )),
                );
            }
            return Ok(res);
        }
        // Several ranges: multipart/byteranges, each part streamed from its own range reader.
        let framing = Multipart::new(&ranges, &meta);
        let length = framing.content_length(&ranges);
        let fetcher = self.fetcher.clone();
        let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
        let mut head_stream = Some(head_stream.boxed());
        for (i, (range, part_head)) in ranges.iter().zip(framing.part_heads).enumerate() {
            parts.push(futures::stream::once(async move { Ok(Bytes::from(part_head)) }).boxed());
            let part = match head_stream.take() {
                Some(s) if i == 0 => s,
                _ => {
                    let (fetcher, meta, range) = (fetcher.clone(), meta.clone(), range.clone());
                    // Opened lazily, when the part is reached, so read-ahead applies per part.
                    futures::stream::once(async move {
                        fetcher
                            .stream_range(meta, range, Route::Cluster)
                            .into_stream()
                    })
                    .flatten()
                    .boxed()
                }
            };
            parts.push(part);
        }
        parts.push(futures::stream::once(async move { Ok(Bytes::from(framing.tail)) }).boxed());
        let body_stream = futures::stream::iter(parts).flatten();
        let mut res = self.cached_response(
            StatusCode::PARTIAL_CONTENT,
            &meta,
            &status,
            body::streaming(sync_stream(body_stream)),
        );
        set_len(&mut res, length);
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            value(&format!(
                "multipart/byteranges; boundary={}",
                framing.boundary
            )),
        );
        Ok(res)
    }

    fn cached_response(
        &self,
        status: StatusCode,
        meta: &ObjectMeta,
        cache_status: &str,
        body: Body,
    ) -> Response<Body> {
        let mut res = Response::new(body);
        *res.status_mut() = status;
        let h = res.headers_mut();
        for (name, v) in &meta.headers {
            if let (Ok(name), Ok(v)) = (
                header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.append(name, v);
            }
        }
        if let Some(etag) = meta
            .etag
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            h.insert(header::ETAG, etag);
        }
        if let Some(lm) = meta
            .last_modified
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            h.insert(header::LAST_MODIFIED, lm);
        }
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::AGE, HeaderValue::from(meta.age(unix_now())));
        h.insert(CACHE_STATUS, value(&format!("casserole; {cache_status}")));
        res
    }

    /// Streams a request the cache does not take part in to the upstream and back, as is.
    async fn pass(
        &self,
        req: Request<Incoming>,
        path: &str,
        cache_status: &str,
        label: &str,
    ) -> Result<Response<Body>, Response<Body>> {
        let (parts, incoming) = req.into_parts();
        let upstream = match self
            .upstream
            .forward(
                parts.method,
                path,
                &parts.headers,
                request_body(&parts.headers, incoming),
            )
            .await
        {
            Ok(res) => res,
            Err(e) => {
                self.count("error", "upstream");
                tracing::warn!(path, error = %e, "pass-through request failed");
                return Err(body::error(e.client_status(), e));
            }
        };
        self.count("pass", label);
        let mut res = Response::new(body::empty());
        *res.status_mut() = upstream.status();
        for (name, v) in upstream.headers() {
            if !is_hop_by_hop(name) {
                res.headers_mut().append(name.clone(), v.clone());
            }
        }
        res.headers_mut()
            .insert(CACHE_STATUS, value(&format!("casserole; {cache_status}")));
        let served = self.metrics.bytes_served.with_label_values(&["pass"]);
        let stream = upstream.bytes_stream().inspect(move |piece| {
            if let Ok(p) = piece {
                served.inc_by(p.len() as u64);
            }
        });
        *res.body_mut() = body::streaming(sync_stream(stream));
        Ok(res)
    }
}

/// The body to forward: streamed when the client declared one, none otherwise (a bodiless GET
/// must not turn into a chunked one upstream). HTTP/2 declares a body by not ending the stream
/// with the headers, Content-Length being optional there.
fn request_body(headers: &http::HeaderMap, incoming: Incoming) -> Option<reqwest::Body> {
    let declared = headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || !http_body::Body::is_end_stream(&incoming);
    declared.then(|| reqwest::Body::wrap(incoming))
}

/// Wraps a `Send` stream so that it is also `Sync`, as the boxed body type requires; only one
/// task ever polls a response body, so the mutex is never contended.
pub(crate) fn sync_stream<S, T>(stream: S) -> impl futures::Stream<Item = T> + Send + Sync + 'static
where
    S: futures::Stream<Item = T> + Send + 'static,
{
    let stream = std::sync::Mutex::new(Box::pin(stream));
    futures::stream::poll_fn(move |cx| {
        stream
            .lock()
            .expect("body stream lock")
            .as_mut()
            .poll_next(cx)
    })
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn set_len(res: &mut Response<Body>, len: u64) {
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

fn cache_status(source: Source, collapsed: bool) -> String {
    match (source, collapsed) {
        (Source::Upstream, false) => "fwd=miss".into(),
        (Source::Upstream, true) => "fwd=miss; collapsed".into(),
        (tier, _) => format!("hit; detail={}", tier.label()),
    }
}

/// The path and query to ask the upstream for, or a 400/414 saying what is wrong with it.
fn validated_path(req: &Request<Incoming>) -> Result<String, super::target::TargetError> {
    let pq = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    super::target::validate(pq).map(str::to_string)
}
