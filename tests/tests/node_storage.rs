//! A flood of distinct query strings (each a new metadata record): memory and disk stay within
//! their bounds, and the disk tier still caches afterwards, across a restart too. Cold objects
//! that fill the memory tier leave no more memory behind than `--max-memory-usage`, which a node
//! writes once at start-up when asked (`--prefault-memory`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use casserole_tests::{
    client::{client, get_sha256, header},
    harness::{NodeBuilder, NodeProcess},
    origin::{ObjectInfo, ObjectSpec, Origin},
};
use futures::StreamExt;

const QUERIES: usize = 100_000;
const MAX_DISK: u64 = 4 << 20;

fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The most RSS the process ever had.
fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Bytes of the files the disk tier keeps (chunks and metadata; temp files excluded).
fn files_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&dir.join("chunks")) + walk(&dir.join("meta"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_query_flood_stays_within_bounds() {
    let origin = Origin::start().await;
    origin.put("/q.bin", ObjectSpec::new(1000).seed(51).max_age(3600));
    let after = origin.put(
        "/after.bin",
        ObjectSpec::new(300_000).seed(52).max_age(3600),
    );
    let disk = tempfile::tempdir().unwrap();
    let mut node = NodeBuilder::new(origin.url())
        .disk_dir(disk.path())
        .args([
            format!("--max-disk-usage={MAX_DISK}"),
            format!("--cleaned-disk-usage={}", MAX_DISK / 4 * 3),
            "--max-metadata-memory=2Mi".to_string(),
            "--max-memory-usage=16Mi".to_string(),
            "--chunk-size=64Ki".to_string(),
        ])
        .spawn()
        .await;
    let pid = node.pid().unwrap();
    let base = node.url();
    let rss_before = rss_bytes(pid);

    // Each query string is distinct and long, so each is a new, large metadata record.
    let padding = "p".repeat(900);
    let started = Instant::now();
    let mut peak_rss = 0;
    let mut failures = 0;
    let mut requests = futures::stream::iter(0..QUERIES)
        .map(|i| {
            let url = format!("{base}/q.bin?n={i}&{padding}");
            async move { client().head(url).send().await.map(|r| r.status()) }
        })
        .buffer_unordered(32)
        .enumerate();
    while let Some((n, res)) = requests.next().await {
        if !matches!(res, Ok(s) if s == 200) {
            failures += 1;
        }
        if n % 5000 == 0 {
            peak_rss = peak_rss.max(rss_bytes(pid));
        }
    }
    peak_rss = peak_rss.max(rss_bytes(pid));
    let elapsed = started.elapsed();
    let disk_files = files_bytes(disk.path());
    let metric_disk = node.metric("casserole_disk_bytes").await as u64;
    let records = node.metric("casserole_disk_metadata_files").await;
    eprintln!(
        "{QUERIES} distinct queries in {elapsed:?}: RSS {} MiB before, peak {} MiB; \
         disk files {disk_files} B (metric {metric_disk} B, {records} records); {failures} failures",
        rss_before >> 20,
        peak_rss >> 20
    );
    assert_eq!(failures, 0);
    assert_eq!(origin.path_stats("/q.bin").head_requests, QUERIES as u64);
    assert!(
        disk_files <= MAX_DISK,
        "disk files {disk_files} > {MAX_DISK}"
    );
    assert!(metric_disk <= MAX_DISK);
    assert!(records > 0.0, "metadata records are written (and counted)");
    assert!(node.metric("casserole_disk_evictions_total").await > 0.0);
    // Unbounded, 100,000 records of ~2 KB each would hold ~200 MB.
    let bound = rss_before + (96 << 20);
    assert!(peak_rss <= bound, "peak RSS {peak_rss} > {bound}");

    // The disk tier still caches: a new object lands on disk and survives a restart.
    let url = format!("{base}/after.bin");
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, after.sha256());
    assert_eq!(node.metric("casserole_disk_write_errors_total").await, 0.0);
    // Disk writes happen off the response path; wait (bounded) for the object's five chunks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric("casserole_disk_chunks").await < 5.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.metric("casserole_disk_chunks").await, 5.0);
    node.restart().await;
    let ranges_before = origin.path_stats("/after.bin").range_requests;
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, after.sha256());
    assert_eq!(
        header(&got.headers, "cache-status"),
        "casserole; hit; detail=disk"
    );
    assert_eq!(
        origin.path_stats("/after.bin").range_requests,
        ranges_before
    );
    assert!(node.metric("casserole_disk_bytes").await as u64 <= MAX_DISK);
}

