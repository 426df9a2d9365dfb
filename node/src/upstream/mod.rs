//! The upstream client: metadata `HEAD`s, validated chunk range fetches, and pass-through.
//!
//! Every range response is checked against what the metadata promised (status, Content-Range,
//! validator, length) so that bytes of another object version are never stored or served.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{future::BoxFuture, Stream, StreamExt, TryStreamExt};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::{
    metrics::Registrar,
    object::{field_text, field_value, ObjectMeta, Validator},
    policy::{
        headers::{end_to_end, max_forwards, VIA},
        surrogate::SURROGATE_CAPABILITY,
    },
    target,
};

pub type UpstreamStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Upstream traffic, registered by this module.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub requests: prometheus::IntCounterVec,
    pub errors: prometheus::IntCounterVec,
    pub bytes: prometheus::IntCounterVec,
}

impl UpstreamMetrics {
    pub fn new(r: &Registrar) -> Self {
        UpstreamMetrics {
            requests: r.counter_vec(
                "casserole_upstream_requests_total",
                "Requests sent to the upstream, by kind and route (`/`: --upstream)",
                &["kind", "route"],
            ),
            errors: r.counter_vec(
                "casserole_upstream_errors_total",
                "Failed upstream requests by reason and route",
                &["reason", "route"],
            ),
            bytes: r.counter_vec(
                "casserole_upstream_bytes_total",
                "Body bytes received from the upstream, by route",
                &["route"],
            ),
        }
    }
}

mod error;
pub use error::UpstreamError;

mod probe;
pub use probe::{Probe, ProbeBody, Relayed};

mod round_trips;

mod follow;
mod routes;
pub use routes::{Routes, RoutesError};
mod signed;
pub use signed::SignatureError;

/// Makes a request for bytes of one version conditional on that version.
/// The client's headers on the node's own lookup of an object (its probe or `HEAD`): every
/// end-to-end header, as a gateway forwards them (the origin may select the representation by
/// them, and it sees who asks), but the ones the node sets itself: the range (the chunk), the
/// preconditions (the node revalidates its own copy and answers the client's itself), and the
/// coding (one identity representation for every client).
pub fn for_lookup(client: &HeaderMap) -> HeaderMap {
    let mut out = end_to_end(client);
    for name in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::ACCEPT_ENCODING,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        out.remove(name);
    }
    out.append(header::VIA, HeaderValue::from_static(VIA));
    out
}

/// `req` with `name: text`, a stored field value (`field_value`: an entity tag may hold octets
/// past ASCII).
fn with_field(
    req: reqwest::RequestBuilder,
    name: header::HeaderName,
    text: &str,
) -> reqwest::RequestBuilder {
    match field_value(text) {
        Some(value) => req.header(name, value),
        None => req,
    }
}

/// A request made conditional on `stale`'s validator: `304` if it still holds.
fn if_changed(req: reqwest::RequestBuilder, stale: &ObjectMeta) -> reqwest::RequestBuilder {
    if let Some(etag) = &stale.etag {
        with_field(req, header::IF_NONE_MATCH, etag)
    } else if let Some(lm) = &stale.last_modified {
        with_field(req, header::IF_MODIFIED_SINCE, lm)
    } else {
        req
    }
}

/// A range request made conditional on its version's validator (the answer is checked against
/// it too: `check_validator`).
fn conditional(req: reqwest::RequestBuilder, validator: &Validator) -> reqwest::RequestBuilder {
    match validator {
        Validator::StrongEtag(etag) => with_field(req, header::IF_MATCH, etag),
        Validator::LastModified(lm) => with_field(req, header::IF_UNMODIFIED_SINCE, lm),
        Validator::Unvalidated(_) => req,
    }
}

