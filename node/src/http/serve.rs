//! The client-facing handler: policy, metadata, conditional and range handling, streaming.

use std::{ops::RangeInclusive, sync::Arc, time::Instant};

use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use regex::RegexSet;

use super::{
    cache_status::{self, CacheStatus},
    range::{self, Multipart, Precondition, RangeRequest},
};
use crate::{
    body::{self, Body},
    cache::{Cache, Keyed, Opened},
    fetch::LeadingChunk,
    metadata::{Asker, LookupError, MetaSource, MetadataStore, Missed},
    metrics::Registrar,
    object::{unix_now, ObjectMeta},
    policy::headers::{end_to_end, max_forwards},
    policy::{classify_request, ClientDemands},
    source::{FetchError, Route, SourceKind},
    upstream::{Relayed, Upstream},
};

/// Client-facing request metrics, registered by this module.
#[derive(Clone)]
pub struct RequestMetrics {
    /// Client requests by result (hit, miss, pass, not_modified, error) and the tier that served
    /// the first byte.
    pub requests: prometheus::IntCounterVec,
    /// Body bytes sent to clients (never to peers), by where they came from.
    pub bytes_served: prometheus::IntCounterVec,
    pub inflight: prometheus::IntGauge,
    pub first_byte_seconds: prometheus::Histogram,
}

impl RequestMetrics {
    pub fn new(r: &Registrar) -> Self {
        RequestMetrics {
            requests: r.counter_vec(
                "casserole_requests_total",
                "Client requests by result and serving tier",
                &["result", "tier"],
            ),
            bytes_served: r.counter_vec(
                "casserole_bytes_served_total",
                "Body bytes sent to clients, by source",
                &["source"],
            ),
            inflight: r.gauge(
                "casserole_inflight_requests",
                "Client requests being served",
            ),
            first_byte_seconds: r.histogram(
                "casserole_response_first_byte_seconds",
                "Time from a cacheable request to its first body byte being ready",
            ),
        }
    }
}

pub struct Front {
    pub upstream: Arc<Upstream>,
    /// Opens objects for requests: metadata, and the chunks they read.
    pub cache: Arc<Cache>,
    /// Forgets what a successful unsafe request changed (see `invalidation`).
    pub metadata: Arc<MetadataStore>,
    pub pass_through: RegexSet,
    pub metrics: RequestMetrics,
    /// Spreads the invalidation of a URI that a successful unsafe request changed to every
    /// member (a purge of that path).
    pub invalidator: Option<Arc<crate::purge::Purger>>,
    /// Invalidate what a successful unsafe request changed (off: `--no-write-invalidation`).
    pub write_invalidation: bool,
    /// `--public-url`: how clients reach this node, for the redirects it rewrites.
    pub public_url: Option<reqwest::Url>,
}

/// Keeps the in-flight gauge honest however a request ends.
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type Answer = Result<Response<Body>, Response<Body>>;

/// The answer from a stored copy, or the news that its version is gone upstream (it changed
/// there) before the answer's first byte.
type Served = Result<Answer, VersionGone>;

struct VersionGone {
    meta: Arc<ObjectMeta>,
    error: FetchError,
}

/// The methods a node answers `OPTIONS` with at the last hop. Every method but `CONNECT` and
/// `TRACE` is relayed, extension methods included (RFC 9110 §9.1: a proxy forwards methods it
/// does not know); those two get `501`: `CONNECT` makes tunnels, which a reverse proxy does not,
/// and `TRACE` would reflect the node's own request headers to the client.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

