//! Peer-token rotation: a node accepts its own token and, during a rotation, the previous one
//! (`--peer-token-previous-file`), and nothing else.

use casserole_tests::{
    client::client,
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
}