/// Checks that a response carries the validator of the version it is fetched for.
fn check_validator(validator: &Validator, headers: &HeaderMap) -> Result<(), UpstreamError> {
    let text = |name| headers.get(name).map(field_text);
    match validator {
        Validator::StrongEtag(etag) => {
            let got = text(header::ETAG);
            if got.as_deref() != Some(etag.as_str()) {
                return Err(UpstreamError::Changed(format!(
                    "ETag {got:?}, expected {etag:?}"
                )));
            }
        }
        Validator::LastModified(lm) => {
            let got = text(header::LAST_MODIFIED);
            if got.as_deref() != Some(lm.as_str()) {
                return Err(UpstreamError::Changed(format!(
                    "Last-Modified {got:?}, expected {lm:?}"
                )));
            }
        }
        Validator::Unvalidated(_) => {}
    }
    Ok(())
}

pub struct UpstreamConfig {
    pub base: reqwest::Url,
    /// `--route PREFIX=URL`s: further origins, by node path prefix.
    pub routes: Vec<casserole_limits::Route>,
    /// `--follow-redirects`: prefixes of the routes whose redirects the node follows (`/`:
    /// `--upstream`'s).
    pub follow_redirects: Vec<String>,
    /// `--ignore-query-param`: query parameters a route leaves out of its cache keys.
    pub ignore_query_params: Vec<casserole_limits::IgnoredParam>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub insecure: bool,
    /// `--surrogate-id`: sent as `Surrogate-Capability` on every request (`policy::surrogate`).
    pub surrogate_id: Option<String>,
}

pub struct Upstream {
    client: reqwest::Client,
    /// `--upstream` and the `--route`s: where each node path goes.
    routes: routes::Routes,
    metrics: UpstreamMetrics,
    /// Time to response headers, over every request (see `round_trip`).
    round_trips: round_trips::RoundTrips,
    /// `<id>="Surrogate/1.0"`, where the node names itself a surrogate.
    capability: Option<HeaderValue>,
}

/// Answers one chunk may come in: an upstream that caps range answers below a chunk's
/// thirty-second part is refused rather than asked thousands of times.
pub const MAX_RANGE_PARTS: usize = 32;

impl Upstream {
    pub fn new(cfg: UpstreamConfig, metrics: UpstreamMetrics) -> anyhow::Result<Self> {
        // reqwest is built without a bundled crypto provider; ring is ours. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let capability = cfg
            .surrogate_id
            .as_deref()
            .map(|id| HeaderValue::from_str(&format!("{id}=\"Surrogate/1.0\"")))
            .transpose()?;
        let mut own_headers = HeaderMap::from_iter([(header::VIA, HeaderValue::from_static(VIA))]);
        if let Some(capability) = &capability {
            own_headers.insert(SURROGATE_CAPABILITY, capability.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            // Connections stay open and warm between chunks: a new one costs a round trip (two
            // with TLS) that a distant upstream makes expensive. Room for every fetch the window
            // may run at once (--max-upstream-fetches ≤ 256).
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_keepalive(Duration::from_secs(30))
            // HTTP/2 is offered via ALPN on TLS upstreams (reqwest's default). Its default
            // 64 KiB stream window would cap each chunk at 64 KiB per round trip from afar; the
            // adaptive window grows with the measured bandwidth-delay product.
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(true)
            // A proxy relays redirects to its client; it follows them itself only where
            // --follow-redirects says so, and then only into its own origins (follow.rs).
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(cfg.insecure)
            .tcp_nodelay(true)
            // On the requests made without a client's headers (the chunks' ranges).
            .default_headers(own_headers)
            .build()?;
        Ok(Upstream {
            client,
            routes: routes::Routes::new(
                cfg.base,
                &cfg.routes,
                &cfg.follow_redirects,
                &cfg.ignore_query_params,
            )
            .map_err(anyhow::Error::new)?,
            metrics,
            round_trips: Default::default(),
            capability,
        })
    }

    /// `--upstream`'s base URL (no trailing slash), which names object versions.
    pub fn base(&self) -> &str {
        self.routes.default_base()
    }

    /// Only the path and query of a client request ever reach the upstream: the host is ours.
    /// The target is validated again here (metadata can come from disk or a peer) and the
    /// parsed result must still lie under its route's base URL: same scheme, host, port and path
    /// prefix.
    pub fn url_for(&self, path_and_query: &str) -> Result<reqwest::Url, UpstreamError> {
        self.routes
            .url_for(path_and_query)
            .map_err(|why| self.failed(path_and_query, UpstreamError::BadTarget(why)))
    }

    /// The key a normalised client target is cached, looked up and purged under: the target
    /// without the query parameters its route ignores (`--ignore-query-param`). An expired
    /// signed URL on such a route is refused.
    pub fn cache_key<'a>(
        &self,
        path_and_query: &'a str,
    ) -> Result<std::borrow::Cow<'a, str>, SignatureError> {
        self.routes.cache_key(path_and_query, SystemTime::now())
    }

