//! How long a stored response is fresh, and how long it may be served stale (RFC 9111 §4.2,
//! RFC 5861): explicit lifetimes (`s-maxage`, `max-age`, `Expires` against `Date`, less `Age`)
//! through `http-cache-semantics`, heuristic freshness capped by a flag, a default lifetime for
//! upstreams that send none, `no-cache`, `must-revalidate`, and the stale grace periods — or,
//! where an origin's `Surrogate-Control` speaks to this node, what it says (`surrogate.rs`).

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, Request, Response, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

use super::{
    cache_control::{CacheControl, Seconds},
    surrogate::SurrogateControl,
    Uncacheable,
};

/// The node's own freshness rules (flags).
#[derive(Debug, Clone)]
pub struct FreshnessRules {
    /// Objects fresh for less than this are not cached (`no-cache` objects excepted: they are
    /// revalidated on every use anyway).
    pub min_ttl: Duration,
    /// Lifetime of responses that carry no freshness information at all; `None`: not cached.
    pub default_ttl: Option<Duration>,
    /// Cap on heuristic freshness (a fraction of the time since `Last-Modified`).
    pub max_heuristic_ttl: Duration,
    /// Grace period for serving stale while the upstream cannot be reached (RFC 9111 §4.2.4
    /// allows a disconnected cache to), unless the response forbids it (`must-revalidate`,
    /// `proxy-revalidate`, `s-maxage`). An upstream that answers 5xx is connected: stale is then
    /// served only within the response's own `stale-if-error`.
    pub stale_if_error: Duration,
    /// `--ttl-rule`s: a matching path is fresh for at least the rule's lifetime (the first match
    /// counts), unless the response forbids storing it or asks for revalidation on every use.
    pub ttl_rules: Vec<casserole_limits::TtlRule>,
    /// `--max-error-ttl`: the longest an upstream failure (`5xx` but `501`) that states a
    /// lifetime is kept, a shield for the upstream while it fails rather than a pinned error;
    /// zero: failures are never stored.
    pub max_error_ttl: Duration,
    /// `--surrogate-id`: the name `Surrogate-Control` directives aim at this cache by
    /// (`surrogate.rs`); `None`: the field is not read.
    pub surrogate_id: Option<String>,
}

impl FreshnessRules {
    /// The first `--ttl-rule` matching `path`, for an answer with `status`.
    pub(super) fn ttl_rule(&self, path: &str, status: u16) -> Option<&casserole_limits::TtlRule> {
        self.ttl_rules
            .iter()
            .find(|r| r.pattern.is_match(path))
            .filter(|_| for_the_object(status))
    }

    /// `--default-ttl`, for an answer with `status`.
    fn default_ttl(&self, status: u16) -> Option<Duration> {
        self.default_ttl.filter(|_| for_the_object(status))
    }
}

/// The operator's lifetimes (`--ttl-rule`, `--default-ttl`) are for the objects themselves, a
/// `200` (or a transformed one, `203`): any other answer keeps only the lifetime it states
/// itself, so a `404` for a package file the mirror does not have yet never becomes immutable.
fn for_the_object(status: u16) -> bool {
    matches!(status, 200 | 203)
}

impl Default for FreshnessRules {
    fn default() -> Self {
        FreshnessRules {
            min_ttl: Duration::ZERO,
            default_ttl: None,
            max_heuristic_ttl: Duration::from_secs(24 * 3600),
            stale_if_error: Duration::ZERO,
            ttl_rules: Vec::new(),
            max_error_ttl: Duration::from_secs(10),
            surrogate_id: None,
        }
    }
}

/// What a response's headers say about its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub ttl: Duration,
    /// Stored, but revalidated before every use.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub must_revalidate: bool,
    /// The response's own `stale-if-error` (RFC 5861).
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    /// Never revalidated while fresh, not even on a client's reload: `immutable` (RFC 8246) or
    /// an `immutable` `--ttl-rule`.
    pub immutable: bool,
}

/// RFC 9110 §15.1: the statuses heuristically cacheable by default (`206` aside: parts are not
/// stored as such).
const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The freshness lifetime the response states (RFC 9111 §4.2.1): `s-maxage`, else `max-age`,
/// else `Expires` less `Date`. A malformed or repeated value states a lifetime of zero (stale at
/// once, §1.2.2, §5.3); `None` when nothing is stated (heuristics may apply).
fn explicit_lifetime(
    cc: &CacheControl,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    for name in ["s-maxage", "max-age"] {
        match cc.seconds(name) {
            Seconds::Valid(secs) => return Some(Duration::from_secs(secs)),
            Seconds::Invalid => return Some(Duration::ZERO),
            Seconds::Absent => {}
        }
    }
    // Of several `Expires` lines the first counts (RFC 9111 §4.2.1 allows the first or stale).
    let expires = headers.get(header::EXPIRES)?;
    let expires = expires.to_str().ok().and_then(super::date::parse_date);
    let date = super::headers::http_date(headers, header::DATE).unwrap_or(response_time);
    Some(expires.map_or(Duration::ZERO, |e| {
        e.duration_since(date).unwrap_or_default()
    }))
}

