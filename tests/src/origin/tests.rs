//! The origin over real sockets, through the same client helpers integration tests use.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::*;
use crate::client::{self, get_bytes, get_sha256, head, header};

const MIB: u64 = 1 << 20;

async fn origin_with(path: &str, spec: ObjectSpec) -> (Origin, ObjectInfo, String) {
    let origin = Origin::start().await;
    let info = origin.put(path, spec);
    let url = format!("{}{path}", origin.url());
    (origin, info, url)
}

#[tokio::test]
async fn full_get_and_head() {
    let (origin, info, url) = origin_with("/a.bin", ObjectSpec::new(MIB + 123).seed(5)).await;
    let d = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.len, MIB + 123);
    assert_eq!(d.sha256, info.sha256());
    assert_eq!(header(&d.headers, "etag"), info.etag.as_deref().unwrap());
    assert_eq!(
        header(&d.headers, "last-modified"),
        info.last_modified.as_deref().unwrap()
    );
    assert_eq!(header(&d.headers, "cache-control"), "public, max-age=3600");
    assert_eq!(header(&d.headers, "accept-ranges"), "bytes");
    assert!(!header(&d.headers, "date").is_empty());

    let (status, h) = head(&url, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-length"), (MIB + 123).to_string());
    assert_eq!(header(&h, "etag"), info.etag.as_deref().unwrap());

    let s = origin.path_stats("/a.bin");
    assert_eq!(
        (s.requests, s.get_requests, s.head_requests, s.full_gets),
        (2, 1, 1, 1)
    );
    assert_eq!(s.body_bytes_sent, MIB + 123);
    assert_eq!(origin.stats().body_bytes_sent, MIB + 123);
    origin.reset_stats();
    assert_eq!(origin.path_stats("/a.bin"), Stats::default());
}

#[tokio::test]
async fn ranges_are_consistent_with_the_full_body() {
    let len = 3 * MIB + 17;
    let (origin, info, url) = origin_with("/r.bin", ObjectSpec::new(len).seed(9)).await;
    let cuts = [0, 1, 65_536, MIB + 5, 2 * MIB, len];
    let mut whole = Vec::new();
    for w in cuts.windows(2) {
        let (s, e) = (w[0], w[1] - 1);
        let (status, h, body) = get_bytes(&url, &[("range", &format!("bytes={s}-{e}"))])
            .await
            .unwrap();
        assert_eq!(status, 206);
        assert_eq!(header(&h, "content-range"), format!("bytes {s}-{e}/{len}"));
        assert_eq!(header(&h, "content-length"), (e - s + 1).to_string());
        assert_eq!(body.as_ref(), info.bytes(s, e).as_slice());
        whole.extend_from_slice(&body);
    }
    assert_eq!(client::sha256_hex(&whole), info.sha256());

    let (status, h, body) = get_bytes(&url, &[("range", "bytes=-10")]).await.unwrap();
    assert_eq!((status.as_u16(), body.len()), (206, 10));
    assert_eq!(
        header(&h, "content-range"),
        format!("bytes {}-{}/{len}", len - 10, len - 1)
    );
    let (status, h, _) = get_bytes(&url, &[("range", &format!("bytes={len}-"))])
        .await
        .unwrap();
    assert_eq!(status, 416);
    assert_eq!(header(&h, "content-range"), format!("bytes */{len}"));
    // Open-ended ranges past the end are clamped.
    let (status, h, _) = get_bytes(
        &url,
        &[("range", &format!("bytes={}-{}", len - 2, len + 100))],
    )
    .await
    .unwrap();
    assert_eq!(status, 206);
    assert_eq!(
        header(&h, "content-range"),
        format!("bytes {}-{}/{len}", len - 2, len - 1)
    );

    let s = origin.path_stats("/r.bin");
    assert_eq!(s.range_requests, 8);
    assert_eq!(s.range_not_satisfiable, 1);
    assert_eq!(s.range_count(0, 0), 1);
    assert_eq!(s.ranges.len(), 7);
    assert_eq!(s.full_gets, 0);
}