    /// The node path that serves an absolute `url` under one of the node's origins.
    pub fn node_path_of(&self, url: &reqwest::Url) -> Option<String> {
        self.routes.node_path(url)
    }

    /// The node path a URI reference in an upstream response (`Location`, `Content-Location`)
    /// names, resolved against the request for `path_and_query`; `None` when it points outside
    /// every route's base (another host, another prefix) or is not a clean target.
    pub fn path_of(&self, path_and_query: &str, reference: &str) -> Option<String> {
        let url = self.url_for(path_and_query).ok()?.join(reference).ok()?;
        self.routes.node_path(&url)
    }

    /// Seconds from sending a request to the upstream to its response headers (a moving
    /// average over lookups and range fetches); `None` before the first answer. What is known
    /// of the upstream's distance before any chunk of it was measured.
    pub fn round_trip(&self) -> Option<f64> {
        self.round_trips.seconds()
    }

    /// Counts a failed request for `path` (by its route) and hands the error back.
    fn failed(&self, path: &str, e: UpstreamError) -> UpstreamError {
        let route = self.routes.label_of(path);
        self.metrics
            .errors
            .with_label_values(&[e.label(), route])
            .inc();
        e
    }

    /// Counts a request of `kind` for `path`, by its route.
    fn count_request(&self, path: &str, kind: &str) {
        let route = self.routes.label_of(path);
        self.metrics
            .requests
            .with_label_values(&[kind, route])
            .inc();
    }

    /// The client's headers on the node's own lookup (`for_lookup`), naming the node.
    fn lookup_headers(&self, client: &HeaderMap) -> HeaderMap {
        let mut out = for_lookup(client);
        self.introduce(&mut out);
        out
    }

    /// Names the node a surrogate, after those the client's request names already (each one on
    /// the way appends itself).
    fn introduce(&self, out: &mut HeaderMap) {
        if let Some(capability) = &self.capability {
            out.append(SURROGATE_CAPABILITY, capability.clone());
        }
    }

    /// `HEAD` of an object, for the cacheability verdict, with the client's own headers; with
    /// `stale`, conditional on its validator (a client's `HEAD` revalidates with a `HEAD`).
    pub async fn head(
        &self,
        path: &str,
        client: &HeaderMap,
        stale: Option<&ObjectMeta>,
    ) -> Result<(StatusCode, HeaderMap, SystemTime), UpstreamError> {
        self.count_request(path, "head");
        let mut req = self
            .client
            .head(self.url_for(path)?)
            .headers(self.lookup_headers(client))
            .header(header::ACCEPT_ENCODING, "identity");
        if let Some(stale) = stale {
            req = if_changed(req, stale);
        }
        let res = self
            .send(path, req)
            .await
            .map_err(|e| self.failed(path, UpstreamError::from_reqwest(e)))?;
        Ok((res.status(), res.headers().clone(), SystemTime::now()))
    }

