//! Purge storms (issue 19): what anonymous clients can make the cluster write to etcd and scan.
//! Writes with unique query strings and reloads of an object without a validator, through one
//! of three members (a real etcd), leave at most 256 invalidation records in etcd, no ack, no
//! scan of any store, and no cached object of another path lost; a member restarted afterwards
//! reads every record (more than one page) and applies the next real purge. Also: a catch-up
//! over several pages of records, and invalidations of one path coalesced into one record.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256},
    harness::{cluster::wait_members, EtcdProcess, NodeBuilder, NodeProcess},
    origin::{EtagMode, ObjectInfo, ObjectSpec, Origin},
};
use etcd_client::{Client, GetOptions};
use futures::StreamExt;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const PEER_TOKEN: &str = "test-peer-token-0123456789";
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// Invalidation records a cluster keeps at most (node/src/purge/record.rs, docs/security.md).
const INVALIDATION_BUCKETS: i64 = 256;
/// Keys per page of the catch-up read (node/src/cluster/etcd.rs).
const PAGE: i64 = 128;
/// Requests in flight at once during a storm.
const CONCURRENCY: usize = 16;

fn member(
    origin: &Origin,
    etcd: &EtcdProcess,
    cluster: &str,
    disk: &tempfile::TempDir,
) -> NodeBuilder {
    NodeBuilder::new(origin.url())
        .etcd(etcd.endpoint())
        .disk_dir(disk.path())
        .args([
            "--peer-token",
            PEER_TOKEN,
            "--member-ttl",
            "2s",
            "--cluster-name",
            cluster,
        ])
        .args(["--admin-token", ADMIN_TOKEN, "--chunk-size=1Mi"])
}

struct Cluster {
    nodes: Vec<NodeProcess>,
    _disks: Vec<tempfile::TempDir>,
}

async fn start(origin: &Origin, etcd: &EtcdProcess, cluster: &str, n: usize) -> Cluster {
    let disks: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = vec![];
    for d in &disks {
        nodes.push(member(origin, etcd, cluster, d).spawn().await);
    }
    wait_members(&nodes.iter().collect::<Vec<_>>(), n).await;
    Cluster {
        nodes,
        _disks: disks,
    }
}

async fn etcd_client(etcd: &EtcdProcess) -> Client {
    Client::connect([etcd.endpoint()], None).await.unwrap()
}

/// Keys under `prefix`, and the largest value's size.
async fn keys_under(etcd: &mut Client, prefix: &str) -> (i64, usize) {
    let count = etcd
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    let largest = etcd
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.value().len())
        .max()
        .unwrap_or(0);
    (count, largest)
}