#[tokio::test]
async fn conditional_requests() {
    let (origin, info, url) = origin_with("/c.bin", ObjectSpec::new(1000)).await;
    let etag = info.etag.clone().unwrap();
    let lm = info.last_modified.clone().unwrap();
    let range = ("range", "bytes=0-9");

    let (s, _, _) = get_bytes(&url, &[range, ("if-match", &etag)])
        .await
        .unwrap();
    assert_eq!(s, 206);
    let (s, _, _) = get_bytes(&url, &[range, ("if-match", "\"other\"")])
        .await
        .unwrap();
    assert_eq!(s, 412);
    let (s, _, _) = get_bytes(&url, &[range, ("if-unmodified-since", &lm)])
        .await
        .unwrap();
    assert_eq!(s, 206);
    let (s, h, body) = get_bytes(&url, &[("if-none-match", &etag)]).await.unwrap();
    assert_eq!((s.as_u16(), body.len()), (304, 0));
    assert_eq!(header(&h, "etag"), etag);

    let new = origin.bump_version("/c.bin");
    assert_ne!(new.etag, info.etag);
    assert_ne!(new.last_modified, info.last_modified);
    assert_ne!(new.sha256(), info.sha256());
    let (s, _, _) = get_bytes(&url, &[range, ("if-match", &etag)])
        .await
        .unwrap();
    assert_eq!(s, 412);
    let (s, _, _) = get_bytes(&url, &[range, ("if-unmodified-since", &lm)])
        .await
        .unwrap();
    assert_eq!(s, 412);
    let (s, _, _) = get_bytes(&url, &[("if-none-match", &etag)]).await.unwrap();
    assert_eq!(s, 200);
    // If-Range with a stale validator: the full new body.
    let (s, _, body) = get_bytes(&url, &[range, ("if-range", &etag)])
        .await
        .unwrap();
    assert_eq!((s.as_u16(), body.len()), (200, 1000));
    assert_eq!(origin.path_stats("/c.bin").precondition_failed, 3);
    assert_eq!(origin.path_stats("/c.bin").not_modified, 1);

    // A weak ETag never satisfies If-Match.
    let weak = origin.put("/w.bin", ObjectSpec::new(10).etag(EtagMode::Weak));
    let wurl = format!("{}/w.bin", origin.url());
    assert!(weak.etag.as_deref().unwrap().starts_with("W/"));
    let (s, _, _) = get_bytes(&wurl, &[range, ("if-match", weak.etag.as_deref().unwrap())])
        .await
        .unwrap();
    assert_eq!(s, 412);
}

#[tokio::test]
async fn headers_options_auth_and_404() {
    let origin = Origin::start().await;
    let spec = ObjectSpec::new(5000)
        .no_cache_control()
        .etag(EtagMode::None)
        .no_last_modified()
        .vary("Accept-Encoding")
        .set_cookie()
        .content_encoding("gzip")
        .header("x-test", "1")
        .chunked();
    origin.put("/h", spec);
    let url = format!("{}/h", origin.url());
    let d = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(d.len, 5000);
    for absent in ["cache-control", "etag", "last-modified", "content-length"] {
        assert!(d.headers.get(absent).is_none(), "{absent}");
    }
    assert_eq!(header(&d.headers, "vary"), "Accept-Encoding");
    assert_eq!(header(&d.headers, "content-encoding"), "gzip");
    assert_eq!(header(&d.headers, "x-test"), "1");
    assert!(d.headers.get("set-cookie").is_some());
    let (_, h) = head(&url, &[]).await.unwrap();
    assert!(h.get("content-length").is_none());

    origin.put("/n", ObjectSpec::new(100).accept_ranges_none());
    let (s, h, body) = get_bytes(&format!("{}/n", origin.url()), &[("range", "bytes=0-9")])
        .await
        .unwrap();
    assert_eq!((s.as_u16(), body.len()), (200, 100));
    assert_eq!(header(&h, "accept-ranges"), "none");

    origin.put(
        "/private",
        ObjectSpec::new(10).require_auth("Bearer s3cret"),
    );
    let purl = format!("{}/private", origin.url());
    assert_eq!(get_bytes(&purl, &[]).await.unwrap().0, 401);
    assert_eq!(
        get_bytes(&purl, &[("authorization", "Bearer s3cret")])
            .await
            .unwrap()
            .0,
        200
    );

    origin.put("/gone", ObjectSpec::new(10).status(410));
    assert_eq!(
        get_bytes(&format!("{}/gone", origin.url()), &[])
            .await
            .unwrap()
            .0,
        410
    );
    assert_eq!(
        get_bytes(&format!("{}/missing", origin.url()), &[])
            .await
            .unwrap()
            .0,
        404
    );
    assert_eq!(origin.path_stats("/missing").not_found, 1);
}