    /// Fetches chunk `index` of `meta` from byte `offset` of the chunk on with a conditional range
    /// request, returning its bytes as they arrive. The stream ends with an error rather than
    /// short or foreign bytes. An upstream that answers a valid but shorter range (gateways that
    /// cap how much one answer carries) is asked for the rest, each answer checked the same way.
    pub async fn fetch_chunk(
        self: &Arc<Self>,
        meta: &ObjectMeta,
        index: u64,
        offset: u64,
    ) -> Result<UpstreamStream, UpstreamError> {
        let chunk = meta.chunk_range(index);
        let start = chunk.start() + offset;
        let (first, covered) = self.fetch_range(meta, start..=*chunk.end()).await?;
        if covered == *chunk.end() {
            return Ok(first);
        }
        // Refused before a byte is handed out, so the client gets a clean error status.
        let (answered, asked) = (covered + 1 - start, chunk.end() + 1 - start);
        if answered * (MAX_RANGE_PARTS as u64) < asked {
            return Err(self.failed(
                &meta.path,
                UpstreamError::BadRange(format!(
                    "the upstream answers {answered} of {asked} bytes per range request; \
                 a chunk would take more than {MAX_RANGE_PARTS} requests"
                )),
            ));
        }
        Ok(self.followed_by_rest(first, Arc::new(meta.clone()), covered, *chunk.end(), 1))
    }

    /// `part` (ending at byte `covered`), then the bytes after it up to `to`, fetched when the
    /// reader gets there; `parts` answers made it so far.
    fn followed_by_rest(
        self: &Arc<Self>,
        part: UpstreamStream,
        meta: Arc<ObjectMeta>,
        covered: u64,
        to: u64,
        parts: usize,
    ) -> UpstreamStream {
        if covered == to {
            return part;
        }
        let rest = self.clone().rest_of(meta, covered + 1, to, parts);
        Box::pin(part.chain(futures::stream::once(rest).try_flatten()))
    }

