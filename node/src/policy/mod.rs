//! What may be cached: request-side rules (method, credentials, pass-through patterns) and the
//! response-side verdict on an upstream `HEAD`, following RFC 9111 through `http-cache-semantics`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, Method};
use regex::RegexSet;

pub mod cache_control;
pub mod date;
pub mod freshness;
pub mod headers;
pub mod request;
pub mod usable;

pub use freshness::FreshnessRules;
pub use request::ClientDemands;
pub use usable::{usable, Usable};

use crate::object::{ObjectMeta, Validator};

/// Why a request goes straight to the upstream without the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Not GET or HEAD.
    Method,
    /// Carries `Authorization` or `Cookie`: authenticated responses are never shared.
    Credentials,
    /// Matches a `--pass-through` pattern.
    PassThroughRule,
    /// `Cache-Control: no-store` in the request: nothing of the exchange may be stored.
    NoStore,
}

impl Bypass {
    pub fn label(self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::Credentials => "credentials",
            Bypass::PassThroughRule => "pass_through",
            Bypass::NoStore => "no_store",
        }
    }
}

/// Decides from the request alone (its `demands` already read from its headers) whether the
/// cache may take part.
pub fn classify_request(
    method: &Method,
    headers: &HeaderMap,
    demands: &ClientDemands,
    path_and_query: &str,
    rules: &RegexSet,
) -> Option<Bypass> {
    if method != Method::GET && method != Method::HEAD {
        return Some(Bypass::Method);
    }
    // `Authorization` is not a reason to stand aside: the response may say it can be shared
    // (`shareable_with_credentials`). A `Cookie` says the answer is the client's own.
    if headers.contains_key(header::COOKIE) {
        return Some(Bypass::Credentials);
    }
    if rules.is_match(path_and_query) {
        return Some(Bypass::PassThroughRule);
    }
    if demands.no_store {
        return Some(Bypass::NoStore);
    }
    None
}

/// Why an upstream object is not cached (it is then streamed straight through).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Uncacheable {
    #[error("status {0} is not cached")]
    Status(u16),
    #[error("not storable by a shared cache (no-store, private or no freshness information)")]
    NotStorable,
    #[error("fresh for {0:?}, less than the minimum TTL")]
    TooShortLived(Duration),
    #[error("response sets a cookie")]
    SetCookie,
    #[error("no Content-Length")]
    UnknownLength,
    #[error("Vary on {0}")]
    Vary(String),
    #[error("answers a request with Authorization and says neither public, s-maxage nor must-revalidate")]
    Authenticated,
}

impl Uncacheable {
    pub fn detail(&self) -> &'static str {
        match self {
            Uncacheable::Status(_) => "status",
            Uncacheable::NotStorable => "not-storable",
            Uncacheable::TooShortLived(_) => "short-ttl",
            Uncacheable::SetCookie => "set-cookie",
            Uncacheable::UnknownLength => "no-length",
            Uncacheable::Vary(_) => "vary",
            Uncacheable::Authenticated => "authorization",
        }
    }
}

/// RFC 9111 §3.5: a response to a request with `Authorization` is stored (and shared) only when
/// it says so: `public`, `s-maxage` or `must-revalidate`.
pub fn shareable_with_credentials(
    request: &HeaderMap,
    response: &HeaderMap,
) -> Result<(), Uncacheable> {
    if !request.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let cc = cache_control::CacheControl::parse(response);
    match cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate") {
        true => Ok(()),
        false => Err(Uncacheable::Authenticated),
    }
}

/// Inputs of the response-side verdict.
pub struct HeadContext<'a> {
    pub upstream: &'a str,
    pub path: &'a str,
    pub rules: &'a FreshnessRules,
    pub chunk_size: u64,
    pub response_time: SystemTime,
    /// The upstream's status.
    pub status: u16,
}

/// How the upstream answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupAnswer {
    /// `HEAD`: whether ranges work is judged from `Accept-Ranges`.
    Head,
    /// `206` to the probe's range request: the object's length from `Content-Range`.
    Ranged { length: u64 },
    /// `200` with the whole body to the probe's range request: the upstream ignores ranges.
    Whole { length: u64 },
}

/// Turns the upstream's answer to `HEAD path` into metadata, or says why it can't be cached.
pub fn evaluate_head(
    ctx: &HeadContext<'_>,
    headers: &HeaderMap,
) -> Result<ObjectMeta, Uncacheable> {
    if !is_storable_status(ctx.status) {
        return Err(Uncacheable::Status(ctx.status));
    }
    evaluate(ctx, LookupAnswer::Head, headers)
}

