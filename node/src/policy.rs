//! What may be cached: request-side rules (method, credentials, pass-through patterns) and the
//! response-side verdict on an upstream `HEAD`, following RFC 9111 through `http-cache-semantics`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};
use regex::RegexSet;

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
}

impl Bypass {
    pub fn label(self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::Credentials => "credentials",
            Bypass::PassThroughRule => "pass_through",
        }
    }
}

/// Decides from the request alone whether the cache may take part.
pub fn classify_request(
    method: &Method,
    headers: &HeaderMap,
    path_and_query: &str,
    rules: &RegexSet,
) -> Option<Bypass> {
    if method != Method::GET && method != Method::HEAD {
        return Some(Bypass::Method);
    }
    if headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE) {
        return Some(Bypass::Credentials);
    }
    if rules.is_match(path_and_query) {
        return Some(Bypass::PassThroughRule);
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
    #[error("upstream refuses ranges (Accept-Ranges: none)")]
    RangesRefused,
    #[error("Vary on {0}")]
    Vary(String),
    #[error("no strong ETag or Last-Modified to validate ranges with")]
    NoValidator,
    #[error("empty object")]
    Empty,
}

impl Uncacheable {
    pub fn detail(&self) -> &'static str {
        match self {
            Uncacheable::Status(_) => "status",
            Uncacheable::NotStorable => "not-storable",
            Uncacheable::TooShortLived(_) => "short-ttl",
            Uncacheable::SetCookie => "set-cookie",
            Uncacheable::UnknownLength => "no-length",
            Uncacheable::RangesRefused => "no-ranges",
            Uncacheable::Vary(_) => "vary",
            Uncacheable::NoValidator => "no-validator",
            Uncacheable::Empty => "empty",
        }
    }
}

/// Response headers replayed from the metadata to clients.
const REPLAYED_HEADERS: [header::HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_DISPOSITION,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::VARY,
    header::LINK,
    header::HeaderName::from_static("content-md5"),
];

/// Inputs of the response-side verdict.
pub struct HeadContext<'a> {
    pub upstream: &'a str,
    pub path: &'a str,
    pub min_ttl: Duration,
    pub chunk_size: u64,
    pub response_time: SystemTime,
}