    /// Bytes `from..=to` of `meta`, in as many answers as the upstream cuts them into (at most
    /// `MAX_RANGE_PARTS` per chunk).
    fn rest_of(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        from: u64,
        to: u64,
        parts: usize,
    ) -> BoxFuture<'static, Result<UpstreamStream, UpstreamError>> {
        Box::pin(async move {
            if parts >= MAX_RANGE_PARTS {
                return Err(self.failed(
                    &meta.path,
                    UpstreamError::BadRange(format!(
                        "the upstream cut one chunk into more than {MAX_RANGE_PARTS} range answers"
                    )),
                ));
            }
            let (part, covered) = self.fetch_range(&meta, from..=to).await?;
            Ok(self.followed_by_rest(part, meta, covered, to, parts + 1))
        })
    }

    /// One conditional range request for `range` of `meta`: its validated body and the last byte
    /// it covers (the end of `range`, or earlier when the upstream answered less).
    async fn fetch_range(
        &self,
        meta: &ObjectMeta,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<(UpstreamStream, u64), UpstreamError> {
        self.count_request(&meta.path, "range");
        let mut req = self
            .client
            .get(self.url_for(meta.upstream_target())?)
            .header(
                header::RANGE,
                format!("bytes={}-{}", range.start(), range.end()),
            )
            .header(header::ACCEPT_ENCODING, "identity");
        req = conditional(req, &meta.validator);
        let sent = std::time::Instant::now();
        let res = self
            .send(meta.upstream_target(), req)
            .await
            .map_err(|e| self.failed(&meta.path, UpstreamError::from_reqwest(e)))?;
        self.round_trips.observe(sent.elapsed());
        let covered = self
            .check_range_response(meta, &range, res.status(), res.headers())
            .map_err(|e| self.failed(&meta.path, e))?;
        let expected = covered - range.start() + 1;
        Ok((self.validated_body(res, expected, &meta.path), covered))
    }

    /// Checks the answer to a range request for `range` and returns the last byte it covers: the
    /// range's own end, or an earlier one when a `206` says so (its start and the object's length
    /// must still be exactly the ones asked for).
    fn check_range_response(
        &self,
        meta: &ObjectMeta,
        range: &std::ops::RangeInclusive<u64>,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<u64, UpstreamError> {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let covered = match status {
            StatusCode::PARTIAL_CONTENT => {
                let got = text(header::CONTENT_RANGE).unwrap_or("");
                match probe::content_range(headers) {
                    Some((start, end, total))
                        if start == *range.start()
                            && end <= *range.end()
                            && total == meta.length =>
                    {
                        end
                    }
                    _ => {
                        let want =
                            format!("bytes {}-{}/{}", range.start(), range.end(), meta.length);
                        return Err(UpstreamError::BadRange(format!(
                            "Content-Range {got:?}, expected {want:?}"
                        )));
                    }
                }
            }
            // A 200 is only acceptable when the "range" is the whole object anyway.
            StatusCode::OK if *range.start() == 0 && *range.end() + 1 == meta.length => {
                *range.end()
            }
            StatusCode::OK => {
                return Err(UpstreamError::BadRange(
                    "200 with the whole body to a range request".into(),
                ))
            }
            StatusCode::PRECONDITION_FAILED => {
                return Err(UpstreamError::Changed("412 to a conditional range".into()))
            }
            // Removed upstream: like a change, the stored version is no longer there to fetch.
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(UpstreamError::Changed(format!(
                    "{} to a range of the stored version",
                    status.as_u16()
                )))
            }
            other => return Err(UpstreamError::Status(other.as_u16())),
        };
        check_validator(&meta.validator, headers)?;
        let expected = covered - range.start() + 1;
        if let Some(len) = text(header::CONTENT_LENGTH) {
            if len.trim().parse::<u64>().ok() != Some(expected) {
                return Err(UpstreamError::BadRange(format!(
                    "Content-Length {len}, expected {expected}"
                )));
            }
        }
        Ok(covered)
    }

    /// Forwards a request the cache does not take part in, streaming both bodies.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.count_request(path_and_query, "pass");
        let mut out = end_to_end(headers);
        out.append(header::VIA, HeaderValue::from_static(VIA));
        self.introduce(&mut out);
        if method == Method::OPTIONS {
            // RFC 9110 §7.6.2; the front answers a Max-Forwards of 0 itself.
            if let Some(hops) = max_forwards(&out) {
                out.insert(header::MAX_FORWARDS, hops.saturating_sub(1).into());
            }
        }
        let mut request = self
            .client
            .request(method, self.url_for(path_and_query)?)
            .headers(out);
        if let Some(body) = body {
            request = request.body(body);
        }
        request
            .send()
            .await
            .map_err(|e| self.failed(path_and_query, UpstreamError::from_reqwest(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str) -> Upstream {
        let cfg = UpstreamConfig {
            routes: vec![],
            follow_redirects: vec![],
            ignore_query_params: vec![],
            base: reqwest::Url::parse(base).unwrap(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            insecure: false,
            surrogate_id: Some("casserole".into()),
        };
        Upstream::new(cfg, UpstreamMetrics::new(&crate::metrics::Registrar::new())).unwrap()
    }

    #[test]
    fn response_references_map_to_node_paths_under_the_base() {
        let u = upstream("http://origin.test:8080/mirror/");
        let of = |r: &str| u.path_of("/pkgs/a.deb?x=1", r);
        assert_eq!(of("/mirror/pkgs/b.deb").as_deref(), Some("/pkgs/b.deb"));
        assert_eq!(of("b.deb?v=2").as_deref(), Some("/pkgs/b.deb?v=2"));
        assert_eq!(of("../c").as_deref(), Some("/c"));
        assert_eq!(
            of("http://origin.test:8080/mirror/d").as_deref(),
            Some("/d")
        );
        assert_eq!(of("/elsewhere/d"), None);
        assert_eq!(of("http://other.test/mirror/d"), None);
        assert_eq!(of("https://origin.test:8080/mirror/d"), None);
    }

    #[test]
    fn urls_stay_under_the_base() {
        let up = upstream("http://origin:8080/fast");
        let url = up.url_for("/a/b?x=1").unwrap();
        assert_eq!(url.as_str(), "http://origin:8080/fast/a/b?x=1");
        for bad in [
            "/x\\..\\..\\private/obj8m",
            "/../private",
            "/%2e%2e/private",
            "//other-host/x",
            "@other-host/x",
            "/..;/x",
        ] {
            let err = up.url_for(bad).unwrap_err();
            assert!(matches!(err, UpstreamError::BadTarget(_)), "{bad}: {err}");
            assert_eq!(err.client_status(), StatusCode::BAD_REQUEST);
        }
        let root = upstream("https://origin/");
        assert_eq!(root.url_for("/x").unwrap().as_str(), "https://origin/x");
    }
}