/// How long the response stays fresh from now, and whether it states its lifetime: the stated
/// lifetime, else a heuristic one (RFC 9111 §4.2.2: only for the statuses defined as
/// heuristically cacheable, or `public`), else `--default-ttl`, less the age it arrived with.
/// Computed here rather than by `http-cache-semantics`, which reads a malformed `Age`, `max-age`
/// or `Expires` as absent where the RFC says the response is then stale, and does not read every
/// date format §5.6.7 of RFC 9110 allows.
fn time_to_live(
    rules: &FreshnessRules,
    status: u16,
    cc: &CacheControl,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> (Duration, bool) {
    let stated = explicit_lifetime(cc, headers, response_time);
    let heuristic = heuristic_lifetime(headers, response_time)
        .filter(|_| HEURISTIC_STATUSES.contains(&status) || cc.has("public"))
        .map(|h| h.min(rules.max_heuristic_ttl));
    let lifetime = stated
        .or(heuristic)
        .or(rules.default_ttl(status))
        .unwrap_or_default();
    let age = Duration::from_secs(initial_age(headers, response_time));
    (lifetime.saturating_sub(age), stated.is_some())
}

/// Whether `http-cache-semantics` would store the response, as a shared cache (it judges the
/// statuses it knows, and credentials and qualified directives the way RFC 9111 §3 does).
fn crate_stores(path: &str, status: u16, headers: &HeaderMap, response_time: SystemTime) -> bool {
    let req = Request::get(path)
        .body(())
        .expect("path was parsed from a request");
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    *res.headers_mut() = super::headers::for_lifetime(headers);
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    CachePolicy::new_options(&req, &res, response_time, options).is_storable()
}

/// Whether a stored copy could be revalidated (an `ETag`, or a `Last-Modified` that is a date):
/// one stale at once and without either would serve no request.
fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG)
        || super::headers::http_date(headers, header::LAST_MODIFIED).is_some()
}

/// RFC 9111 §4.2.2: a tenth of the time since `Last-Modified`, as of `Date`.
fn heuristic_lifetime(headers: &HeaderMap, response_time: SystemTime) -> Option<Duration> {
    let modified = super::headers::http_date(headers, header::LAST_MODIFIED)?;
    let date = super::headers::http_date(headers, header::DATE).unwrap_or(response_time);
    Some(date.duration_since(modified).unwrap_or_default() / 10)
}

/// The age the response already had when it arrived (RFC 9111 §4.2.3): its `Age`, or the time
/// since its `Date` when that is longer (apparent age; a `Date` ahead of this clock counts 0).
/// A list in one field line counts by its first member (§5.1); an `Age` that is then not a
/// non-negative integer (a fraction, a parameter), or two field lines, says the response is of
/// unknown age: it is taken as stale, the safe reading of "invalid".
pub fn initial_age(headers: &HeaderMap, response_time: SystemTime) -> u64 {
    const UNKNOWN: u64 = u32::MAX as u64;
    let mut lines = headers.get_all(header::AGE).iter();
    let age_value = match (lines.next(), lines.next()) {
        (None, _) => 0,
        (Some(_), Some(_)) => UNKNOWN,
        (Some(v), None) => v
            .to_str()
            .ok()
            .map(|v| v.split(',').next().unwrap_or("").trim())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map_or(UNKNOWN, |v| v.parse().unwrap_or(UNKNOWN)),
    };
    let apparent = super::headers::http_date(headers, header::DATE)
        .and_then(|date| response_time.duration_since(date).ok())
        .map_or(0, |d| d.as_secs());
    age_value.max(apparent)
}

