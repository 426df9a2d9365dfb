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
pub mod surrogate;
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
    // An empty set still scans the whole target for no match: skipped on the default.
    if !rules.is_empty() && rules.is_match(path_and_query) {
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
    /// Whether the verdict on an answer with `status` is one on the object, and so holds for
    /// every request of it, rather than on the one request that got it: an upstream error may
    /// be gone soon, and a refusal of the request (its credentials, its signature, its rate or
    /// form: a `4xx` other than `404` and `410`, which say the resource is gone) says nothing of
    /// what another client would get, whatever else it says.
    pub fn is_about_the_object(&self, status: Option<u16>) -> bool {
        let refusal = |s: u16| s >= 500 || ((400..500).contains(&s) && !matches!(s, 404 | 410));
        match self {
            Uncacheable::Authenticated => false,
            Uncacheable::Status(s) => !refusal(*s),
            _ => !status.is_some_and(refusal),
        }
    }

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
/// not-modified answers (a `206` is a part of a `200`, a `304` refreshes one). Whether one is
/// stored then depends on its freshness: the statuses that are not heuristically cacheable need
/// an explicit lifetime, and upstream failures are kept for `--max-error-ttl` at most and never
/// in place of a copy held (`freshness`, `MetadataStore::revalidate`).
pub fn is_storable_status(status: u16) -> bool {
    (200..600).contains(&status) && !matches!(status, 206 | 304)
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
        LookupAnswer::Head => headers::content_length(headers).ok_or(Uncacheable::UnknownLength)?,
        LookupAnswer::Ranged { length } | LookupAnswer::Whole { length } => length,
    };
    let text = |name: header::HeaderName| headers.get(name).map(crate::object::field_text);
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
        headers: match answer {
            // The probe's part, not the object's: the cache writes its own for each range.
            LookupAnswer::Ranged { .. } => headers::stored_headers(headers)
                .into_iter()
                .filter(|(name, _)| name != "content-range")
                .collect(),
            LookupAnswer::Whole { .. } | LookupAnswer::Head => headers::stored_headers(headers),
        },
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
        upstream_target: None,
        rendered: Default::default(),
    })
}

/// `stale` refreshed by a `304 Not Modified` (RFC 9111 §4.3.4): the stored headers updated with
/// the ones the `304` carries, a new lifetime from them, the same version and chunks.
/// Header fields the stored bytes depend on (RFC 9111 §3.2): a `304` that names others than
/// the stored ones cannot change the bytes, so it does not change these either.
const DESCRIBE_THE_STORED_BYTES: [&str; 6] = [
    "content-encoding",
    "content-range",
    "content-md5",
    "digest",
    "content-digest",
    "repr-digest",
];

/// Stored header fields appended to `out` as field values (those that are none are left out).
fn append_stored(out: &mut HeaderMap, stored: &[(String, String)]) {
    for (name, value) in stored {
        if let (Ok(name), Some(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            crate::object::field_value(value),
        ) {
            out.append(name, value);
        }
    }
}

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
    append_stored(&mut merged, &stale.headers);
    let updates: Vec<(String, String)> = headers::stored_headers(not_modified)
        .into_iter()
        .filter(|(name, _)| !DESCRIBE_THE_STORED_BYTES.contains(&name.as_str()))
        .collect();
    for (name, _) in &updates {
        merged.remove(name.as_str());
    }
    append_stored(&mut merged, &updates);
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
        upstream_target: None,
        ..stale.clone()
    })
}

/// RFC 9111 §4.3.5: whether a `200` to a `HEAD` describes the same bytes as `stale`, so that it
/// updates the stored response (as a `304` does) instead of replacing it: the same status, every
/// validator it carries equal to the stored one, and its `Content-Length`, when it has one, the
/// stored length. Otherwise the stored response is stale and the answer a new lookup.
pub fn head_confirms(stale: &ObjectMeta, head: &HeaderMap) -> bool {
    let same = |name: header::HeaderName, stored: Option<&str>| {
        head.get(name)
            .is_none_or(|v| v.to_str().ok().map(str::trim) == stored)
    };
    // A `Content-Length` that does not parse matches no length.
    let length = !head.contains_key(header::CONTENT_LENGTH)
        || headers::content_length(head) == Some(stale.length);
    stale.status == 200
        && same(header::ETAG, stale.etag.as_deref())
        && same(header::LAST_MODIFIED, stale.last_modified.as_deref())
        && length
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
mod tests;
