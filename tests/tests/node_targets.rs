//! Hostile request targets: every form that could climb out of the upstream base path (or smuggle
//! bytes) is answered 400/414 on the client listener, and no request reaches the origin.

use std::time::Duration;

use casserole_tests::{
    client::get_sha256,
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Raw request targets, sent byte for byte (no client library normalises them).
const HOSTILE: &[&str] = &[
    "/x\\..\\..\\private/obj8m",
    "/x%5c..%5c..%5cprivate/obj8m",
    "/x/%5C../%5C../private/obj8m",
    "/..;/private/obj8m",
    "/x/..;/..;/private/obj8m",
    "/.;/x",
    "//other-host/x",
    "//127.0.0.1:1/private/obj8m",
    "/x/../../private/obj8m",
    "/x/./../../private/obj8m",
    "/x/..%252f..%252fprivate/obj8m",
    "/x/%255c..%255c../private/obj8m",
    "/x/%2e%2e/%2e%2e/private/obj8m",
    "/x/%2E%2E/%2E%2E/private/obj8m",
    "/x/.%2E/.%2e/private/obj8m",
    "/x/%2e./%2E./private/obj8m",
    "/x/%2e%2e%5c%2e%2e%5cprivate/obj8m",
    "/x/%2e%2e%2f%2e%2e%2fprivate/obj8m",
    "/x%2f..%2f..%2fprivate/obj8m",
    "/x/..%2f..%2fprivate/obj8m",
    "/x/%252e%252e/%252e%252e/private/obj8m",
    "/x/%c0%ae%c0%ae/private/obj8m",
    "/x/%00/obj",
    "/x/%0d%0aX-Injected:%201/obj",
    "/x/.../private/obj8m",
    "/x/..%20/private/obj8m",
    "/x/%zz/obj",
    "/x/%2",
    "/x\0/obj",
    "x/obj",
    "@other-host/x",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_targets_are_refused_before_reaching_the_origin() {
    let origin = Origin::start().await;
    origin.put("/private/obj8m", ObjectSpec::new(8 << 20).seed(31));
    let obj = origin.put("/fast/obj", ObjectSpec::new(1000).seed(32));
    // A pass-through rule: a hostile target must not slip through it either.
    let node = NodeBuilder::new(format!("{}/fast", origin.url()))
        .arg("--pass-through=^/x")
        .spawn()
        .await;
    let addr = node.url().trim_start_matches("http://").to_string();

    for target in HOSTILE {
        for method in ["GET", "HEAD", "POST"] {
            let request = format!(
                "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let reply = raw(&addr, request.as_bytes()).await;
            assert!(
                reply.starts_with("HTTP/1.1 400"),
                "{method} {target:?} → {reply}"
            );
        }
    }
    // Refused with a body it did not read, the node ends the connection and says so: the rest of
    // the body must not be read as the next request.
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{}",
        HOSTILE[1],
        "a".repeat(1000)
    );
    let reply = raw(&addr, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{reply}"
    );
    let long = format!("/{}", "a".repeat(9000));
    let request = format!("GET {long} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let reply = raw(&addr, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 414"), "{reply}");

    assert_eq!(
        origin.stats().requests,
        0,
        "a refused target reached the origin"
    );
    // The case is refused by the node's own check (hyper lets a raw '\\' through).
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        HOSTILE[0]
    );
    let reply = raw(&addr, request.as_bytes()).await;
    assert!(reply.contains("backslash"), "{reply}");
    // The node still serves clean targets (so the 400s above were not a broken node).
    let got = get_sha256(&format!("{}/obj", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.sha256, obj.sha256());
}

/// Targets real clients send that need no refusal: dot segments are removed (RFC 3986 §5.2.4;
/// apt's flat repositories ask for `/deb/./InRelease`), and escapes are kept as sent (npm's
/// scoped packages, apt's epoch file names encoded once more). Each spelling of one object is one
/// key: the origin is asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn harmless_targets_of_real_clients_reach_the_origin_as_one_object() {
    let origin = Origin::start().await;
    let flat = origin.put("/repo/deb/Packages", ObjectSpec::new(3000).seed(35));
    let scoped = origin.put("/repo/@types%2fnode", ObjectSpec::new(2000).seed(36));
    let epoch = origin.put(
        "/repo/pool/l_1%253a14_amd64.deb",
        ObjectSpec::new(5000).seed(37),
    );
    let node = NodeBuilder::new(format!("{}/repo", origin.url()))
        .spawn()
        .await;
    let addr = node.url().trim_start_matches("http://").to_string();
    for (spellings, obj, origin_path) in [
        (
            &[
                "/deb/./Packages",
                "/deb/Packages",
                "/x/../deb/Packages",
                "/%64eb/Packages",
            ][..],
            &flat,
            "/repo/deb/Packages",
        ),
        (&["/@types%2fnode"][..], &scoped, "/repo/@types%2fnode"),
        (
            &["/pool/l_1%253a14_amd64.deb", "/pool/./l_1%253a14_amd64.deb"][..],
            &epoch,
            "/repo/pool/l_1%253a14_amd64.deb",
        ),
    ] {
        for target in spellings {
            let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let reply = raw(&addr, request.as_bytes()).await;
            assert!(
                reply.starts_with("HTTP/1.1 200"),
                "{target:?} → {reply:.200}"
            );
        }
        let got = get_sha256(&format!("{}{}", node.url(), spellings[0]), &[])
            .await
            .unwrap();
        assert_eq!(
            (got.status.as_u16(), got.sha256),
            (200, obj.sha256()),
            "{spellings:?}"
        );
        assert_eq!(
            origin.path_stats(origin_path).requests,
            1,
            "{spellings:?}: one object, one key, asked for as sent"
        );
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request with no Host, several, or an invalid one is a 400; HTTP/1.0
/// may omit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_headers_are_checked_as_rfc_9112_asks() {
    let origin = Origin::start().await;
    origin.put("/obj", ObjectSpec::new(1000).seed(34));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let addr = node.url().trim_start_matches("http://").to_string();
    for (head, want) in [
        ("HTTP/1.1\r\n", "HTTP/1.1 400"),
        ("HTTP/1.1\r\nHost: a\r\nHost: b\r\n", "HTTP/1.1 400"),
        ("HTTP/1.1\r\nHost: a b\r\n", "HTTP/1.1 400"),
        ("HTTP/1.1\r\nHost: user@a\r\n", "HTTP/1.1 400"),
        ("HTTP/1.1\r\nHost: a:http\r\n", "HTTP/1.1 400"),
        ("HTTP/1.1\r\nHost: a:8080\r\n", "HTTP/1.1 200"),
        ("HTTP/1.1\r\nHost: \r\n", "HTTP/1.1 200"),
        ("HTTP/1.0\r\n", "HTTP/1.0 200"),
    ] {
        let request = format!("GET /obj {head}Connection: close\r\n\r\n");
        let reply = raw(&addr, request.as_bytes()).await;
        assert!(reply.starts_with(want), "{head:?} → {reply}");
    }
    assert_eq!(
        origin.path_stats("/obj").requests,
        1,
        "only valid requests reached it"
    );
}

async fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The peer API holds peers to the same rule: hostile paths in a metadata lookup or in posted
/// chunk metadata are refused, and nothing reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_api_refuses_hostile_paths_too() {
    const TOKEN: &str = "test-peer-token-0123456789";
    let origin = Origin::start().await;
    origin.put("/private/obj8m", ObjectSpec::new(8 << 20).seed(33));
    let ports = casserole_tests::harness::NodePorts::pick();
    let node = NodeBuilder::new(format!("{}/fast", origin.url()))
        .ports(ports)
        .args(["--peer-token", TOKEN])
        .arg(format!("--peers={}", ports.peer_url()))
        .spawn()
        .await;
    let addr = node.peer_url().trim_start_matches("http://").to_string();
    let mut checked = 0;
    for target in HOSTILE.iter().filter(|t| !t.contains('\0')) {
        let request = format!(
            "GET /v1/meta HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nx-casserole-path: {target}\r\nConnection: close\r\n\r\n"
        );
        let reply = raw(&addr, request.as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "meta {target:?} → {reply}"
        );
        let meta = serde_json::json!({
            "path": target, "length": 8 << 20, "chunk_size": 2 << 20,
            "validator": {"StrongEtag": "\"x\""}, "etag": "\"x\"", "last_modified": null,
            "headers": [], "fetched_at": 0, "initial_age": 0, "fresh_until": u64::MAX,
            "version": "00".repeat(32),
        })
        .to_string();
        let request = format!(
            "POST /v1/chunk/0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{meta}",
            meta.len()
        );
        let reply = raw(&addr, request.as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 409"),
            "chunk {target:?} → {reply}"
        );
        checked += 1;
    }
    assert!(checked >= 20);
    assert_eq!(
        origin.stats().requests,
        0,
        "a refused peer path reached the origin"
    );
}
