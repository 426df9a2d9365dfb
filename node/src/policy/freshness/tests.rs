//! Lifetimes from headers, rules and flags (`freshness`).

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
    let date = |secs_before: u64| httpdate::fmt_http_date(now - Duration::from_secs(secs_before));
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

#[test]
fn must_understand_stores_only_the_statuses_the_node_knows_and_overrides_no_store() {
    let at = |status: u16, cc: &str| {
        freshness(
            &FreshnessRules::default(),
            "/x",
            status,
            &headers(&[("cache-control", cc)]),
            SystemTime::now(),
        )
    };
    let understood = at(200, "max-age=3600, must-understand, no-store").unwrap();
    assert_eq!(understood.ttl.as_secs(), 3600);
    assert_eq!(
        at(599, "max-age=3600, must-understand"),
        Err(Uncacheable::NotStorable)
    );
    assert_eq!(at(299, "max-age=3600").unwrap().ttl.as_secs(), 3600);
    assert_eq!(
        at(200, "max-age=3600, no-store"),
        Err(Uncacheable::NotStorable)
    );
}

#[test]
fn upstream_failures_are_kept_briefly_and_only_when_they_say_so() {
    let rules = FreshnessRules::default();
    let at = |status: u16, pairs: &[(&str, &str)]| {
        freshness(&rules, "/x", status, &headers(pairs), SystemTime::now())
    };
    let kept = at(
        503,
        &[("cache-control", "max-age=86400, stale-if-error=600")],
    )
    .unwrap();
    assert_eq!(kept.ttl, rules.max_error_ttl, "capped");
    assert!(kept.must_revalidate && kept.stale_if_error.is_zero());
    assert_eq!(
        at(502, &[("last-modified", "Tue, 01 Jan 2019 00:00:00 GMT")]),
        Err(Uncacheable::NotStorable),
        "no heuristic lifetime for a failure"
    );
    assert_eq!(
        at(500, &[("cache-control", "max-age=0"), ("etag", "\"e\"")]),
        Err(Uncacheable::NotStorable),
        "nothing to revalidate an error against"
    );
    let off = FreshnessRules {
        max_error_ttl: Duration::ZERO,
        ..FreshnessRules::default()
    };
    let h = headers(&[("cache-control", "max-age=60")]);
    assert_eq!(
        freshness(&off, "/x", 503, &h, SystemTime::now()),
        Err(Uncacheable::NotStorable)
    );
    assert_eq!(
        at(501, &[("cache-control", "max-age=60")])
            .unwrap()
            .ttl
            .as_secs(),
        60
    );
}

#[test]
fn surrogate_control_aimed_at_the_node_replaces_cache_control() {
    let rules = FreshnessRules {
        surrogate_id: Some("casserole".into()),
        ..FreshnessRules::default()
    };
    let at = |pairs: &[(&str, &str)]| {
        freshness(&rules, "/m.bin", 200, &headers(pairs), SystemTime::now())
    };
    let fresh = at(&[
        ("cache-control", "no-store, private, no-cache, max-age=5"),
        ("surrogate-control", "max-age=3600+60;casserole"),
    ])
    .unwrap();
    assert_eq!(fresh.ttl, Duration::from_secs(3600));
    assert!(!fresh.no_cache && !fresh.must_revalidate);
    assert_eq!(fresh.stale_while_revalidate, Duration::from_secs(60));
    assert_eq!(fresh.stale_if_error, Duration::from_secs(60));
    // Its age counts against the surrogate lifetime as against any other.
    let aged = at(&[("surrogate-control", "max-age=3600"), ("age", "600")]).unwrap();
    assert_eq!(aged.ttl, Duration::from_secs(3000));
    assert_eq!(
        at(&[("surrogate-control", "max-age=3600"), ("age", "7200")]),
        Err(Uncacheable::NotStorable),
        "stale on arrival, nothing to revalidate with"
    );
    assert_eq!(
        at(&[
            ("cache-control", "max-age=600"),
            ("surrogate-control", "no-store")
        ]),
        Err(Uncacheable::NotStorable)
    );
    // Aimed elsewhere, or read by no node: Cache-Control alone decides.
    let cc_only = [
        ("cache-control", "max-age=600"),
        ("surrogate-control", "no-store;other-cdn"),
    ];
    assert_eq!(at(&cc_only).unwrap().ttl, Duration::from_secs(600));
    let not_read = freshness(
        &FreshnessRules::default(),
        "/m.bin",
        200,
        &headers(&[("surrogate-control", "max-age=3600")]),
        SystemTime::now(),
    );
    assert_eq!(not_read, Err(Uncacheable::NotStorable));
}
