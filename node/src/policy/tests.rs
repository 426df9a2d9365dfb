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
fn a_whole_response_keeps_its_content_range_and_a_probe_s_part_does_not() {
    let h = headers(&with(&[("content-range", "bytes 0-9/10")]));
    let stored = |answer| evaluate(&ctx(), answer, &h).unwrap();
    let whole = stored(LookupAnswer::Whole { length: 10 });
    assert_eq!(whole.header("content-range"), Some("bytes 0-9/10"));
    assert_eq!(
        stored(LookupAnswer::Head).header("content-range"),
        Some("bytes 0-9/10")
    );
    assert_eq!(
        stored(LookupAnswer::Ranged { length: 10 }).header("content-range"),
        None
    );
    // Nor does a 304 change it: it describes the stored bytes.
    let not_modified = headers(&[("cache-control", "max-age=60"), ("content-range", "x")]);
    let refreshed = refresh(&ctx(), &whole, &not_modified).unwrap();
    assert_eq!(refreshed.header("content-range"), Some("bytes 0-9/10"));
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

fn classify(method: &Method, headers: &HeaderMap, path: &str, rules: &RegexSet) -> Option<Bypass> {
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
fn a_304_does_not_change_the_fields_that_describe_the_stored_bytes() {
    let mut stored = good();
    stored.extend([
        ("content-encoding", "gzip"),
        ("content-md5", "rL0Y20zC+Fzt72VPzMSk2A=="),
        ("content-type", "text/plain"),
    ]);
    let stale = verdict(&stored).unwrap();
    let not_modified = headers(&[
        ("cache-control", "public, max-age=60"),
        ("content-encoding", "br"),
        ("content-md5", "N7UdGUp1E+RbVvZSTy1R8g=="),
        ("content-type", "text/plain;charset=utf-8"),
    ]);
    let refreshed = refresh(&ctx(), &stale, &not_modified).unwrap();
    assert_eq!(refreshed.header("content-encoding"), Some("gzip"));
    assert_eq!(
        refreshed.header("content-md5"),
        Some("rL0Y20zC+Fzt72VPzMSk2A==")
    );
    assert_eq!(
        refreshed.header("content-type"),
        Some("text/plain;charset=utf-8")
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

#[test]
fn refusals_of_one_request_are_no_verdict_on_the_object() {
    for gone in [404, 410, 301, 200] {
        assert!(
            Uncacheable::Status(gone).is_about_the_object(None),
            "{gone}"
        );
        assert!(
            Uncacheable::NotStorable.is_about_the_object(Some(gone)),
            "{gone}"
        );
    }
    assert!(Uncacheable::NotStorable.is_about_the_object(None));
    for refused in [400, 401, 403, 407, 429, 451, 500, 503] {
        assert!(
            !Uncacheable::Status(refused).is_about_the_object(None),
            "{refused}"
        );
        // A 403 without freshness is "not storable", and still only this request's refusal.
        assert!(
            !Uncacheable::NotStorable.is_about_the_object(Some(refused)),
            "{refused}"
        );
    }
    assert!(!Uncacheable::Authenticated.is_about_the_object(None));
}

#[test]
fn a_head_200_confirms_a_stored_copy_only_with_the_same_validators_and_length() {
    let stale = verdict(&with(&[("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT")])).unwrap();
    let confirms = |pairs: &[(&str, &str)]| head_confirms(&stale, &headers(pairs));
    assert!(
        confirms(&[("cache-control", "max-age=60")]),
        "no validator, no length"
    );
    assert!(confirms(&[("etag", "\"abc\""), ("content-length", "10")]));
    assert!(confirms(&[(
        "last-modified",
        "Tue, 15 Nov 1994 12:45:26 GMT"
    )]));
    assert!(!confirms(&[("etag", "\"abd\"")]));
    assert!(!confirms(&[(
        "last-modified",
        "Wed, 16 Nov 1994 12:45:26 GMT"
    )]));
    assert!(!confirms(&[("content-length", "11")]));
    let mut no_etag = stale.clone();
    no_etag.etag = None;
    assert!(
        !head_confirms(&no_etag, &headers(&[("etag", "\"abc\"")])),
        "a validator appears"
    );
    let mut gone = stale.clone();
    gone.status = 404;
    assert!(!head_confirms(&gone, &headers(&[])), "another status");
}