impl Front {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        self.metrics.inflight.inc();
        let _inflight = InFlight(self.metrics.inflight.clone());
        let authority = Self::client_authority(&req);
        let has_body = body::has_body(&req);
        let mut res = match self.route(req).await {
            Ok(res) => res,
            // Refused (or failed) with the request's body unread or half sent: the connection
            // cannot carry another request (see `body::after_body`; answers relayed from the
            // upstream are `Ok`, their bodies forwarded whole).
            Err(res) if has_body => body::closing(res),
            Err(res) => res,
        };
        self.redirect_into_cache(&mut res, authority.as_ref());
        res
    }

    fn count(&self, result: &str, tier: &str) {
        self.metrics
            .requests
            .with_label_values(&[result, tier])
            .inc();
    }

    fn count_status(&self, status: &CacheStatus) {
        self.count(status.result(), status.tier());
    }

    /// A client error answered before anything reached the upstream.
    fn refuse(&self, status: StatusCode, reason: impl std::fmt::Display) -> Response<Body> {
        self.count("error", "none");
        body::error(status, reason)
    }

    /// The paths a hit does not take (pass-through, a miss, `only-if-cached`) are boxed: an
    /// `async fn`'s state is as large as its largest path, and hyper moves a request's whole
    /// state into place, so their large states would be copied for every hit too.
    async fn route(&self, req: Request<Incoming>) -> Answer {
        let method = req.method().clone();
        if method == Method::CONNECT || method == Method::TRACE {
            return Err(self.refuse(
                StatusCode::NOT_IMPLEMENTED,
                format_args!("method {method} is not supported"),
            ));
        }
        if method == Method::OPTIONS && max_forwards(req.headers()) == Some(0) {
            // The last hop the client allowed (RFC 9110 §7.6.2): answered here, not forwarded.
            let mut res = Response::new(body::empty());
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            return Ok(res);
        }
        // Only the path and query are used: an absolute-form target or a Host header never
        // chooses where the request goes.
        crate::target::check_host(req.version(), req.headers())
            .map_err(|why| self.refuse(StatusCode::BAD_REQUEST, why))?;
        let target = validated_path(&req).map_err(|why| self.refuse(why.status(), why))?;
        let keyed = self
            .cache
            .key_of(target)
            .map_err(|why| self.refuse(StatusCode::FORBIDDEN, why))?;
        let path = keyed.key.as_str();
        let demands = ClientDemands::from_headers(req.headers());
        let bypass = classify_request(&method, req.headers(), &demands, path, &self.pass_through);
        if demands.only_if_cached {
            let only_if_cached = self.serve_only_if_cached(req, path, &demands, bypass.is_some());
            return Box::pin(only_if_cached).await;
        }
        if let Some(bypass) = bypass {
            return Box::pin(self.pass(req, &keyed, CacheStatus::Bypassed(bypass))).await;
        }
        let mut looked_up_again = false;
        loop {
            let ask = Asker {
                first_byte: (method == Method::GET)
                    .then(|| range::first_wanted_byte(req.headers())),
                headers: req.headers(),
                upstream_target: keyed.upstream_target.as_ref(),
            };
            let lookup = self.cache.open(path, Route::Cluster, ask, &demands).await;
            let opened = match lookup {
                Ok(opened) => opened,
                Err(missed) => return Box::pin(self.missed(req, &keyed, missed)).await,
            };
            if opened.source == MetaSource::ReplacedOnRequest {
                self.announce_new_version(path, &opened.meta);
            }
            if let Some(name) = varied_header(&req, &opened.meta) {
                tracing::debug!(
                    path,
                    header = name,
                    "the request carries a header the stored response varies on; passing through"
                );
                return Box::pin(self.pass(req, &keyed, CacheStatus::VaryMiss)).await;
            }
            match self.serve_stored(&req, opened).await {
                Ok(answer) => return answer,
                // Nothing was sent yet, and the stored version is forgotten (see `fetch::walk`):
                // a new lookup finds what the upstream has now. Once only: an object that
                // changes under every lookup is the upstream's problem to report.
                Err(changed) if !looked_up_again => {
                    looked_up_again = true;
                    tracing::info!(path, reason = %changed.error,
                        "the object changed upstream before this response's first byte; looking it up again");
                }
                Err(changed) => return Err(self.fetch_failed(&changed.meta, changed.error)),
            }
        }
    }

    /// A lookup that made no metadata: the upstream's own answer when the lookup has one for
    /// this request (one upstream request in all), else a request of its own; `502`/`504` only
    /// when the upstream did not answer.
    async fn missed(&self, req: Request<Incoming>, keyed: &Keyed, missed: Missed) -> Answer {
        let path = keyed.key.as_str();
        let status = match missed.error {
            LookupError::Uncacheable(why) => {
                tracing::debug!(path, reason = %why, "not cacheable, passing through");
                CacheStatus::Uncacheable(why)
            }
            LookupError::Upstream(crate::upstream::UpstreamError::Status(code))
                if missed.relay.is_some() =>
            {
                tracing::debug!(path, status = code, "relaying the upstream's error");
                CacheStatus::Uncacheable(crate::policy::Uncacheable::Status(code))
            }
            LookupError::Upstream(e) => {
                self.count("error", "upstream");
                tracing::warn!(path, error = %e, "metadata lookup failed");
                return Err(body::error(e.client_status(), e));
            }
        };
        match missed.relay {
            Some(relayed) => Ok(self.relay(*relayed, status)),
            None => self.pass(req, keyed, status).await,
        }
    }

    /// `only-if-cached` never goes upstream: a stored copy this node holds that fits the
    /// request, or 504 (RFC 9111 §5.2.1.7).
    async fn serve_only_if_cached(
        &self,
        req: Request<Incoming>,
        path: &str,
        demands: &ClientDemands,
        bypassed: bool,
    ) -> Answer {
        let stored = match bypassed {
            true => None,
            false => self.cache.open_stored(path, demands).await,
        };
        match stored.filter(|opened| varied_header(&req, &opened.meta).is_none()) {
            Some(opened) => match self.serve_stored(&req, opened).await {
                Ok(answer) => answer,
                Err(changed) => Err(self.fetch_failed(&changed.meta, changed.error)),
            },
            None => Err(self.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "not stored here, and the request says only-if-cached",
            )),
        }
    }

    /// Answers from the stored copy; the request whose lookup fetched it also gets the fields
    /// the stored copy leaves out (`Opened::withheld`).
    async fn serve_stored(&self, req: &Request<Incoming>, opened: Opened) -> Served {
        let Opened {
            meta,
            source,
            first_chunk,
            withheld,
        } = opened;
        let mut answer = self.answer_stored(req, meta, source, first_chunk).await;
        if let (Ok(Ok(res)), false) = (&mut answer, withheld.is_empty()) {
            res.headers_mut().extend(withheld);
        }
        answer
    }

    /// Answers from the object's metadata alone, or with the ranges it wants of its chunks.
    async fn answer_stored(
        &self,
        req: &Request<Incoming>,
        meta: Arc<ObjectMeta>,
        meta_source: MetaSource,
        first_chunk: Option<LeadingChunk>,
    ) -> Served {
        if let Some(res) = self.answer_from_metadata(req, &meta, meta_source) {
            return Ok(Ok(res));
        }
        // Ranges select from a `200`'s representation; another status is answered whole.
        let wants = match meta.status {
            200 => range::resolve(req.headers(), &meta),
            _ => RangeRequest::Whole,
        };
        let ranges = match wants {
            RangeRequest::Whole => None,
            RangeRequest::Partial(ranges) => Some(ranges),
            RangeRequest::Unsatisfiable => {
                let why = "no requested range overlaps the object";
                return Ok(Err(self.unsatisfiable(&meta, why)));
            }
            RangeRequest::Scattered => {
                return Ok(Err(self.unsatisfiable(&meta, range::SCATTERED)));
            }
        };
        self.serve_chunks(meta, meta_source, ranges, first_chunk)
            .await
    }

    /// `304 Not Modified`, `412 Precondition Failed` and `HEAD` need no body bytes: metadata
    /// answers them.
    fn answer_from_metadata(
        &self,
        req: &Request<Incoming>,
        meta: &ObjectMeta,
        source: MetaSource,
    ) -> Option<Response<Body>> {
        let status = CacheStatus::Metadata(source);
        // RFC 9110 §13.2.1: preconditions apply only where the answer would be a 2xx.
        let preconditions = match meta.status {
            200..=299 => range::preconditions(req.headers(), meta),
            _ => Precondition::Proceed,
        };
        match preconditions {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                self.count("not_modified", status.tier());
                let mut res =
                    cached_response(StatusCode::NOT_MODIFIED, meta, &status, body::empty());
                res.headers_mut().remove(header::CONTENT_TYPE);
                return Some(res);
            }
            Precondition::Failed(which) => {
                self.count("precondition_failed", status.tier());
                let mut res = body::error(
                    StatusCode::PRECONDITION_FAILED,
                    format_args!("{which} does not hold for the stored representation"),
                );
                res.headers_mut()
                    .insert(cache_status::HEADER, status.header_value());
                return Some(res);
            }
        }
        if req.method() == Method::HEAD || meta.length == 0 {
            self.count_status(&status);
            let mut res = cached_response(meta.status_code(), meta, &status, body::empty());
            set_len(&mut res, meta.length);
            return Some(res);
        }
        None
    }

    fn unsatisfiable(&self, meta: &ObjectMeta, why: &str) -> Response<Body> {
        let mut res = self.refuse(StatusCode::RANGE_NOT_SATISFIABLE, why);
        res.headers_mut().insert(
            header::CONTENT_RANGE,
            value(&format!("bytes */{}", meta.length)),
        );
        res.headers_mut()
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        res
    }

    fn reader(
        &self,
        meta: Arc<ObjectMeta>,
        range: RangeInclusive<u64>,
        first_chunk: Option<LeadingChunk>,
    ) -> crate::fetch::RangeReader {
        self.cache
            .read(meta, range, Route::Cluster, first_chunk)
            .counting(self.metrics.bytes_served.clone())
    }

    /// The whole object (`ranges` is `None`), one range, or several as multipart/byteranges;
    /// `first_chunk` is the chunk this request's own lookup fetched.
    async fn serve_chunks(
        &self,
        meta: Arc<ObjectMeta>,
        meta_source: MetaSource,
        ranges: Option<Vec<RangeInclusive<u64>>>,
        first_chunk: Option<LeadingChunk>,
    ) -> Served {
        let partial = ranges.is_some();
        let first_range = ranges
            .as_ref()
            .map_or(0..=meta.length - 1, |r| r[0].clone());
        let started = Instant::now();
        let mut first = self.reader(meta.clone(), first_range.clone(), first_chunk);
        // Wait for the first bytes so a failure can still be a clean error status.
        let first_piece = match first.next().await {
            Some(Ok(piece)) => piece,
            Some(Err(error)) if error.is_changed() => return Err(VersionGone { meta, error }),
            Some(Err(e)) => return Ok(Err(self.fetch_failed(&meta, e))),
            None => Bytes::new(),
        };
        self.metrics
            .first_byte_seconds
            .observe(started.elapsed().as_secs_f64());
        let (origin, collapsed) = first.origin().unwrap_or((SourceKind::Upstream, false));
        let status = CacheStatus::Chunks {
            origin,
            collapsed,
            meta: meta_source,
        };
        self.count_status(&status);
        let head = first.put_back(first_piece).into_stream().boxed();
        let Some(ranges) = ranges.filter(|r| r.len() > 1) else {
            let code = if partial {
                StatusCode::PARTIAL_CONTENT
            } else {
                meta.status_code()
            };
            let mut res = cached_response(code, &meta, &status, body::streaming(head));
            set_len(&mut res, first_range.end() - first_range.start() + 1);
            if code == StatusCode::PARTIAL_CONTENT {
                let content_range = format!(
                    "bytes {}-{}/{}",
                    first_range.start(),
                    first_range.end(),
                    meta.length
                );
                res.headers_mut()
                    .insert(header::CONTENT_RANGE, value(&content_range));
            }
            return Ok(Ok(res));
        };
        Ok(Ok(self.multipart(meta, &ranges, head, &status)))
    }

    fn fetch_failed(&self, meta: &ObjectMeta, e: FetchError) -> Response<Body> {
        self.count("error", e.party());
        tracing::warn!(path = %meta.path, error = %e, "request failed before its first byte");
        body::error(e.client_status(), e)
    }

    /// Several ranges: multipart/byteranges, each part streamed from its own range reader,
    /// opened lazily when the part is reached so read-ahead applies per part.
    fn multipart(
        &self,
        meta: Arc<ObjectMeta>,
        ranges: &[RangeInclusive<u64>],
        head: BoxStream<'static, Result<Bytes, FetchError>>,
        status: &CacheStatus,
    ) -> Response<Body> {
        let framing = Multipart::new(ranges, &meta);
        let length = framing.content_length(ranges);
        let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
        let mut head = Some(head);
        for (range, part_head) in ranges.iter().zip(framing.part_heads) {
            parts.push(futures::stream::once(async move { Ok(Bytes::from(part_head)) }).boxed());
            let part = match head.take() {
                Some(first) => first,
                None => {
                    let reader = self.reader(meta.clone(), range.clone(), None);
                    futures::stream::once(async move { reader.into_stream() })
                        .flatten()
                        .boxed()
                }
            };
            parts.push(part);
        }
        parts.push(futures::stream::once(async move { Ok(Bytes::from(framing.tail)) }).boxed());
        let body_stream = futures::stream::iter(parts).flatten();
        let mut res = cached_response(
            StatusCode::PARTIAL_CONTENT,
            &meta,
            status,
            body::streaming(body_stream),
        );
        set_len(&mut res, length);
        let content_type = format!("multipart/byteranges; boundary={}", framing.boundary);
        res.headers_mut()
            .insert(header::CONTENT_TYPE, value(&content_type));
        res
    }

    /// Streams a request the cache does not take part in to the upstream and back, as is.
    async fn pass(&self, req: Request<Incoming>, keyed: &Keyed, status: CacheStatus) -> Answer {
        let path = keyed.key.as_str();
        let (parts, incoming) = req.into_parts();
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let upstream = match self
            .upstream
            .forward(
                parts.method,
                keyed.upstream(),
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
        if unsafe_method {
            self.after_write(path, upstream.status(), upstream.headers())
                .await;
        } else if matches!(status, CacheStatus::Uncacheable(_)) {
            self.cache.passed(path, upstream.status().as_u16()).await;
        }
        Ok(self.relay(Relayed::of(upstream), status))
    }

    /// An upstream answer the cache does not keep, to the client as the upstream sent it.
    fn relay(&self, relayed: Relayed, status: CacheStatus) -> Response<Body> {
        self.count_status(&status);
        let mut res = Response::new(body::empty());
        *res.status_mut() = relayed.status;
        *res.headers_mut() = end_to_end(&relayed.headers);
        res.headers_mut()
            .insert(cache_status::HEADER, status.header_value());
        let served = self.metrics.bytes_served.with_label_values(&["pass"]);
        let stream = relayed.body.inspect(move |piece| {
            if let Ok(p) = piece {
                served.inc_by(p.len() as u64);
            }
        });
        *res.body_mut() = body::streaming(stream);
        res
    }
}

fn cached_response(
    status: StatusCode,
    meta: &ObjectMeta,
    cache_status: &CacheStatus,
    body: Body,
) -> Response<Body> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = meta.response_headers().clone();
    let h = res.headers_mut();
    // A stored `Content-Range` is the origin's field of a whole response; a part's is the
    // cache's own (set by the caller for one range, per part for several).
    if status == StatusCode::PARTIAL_CONTENT {
        h.remove(header::CONTENT_RANGE);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::AGE, HeaderValue::from(meta.age(unix_now())));
    h.insert(cache_status::HEADER, cache_status.header_value());
    res
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

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn set_len(res: &mut Response<Body>, len: u64) {
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// A header the stored response varies on whose value in `req` differs from the request that
/// selected it: then it cannot answer this one (RFC 9111 §4.1).
fn varied_header(req: &Request<Incoming>, meta: &ObjectMeta) -> Option<String> {
    meta.mismatched_selecting_header(req.headers())
}

/// The path and query to ask the upstream for, or a 400/414 saying what is wrong with it.
fn validated_path(req: &Request<Incoming>) -> Result<String, crate::target::TargetError> {
    let pq = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    crate::target::validate(pq).map(std::borrow::Cow::into_owned)
}