/// Final statuses a response may be stored with (RFC 9111 §3): all but partial and
/// not-modified answers (a `206` is a part of a `200`, a `304` refreshes one) and upstream
/// failures. Whether one is stored then depends on its freshness: the statuses that are not
/// heuristically cacheable need an explicit lifetime (`freshness`).
pub fn is_storable_status(status: u16) -> bool {
    (200..600).contains(&status) && !matches!(status, 206 | 304) && !is_upstream_failure(status)
}

/// An answer that says the upstream is failing now (an error to report, or to serve stale
/// through), not a verdict on the object: a `5xx`, but `501 Not Implemented`, which is as lasting
/// as a `404` (RFC 9110 §15.6.2).
pub fn is_upstream_failure(status: u16) -> bool {
    status >= 500 && status != 501
}

/// Turns an upstream answer to a lookup (a `200` to `HEAD`, or the probe's `206`/`200`) into
/// metadata, or says why it can't be cached.
pub fn evaluate(
    ctx: &HeadContext<'_>,
    answer: LookupAnswer,
    headers: &HeaderMap,
) -> Result<ObjectMeta, Uncacheable> {
    check_vary(headers)?;
    let fresh = freshness::freshness(ctx.rules, ctx.path, ctx.status, headers, ctx.response_time)?;
    if headers.contains_key(header::SET_COOKIE) {
        return Err(Uncacheable::SetCookie);
    }
    let length = match answer {
        LookupAnswer::Head => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or(Uncacheable::UnknownLength)?,
        LookupAnswer::Ranged { length } | LookupAnswer::Whole { length } => length,
    };
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = text(header::ETAG);
    let last_modified = text(header::LAST_MODIFIED).filter(|lm| date::parse_date(lm).is_some());
    let validator = match (&etag, &last_modified) {
        (Some(e), _) if !e.starts_with("W/") => Validator::StrongEtag(e.clone()),
        (_, Some(lm)) => Validator::LastModified(lm.clone()),
        // Without a validator, only bytes of one response belong together.
        _ => Validator::Unvalidated(format!("{:016x}", rand::random::<u64>())),
    };
    let whole_only = !validator.validates_ranges()
        || ctx.status != 200
        || match answer {
            LookupAnswer::Whole { .. } => true,
            LookupAnswer::Ranged { .. } => false,
            // A HEAD cannot show whether ranges work; upstreams that honour them say so.
            LookupAnswer::Head => !accepts_byte_ranges(headers),
        };
    let fetched_at = ctx
        .response_time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let initial_age = freshness::initial_age(headers, ctx.response_time);
    Ok(ObjectMeta {
        path: ctx.path.to_string(),
        length,
        chunk_size: ctx.chunk_size,
        version: ObjectMeta::compute_version(
            ctx.upstream,
            ctx.path,
            &validator,
            length,
            ctx.chunk_size,
        ),
        validator,
        etag,
        last_modified,
        headers: headers::stored_headers(headers),
        whole_only,
        fetched_at,
        initial_age,
        fresh_until: fetched_at + fresh.ttl.as_secs(),
        no_cache: fresh.no_cache,
        stale_if_error: fresh.stale_if_error.as_secs(),
        must_revalidate: fresh.must_revalidate,
        stale_while_revalidate: fresh.stale_while_revalidate.as_secs(),
        selecting: Vec::new(),
        status: ctx.status,
        immutable: fresh.immutable,
    })
}

/// `stale` refreshed by a `304 Not Modified` (RFC 9111 §4.3.4): the stored headers updated with
/// the ones the `304` carries, a new lifetime from them, the same version and chunks.
pub fn refresh(
    ctx: &HeadContext<'_>,
    stale: &ObjectMeta,
    not_modified: &HeaderMap,
) -> Result<ObjectMeta, Uncacheable> {
    // The refusals of a first store (`evaluate`): a 304 that sets a cookie or varies on `*`
    // makes the stored response unusable rather than updating it.
    check_vary(not_modified)?;
    if not_modified.contains_key(header::SET_COOKIE) {
        return Err(Uncacheable::SetCookie);
    }
    let mut merged = HeaderMap::new();
    for (name, value) in &stale.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) {
            merged.append(name, value);
        }
    }
    let updates = headers::stored_headers(not_modified);
    for (name, _) in &updates {
        merged.remove(name.as_str());
    }
    for (name, value) in updates {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(&value),
        ) {
            merged.append(name, value);
        }
    }
    let fresh = freshness::freshness(ctx.rules, ctx.path, ctx.status, &merged, ctx.response_time)?;
    let fetched_at = ctx
        .response_time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(ObjectMeta {
        headers: headers::stored_headers(&merged),
        fetched_at,
        initial_age: freshness::initial_age(not_modified, ctx.response_time),
        fresh_until: fetched_at + fresh.ttl.as_secs(),
        no_cache: fresh.no_cache,
        stale_if_error: fresh.stale_if_error.as_secs(),
        must_revalidate: fresh.must_revalidate,
        stale_while_revalidate: fresh.stale_while_revalidate.as_secs(),
        immutable: fresh.immutable,
        ..stale.clone()
    })
}