#[tokio::test]
async fn status_refuse_and_head_faults_heal() {
    let (origin, info, url) = origin_with("/f", ObjectSpec::new(1000)).await;
    origin.set_fault("/f", Fault::Status(503), Some(1));
    assert_eq!(get_bytes(&url, &[]).await.unwrap().0, 503);
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, info.sha256());

    origin.set_fault("/f", Fault::Refuse, Some(1));
    assert!(get_bytes(&url, &[]).await.is_err());
    assert_eq!(get_bytes(&url, &[]).await.unwrap().0, 200);

    origin.set_fault("/f", Fault::HeadStatus(500), None);
    assert_eq!(head(&url, &[]).await.unwrap().0, 500);
    assert_eq!(get_bytes(&url, &[]).await.unwrap().0, 200);
    assert_eq!(head(&url, &[]).await.unwrap().0, 500);
    origin.clear_faults("/f");
    assert_eq!(head(&url, &[]).await.unwrap().0, 200);

    // Scoped to range GETs: full GETs are untouched.
    origin.set_fault_scoped("/f", Fault::Status(500), FaultScope::RangeGets, None);
    assert_eq!(get_bytes(&url, &[]).await.unwrap().0, 200);
    assert_eq!(
        get_bytes(&url, &[("range", "bytes=0-1")]).await.unwrap().0,
        500
    );
    assert_eq!(origin.path_stats("/f").faults_fired, 5);
}

#[tokio::test]
async fn truncate_and_content_length_lie_are_errors() {
    let (origin, _, url) = origin_with("/t", ObjectSpec::new(MIB)).await;
    origin.set_fault("/t", Fault::TruncateAfter(100_000), Some(1));
    let err = get_sha256(&url, &[]).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("aborted after 100000 bytes"),
        "{err:#}"
    );
    assert!(get_sha256(&url, &[]).await.is_ok());

    origin.set_fault("/t", Fault::ContentLengthLie, None);
    let (_, h) = head(&url, &[]).await.unwrap();
    assert_eq!(
        header(&h, "content-length"),
        (MIB + CONTENT_LENGTH_LIE_EXTRA).to_string()
    );
    assert!(get_sha256(&url, &[]).await.is_err());
    assert!(get_bytes(&url, &[("range", "bytes=0-99")]).await.is_err());
}

#[tokio::test]
async fn range_faults() {
    let len = 10_000;
    let (origin, info, url) = origin_with("/g", ObjectSpec::new(len)).await;
    origin.set_fault("/g", Fault::WrongContentRange, Some(1));
    let (s, h, body) = get_bytes(&url, &[("range", "bytes=100-199")])
        .await
        .unwrap();
    assert_eq!(s, 206);
    assert_eq!(header(&h, "content-range"), format!("bytes 101-200/{len}"));
    assert_eq!(body.as_ref(), info.bytes(100, 199).as_slice());

    origin.set_fault("/g", Fault::IgnoreRange, Some(1));
    let (s, _, body) = get_bytes(&url, &[("range", "bytes=100-199")])
        .await
        .unwrap();
    assert_eq!((s.as_u16(), body.len() as u64), (200, len));

    origin.set_fault("/g", Fault::ChangeVersionAfter(2), None);
    let etag = |h: &reqwest::header::HeaderMap| header(h, "etag").to_string();
    let (_, h1, b1) = get_bytes(&url, &[("range", "bytes=0-99")]).await.unwrap();
    let (_, h0, _) = get_bytes(&url, &[]).await.unwrap(); // full GETs do not count
    let (_, h2, _) = get_bytes(&url, &[("range", "bytes=0-99")]).await.unwrap();
    let (_, h3, b3) = get_bytes(&url, &[("range", "bytes=0-99")]).await.unwrap();
    assert_eq!(etag(&h1), etag(&h0));
    assert_eq!(etag(&h1), etag(&h2));
    assert_ne!(etag(&h2), etag(&h3));
    assert_ne!(b1, b3);
    assert_eq!(origin.info("/g").version, 1);
}