/// A node with `--max-memory-usage=bound` in front of `count` cold 64 MiB objects
/// (`/m0.bin`, …, seeds from `seed`), and its RSS once it has served a request.
struct Bounded {
    _origin: Origin,
    node: NodeProcess,
    objects: Vec<ObjectInfo>,
    pid: u32,
    rss_before: u64,
}

async fn bounded_node(bound: u64, count: u64, seed: u64) -> Bounded {
    let origin = Origin::start().await;
    let objects = (0..count)
        .map(|i| {
            let spec = ObjectSpec::new(64 << 20).seed(seed + i).max_age(3600);
            origin.put(&format!("/m{i}.bin"), spec)
        })
        .collect();
    origin.put("/tiny", ObjectSpec::new(1000).seed(1).max_age(3600));
    let node = NodeBuilder::new(origin.url())
        .arg(format!("--max-memory-usage={bound}"))
        .spawn()
        .await;
    let pid = node.pid().unwrap();
    // The runtime, pools and buffers of a served request exist before the baseline.
    get_sha256(&format!("{}/tiny", node.url()), &[])
        .await
        .unwrap();
    let rss_before = rss_bytes(pid);
    Bounded {
        _origin: origin,
        node,
        objects,
        pid,
        rss_before,
    }
}

/// The memory tier accounts the bytes of the chunks it holds; those must be all the memory they
/// take. A chunk made of pieces that each pinned a larger buffer (the upstream client's read
/// buffer, say) would be accounted at its length and hold more: this caught such a change (RSS
/// grew 325–352 MiB here against 249–258 MiB with chunks in their own allocations).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_objects_leave_no_more_memory_than_the_bound() {
    const BOUND: u64 = 256 << 20;
    let bounded = bounded_node(BOUND, 10, 90).await;
    let (node, objects) = (&bounded.node, &bounded.objects);
    for (i, object) in objects.iter().enumerate() {
        let got = get_sha256(&format!("{}/m{i}.bin", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(got.sha256, object.sha256(), "/m{i}.bin");
    }
    let growth = rss_bytes(bounded.pid).saturating_sub(bounded.rss_before);
    let held = node.metric("casserole_memory_bytes").await as u64;
    eprintln!(
        "640 MiB through a {} MiB node: memory tier {} MiB, RSS grew {} MiB",
        BOUND >> 20,
        held >> 20,
        growth >> 20
    );
    assert!(
        held >= BOUND / 4 * 3,
        "the tier is full, else this proves nothing"
    );
    let allowed = BOUND + BOUND / 8;
    assert!(
        growth <= allowed,
        "RSS grew {growth} B for a bound of {BOUND} B (allowed {allowed} B)"
    );
}

/// Many clients downloading cold objects at once (the benchmark's memory scenario, in the test
/// build): chunks are then allocated and freed on every worker thread, and memory that one
/// thread's allocator arena freed must serve the others' new chunks, or RSS grows past the bound
/// while the tier stays within it. Measured here (1.5 GiB of cold objects): peak RSS grew
/// 302–310 MiB with one arena (the node's setting), 342–344 MiB with glibc's default arenas
/// (`MALLOC_ARENA_MAX=16`); with 200 clients of 1 GiB the two were 293–304 and 321–340.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_of_cold_objects_leave_no_more_memory_than_the_bound() {
    const BOUND: u64 = 256 << 20;
    const OBJECTS: u64 = 24;
    const CLIENTS: u64 = 320;
    let bounded = bounded_node(BOUND, OBJECTS, 120).await;
    let (node, objects) = (&bounded.node, &bounded.objects);
    let downloads = (0..CLIENTS).map(|c| {
        let i = c % OBJECTS;
        let got = get_sha256(&format!("{}/m{i}.bin", node.url()), &[]);
        async move { (i, got.await) }
    });
    for (i, got) in futures::future::join_all(downloads).await {
        assert_eq!(
            got.unwrap().sha256,
            objects[i as usize].sha256(),
            "/m{i}.bin"
        );
    }
    let growth = peak_rss_bytes(bounded.pid).saturating_sub(bounded.rss_before);
    eprintln!(
        "{CLIENTS} clients of {OBJECTS} cold objects through a {} MiB node: peak RSS grew {} MiB",
        BOUND >> 20,
        growth >> 20
    );
    // Between the two measured below (72 MiB over the bound).
    let allowed = BOUND + BOUND * 9 / 32;
    assert!(
        growth <= allowed,
        "peak RSS grew {growth} B for a bound of {BOUND} B (allowed {allowed} B)"
    );
}