/// Turns the upstream's answer to `HEAD path` into metadata, or says why it can't be cached.
pub fn evaluate_head(
    ctx: &HeadContext<'_>,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<ObjectMeta, Uncacheable> {
    if status != StatusCode::OK {
        return Err(Uncacheable::Status(status.as_u16()));
    }
    // The policy is evaluated as for the GET the HEAD stands for, from a shared cache's view.
    let req = Request::get(ctx.path)
        .body(())
        .expect("path was parsed from a request");
    let mut res = Response::new(());
    *res.status_mut() = status;
    *res.headers_mut() = headers.clone();
    let policy = CachePolicy::new_options(&req, &res, ctx.response_time, CacheOptions::default());
    if !policy.is_storable() {
        return Err(Uncacheable::NotStorable);
    }
    let ttl = policy.time_to_live(ctx.response_time);
    if ttl < ctx.min_ttl {
        return Err(Uncacheable::TooShortLived(ttl));
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(Uncacheable::SetCookie);
    }
    if let Some(vary) = headers.get(header::VARY) {
        // Chunks are always fetched with `Accept-Encoding: identity`, so a response that only
        // varies on Accept-Encoding is one representation for every client.
        let text = vary.to_str().unwrap_or("*");
        let other: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty() && !f.eq_ignore_ascii_case("accept-encoding"))
            .collect();
        if !other.is_empty() {
            return Err(Uncacheable::Vary(other.join(", ")));
        }
    }
    let accept_ranges = headers
        .get(header::ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept_ranges.trim().eq_ignore_ascii_case("none") {
        return Err(Uncacheable::RangesRefused);
    }
    let length: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Uncacheable::UnknownLength)?;
    if length == 0 {
        return Err(Uncacheable::Empty);
    }
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = text(header::ETAG);
    let last_modified =
        text(header::LAST_MODIFIED).filter(|lm| httpdate::parse_http_date(lm).is_ok());
    let validator = match (&etag, &last_modified) {
        (Some(e), _) if !e.starts_with("W/") => Validator::StrongEtag(e.clone()),
        (_, Some(lm)) => Validator::LastModified(lm.clone()),
        _ => return Err(Uncacheable::NoValidator),
    };
    let replayed = REPLAYED_HEADERS
        .iter()
        .flat_map(|name| headers.get_all(name).iter().map(move |v| (name, v)))
        .filter_map(|(name, v)| Some((name.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let fetched_at = ctx
        .response_time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
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
        headers: replayed,
        fetched_at,
        initial_age: policy.age(ctx.response_time).as_secs(),
        fresh_until: fetched_at + ttl.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn ctx() -> HeadContext<'static> {
        HeadContext {
            upstream: "http://u/",
            path: "/obj",
            min_ttl: Duration::from_secs(60),
            chunk_size: 4,
            response_time: SystemTime::now(),
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
        evaluate_head(&ctx(), StatusCode::OK, &headers(pairs))
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
        assert_eq!(
            evaluate_head(&ctx(), StatusCode::NOT_FOUND, &headers(&good())).unwrap_err(),
            Uncacheable::Status(404)
        );
        assert_eq!(
            verdict(&with(&[("cache-control", "no-store, max-age=3600")])).unwrap_err(),
            Uncacheable::NotStorable
        );
        assert_eq!(
            verdict(&with(&[("cache-control", "private, max-age=3600")])).unwrap_err(),
            Uncacheable::NotStorable
        );
        assert!(matches!(
            verdict(&with(&[("cache-control", "max-age=30")])).unwrap_err(),
            Uncacheable::TooShortLived(_)
        ));
        assert_eq!(
            verdict(&with(&[("set-cookie", "a=b")])).unwrap_err(),
            Uncacheable::SetCookie
        );
        assert_eq!(
            verdict(&with(&[("accept-ranges", "none")])).unwrap_err(),
            Uncacheable::RangesRefused
        );
        assert_eq!(
            verdict(&with(&[("vary", "User-Agent")])).unwrap_err(),
            Uncacheable::Vary("User-Agent".into())
        );
        assert_eq!(
            verdict(&with(&[("etag", "W/\"weak\"")])).unwrap_err(),
            Uncacheable::NoValidator
        );
        let no_length: Vec<_> = good()
            .into_iter()
            .filter(|(k, _)| *k != "content-length")
            .collect();
        assert_eq!(verdict(&no_length).unwrap_err(), Uncacheable::UnknownLength);
    }

    #[test]
    fn vary_accept_encoding_and_weak_etag_with_last_modified_are_fine() {
        assert!(verdict(&with(&[("vary", "Accept-Encoding")])).is_ok());
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

    #[test]
    fn requests_with_credentials_other_methods_or_rules_bypass() {
        let rules = RegexSet::new([r"^/private/", r"\.json$"]).unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            classify_request(&Method::GET, &none, "/a.bin", &rules),
            None
        );
        assert_eq!(
            classify_request(&Method::HEAD, &none, "/a.bin", &rules),
            None
        );
        assert_eq!(
            classify_request(&Method::POST, &none, "/a.bin", &rules),
            Some(Bypass::Method)
        );
        assert_eq!(
            classify_request(&Method::GET, &none, "/private/x", &rules),
            Some(Bypass::PassThroughRule)
        );
        assert_eq!(
            classify_request(&Method::GET, &none, "/x.json", &rules),
            Some(Bypass::PassThroughRule)
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            classify_request(&Method::GET, &auth, "/a.bin", &rules),
            Some(Bypass::Credentials)
        );
        let cookie = headers(&[("cookie", "s=1")]);
        assert_eq!(
            classify_request(&Method::GET, &cookie, "/a.bin", &rules),
            Some(Bypass::Credentials)
        );
    }
}