#[tokio::test]
async fn delay_and_stall() {
    let (origin, _, url) = origin_with("/s", ObjectSpec::new(MIB)).await;
    origin.set_fault("/s", Fault::Delay(Duration::from_millis(300)), Some(1));
    let t = Instant::now();
    assert_eq!(get_bytes(&url, &[]).await.unwrap().0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    origin.set_fault("/s", Fault::StallAfter(1000), Some(1));
    let resp = client::client().get(&url).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let mut got = 0;
    while got < 1000 {
        got += tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .len();
    }
    assert_eq!(got, 1000);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "should stall"
    );
    // Shutdown ends the stall promptly instead of after STALL_DURATION.
    tokio::time::timeout(Duration::from_secs(10), origin.shutdown())
        .await
        .expect("shutdown finishes");
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    assert!(matches!(next, Some(Err(_)) | None));
    assert!(get_bytes(&url, &[]).await.is_err(), "no longer listening");
}

#[tokio::test]
async fn throttle_limits_rate() {
    let (origin, info, url) = origin_with("/slow", ObjectSpec::new(MIB).throttle(4 * MIB)).await;
    let t = Instant::now();
    let d = get_sha256(&url, &[]).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(d.sha256, info.sha256());

    // The throttle is per response: two halves in parallel take ~250 ms, one connection would
    // take ~500 ms. Only the lower bound is timed (an upper one would flake on a busy machine);
    // max_in_flight proves the two bodies really overlapped.
    origin.put("/slow", ObjectSpec::new(MIB).throttle(2 * MIB));
    let half = MIB / 2;
    let t = Instant::now();
    let (first, second) = (format!("bytes=0-{}", half - 1), format!("bytes={half}-"));
    let (a, b) = tokio::join!(
        get_sha256(&url, &[("range", &first)]),
        get_sha256(&url, &[("range", &second)])
    );
    let elapsed = t.elapsed();
    assert_eq!((a.unwrap().len, b.unwrap().len), (half, half));
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert_eq!(origin.path_stats("/slow").max_in_flight, 2);

    origin.put("/d", ObjectSpec::new(MIB / 2));
    origin.set_default_throttle(Some(2 * MIB));
    let t = Instant::now();
    get_sha256(&format!("{}/d", origin.url()), &[])
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn latency_delays_every_answer_and_waiting_requests_count_as_in_flight() {
    let (origin, _, url) = origin_with("/far", ObjectSpec::new(MIB)).await;
    origin.set_default_latency(Some(Duration::from_millis(200)));
    let t = Instant::now();
    assert_eq!(
        get_bytes(&url, &[("range", "bytes=0-9")]).await.unwrap().0,
        206
    );
    assert!(t.elapsed() >= Duration::from_millis(200));

    // Three requests still waiting out the latency are three in flight, bodies or not.
    origin.reset_stats();
    let range = [("range", "bytes=0-9")];
    let (a, b, c) = tokio::join!(
        get_bytes(&url, &range),
        get_bytes(&url, &range),
        get_bytes(&url, &range)
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    let stats = origin.path_stats("/far");
    assert_eq!((stats.max_in_flight, stats.in_flight), (3, 0));

    // An object's own latency wins over the default.
    origin.set_default_latency(None);
    origin.put(
        "/near",
        ObjectSpec::new(10).latency(Duration::from_millis(150)),
    );
    let t = Instant::now();
    let near = format!("{}/near", origin.url());
    assert_eq!(get_bytes(&near, &[]).await.unwrap().0, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn the_total_throttle_caps_all_connections_together() {
    let (origin, info, url) = origin_with("/capped", ObjectSpec::new(MIB)).await;
    origin.set_total_throttle(Some(2 * MIB));
    // Four quarters in parallel, each unthrottled on its own: the cap holds all four to
    // 2 MiB/s together, ~500 ms for the mebibyte (only the lower bound is timed; the in-flight
    // count proves the four bodies overlapped).
    let quarter = MIB / 4;
    let ranges: Vec<String> = (0..4)
        .map(|i| format!("bytes={}-{}", i * quarter, (i + 1) * quarter - 1))
        .collect();
    let t = Instant::now();
    let got = futures::future::join_all(
        ranges
            .iter()
            .map(|r| get_bytes(&url, &[("range", r.as_str())])),
    )
    .await;
    let elapsed = t.elapsed();
    let mut body = Vec::new();
    for g in got {
        let (status, _, bytes) = g.unwrap();
        assert_eq!(status, 206);
        body.extend_from_slice(&bytes);
    }
    assert_eq!(crate::client::sha256_hex(&body), info.sha256());
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert_eq!(origin.path_stats("/capped").max_in_flight, 4);
}