/// Sixteen clients reading one disk-tier object at once through a node with little memory:
/// every chunk they read passes through the fetch memory budget, which the memory tier and the
/// chunks readers hold fill. Read-ahead that queued for memory ahead of the chunks readers wait
/// for, and a tier that let go of evicted chunks only when touched, stalled every client until
/// the memory wait (30 s) failed them (measured: 0.08–1.5 GB/s with wrk against 2.7–3.5 after).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_of_a_disk_object_on_little_memory_all_finish() {
    const SIZE: u64 = 32 << 20;
    const CLIENTS: usize = 16;
    let origin = Origin::start().await;
    let object = origin.put("/d.bin", ObjectSpec::new(SIZE).seed(77).max_age(3600));
    let disk = tempfile::tempdir().unwrap();
    let node = NodeBuilder::new(origin.url())
        .disk_dir(disk.path())
        .arg("--max-memory-usage=16Mi")
        .spawn()
        .await;
    let url = format!("{}/d.bin", node.url());
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, object.sha256());
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric("casserole_disk_chunks").await < 16.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.metric("casserole_disk_chunks").await, 16.0);
    let ranges_before = origin.path_stats("/d.bin").range_requests;
    for round in 0..3 {
        let reads = (0..CLIENTS).map(|_| {
            // Well under the 30 s memory wait a stalled read would end in.
            tokio::time::timeout(Duration::from_secs(20), get_sha256(&url, &[]))
        });
        for (i, read) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let got = read
                .unwrap_or_else(|_| panic!("round {round}, client {i}: stalled"))
                .unwrap_or_else(|e| panic!("round {round}, client {i}: {e}"));
            assert_eq!(got.sha256, object.sha256(), "round {round}, client {i}");
        }
    }
    assert_eq!(
        origin.path_stats("/d.bin").range_requests,
        ranges_before,
        "every read came from the disk and memory tiers"
    );
    assert!(
        node.metric("casserole_bytes_served_total{source=\"disk\"}")
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_tier_s_share_is_written_at_start_up_when_asked() {
    let origin = Origin::start().await;
    let budget: u64 = 64 << 20;
    let arg = format!("--max-memory-usage={budget}");
    let prefaulted = NodeBuilder::new(origin.url())
        .args([arg.as_str(), "--prefault-memory"])
        .spawn()
        .await;
    let small = NodeBuilder::new(origin.url()).arg(&arg).spawn().await;
    let (with, without) = (
        rss_bytes(prefaulted.pid().unwrap()),
        rss_bytes(small.pid().unwrap()),
    );
    eprintln!("resident after start: {with} bytes prefaulted, {without} not");
    // The heap keeps the memory tier's share it was given (43 of the 64 MiB; not trimmed back
    // once freed), on top of what a node needs anyway.
    assert!(
        with >= without + (40 << 20),
        "{with} bytes resident prefaulted, {without} not, for a {budget}-byte budget"
    );
}
