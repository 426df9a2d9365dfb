//! The peer API's checks: a node accepts its own token and, during a rotation, the previous one
//! (`--peer-token-previous-file`), and nothing else; the upstream target a peer's request
//! carries for a signed URL (`--ignore-query-param`) must name the object the request is for.

use casserole_tests::{
    client::{client, header},
    harness::{NodeBuilder, NodePorts},
    origin::{ObjectSpec, Origin},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_previous_peer_token_is_accepted_during_a_rotation() {
    let origin = Origin::start().await;
    origin.put("/a", ObjectSpec::new(1000).seed(1));
    let dir = tempfile::tempdir().unwrap();
    let previous = dir.path().join("previous");
    std::fs::write(&previous, "previous-token-0123456789").unwrap();
    let ports = NodePorts::pick();
    let node = NodeBuilder::new(origin.url())
        .ports(ports)
        .args(["--peer-token", "current-token-0123456789"])
        .arg(format!("--peer-token-previous-file={}", previous.display()))
        .arg(format!("--peers={}", ports.peer_url()))
        .spawn()
        .await;
    let url = format!("{}/v1/meta", node.peer_url());
    for (token, accepted) in [
        ("current-token-0123456789", true),
        ("previous-token-0123456789", true),
        ("another-token-0123456789", false),
        ("", false),
    ] {
        let res = client()
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("x-casserole-path", "/a")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status() != 401, accepted, "{token:?}: {}", res.status());
    }
    // A chunk posted with a wrong token is refused before its body is read: the connection
    // ends with the answer.
    let res = client()
        .post(format!("{}/v1/chunk/0", node.peer_url()))
        .header("authorization", "Bearer another-token-0123456789")
        .body(vec![b'{'; 10_000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(header(res.headers(), "connection"), "close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peers_upstream_target_must_name_the_object_asked_for() {
    let origin = Origin::start().await;
    origin.put("/a", ObjectSpec::new(1000).seed(1));
    let ports = NodePorts::pick();
    let token = "current-token-0123456789";
    let node = NodeBuilder::new(origin.url())
        .ports(ports)
        .args(["--peer-token", token, "--ignore-query-param=/=sig"])
        .arg(format!("--peers={}", ports.peer_url()))
        .spawn()
        .await;
    let url = format!("{}/v1/meta", node.peer_url());
    for (target, accepted) in [
        ("/a?sig=1", true),
        ("/a", true),
        ("/b?sig=1", false),
        ("/a?v=2&sig=1", false),
        ("/a/../b?sig=1", false),
        ("a?sig=1", false),
    ] {
        let res = client()
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("x-casserole-path", "/a")
            .header("x-casserole-upstream-target", target)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body = res.text().await.unwrap();
        match accepted {
            true => assert_eq!(status, 200, "{target}: {body}"),
            false => {
                assert_eq!(status, 400, "{target}: {body}");
                assert!(body.contains("x-casserole-upstream-target"), "{body}");
            }
        }
    }
}