/// The lifetime of a `200` response to `GET path` with `headers`, from a shared cache's view:
/// what `Surrogate-Control` says to this node, where it says something, else `Cache-Control`
/// and `Expires`.
pub fn freshness(
    rules: &FreshnessRules,
    path: &str,
    status: u16,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Result<Freshness, Uncacheable> {
    let surrogate = rules
        .surrogate_id
        .as_deref()
        .and_then(|id| SurrogateControl::parse(headers, id));
    let fresh = match surrogate {
        Some(SurrogateControl::NoStore) => Err(Uncacheable::NotStorable),
        Some(SurrogateControl::Lifetime { fresh, grace }) => {
            surrogate_freshness(rules, path, status, headers, response_time, fresh, grace)
        }
        None => cache_control_freshness(rules, path, status, headers, response_time),
    }?;
    match super::is_upstream_failure(status) {
        true => as_failure(rules, fresh),
        false => Ok(fresh),
    }
}

/// An origin's lifetime for its surrogates replaces, for the node, what `Cache-Control` and
/// `Expires` say to clients (`no-store`, `private` and `no-cache` included: they are the
/// clients' rules, and the origin has stated the cache's); its extension is the grace in which
/// a stale copy may still be served. The refusals outside freshness (`Set-Cookie`, `Vary: *`,
/// credentials) still hold, and so do the operator's `--ttl-rule`s and `--min-ttl`.
fn surrogate_freshness(
    rules: &FreshnessRules,
    path: &str,
    status: u16,
    headers: &HeaderMap,
    response_time: SystemTime,
    fresh: Duration,
    grace: Duration,
) -> Result<Freshness, Uncacheable> {
    let age = Duration::from_secs(initial_age(headers, response_time));
    let rule = rules.ttl_rule(path, status);
    let ttl = fresh
        .saturating_sub(age)
        .max(rule.map_or(Duration::ZERO, |r| r.ttl));
    if ttl.is_zero() && !has_validator(headers) {
        return Err(Uncacheable::NotStorable);
    }
    if ttl < rules.min_ttl {
        return Err(Uncacheable::TooShortLived(ttl));
    }
    Ok(Freshness {
        ttl,
        no_cache: false,
        must_revalidate: false,
        stale_if_error: grace,
        stale_while_revalidate: grace,
        immutable: rule.is_some_and(|r| r.immutable),
    })
}

/// An upstream failure the response says may be kept: for `--max-error-ttl` at most, never
/// served stale (a stored error is a short shield for a failing upstream, not a copy to fall
/// back on), and not at all without a lifetime (nothing to revalidate an error against).
fn as_failure(rules: &FreshnessRules, fresh: Freshness) -> Result<Freshness, Uncacheable> {
    let ttl = fresh.ttl.min(rules.max_error_ttl);
    if ttl.is_zero() || fresh.no_cache {
        return Err(Uncacheable::NotStorable);
    }
    Ok(Freshness {
        ttl,
        no_cache: false,
        must_revalidate: true,
        stale_if_error: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
        immutable: false,
    })
}

/// The statuses RFC 9110 §15 defines, whose caching rules the node follows (for
/// `must-understand`); others (`299`, `599`) are only known by their class.
fn is_understood(status: u16) -> bool {
    matches!(status, 200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505)
}

/// The lifetime `Cache-Control` and `Expires` give a shared cache (RFC 9111 §4.2).
fn cache_control_freshness(
    rules: &FreshnessRules,
    path: &str,
    status: u16,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Result<Freshness, Uncacheable> {
    let cc = CacheControl::parse(headers);
    let has = |name: &str| cc.has(name);
    let arg = |name: &str| cc.valid_seconds(name).map(Duration::from_secs);
    // A qualified `no-cache="field"` only keeps fields out; the unqualified one means
    // "revalidate every time".
    let no_cache = cc.has_bare("no-cache");
    // RFC 9111 §5.2.2.3: `must-understand` limits storing to caches that know the status's
    // caching rules, and lets those ignore the `no-store` it comes with.
    let must_understand = has("must-understand");
    if must_understand && !is_understood(status) {
        return Err(Uncacheable::NotStorable);
    }
    if (has("no-store") && !must_understand) || cc.has_bare("private") {
        return Err(Uncacheable::NotStorable);
    }
    let (mut ttl, explicit) = time_to_live(rules, status, &cc, headers, response_time);
    // A `--ttl-rule` is the operator's word on how long such paths stay the same (Squid's
    // refresh_pattern, nginx's proxy_cache_valid); a response's `no-cache` still wins.
    let rule = rules.ttl_rule(path, status).filter(|_| !no_cache);
    if let Some(rule) = rule {
        ttl = ttl.max(rule.ttl);
    }
    let immutable = rule.is_some_and(|r| r.immutable) || (cc.has("immutable") && !no_cache);
    // Stale at once and nothing to revalidate it with: storing it would serve no request.
    if ttl.is_zero() && !has_validator(headers) {
        return Err(Uncacheable::NotStorable);
    }
    if no_cache {
        ttl = Duration::ZERO;
    } else {
        let defaulted = rules.default_ttl(status).is_some() && !explicit;
        // The crate only stores the statuses it knows; RFC 9111 §3 stores any final status
        // whose response states a lifetime or says `public`.
        let stated = explicit || cc.has("public") || rule.is_some();
        if !defaulted && !stated && !crate_stores(path, status, headers, response_time) {
            return Err(Uncacheable::NotStorable);
        }
        if ttl < rules.min_ttl {
            return Err(Uncacheable::TooShortLived(ttl));
        }
    }
    // RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10: these forbid serving stale.
    let strict = has("must-revalidate") || has("proxy-revalidate") || has("s-maxage");
    let (stale_if_error, stale_while_revalidate) = if strict {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (
            arg("stale-if-error").unwrap_or_default(),
            arg("stale-while-revalidate").unwrap_or_default(),
        )
    };
    Ok(Freshness {
        ttl,
        no_cache,
        must_revalidate: strict,
        stale_if_error,
        stale_while_revalidate,
        immutable,
    })
}

#[cfg(test)]
mod tests;
