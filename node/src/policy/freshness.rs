//! How long a stored response is fresh, and how long it may be served stale (RFC 9111 §4.2,
//! RFC 5861): explicit lifetimes (`s-maxage`, `max-age`, `Expires` against `Date`, less `Age`)
//! through `http-cache-semantics`, heuristic freshness capped by a flag, a default lifetime for
//! upstreams that send none, `no-cache`, `must-revalidate`, and the stale grace periods.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, Request, Response, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

use super::{cache_control::CacheControl, Uncacheable};

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
}

impl Default for FreshnessRules {
    fn default() -> Self {
        FreshnessRules {
            min_ttl: Duration::from_secs(60),
            default_ttl: None,
            max_heuristic_ttl: Duration::from_secs(24 * 3600),
            stale_if_error: Duration::ZERO,
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
}

/// The lifetime of a `200` response to `GET path` with `headers`, from a shared cache's view.
pub fn freshness(
    rules: &FreshnessRules,
    path: &str,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Result<Freshness, Uncacheable> {
    let req = Request::get(path)
        .body(())
        .expect("path was parsed from a request");
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::OK;
    *res.headers_mut() = super::headers::for_lifetime(headers);
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(&req, &res, response_time, options);
    let cc = CacheControl::parse(headers);
    let has = |name: &str| cc.has(name);
    let arg = |name: &str| cc.valid_seconds(name).map(Duration::from_secs);
    // A qualified `no-cache="field"` only keeps fields out; the unqualified one means
    // "revalidate every time".
    let no_cache = cc.has_bare("no-cache");
    if has("no-store") || cc.has_bare("private") {
        return Err(Uncacheable::NotStorable);
    }
    let explicit = has("max-age") || has("s-maxage") || headers.contains_key(header::EXPIRES);
    let mut ttl = policy.time_to_live(response_time);
    if !explicit && !no_cache {
        if headers.contains_key(header::LAST_MODIFIED) {
            ttl = ttl.min(rules.max_heuristic_ttl);
        } else if let Some(default) = rules.default_ttl {
            ttl = default;
        }
    }
    if no_cache {
        ttl = Duration::ZERO;
    } else {
        let defaulted = rules.default_ttl.is_some() && !explicit;
        if !policy.is_storable() && !defaulted {
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
        assert!(matches!(
            at(&[("date", &date(0)), ("expires", &date(30))]),
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