/// Every `Vary` field line counts. `Vary: *` can match no later request, so it is not stored;
/// other names are stored with the response and checked per request (`ObjectMeta::varies_on`).
fn check_vary(headers: &HeaderMap) -> Result<(), Uncacheable> {
    let star = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("*").split(','))
        .any(|f| f.trim() == "*");
    match star {
        true => Err(Uncacheable::Vary("*".into())),
        false => Ok(()),
    }
}

fn accepts_byte_ranges(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    static RULES: std::sync::LazyLock<FreshnessRules> =
        std::sync::LazyLock::new(FreshnessRules::default);

    fn ctx() -> HeadContext<'static> {
        HeadContext {
            upstream: "http://u/",
            path: "/obj",
            rules: &RULES,
            chunk_size: 4,
            response_time: SystemTime::now(),
            status: 200,
        }
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("cache-control", "public, max-age=3600"),
            ("content-length", "10"),
            ("etag", "\"abc\""),
            ("content-type", "application/octet-stream"),
        ]
    }

    fn verdict(pairs: &[(&str, &str)]) -> Result<ObjectMeta, Uncacheable> {
        evaluate_head(&ctx(), &headers(pairs))
    }

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = good()
            .into_iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .collect();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn a_plain_long_lived_object_is_cacheable() {
        let m = verdict(&good()).unwrap();
        assert_eq!(m.length, 10);
        assert_eq!(m.validator, Validator::StrongEtag("\"abc\"".into()));
        assert_eq!(m.header("content-type"), Some("application/octet-stream"));
        assert!(m.fresh_until >= m.fetched_at + 3599);
    }

    #[test]
    fn each_rule_refuses() {
        let partial = HeadContext {
            status: 206,
            ..ctx()
        };
        assert_eq!(
            evaluate_head(&partial, &headers(&good())).unwrap_err(),
            Uncacheable::Status(206)
        );
        // Statuses that are not heuristically cacheable need a stated lifetime (RFC 9111 §4.2.2).
        let found = HeadContext {
            status: 302,
            ..ctx()
        };
        let heuristic_only = [
            ("content-length", "10"),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("etag", "\"a\""),
        ];
        assert!(evaluate_head(&found, &headers(&heuristic_only)).is_err());
        assert_eq!(
            evaluate_head(&found, &headers(&good())).unwrap().status,
            302
        );
        let gone = HeadContext {
            status: 410,
            ..ctx()
        };
        assert_eq!(
            evaluate_head(&gone, &headers(&heuristic_only))
                .unwrap()
                .status,
            410
        );
        assert_eq!(
            verdict(&with(&[("cache-control", "no-store, max-age=3600")])).unwrap_err(),
            Uncacheable::NotStorable
        );
        assert_eq!(
            verdict(&with(&[("cache-control", "private, max-age=3600")])).unwrap_err(),
            Uncacheable::NotStorable
        );
        let min_ttl = FreshnessRules {
            min_ttl: Duration::from_secs(60),
            ..FreshnessRules::default()
        };
        let short = HeadContext {
            rules: &min_ttl,
            ..ctx()
        };
        assert!(matches!(
            evaluate(
                &short,
                LookupAnswer::Head,
                &headers(&with(&[("cache-control", "max-age=30")]))
            ),
            Err(Uncacheable::TooShortLived(_))
        ));
        assert_eq!(
            verdict(&with(&[("set-cookie", "a=b")])).unwrap_err(),
            Uncacheable::SetCookie
        );
        assert_eq!(
            verdict(&with(&[("vary", "Accept-Encoding"), ("vary", "Origin, *")])).unwrap_err(),
            Uncacheable::Vary("*".into()),
            "every Vary field line counts"
        );
        let no_length: Vec<_> = good()
            .into_iter()
            .filter(|(k, _)| *k != "content-length")
            .collect();
        assert_eq!(verdict(&no_length).unwrap_err(), Uncacheable::UnknownLength);
    }

    #[test]
    fn objects_that_cannot_be_fetched_by_ranges_are_taken_whole() {
        let ranged = verdict(&with(&[("accept-ranges", "bytes")])).unwrap();
        assert!(!ranged.whole_only);
        // A HEAD that does not say ranges work, or says they don't.
        assert!(verdict(&good()).unwrap().whole_only);
        assert!(
            verdict(&with(&[("accept-ranges", "none")]))
                .unwrap()
                .whole_only
        );
        // No validator: one response's bytes only, each lookup a version of its own.
        let weak = with(&[("etag", "W/\"weak\""), ("accept-ranges", "bytes")]);
        let (a, b) = (verdict(&weak).unwrap(), verdict(&weak).unwrap());
        assert!(a.whole_only && !a.validator.validates_ranges());
        assert_ne!(a.version, b.version);
        let probe = |answer| evaluate(&ctx(), answer, &headers(&good())).unwrap();
        assert!(!probe(LookupAnswer::Ranged { length: 10 }).whole_only);
        assert!(probe(LookupAnswer::Whole { length: 10 }).whole_only);
        assert_eq!(probe(LookupAnswer::Ranged { length: 77 }).length, 77);
    }

    #[test]
    fn the_origin_s_own_headers_are_stored() {
        let m = verdict(&with(&[
            ("x-checksum-sha256", "00ff"),
            ("link", "<a>"),
            ("link", "<b>"),
        ]))
        .unwrap();
        assert_eq!(m.header("x-checksum-sha256"), Some("00ff"));
        let links: Vec<_> = m.headers.iter().filter(|(k, _)| k == "link").collect();
        assert_eq!(links.len(), 2);
    }

    #[test]
    fn vary_accept_encoding_and_weak_etag_with_last_modified_are_fine() {
        assert!(verdict(&with(&[("vary", "Accept-Encoding")])).is_ok());
        let m = verdict(&with(&[
            ("vary", "Accept-Encoding, Origin"),
            ("vary", "X-Team"),
        ]))
        .unwrap();
        assert_eq!(m.varies_on(), ["origin", "x-team"]);
        let m = verdict(&with(&[
            ("etag", "W/\"weak\""),
            ("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT"),
        ]))
        .unwrap();
        assert_eq!(
            m.validator,
            Validator::LastModified("Tue, 15 Nov 1994 12:45:26 GMT".into())
        );
    }

    fn classify(
        method: &Method,
        headers: &HeaderMap,
        path: &str,
        rules: &RegexSet,
    ) -> Option<Bypass> {
        classify_request(
            method,
            headers,
            &ClientDemands::from_headers(headers),
            path,
            rules,
        )
    }

    #[test]
    fn requests_with_credentials_other_methods_or_rules_bypass() {
        let rules = RegexSet::new([r"^/private/", r"\.json$"]).unwrap();
        let none = HeaderMap::new();
        assert_eq!(classify(&Method::GET, &none, "/a.bin", &rules), None);
        assert_eq!(classify(&Method::HEAD, &none, "/a.bin", &rules), None);
        assert_eq!(
            classify(&Method::POST, &none, "/a.bin", &rules),
            Some(Bypass::Method)
        );
        assert_eq!(
            classify(&Method::GET, &none, "/private/x", &rules),
            Some(Bypass::PassThroughRule)
        );
        assert_eq!(
            classify(&Method::GET, &none, "/x.json", &rules),
            Some(Bypass::PassThroughRule)
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(classify(&Method::GET, &auth, "/a.bin", &rules), None);
        for (cc, ok) in [
            ("public, max-age=60", true),
            ("s-maxage=60", true),
            ("max-age=60, must-revalidate", true),
            ("max-age=60", false),
            ("private, max-age=60", false),
        ] {
            let response = headers(&[("cache-control", cc)]);
            assert_eq!(
                shareable_with_credentials(&auth, &response).is_ok(),
                ok,
                "{cc}"
            );
            assert!(shareable_with_credentials(&none, &response).is_ok(), "{cc}");
        }
        let cookie = headers(&[("cookie", "s=1")]);
        assert_eq!(
            classify(&Method::GET, &cookie, "/a.bin", &rules),
            Some(Bypass::Credentials)
        );
        let no_store = headers(&[("cache-control", "max-age=5, No-Store")]);
        assert_eq!(
            classify(&Method::GET, &no_store, "/a.bin", &rules),
            Some(Bypass::NoStore)
        );
    }

    #[test]
    fn a_304_that_sets_a_cookie_or_varies_on_star_is_refused_like_a_first_store() {
        let stale = verdict(&good()).unwrap();
        let plain = headers(&[("cache-control", "public, max-age=60"), ("x-new", "1")]);
        let refreshed = refresh(&ctx(), &stale, &plain).unwrap();
        assert_eq!(refreshed.version, stale.version);
        assert!(refreshed.headers.iter().any(|(n, _)| n == "x-new"));
        let cookie = headers(&[("cache-control", "max-age=60"), ("set-cookie", "s=1")]);
        assert_eq!(
            refresh(&ctx(), &stale, &cookie).unwrap_err(),
            Uncacheable::SetCookie
        );
        for vary in ["*", "accept, *"] {
            let star = headers(&[("cache-control", "max-age=60"), ("vary", vary)]);
            assert_eq!(
                refresh(&ctx(), &stale, &star).unwrap_err(),
                Uncacheable::Vary("*".into())
            );
        }
    }
}
