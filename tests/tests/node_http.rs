//! A standalone node as a caching reverse proxy: correctness of bodies, ranges, conditionals,
//! single flight, read-ahead, pass-through and the request-target rules.

use std::time::Duration;

use casserole_tests::{
    client::{get_bytes, get_sha256, head, header, sha256_hex},
    harness::NodeBuilder,
    origin::{EtagMode, ObjectSpec, Origin},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 2 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_then_warm_large_object_costs_its_size_once() {
    let origin = Origin::start().await;
    let obj = origin.put("/big.bin", ObjectSpec::new(64 * MIB + 12345).seed(1));
    let node = NodeBuilder::new(origin.url())
        .arg("--max-memory-usage=256Mi")
        .spawn()
        .await;
    let url = format!("{}/big.bin", node.url());

    let cold = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(cold.status, 200);
    assert_eq!(cold.sha256, obj.sha256());
    assert_eq!(header(&cold.headers, "cache-status"), "casserole; fwd=miss");
    assert_eq!(header(&cold.headers, "accept-ranges"), "bytes");
    assert_eq!(header(&cold.headers, "etag"), obj.etag.clone().unwrap());
    assert_eq!(
        header(&cold.headers, "content-type"),
        "application/octet-stream"
    );
    assert!(!header(&cold.headers, "age").is_empty());

    let warm = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(warm.sha256, obj.sha256());
    assert_eq!(
        header(&warm.headers, "cache-status"),
        "casserole; hit; detail=memory"
    );
    // Logs written to a file (as under Kubernetes) are plain text, without colour codes.
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(log.contains("casserole node serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");

    let stats = origin.path_stats("/big.bin");
    assert_eq!(
        stats.head_requests, 0,
        "the first chunk's range request decides cacheability"
    );
    assert_eq!(stats.full_gets, 0);
    assert_eq!(stats.range_requests, obj.len.div_ceil(CHUNK));
    assert!(
        stats.range_counts().values().all(|&n| n == 1),
        "every chunk fetched once"
    );
    assert_eq!(
        stats.body_bytes_sent, obj.len,
        "upstream bytes == object size"
    );
    assert_eq!(
        node.metric("casserole_upstream_bytes_total").await,
        obj.len as f64
    );
    assert_eq!(
        node.metric(r#"casserole_requests_total{result="hit",tier="memory"}"#)
            .await,
        1.0
    );
    assert!(
        node.metric(r#"casserole_bytes_served_total{source="memory"}"#)
            .await
            >= obj.len as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_at_chunk_boundaries_and_multipart() {
    let origin = Origin::start().await;
    let obj = origin.put("/r.bin", ObjectSpec::new(10 * MIB + 7).seed(2));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/r.bin", node.url());
    let last = obj.len - 1;
    for (start, end) in [
        (0, 0),
        (CHUNK - 1, CHUNK),
        (CHUNK - 10, 3 * CHUNK + 10),
        (2 * CHUNK, 4 * CHUNK - 1),
        (last, last),
        (5 * CHUNK - 3, last),
    ] {
        let range = format!("bytes={start}-{end}");
        let got = get_sha256(&url, &[("range", &range)]).await.unwrap();
        assert_eq!(got.status, 206, "{range}");
        assert_eq!(got.sha256, obj.range_sha256(start, end), "{range}");
        assert_eq!(
            header(&got.headers, "content-range"),
            format!("bytes {start}-{end}/{}", obj.len)
        );
    }
    // Suffix and open-ended ranges.
    let got = get_sha256(&url, &[("range", "bytes=-100")]).await.unwrap();
    assert_eq!(got.sha256, obj.range_sha256(obj.len - 100, last));
    let got = get_sha256(&url, &[("range", &format!("bytes={}-", 4 * CHUNK))])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.range_sha256(4 * CHUNK, last));

    // Several ranges: multipart/byteranges with exact parts.
    let (status, headers, body) = get_bytes(&url, &[("range", "bytes=0-9,4194300-4194309")])
        .await
        .unwrap();
    assert_eq!(status, 206);
    let ctype = header(&headers, "content-type").to_string();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(&ctype);
    let text = body.to_vec();
    let parts: Vec<&[u8]> = split(&text, format!("--{boundary}").as_bytes());
    // preamble, two parts, closing "--"
    assert_eq!(parts.len(), 4, "{}", String::from_utf8_lossy(&text));
    for (part, (start, end)) in parts[1..3].iter().zip([(0u64, 9u64), (4194300, 4194309)]) {
        let sep = find(part, b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&part[..sep]).to_lowercase();
        assert!(
            head.contains(&format!("content-range: bytes {start}-{end}/{}", obj.len)),
            "{head}"
        );
        let payload = &part[sep + 4..part.len() - 2];
        assert_eq!(payload, obj.bytes(start, end).as_slice());
    }

    // Unsatisfiable → 416 with the length; malformed → ignored, whole object.
    let (status, headers, _) = get_bytes(&url, &[("range", &format!("bytes={}-", obj.len))])
        .await
        .unwrap();
    assert_eq!(status, 416);
    assert_eq!(
        header(&headers, "content-range"),
        format!("bytes */{}", obj.len)
    );
    let got = get_sha256(&url, &[("range", "bytes=nonsense")])
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.sha256, obj.sha256());
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut hay: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = vec![];
    while let Some(i) = find(hay, sep) {
        out.push(&hay[..i]);
        hay = &hay[i + sep.len()..];
    }
    out.push(hay);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditionals_and_head_come_from_metadata() {
    let origin = Origin::start().await;
    let obj = origin.put("/c.bin", ObjectSpec::new(5 * MIB).seed(3));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/c.bin", node.url());
    let etag = obj.etag.clone().unwrap();
    let lm = obj.last_modified.clone().unwrap();

    let (status, headers) = head(&url, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-length"), obj.len.to_string());
    assert_eq!(
        origin.path_stats("/c.bin").range_requests,
        0,
        "HEAD fetches no chunk"
    );

    let (status, _, body) = get_bytes(&url, &[("if-none-match", &etag)]).await.unwrap();
    assert_eq!((status.as_u16(), body.len()), (304, 0));
    let (status, _, _) = get_bytes(&url, &[("if-modified-since", &lm)])
        .await
        .unwrap();
    assert_eq!(status, 304);
    let (status, _, _) = get_bytes(&url, &[("if-none-match", "\"other\"")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _, _) = get_bytes(&url, &[("if-none-match", "*")]).await.unwrap();
    assert_eq!(status, 304, "the object exists");
    // If-Match and If-Unmodified-Since are evaluated first (RFC 9110 §13.2.2).
    let (status, _, body) = get_bytes(&url, &[("if-match", &etag)]).await.unwrap();
    assert_eq!((status.as_u16(), body.len() as u64), (200, obj.len));
    let failing: [&[(&str, &str)]; 2] = [
        &[("if-match", "\"other\""), ("if-none-match", "\"x\"")],
        &[("if-unmodified-since", "Thu, 01 Jan 1970 00:00:01 GMT")],
    ];
    for failing in failing {
        let (status, headers, body) = get_bytes(&url, failing).await.unwrap();
        assert_eq!(status, 412, "{failing:?}");
        assert!(!header(&headers, "cache-status").is_empty());
        assert!(String::from_utf8_lossy(&body).contains("does not hold"));
    }

    // If-Range: a matching validator honours the range, another one gets the whole object.
    let got = get_sha256(&url, &[("range", "bytes=10-19"), ("if-range", &etag)])
        .await
        .unwrap();
    assert_eq!((got.status.as_u16(), got.len), (206, 10));
    let got = get_sha256(&url, &[("range", "bytes=10-19"), ("if-range", "\"stale\"")])
        .await
        .unwrap();
    assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
    assert_eq!(
        origin.path_stats("/c.bin").head_requests,
        1,
        "the first HEAD looked the object up; everything else came from metadata"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_byte_of_a_huge_object_costs_one_chunk() {
    let origin = Origin::start().await;
    let obj = origin.put("/huge.iso", ObjectSpec::new(10 << 30).seed(4));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let at = 7_000_000_000u64;
    let range = format!("bytes={at}-{at}");
    let got = get_sha256(&format!("{}/huge.iso", node.url()), &[("range", &range)])
        .await
        .unwrap();
    assert_eq!(got.status, 206);
    assert_eq!(got.sha256, obj.range_sha256(at, at));
    let stats = origin.path_stats("/huge.iso");
    assert_eq!(stats.range_requests, 1);
    assert_eq!(stats.body_bytes_sent, CHUNK);
    let chunk_start = at / CHUNK * CHUNK;
    assert_eq!(stats.ranges, vec![(chunk_start, chunk_start + CHUNK - 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_clients_fetch_each_chunk_once() {
    let origin = Origin::start().await;
    // Throttled so that all clients arrive while the chunks are still in flight.
    let obj = origin.put(
        "/hot.bin",
        ObjectSpec::new(64 * MIB).seed(5).throttle(64 * MIB),
    );
    let node = NodeBuilder::new(origin.url())
        .arg("--max-memory-usage=256Mi")
        .spawn()
        .await;
    let url = format!("{}/hot.bin", node.url());
    let downloads: Vec<_> = (0..50)
        .map(|_| tokio::spawn(get_sha256(&url, &[])))
        .collect();
    for d in downloads {
        let got = d.await.unwrap().unwrap();
        assert_eq!(got.sha256, obj.sha256());
    }
    let stats = origin.path_stats("/hot.bin");
    assert_eq!(
        (stats.head_requests, stats.range_count(0, CHUNK - 1)),
        (0, 1),
        "concurrent metadata lookups collapse into one probe, which is also the first chunk"
    );
    assert_eq!(stats.range_requests, 32);
    assert!(
        stats.range_counts().values().all(|&n| n == 1),
        "{:?}",
        stats.range_counts()
    );
    assert_eq!(stats.body_bytes_sent, obj.len);
    assert!(
        node.metric(r#"casserole_chunk_lookups_total{tier="collapsed"}"#)
            .await
            > 0.0
    );
}

/// Clients that arrive while the probe's answer comes back (the metadata just stored, its body
/// not yet handed to the fetcher) read the first chunk through the probe's fetch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_arriving_as_the_probe_answers_share_its_first_chunk() {
    let origin = Origin::start().await;
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for round in 0..4 {
        let path = format!("/arriving{round}.bin");
        // The probe's answer comes 15 ms after it was asked; clients arrive over 30 ms from then.
        let obj = origin.put(
            &path,
            ObjectSpec::new(4 * CHUNK)
                .seed(50 + round)
                .latency(Duration::from_millis(15))
                .throttle(32 * MIB),
        );
        let url = format!("{}{path}", node.url());
        let mut downloads = Vec::new();
        for _ in 0..60 {
            downloads.push(tokio::spawn(get_sha256(&url, &[])));
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        for d in downloads {
            assert_eq!(d.await.unwrap().unwrap().sha256, obj.sha256());
        }
        let stats = origin.path_stats(&path);
        assert_eq!(
            stats.range_counts().get(&(0, CHUNK - 1)).copied(),
            Some(1),
            "round {round}: the first chunk was fetched more than once: {:?}",
            stats.range_counts()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_ahead_fetches_chunks_in_parallel_and_streams_early() {
    let origin = Origin::start().await;
    // 8 MiB/s per connection: one chunk takes ~250 ms.
    let obj = origin.put(
        "/slow.bin",
        ObjectSpec::new(24 * MIB).seed(6).throttle(8 * MIB),
    );
    let node = NodeBuilder::new(origin.url())
        .arg("--readahead=4")
        .spawn()
        .await;
    let res = casserole_tests::client::client()
        .get(format!("{}/slow.bin", node.url()))
        .send()
        .await
        .unwrap();
    // Headers arrive while the first chunk is still downloading.
    assert_eq!(res.status(), 200);
    assert!(
        origin.path_stats("/slow.bin").in_flight > 0,
        "streaming starts before a chunk is complete"
    );
    let body = res.bytes().await.unwrap();
    assert_eq!(sha256_hex(&body), obj.sha256());
    let stats = origin.path_stats("/slow.bin");
    assert_eq!(
        stats.max_in_flight, 5,
        "readahead + 1 range requests in parallel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncacheable_requests_pass_through_untouched() {
    let origin = Origin::start().await;
    origin.put(
        "/nostore",
        ObjectSpec::new(300_000).seed(7).cache_control("no-store"),
    );
    origin.put("/short", ObjectSpec::new(1000).seed(8).max_age(30));
    origin.put(
        "/weak",
        ObjectSpec::new(1000)
            .seed(9)
            .etag(EtagMode::Weak)
            .no_last_modified(),
    );
    origin.put("/cookie", ObjectSpec::new(1000).seed(10).set_cookie());
    origin.put("/vary", ObjectSpec::new(1000).seed(11).vary("*"));
    origin.put(
        "/norange",
        ObjectSpec::new(1000).seed(12).accept_ranges_none(),
    );
    origin.put(
        "/auth",
        ObjectSpec::new(1000)
            .seed(13)
            .cache_control("max-age=600")
            .require_auth("Bearer t"),
    );
    origin.put(
        "/auth-public",
        ObjectSpec::new(1000)
            .seed(16)
            .cache_control("public, max-age=600")
            .require_auth("Bearer t"),
    );
    origin.put("/logs/today", ObjectSpec::new(1000).seed(14));
    origin.put("/chunked", ObjectSpec::new(100_000).seed(15).chunked());
    let node = NodeBuilder::new(origin.url())
        .arg("--pass-through=^/logs/")
        .args(["--min-ttl", "60s"])
        .spawn()
        .await;
    for (path, detail) in [
        ("/nostore", "casserole; fwd=uri-miss; detail=not-storable"),
        ("/short", "casserole; fwd=uri-miss; detail=short-ttl"),
        ("/cookie", "casserole; fwd=uri-miss; detail=set-cookie"),
        ("/vary", "casserole; fwd=uri-miss; detail=vary"),
        ("/logs/today", "casserole; fwd=uri-miss"),
    ] {
        for _ in 0..2 {
            let got = get_sha256(&format!("{}{path}", node.url()), &[])
                .await
                .unwrap();
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.sha256, origin.info(path).sha256(), "{path}");
            assert_eq!(header(&got.headers, "cache-status"), detail, "{path}");
        }
        let stats = origin.path_stats(path);
        assert_eq!(
            stats.requests, 2,
            "{path}: never served from cache, one request each"
        );
        // The first lookup's probe is the first response (its answer is relayed), then the
        // verdict is remembered and requests are relayed whole.
        let probes = u64::from(path != "/logs/today");
        assert_eq!(stats.range_requests, probes, "{path}");
        assert_eq!(stats.full_gets, 2 - probes, "{path}");
    }
    // A weak validator, no ranges, no Content-Length: one response carries the whole object,
    // so it is cached from that.
    for path in ["/weak", "/norange", "/chunked"] {
        for round in 0..2 {
            let got = get_sha256(&format!("{}{path}", node.url()), &[])
                .await
                .unwrap();
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.sha256, origin.info(path).sha256(), "{path}");
            let status = header(&got.headers, "cache-status");
            assert!(
                status.contains(["fwd=miss", "hit"][round]),
                "{path}: {status}"
            );
        }
    }
    let (_, cookie_headers, _) = get_bytes(&format!("{}/cookie", node.url()), &[])
        .await
        .unwrap();
    assert!(
        !header(&cookie_headers, "set-cookie").is_empty(),
        "Set-Cookie is relayed"
    );
    // Credentials (RFC 9111 §3.5): forwarded, and the answer is not stored unless it says it may
    // be shared.
    let url = format!("{}/auth", node.url());
    let (status, headers, _) = get_bytes(&url, &[("authorization", "Bearer t")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "cache-status"),
        "casserole; fwd=uri-miss; detail=authorization"
    );
    let (status, _, _) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 401, "the upstream's answer is relayed");
    let url = format!("{}/auth-public", node.url());
    let (status, _, _) = get_bytes(&url, &[("authorization", "Bearer t")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, headers, _) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 200, "public: stored, and shared");
    assert!(
        header(&headers, "cache-status").contains("hit"),
        "{headers:?}"
    );
    assert_eq!(origin.path_stats("/auth-public").requests, 1);
    // Other methods: relayed with their body.
    let res = casserole_tests::client::client()
        .post(format!("{}/short", node.url()))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(res.headers(), "cache-status"),
        "casserole; fwd=method"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_targets_never_leave_the_upstream() {
    let origin = Origin::start().await;
    let obj = origin.put("/obj", ObjectSpec::new(1000).seed(16));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let addr = node.url().trim_start_matches("http://").to_string();

    // Absolute-form target naming another host, and a foreign Host header: the upstream serves.
    let reply = raw(
        &addr,
        "GET http://evil.example/obj HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(origin.path_stats("/obj").requests, 1);
    let got = get_sha256(&format!("{}/obj", node.url()), &[("host", "other.example")])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());

    for (request, want) in [
        (
            "GET /a/../obj HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "GET /../obj HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "GET /a/%2e%2E/obj HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "CONNECT /obj HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 501",
        ),
        (
            "TRACE /obj HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 501",
        ),
    ] {
        let reply = raw(&addr, request).await;
        assert!(reply.starts_with(want), "{request:?} → {reply}");
    }
    // Extension methods are relayed (RFC 9110 §9.1): the origin answers them.
    let before = origin.path_stats("/obj").requests;
    let reply = raw(
        &addr,
        "BREW /obj HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 "), "{reply}");
    assert!(!reply.starts_with("HTTP/1.1 501"), "{reply}");
    assert_eq!(
        origin.path_stats("/obj").requests,
        before + 1,
        "relayed once"
    );
    let huge = format!(
        "GET /obj HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    let reply = raw(&addr, &huge).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
}

async fn raw(addr: &str, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_tier_respects_its_bound() {
    let origin = Origin::start().await;
    let obj = origin.put("/m.bin", ObjectSpec::new(64 * MIB).seed(17));
    let node = NodeBuilder::new(origin.url())
        .arg("--max-memory-usage=16Mi")
        .spawn()
        .await;
    let url = format!("{}/m.bin", node.url());
    for _ in 0..2 {
        assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    }
    let used = node.metric("casserole_memory_bytes").await;
    assert!(
        used > 0.0 && used <= (16 * MIB) as f64,
        "memory tier holds {used} bytes"
    );
    assert!(
        node.metric("casserole_memory_evictions_total").await > 0.0 || used < (16 * MIB) as f64
    );
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(!log.contains("smallest working set"), "16Mi holds a window");

    // A bound below one read-ahead window and one chunk still starts (every size the operator
    // admits must), serves, and says what it will really use.
    let tiny = NodeBuilder::new(origin.url())
        .arg("--max-memory-usage=1")
        .spawn()
        .await;
    let got = get_sha256(&format!("{}/m.bin", tiny.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());
    let log = std::fs::read_to_string(tiny.log_path()).unwrap();
    assert!(log.contains("below the smallest working set"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_holds_back_the_fetching() {
    let origin = Origin::start().await;
    let obj = origin.put("/long.bin", ObjectSpec::new(64 * MIB).seed(18));
    let node = NodeBuilder::new(origin.url())
        .arg("--readahead=2")
        .spawn()
        .await;
    let mut res = casserole_tests::client::client()
        .get(format!("{}/long.bin", node.url()))
        .send()
        .await
        .unwrap();
    let mut body = Vec::with_capacity(obj.len as usize);
    while body.len() < MIB as usize {
        body.extend_from_slice(&res.chunk().await.unwrap().unwrap());
    }
    // The client stops reading. Fetching goes no further than the read-ahead window plus what
    // the kernel's socket buffers absorbed: nowhere near the 32 chunks of the object.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fetched = origin.path_stats("/long.bin").range_requests;
    eprintln!("chunks fetched while the client paused: {fetched}");
    assert!(
        fetched <= 12,
        "{fetched} chunks fetched for a client that read 1 MiB"
    );
    while let Some(piece) = res.chunk().await.unwrap() {
        body.extend_from_slice(&piece);
    }
    assert_eq!(sha256_hex(&body), obj.sha256());
    assert_eq!(origin.path_stats("/long.bin").range_requests, 32);
}

/// RFC 9111 §4.1: a response that varies on a request header was selected for the node's own
/// request, which carried none: it answers requests without that header, and requests with it
/// go to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_that_varies_answers_only_requests_it_was_selected_for() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/cors.bin",
        ObjectSpec::new(3 * MIB)
            .seed(16)
            .vary("Origin, Access-Control-Request-Method")
            .header("vary", "Accept-Encoding"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/cors.bin", node.url());
    for want in ["casserole; fwd=miss", "casserole; hit; detail=memory"] {
        let got = get_sha256(&url, &[("accept-encoding", "gzip")])
            .await
            .unwrap();
        assert_eq!(got.sha256, obj.sha256());
        assert_eq!(header(&got.headers, "cache-status"), want);
        let vary: Vec<_> = got.headers.get_all("vary").iter().collect();
        assert_eq!(vary.len(), 2, "the Vary lines are replayed: {vary:?}");
    }
    let before = origin.path_stats("/cors.bin").full_gets;
    for _ in 0..2 {
        let got = get_sha256(&url, &[("origin", "https://app.example")])
            .await
            .unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; fwd=vary-miss"
        );
    }
    assert_eq!(
        origin.path_stats("/cors.bin").full_gets,
        before + 2,
        "each request with Origin went to the upstream"
    );
    let only = [
        ("origin", "https://app.example"),
        ("cache-control", "only-if-cached"),
    ];
    let (status, _, _) = get_bytes(&url, &only).await.unwrap();
    assert_eq!(status, 504, "nothing stored matches it");
}
