//! The body of a lookup's probe (the `GET` of the chunk holding the first wanted byte) is kept
//! whoever caused the probe: a client, an owner's lookup for a peer, a stale-while-revalidate
//! refresh. Each of them costs the upstream one request for that chunk, never two.

use std::time::Duration;

use casserole_node::{cluster::Member, object::ObjectMeta};
use casserole_tests::{
    client::{get_sha256, header},
    harness::{cluster::static_peers, NodeBuilder},
    origin::{ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "test-peer-token-0123456789";

/// A path whose metadata `owner` owns first among `members`.
fn path_owned_by(members: &[Member], owner: &str) -> String {
    (0..1000)
        .map(|i| format!("/probed-{i}.bin"))
        .find(|p| {
            casserole_node::cluster::ring::owners(&ObjectMeta::meta_key(p), members)[0].id == owner
        })
        .expect("some path hashes to each member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_keeps_the_probe_it_made_for_a_peer() {
    let origin = Origin::start().await;
    let (nodes, urls) = static_peers(&origin.url(), 2, &["--peer-token", TOKEN]).await;
    let members: Vec<Member> = urls.iter().map(|u| Member::new(u, u)).collect();
    // Asked through node 0; node 1 owns the metadata and the first chunk: its lookup for node 0
    // probes that chunk, and the chunk node 0 asks for next is that probe's body.
    let path = path_owned_by(&members, &urls[1]);
    let obj = origin.put(&path, ObjectSpec::new(MIB).seed(7));
    let got = get_sha256(&format!("{}{path}", nodes[0].url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());
    let stats = origin.path_stats(&path);
    assert_eq!(stats.get_requests, 1, "one upstream GET in all: {stats:?}");
    assert!(
        nodes[1]
            .metric(r#"casserole_peer_api_requests_total{kind="meta",result="ok"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_revalidation_keeps_the_new_version_s_first_chunk() {
    let origin = Origin::start().await;
    origin.put(
        "/swr.bin",
        ObjectSpec::new(MIB)
            .seed(8)
            .cache_control("max-age=1, stale-while-revalidate=600"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/swr.bin", node.url());
    get_sha256(&url, &[]).await.unwrap();
    let new = origin.bump_version("/swr.bin");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.reset_stats();
    let stale = get_sha256(&url, &[]).await.unwrap();
    assert!(
        header(&stale.headers, "cache-status").contains("stale-while-revalidate"),
        "{}",
        header(&stale.headers, "cache-status")
    );
    // The refresh runs behind the request: one probe of the new version's first chunk.
    for _ in 0..100 {
        let s = origin.stats();
        if s.get_requests >= 1 && s.in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..100 {
        let got = get_sha256(&url, &[]).await.unwrap();
        if got.sha256 == new.sha256() {
            // Its bytes once, with the refresh's probe. (The new version, one second fresh
            // from a `Date` in whole seconds, may itself be revalidated meanwhile: a `304`.)
            let s = origin.stats();
            assert_eq!(
                (s.get_requests - s.not_modified, s.body_bytes_sent),
                (1, MIB),
                "the new version's first chunk came with the refresh's probe: {s:?}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the new version never replaced the stale one");
}
