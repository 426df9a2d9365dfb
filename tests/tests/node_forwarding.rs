//! What a node forwards, as RFC 9110 §7.6 asks of a gateway: its own `Via` on every upstream
//! request, no hop-by-hop headers or headers named in `Connection` in either direction, and
//! `Max-Forwards` honoured on `OPTIONS`.

use casserole_tests::{
    client::{client, get_sha256, header},
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_requests_carry_via_and_only_end_to_end_headers() {
    let origin = Origin::start().await;
    origin.put("/c.bin", ObjectSpec::new(100_000).seed(1).max_age(3600));
    origin.put(
        "/p.bin",
        ObjectSpec::new(1000)
            .seed(2)
            .cache_control("no-store")
            .header("connection", "X-Hop-Reply")
            .header("x-hop-reply", "secret")
            .header("x-end-reply", "kept"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;

    // The cache's own fetches.
    get_sha256(&format!("{}/c.bin", node.url()), &[])
        .await
        .unwrap();
    let seen = origin.path_stats("/c.bin").last_request_headers;
    assert_eq!(values(&seen, "via"), ["1.1 casserole"]);

    // A relayed request: the client's Via first, then ours; Connection-listed headers stay here.
    let res = client()
        .get(format!("{}/p.bin", node.url()))
        .header("connection", "X-Hop")
        .header("x-hop", "1")
        .header("via", "1.1 edge")
        .header("x-end", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "x-end-reply"), "kept");
    assert!(
        res.headers().get("x-hop-reply").is_none(),
        "named in the upstream's Connection"
    );
    let seen = origin.path_stats("/p.bin").last_request_headers;
    assert_eq!(values(&seen, "via"), ["1.1 edge", "1.1 casserole"]);
    assert_eq!(values(&seen, "x-end"), ["a"]);
    assert!(values(&seen, "x-hop").is_empty(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn options_honours_max_forwards() {
    let origin = Origin::start().await;
    origin.put("/o", ObjectSpec::new(10).seed(3));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/o", node.url());

    let res = client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("max-forwards", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "answered by the node itself");
    let allow = header(res.headers(), "allow");
    assert!(
        allow.contains("GET") && allow.contains("OPTIONS"),
        "{allow}"
    );
    assert_eq!(origin.path_stats("/o").requests, 0);

    client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("max-forwards", "3")
        .send()
        .await
        .unwrap();
    let seen = origin.path_stats("/o").last_request_headers;
    assert_eq!(values(&seen, "max-forwards"), ["2"]);
}

/// Fields a qualified `no-cache="…"` or `private="…"` keeps out of the stored copy still reach
/// the client whose request fetched the response (RFC 9111 §5.2.2.4 and §5.2.2.7 restrict
/// reuse and storage, not delivery); later clients, answered from the stored copy, do not get
/// them. Both a `GET` (the probe) and a `HEAD` (the lookup without a body).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fields_kept_out_of_the_stored_copy_reach_only_the_client_that_fetched_it() {
    let origin = Origin::start().await;
    for path in ["/g.bin", "/h.bin"] {
        origin.put(
            path,
            ObjectSpec::new(10_000)
                .seed(3)
                .cache_control(r#"max-age=3600, no-cache="x-listed", private="x-private""#)
                .header("x-listed", "1")
                .header("x-private", "2")
                .header("x-plain", "3"),
        );
    }
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let http = client();
    for (path, method) in [
        ("/g.bin", reqwest::Method::GET),
        ("/h.bin", reqwest::Method::HEAD),
    ] {
        let url = format!("{}{path}", node.url());
        let first = http.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(first.status(), 200, "{method} {path}");
        for (name, value) in [("x-listed", "1"), ("x-private", "2"), ("x-plain", "3")] {
            assert_eq!(
                header(first.headers(), name),
                value,
                "{method} {path}: first {name}"
            );
        }
        // The whole body first: a request arriving while it is still fetched joins that fetch
        // (`fwd=miss; collapsed`) rather than being a hit.
        first.bytes().await.unwrap();
        let later = http.request(method.clone(), &url).send().await.unwrap();
        assert!(
            header(later.headers(), "cache-status").contains("hit"),
            "{method} {path}: {:?}",
            later.headers()
        );
        assert_eq!(header(later.headers(), "x-listed"), "", "{method} {path}");
        assert_eq!(header(later.headers(), "x-private"), "", "{method} {path}");
        assert_eq!(header(later.headers(), "x-plain"), "3", "{method} {path}");
    }
    assert_eq!(
        origin.stats().requests,
        2,
        "one upstream request per object"
    );
}

/// Field values with octets past ASCII (RFC 9110 §5.5 obs-text) are stored and replayed byte for
/// byte: a raw UTF-8 filename in `Content-Disposition`, an entity tag with one — which a client's
/// `If-None-Match` then matches. (They were left out of the stored copy, and the object kept no
/// entity tag.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn field_values_past_ascii_are_kept_byte_for_byte() {
    let disposition = "attachment; filename=\"modèle-ü.bin\"";
    let etag = "\"v1-é\"";
    let origin = Origin::start().await;
    origin.put(
        "/m.bin",
        ObjectSpec::new(3 * 1024 * 1024)
            .seed(9)
            .max_age(3600)
            .etag(casserole_tests::origin::EtagMode::None)
            .header("content-disposition", disposition)
            .header("etag", etag),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/m.bin", node.url());
    let raw = |headers: &reqwest::header::HeaderMap, name: &str| {
        headers.get(name).map(|v| v.as_bytes().to_vec())
    };
    let http = client();
    for round in 0..2 {
        let res = http.get(&url).send().await.unwrap();
        let headers = res.headers().clone();
        assert_eq!(res.bytes().await.unwrap().len(), 3 * 1024 * 1024);
        assert_eq!(
            raw(&headers, "content-disposition"),
            Some(disposition.as_bytes().to_vec()),
            "{round}"
        );
        assert_eq!(
            raw(&headers, "etag"),
            Some(etag.as_bytes().to_vec()),
            "{round}"
        );
        if round == 1 {
            assert!(
                header(&headers, "cache-status").contains("hit"),
                "{headers:?}"
            );
        }
    }
    let tag = reqwest::header::HeaderValue::from_bytes(etag.as_bytes()).unwrap();
    let res = http
        .get(&url)
        .header("if-none-match", tag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    // The chunks after the first were fetched conditional on that entity tag, and validated.
    assert_eq!(origin.path_stats("/m.bin").body_bytes_sent, 3 * 1024 * 1024);
}
