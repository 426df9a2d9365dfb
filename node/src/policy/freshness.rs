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
    surrogate::{self, SurrogateControl},
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
    match surrogate {
        Some(SurrogateControl::NoStore) => Err(Uncacheable::NotStorable),
        Some(SurrogateControl::Lifetime { fresh, grace }) => {
            surrogate::freshness(rules, path, status, headers, response_time, fresh, grace)
        }
        None => cache_control_freshness(rules, path, status, headers, response_time),
    }
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
    let validated = headers.contains_key(header::ETAG)
        || super::headers::http_date(headers, header::LAST_MODIFIED).is_some();
    let arg = |name: &str| cc.valid_seconds(name).map(Duration::from_secs);
    // A qualified `no-cache="field"` only keeps fields out; the unqualified one means
    // "revalidate every time".
    let no_cache = cc.has_bare("no-cache");
    if has("no-store") || cc.has_bare("private") {
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
    if ttl.is_zero() && !validated {
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
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn at(pairs: &[(&str, &str)]) -> Result<Freshness, Uncacheable> {
        freshness(
            &FreshnessRules::default(),
            "/x",
            200,
            &headers(pairs),
            SystemTime::now(),
        )
    }

    fn date(offset_secs: i64) -> String {
        let t = if offset_secs >= 0 {
            SystemTime::now() + Duration::from_secs(offset_secs as u64)
        } else {
            SystemTime::now() - Duration::from_secs((-offset_secs) as u64)
        };
        httpdate::fmt_http_date(t)
    }

    #[test]
    fn the_initial_age_is_the_longer_of_age_and_the_time_since_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let date =
            |secs_before: u64| httpdate::fmt_http_date(now - Duration::from_secs(secs_before));
        assert_eq!(initial_age(&headers(&[]), now), 0);
        assert_eq!(initial_age(&headers(&[("age", "30")]), now), 30);
        assert_eq!(initial_age(&headers(&[("date", &date(100))]), now), 100);
        assert_eq!(
            initial_age(&headers(&[("date", &date(100)), ("age", "300")]), now),
            300
        );
        let ahead = httpdate::fmt_http_date(now + Duration::from_secs(50));
        assert_eq!(
            initial_age(&headers(&[("date", &ahead), ("age", "7")]), now),
            7
        );
        assert_eq!(initial_age(&headers(&[("date", "garbage")]), now), 0);
        // RFC 9111 §5.1: an Age that is not one non-negative integer: of unknown age, stale.
        assert_eq!(
            initial_age(&headers(&[("age", "0,7200")]), now),
            0,
            "first member"
        );
        assert_eq!(initial_age(&headers(&[("age", "7200, 0")]), now), 7200);
        for bad in ["x", "7200.0", "-5", "1 ;a=b", "old, 0"] {
            assert!(
                initial_age(&headers(&[("age", bad)]), now) >= u64::from(u32::MAX),
                "{bad}"
            );
        }
        let two_lines = headers(&[("age", "0"), ("age", "0")]);
        assert!(initial_age(&two_lines, now) >= u64::from(u32::MAX));
    }

    #[test]
    fn stated_lifetimes_follow_rfc_9111_parsing() {
        let now = SystemTime::now();
        let lifetime = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            explicit_lifetime(&CacheControl::parse(&h), &h, now).map(|d| d.as_secs())
        };
        assert_eq!(lifetime(&[]), None);
        assert_eq!(
            lifetime(&[("cache-control", "max-age=60, s-maxage=5")]),
            Some(5)
        );
        assert_eq!(
            lifetime(&[("cache-control", "max-age=1.5")]),
            Some(0),
            "malformed: stale"
        );
        // Every date format RFC 9110 §5.6.7 allows; an invalid one is stale; of repeated ones
        // the first counts.
        for expires in [
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Thu Aug  8 02:01:18 2050",
            "Thu, 18 Aug 2050 02:01:18 GMT",
        ] {
            let secs = lifetime(&[("date", &date(0)), ("expires", expires)]).unwrap();
            assert!(secs > 20 * 365 * 86400, "{expires}: {secs}");
        }
        assert_eq!(lifetime(&[("expires", "0")]), Some(0));
        assert_eq!(
            lifetime(&[
                ("date", &date(0)),
                ("expires", &date(600)),
                ("expires", &date(0))
            ]),
            Some(600)
        );
    }

    #[test]
    fn every_storable_response_with_a_validator_is_kept_however_short_lived() {
        let short = at(&[("cache-control", "max-age=2"), ("etag", "\"a\"")]).unwrap();
        assert_eq!(short.ttl.as_secs(), 2);
        let stale = at(&[("cache-control", "max-age=0"), ("etag", "\"a\"")]).unwrap();
        assert_eq!(stale.ttl, Duration::ZERO);
        assert_eq!(
            at(&[("cache-control", "max-age=0")]),
            Err(Uncacheable::NotStorable),
            "nothing to revalidate with"
        );
        let old = at(&[
            ("cache-control", "max-age=3600"),
            ("age", "7200.0"),
            ("etag", "\"a\""),
        ]);
        assert_eq!(old.unwrap().ttl, Duration::ZERO, "an invalid Age is stale");
    }

    #[test]
    fn ttl_rules_extend_what_the_response_allows() {
        let rules = FreshnessRules {
            ttl_rules: vec![
                casserole_limits::parse_ttl_rule(r"\.tgz$=immutable").unwrap(),
                casserole_limits::parse_ttl_rule(r"\.iso$=1h").unwrap(),
            ],
            ..Default::default()
        };
        let at = |path: &str, pairs: &[(&str, &str)]| {
            freshness(&rules, path, 200, &headers(pairs), SystemTime::now())
        };
        let bare = at("/-/p-1.0.0.tgz", &[]).unwrap();
        assert!(bare.immutable && bare.ttl == casserole_limits::IMMUTABLE_TTL);
        let iso = |cc: &str| {
            at("/a.iso", &[("cache-control", cc)])
                .unwrap()
                .ttl
                .as_secs()
        };
        assert_eq!(iso("max-age=60"), 3600, "at least the rule's lifetime");
        assert_eq!(iso("max-age=7200"), 7200, "a longer stated one stays");
        assert_eq!(at("/a.iso", &[]).unwrap().ttl.as_secs(), 3600);
        assert!(
            at("/a.tar", &[]).is_err(),
            "no rule, no freshness, no validator"
        );
        assert_eq!(
            at("/p.tgz", &[("cache-control", "no-store")]),
            Err(Uncacheable::NotStorable)
        );
        assert_eq!(
            at("/p.tgz", &[("cache-control", "private")]),
            Err(Uncacheable::NotStorable)
        );
        let nc = at(
            "/p.tgz",
            &[("cache-control", "no-cache"), ("etag", "\"e\"")],
        )
        .unwrap();
        assert!(nc.no_cache && nc.ttl.is_zero() && !nc.immutable);
        let stated = at("/x", &[("cache-control", "max-age=60, immutable")]).unwrap();
        assert!(stated.immutable, "RFC 8246");
    }

    #[test]
    fn the_operator_s_lifetimes_are_for_the_object_not_for_errors() {
        let rules = FreshnessRules {
            ttl_rules: vec![casserole_limits::parse_ttl_rule(r"\.deb$=immutable").unwrap()],
            default_ttl: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        let at = |path: &str, status: u16, pairs: &[(&str, &str)]| {
            freshness(&rules, path, status, &headers(pairs), SystemTime::now())
        };
        assert!(at("/pool/a.deb", 200, &[]).unwrap().immutable);
        assert!(at("/pool/a.deb", 203, &[]).unwrap().immutable);
        assert_eq!(at("/a.tar", 200, &[]).unwrap().ttl.as_secs(), 600);
        // A mirror that does not have the file yet: the 404 keeps only what it states.
        assert_eq!(at("/pool/a.deb", 404, &[]), Err(Uncacheable::NotStorable));
        let stated = at("/pool/a.deb", 404, &[("cache-control", "max-age=60")]).unwrap();
        assert_eq!(stated.ttl.as_secs(), 60);
        assert!(!stated.immutable);
        for status in [301, 404, 410] {
            assert_eq!(
                at("/a.tar", status, &[]),
                Err(Uncacheable::NotStorable),
                "{status}: no default lifetime"
            );
        }
    }

    #[test]
    fn explicit_lifetimes() {
        assert_eq!(
            at(&[("cache-control", "max-age=600")])
                .unwrap()
                .ttl
                .as_secs(),
            600
        );
        let shared = at(&[("cache-control", "max-age=60, s-maxage=900")]).unwrap();
        assert_eq!(shared.ttl.as_secs(), 900, "s-maxage wins in a shared cache");
        let aged = at(&[("cache-control", "max-age=600"), ("age", "100")]).unwrap();
        assert!((499..=500).contains(&aged.ttl.as_secs()), "{aged:?}");
        let expires = at(&[("date", &date(0)), ("expires", &date(3600))]).unwrap();
        assert!(
            (3598..=3600).contains(&expires.ttl.as_secs()),
            "{expires:?}"
        );
        let min_ttl = FreshnessRules {
            min_ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let h = headers(&[("date", &date(0)), ("expires", &date(30))]);
        assert!(matches!(
            freshness(&min_ttl, "/x", 200, &h, SystemTime::now()),
            Err(Uncacheable::TooShortLived(_))
        ));
    }

    #[test]
    fn heuristic_and_default_lifetimes() {
        // 10 % of ten days since Last-Modified: a day, within the default cap.
        let lm = at(&[("date", &date(0)), ("last-modified", &date(-10 * 86400))]).unwrap();
        assert!((86000..=86400).contains(&lm.ttl.as_secs()), "{lm:?}");
        let capped = freshness(
            &FreshnessRules {
                max_heuristic_ttl: Duration::from_secs(3600),
                ..Default::default()
            },
            "/x",
            200,
            &headers(&[("date", &date(0)), ("last-modified", &date(-10 * 86400))]),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(capped.ttl.as_secs(), 3600);
        assert!(
            at(&[("content-type", "text/plain")]).is_err(),
            "no freshness"
        );
        let default = freshness(
            &FreshnessRules {
                default_ttl: Some(Duration::from_secs(300)),
                ..Default::default()
            },
            "/x",
            200,
            &headers(&[("content-type", "text/plain")]),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(default.ttl.as_secs(), 300);
    }

    #[test]
    fn no_cache_revalidation_and_stale_grace() {
        let nc = at(&[("cache-control", "no-cache, max-age=3600")]).unwrap();
        assert!(nc.no_cache);
        assert_eq!(nc.ttl, Duration::ZERO);
        assert!(
            !at(&[("cache-control", "no-cache=\"x-a\", max-age=3600")])
                .unwrap()
                .no_cache
        );
        let grace = at(&[(
            "cache-control",
            "max-age=600, stale-if-error=300, stale-while-revalidate=30",
        )])
        .unwrap();
        assert_eq!(grace.stale_if_error.as_secs(), 300);
        assert_eq!(grace.stale_while_revalidate.as_secs(), 30);
        for strict in [
            "max-age=600, must-revalidate, stale-if-error=300",
            "max-age=600, proxy-revalidate, stale-if-error=300",
            "s-maxage=600, stale-if-error=300",
        ] {
            let f = at(&[("cache-control", strict)]).expect(strict);
            assert_eq!(f.stale_if_error, Duration::ZERO, "{strict}");
            assert!(f.must_revalidate, "{strict}");
        }
        let plain = at(&[("cache-control", "max-age=600")]).unwrap();
        assert_eq!(
            plain.stale_if_error,
            Duration::ZERO,
            "only the response grants it"
        );
        assert!(!plain.must_revalidate);
        assert!(matches!(
            at(&[("cache-control", "private, max-age=600")]),
            Err(Uncacheable::NotStorable)
        ));
    }
}