async fn purge(node: &NodeProcess, body: &str) -> (u16, Value) {
    let res = client()
        .post(format!("{}/purge", node.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn fetch_ok(node: &NodeProcess, path: &str, obj: &ObjectInfo) {
    let got = get_sha256(&format!("{}{path}", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{path} through {}", node.url());
    assert_eq!(got.sha256, obj.sha256(), "{path} through {}", node.url());
}

async fn wait_disk_chunks(nodes: &[NodeProcess], n: f64) {
    let mut total = 0.0;
    for _ in 0..100 {
        total = 0.0;
        for node in nodes {
            total += node.metric("casserole_disk_chunks").await;
        }
        if total == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("disk tiers hold {total} chunks, expected {n}");
}

async fn invalidations(node: &NodeProcess, outcome: &str) -> f64 {
    let query = format!(r#"casserole_purge_invalidations_total{{outcome="{outcome}"}}"#);
    node.try_metric(&query).await.unwrap_or(0.0)
}

async fn scans(node: &NodeProcess) -> f64 {
    node.try_metric("casserole_purge_scans_total")
        .await
        .unwrap_or(0.0)
}

/// Waits (bounded) until every invalidation `node` queued was written to etcd (or failed);
/// returns how many were published.
async fn wait_published(node: &NodeProcess) -> f64 {
    for _ in 0..150 {
        let queued = invalidations(node, "queued").await;
        let done = invalidations(node, "published").await + invalidations(node, "failed").await;
        if done == queued {
            return invalidations(node, "published").await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the invalidations queued on {} were not written",
        node.url()
    );
}

/// Waits (bounded) until `node` applied `n` invalidations (its own published ones included).
async fn wait_applied_invalidations(node: &NodeProcess, n: f64) {
    let query = r#"casserole_purges_total{via="invalidation"}"#;
    let mut got = 0.0;
    for _ in 0..150 {
        got = node.try_metric(query).await.unwrap_or(0.0);
        if got >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, n, "{} applied each invalidation once", node.url());
}

/// `n` requests made by `make(i)`, `CONCURRENCY` at a time; every answer's status.
async fn storm<F, Fut>(n: usize, make: F) -> Vec<u16>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    futures::stream::iter(0..n)
        .map(make)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_writes_and_reloads_leaves_bounded_records_and_no_scans() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    origin.put("/form", ObjectSpec::new(1000).seed(91));
    let plain = origin.put(
        "/plain",
        ObjectSpec::new(1000)
            .seed(92)
            .etag(EtagMode::None)
            .no_last_modified(),
    );
    let other = origin.put("/other.bin", ObjectSpec::new(4 * MIB).seed(93));
    let mut c = start(&origin, &etcd, "storm", 3).await;
    for node in &c.nodes {
        fetch_ok(node, "/other.bin", &other).await;
    }
    wait_disk_chunks(&c.nodes, 4.0).await;

    storm_of_writes_and_reloads(&c.nodes[0], &plain).await;

    let published = writes_accounted_for(&c.nodes[0], 1000.0).await;
    assert_records_bounded(&etcd, "storm").await;

    // The other members applied each record once, by key: no member scanned a store.
    for node in &c.nodes[1..] {
        wait_applied_invalidations(node, published).await;
    }
    for node in &c.nodes {
        assert_eq!(scans(node).await, 0.0, "{} scanned a store", node.url());
    }

    // No cached object of another path was lost.
    origin.reset_stats();
    for node in &c.nodes {
        fetch_ok(node, "/other.bin", &other).await;
    }
    assert_eq!(origin.path_stats("/other.bin").requests, 0, "still cached");

    // A member restarted now reads every record (over a page) and applies the next purge.
    // (Each reload stored a version of /plain of its own; only /other.bin's 4 chunks go.)
    let mut on_disk = 0.0;
    for node in &c.nodes {
        on_disk += node.metric("casserole_disk_chunks").await;
    }
    c.nodes[2].restart().await;
    wait_members(&c.nodes.iter().collect::<Vec<_>>(), 3).await;
    let (status, answer) = purge(&c.nodes[0], r#"{"path": "/other.bin"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["confirmed"], 3, "{answer}");
    let path_purges = r#"casserole_purges_total{kind="path",via="cluster"}"#;
    assert_eq!(c.nodes[2].metric(path_purges).await, 1.0);
    wait_disk_chunks(&c.nodes, on_disk - 4.0).await;
    // One version's chunks dropped per round (at most two rounds), in memory and on disk.
    for node in &c.nodes {
        let n = scans(node).await;
        assert!(n <= 4.0, "{} made {n} scans", node.url());
    }
    origin.reset_stats();
    fetch_ok(&c.nodes[2], "/other.bin", &other).await;
    assert_eq!(origin.path_stats("/other.bin").body_bytes_sent, other.len);
}

/// 1,000 writes with unique query strings and 1,000 reloads of `plain` through `entry`.
async fn storm_of_writes_and_reloads(entry: &NodeProcess, plain: &ObjectInfo) {
    let entry = entry.url();
    let posts = storm(1000, |i| {
        let url = format!("{entry}/form?u={i}");
        async move {
            let res = client().post(url).body("x").send().await.unwrap();
            res.status().as_u16()
        }
    })
    .await;
    assert!(posts.iter().all(|&s| s == 204), "every write answered");
    let reloads = storm(1000, |_| {
        let url = format!("{entry}/plain");
        let want = plain.sha256();
        async move {
            let got = get_sha256(&url, &[("cache-control", "no-cache")])
                .await
                .unwrap();
            assert_eq!(got.sha256, want);
            got.status.as_u16()
        }
    })
    .await;
    assert!(reloads.iter().all(|&s| s == 200), "every reload answered");
}

/// Every one of `writes` was queued, coalesced or dropped (reloads of a version that is only a
/// lookup token queue nothing), and every queued one written; returns how many were written.
async fn writes_accounted_for(entry: &NodeProcess, writes: f64) -> f64 {
    let published = wait_published(entry).await;
    let (queued, coalesced, dropped) = (
        invalidations(entry, "queued").await,
        invalidations(entry, "coalesced").await,
        invalidations(entry, "dropped").await,
    );
    eprintln!("storm: queued {queued}, coalesced {coalesced}, dropped {dropped}");
    assert_eq!(queued + coalesced + dropped, writes);
    assert_eq!(published, queued);
    published
}

/// etcd holds at most one invalidation record per bucket, each small, and no ack.
async fn assert_records_bounded(etcd: &EtcdProcess, cluster: &str) {
    let mut kv = etcd_client(etcd).await;
    let records_prefix = format!("/casserole/{cluster}/purges/");
    let (records, largest) = keys_under(&mut kv, &records_prefix).await;
    let (acks, _) = keys_under(&mut kv, &format!("/casserole/{cluster}/purge-acks/")).await;
    eprintln!("storm: {records} records in etcd, largest {largest} bytes, {acks} acks");
    assert!(records <= INVALIDATION_BUCKETS, "{records} records");
    assert!(records > PAGE, "a catch-up reads more than a page");
    assert!(largest <= 2048, "a record of {largest} bytes");
    assert_eq!(acks, 0, "invalidations are not acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_catching_up_reads_every_page_of_records() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let victim = origin.put("/victim.bin", ObjectSpec::new(2 * MIB).seed(94));
    let mut c = start(&origin, &etcd, "pages", 1).await;
    fetch_ok(&c.nodes[0], "/victim.bin", &victim).await;
    wait_disk_chunks(&c.nodes, 2.0).await;
    c.nodes[0].kill_9().await;

    // Another member's purges, written while this one is away: three pages of them, the one
    // that matters last in key order.
    let mut kv = etcd_client(&etcd).await;
    let record = |key: &str, path: &str| {
        let body = serde_json::json!({
            "id": key, "target": {"path": path}, "requested_by": "test", "origin": "elsewhere",
            "at_unix_ms": 1, "round": 1, "versions": [],
        });
        (format!("/casserole/pages/purges/t/{key}"), body.to_string())
    };
    let filler = 2 * PAGE + 10;
    for i in 0..filler {
        let (key, body) = record(&format!("{i:04}"), &format!("/filler/{i}"));
        kv.put(key, body, None).await.unwrap();
    }
    let (key, body) = record("zzzz", "/victim.bin");
    kv.put(key, body, None).await.unwrap();

    c.nodes[0].restart().await;
    let applied = r#"casserole_purges_total{via="cluster"}"#;
    assert_eq!(c.nodes[0].metric(applied).await, (filler + 1) as f64);
    assert_eq!(c.nodes[0].metric("casserole_disk_chunks").await, 0.0);
    origin.reset_stats();
    fetch_ok(&c.nodes[0], "/victim.bin", &victim).await;
    assert_eq!(origin.path_stats("/victim.bin").body_bytes_sent, victim.len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_to_one_path_coalesce_into_one_record_per_window() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    origin.put("/form", ObjectSpec::new(1000).seed(95));
    let c = start(&origin, &etcd, "coalesce", 2).await;
    let entry = c.nodes[0].url();
    let posts = storm(200, |_| {
        let url = format!("{entry}/form");
        async move {
            let res = client().post(url).body("x").send().await.unwrap();
            res.status().as_u16()
        }
    })
    .await;
    assert!(posts.iter().all(|&s| s == 204));
    let node = &c.nodes[0];
    let published = wait_published(node).await;
    let coalesced = invalidations(node, "coalesced").await;
    assert_eq!(published + coalesced, 200.0);
    assert!(
        coalesced >= 1.0,
        "200 writes of one path, {published} records"
    );
    // One key for the path, however many windows it was written in.
    let mut kv = etcd_client(&etcd).await;
    let (records, _) = keys_under(&mut kv, "/casserole/coalesce/purges/").await;
    assert_eq!(records, 1);
    wait_applied_invalidations(&c.nodes[1], published).await;
}
