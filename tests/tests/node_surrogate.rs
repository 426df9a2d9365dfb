//! `Surrogate-Control`: an origin gives the cache a lifetime of its own, apart from what its
//! clients are told, and the node names itself upstream (`Surrogate-Capability`) so the origin
//! can aim directives at it. `--surrogate-id=` turns both off.

use casserole_tests::{
    client::{get_sha256, header},
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};

const CAPABILITY: &str = "casserole=\"Surrogate/1.0\"";

/// Three chunks: the lookup and the ranges after it both carry the node's name.
const SIZE: u64 = 5 * 1024 * 1024;

fn request_header(origin: &Origin, path: &str, name: &str) -> Option<String> {
    origin
        .path_stats(path)
        .last_request_headers
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lifetime_aimed_at_the_cache_outlasts_what_clients_are_told() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/model.bin",
        ObjectSpec::new(SIZE)
            .seed(3)
            .cache_control("no-store")
            .header("surrogate-control", "max-age=3600;casserole"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/model.bin", node.url());
    for round in 0..3 {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(got.sha256, obj.sha256(), "round {round}");
        // Clients still get the origin's word to them.
        assert_eq!(header(&got.headers, "cache-control"), "no-store");
        if round > 0 {
            let status = header(&got.headers, "cache-status");
            assert!(status.contains("hit"), "round {round}: {status}");
        }
    }
    let stats = origin.path_stats("/model.bin");
    assert_eq!(stats.body_bytes_sent, SIZE, "fetched once");
    // The last request was one of the chunks' ranges: it names the node too.
    assert!(stats.ranges.len() >= 2, "{:?}", stats.ranges);
    assert_eq!(
        request_header(&origin, "/model.bin", "surrogate-capability").as_deref(),
        Some(CAPABILITY)
    );
}

/// Two `GET`s of a 100 kB object the origin answers with `cache_control` and
/// `surrogate_control`, through a node started with `args`: how many times the origin sent it
/// (each answer checked), and the origin.
async fn transfers_of_two_gets(
    cache_control: &str,
    surrogate_control: &str,
    args: &[&str],
) -> (u64, Origin) {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/o.bin",
        ObjectSpec::new(100_000)
            .seed(4)
            .cache_control(cache_control)
            .header("surrogate-control", surrogate_control),
    );
    let node = NodeBuilder::new(origin.url())
        .args(args.iter().copied())
        .spawn()
        .await;
    let url = format!("{}/o.bin", node.url());
    for _ in 0..2 {
        assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    }
    let sent = origin.path_stats("/o.bin").body_bytes_sent;
    (sent / obj.len, origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn surrogate_no_store_keeps_a_fresh_response_out_of_the_cache() {
    let (transfers, _) = transfers_of_two_gets("max-age=3600", "no-store", &[]).await;
    assert_eq!(transfers, 2);
    let (transfers, _) = transfers_of_two_gets("max-age=3600", "no-store-remote", &[]).await;
    assert_eq!(transfers, 2, "the node is a remote surrogate");
    // The same response without Surrogate-Control is kept: the test can tell.
    let (transfers, _) = transfers_of_two_gets("max-age=3600", "content=\"ESI/1.0\"", &[]).await;
    assert_eq!(transfers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directives_aimed_at_another_surrogate_are_not_the_node_s() {
    let (transfers, _) = transfers_of_two_gets("no-store", "max-age=3600;edge-cdn", &[]).await;
    assert_eq!(transfers, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_surrogate_id_the_node_follows_cache_control_and_names_itself_to_no_one() {
    let (transfers, origin) =
        transfers_of_two_gets("no-store", "max-age=3600", &["--surrogate-id="]).await;
    assert_eq!(transfers, 2);
    assert_eq!(
        request_header(&origin, "/o.bin", "surrogate-capability"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_appends_its_name_to_a_client_surrogate_s() {
    let origin = Origin::start().await;
    origin.put("/x.bin", ObjectSpec::new(1000).seed(7));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let got = get_sha256(
        &format!("{}/x.bin", node.url()),
        &[("surrogate-capability", "front=\"Surrogate/1.0\"")],
    )
    .await
    .unwrap();
    assert_eq!(got.status.as_u16(), 200);
    let sent: Vec<String> = origin
        .path_stats("/x.bin")
        .last_request_headers
        .into_iter()
        .filter(|(n, _)| n == "surrogate-capability")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        sent,
        vec!["front=\"Surrogate/1.0\"".to_string(), CAPABILITY.into()]
    );
}
