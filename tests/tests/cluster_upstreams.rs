//! Messy upstreams through three nodes: an origin that ignores `Range`, revalidation, stale
//! serving while the origin is down, and invalidation by a write — each costing the upstream
//! what one node would.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256},
    harness::{
        cluster::{member, wait_members},
        EtcdProcess, NodeProcess,
    },
    origin::{Fault, ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;

async fn three(origin: &Origin, etcd: &EtcdProcess, cluster: &str) -> Vec<NodeProcess> {
    let mut nodes = vec![];
    for _ in 0..3 {
        let node = member(&origin.url(), etcd, cluster)
            .args(["--min-ttl", "1s", "--stale-if-error", "0s"])
            .spawn()
            .await;
        nodes.push(node);
    }
    wait_members(&nodes.iter().collect::<Vec<_>>(), 3).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_ignoring_range_is_fetched_once_for_the_cluster() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/nr.bin", ObjectSpec::new(9 * MIB + 3).seed(81));
    origin.set_fault("/nr.bin", Fault::IgnoreRange, None);
    let nodes = three(&origin, &etcd, "norange").await;
    let downloads: Vec<_> = (0..9)
        .map(|i| tokio::spawn(get_sha256(&format!("{}/nr.bin", nodes[i % 3].url()), &[])))
        .collect();
    for d in downloads {
        assert_eq!(d.await.unwrap().unwrap().sha256, obj.sha256());
    }
    let stats = origin.path_stats("/nr.bin");
    assert_eq!(
        (stats.full_gets, stats.body_bytes_sent),
        (1, obj.len),
        "one whole-object stream for the whole cluster: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revalidation_stale_serving_and_invalidation_hold_cluster_wide() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put(
        "/r.bin",
        ObjectSpec::new(5 * MIB)
            .seed(82)
            .cache_control("max-age=2, stale-if-error=600"),
    );
    let nodes = three(&origin, &etcd, "fresh").await;
    let url = |i: usize| format!("{}/r.bin", nodes[i].url());
    assert_eq!(get_sha256(&url(0), &[]).await.unwrap().sha256, obj.sha256());

    // Stale: revalidated once for the cluster (the metadata owner asks), chunks kept.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    origin.reset_stats();
    for i in [1, 2, 0] {
        assert_eq!(get_sha256(&url(i), &[]).await.unwrap().sha256, obj.sha256());
    }
    let stats = origin.path_stats("/r.bin");
    assert_eq!(
        (stats.not_modified, stats.body_bytes_sent),
        (1, 0),
        "one 304 and no body bytes: {stats:?}"
    );

    // A write through one node: every node looks the object up afresh.
    let res = client().put(url(1)).body("new").send().await.unwrap();
    assert_eq!(res.status(), 204);
    // The purge travels through etcd: give it up to 10 s on a slow machine. Until it arrives,
    // node 2 answers from its cache without asking the origin.
    let before = origin.path_stats("/r.bin").get_requests;
    let mut reached = false;
    for _ in 0..100 {
        assert_eq!(get_sha256(&url(2), &[]).await.unwrap().sha256, obj.sha256());
        if origin.path_stats("/r.bin").get_requests > before {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reached, "the invalidation reached the other members");

    // The origin goes away: the object the cluster holds is still served (stale-if-error).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    origin.shutdown().await;
    for i in 0..3 {
        let got = get_sha256(&url(i), &[]).await.unwrap();
        assert_eq!(
            (got.status.as_u16(), got.sha256),
            (200, obj.sha256()),
            "node {i}"
        );
    }
}

/// A client's reload (`Cache-Control: no-cache`) that finds a new version on one member reaches
/// the others: none of them keeps serving the old version as fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_that_finds_a_new_version_reaches_every_member() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let old = origin.put("/v.bin", ObjectSpec::new(3 * MIB).seed(84).max_age(3600));
    let nodes = three(&origin, &etcd, "reload").await;
    let url = |i: usize| format!("{}/v.bin", nodes[i].url());
    for i in 0..3 {
        assert_eq!(get_sha256(&url(i), &[]).await.unwrap().sha256, old.sha256());
    }
    let new = origin.bump_version("/v.bin");
    let reload = get_sha256(&url(1), &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert_eq!(reload.sha256, new.sha256());
    // The purge travels through etcd: every member serves the new version within 10 s.
    for i in [0, 2, 1] {
        let mut latest = String::new();
        for _ in 0..100 {
            latest = get_sha256(&url(i), &[]).await.unwrap().sha256;
            if latest == new.sha256() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            latest,
            new.sha256(),
            "member {i} still serves the old version"
        );
    }
}
