//! The disk tier across restarts and faults, and graceful shutdown.

use std::{path::PathBuf, time::Duration};

use casserole_tests::{
    client::{client, get_sha256, header},
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;

fn chunk_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = vec![];
    for sub in std::fs::read_dir(dir.join("chunks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_serves_from_disk_without_upstream_bytes() {
    let origin = Origin::start().await;
    let obj = origin.put("/d.bin", ObjectSpec::new(16 * MIB + 5).seed(31));
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeBuilder::new(origin.url())
        .disk_dir(dir.path())
        .spawn()
        .await;
    let url = format!("{}/d.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    // Disk writes happen off the response path; wait for all nine chunks.
    for _ in 0..100 {
        if node.metric("casserole_disk_chunks").await >= 9.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.metric("casserole_disk_chunks").await, 9.0);
    node.sigterm();
    assert!(
        node.wait_exit(Duration::from_secs(10)).await.success(),
        "SIGTERM exits 0"
    );

    node.restart().await;
    origin.reset_stats();
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, obj.sha256());
    assert_eq!(
        header(&got.headers, "cache-status"),
        "casserole; hit; detail=disk"
    );
    let stats = origin.stats();
    assert_eq!(
        stats.requests, 0,
        "neither HEAD nor bytes: metadata and chunks came from disk"
    );
    assert_eq!(
        node.metric(r#"casserole_metadata_lookups_total{tier="disk"}"#)
            .await,
        1.0
    );
    // Promoted to memory.
    let again = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(
        header(&again.headers, "cache-status"),
        "casserole; hit; detail=memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_tier_kept_across_a_change_of_upstream_never_serves_the_old_upstreams_objects() {
    let (old, new) = (Origin::start().await, Origin::start().await);
    let before = old.put("/same/path.bin", ObjectSpec::new(3 * MIB).seed(36));
    let after = new.put("/same/path.bin", ObjectSpec::new(3 * MIB).seed(37));
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeBuilder::new(old.url())
        .disk_dir(dir.path())
        .spawn()
        .await;
    let url = format!("{}/same/path.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, before.sha256());
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    node.sigterm();
    assert!(node.wait_exit(Duration::from_secs(10)).await.success());

    let node = NodeBuilder::new(new.url())
        .disk_dir(dir.path())
        .spawn()
        .await;
    let url = format!("{}/same/path.bin", node.url());
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(
        header(head.headers(), "cache-status"),
        "casserole; fwd=miss; detail=metadata",
        "the old upstream's metadata record is not this upstream's"
    );
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, after.sha256());
    assert_eq!(new.path_stats("/same/path.bin").body_bytes_sent, 3 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_after_a_restart_is_a_hit_from_disk_metadata() {
    let origin = Origin::start().await;
    origin.put("/h.bin", ObjectSpec::new(3 * MIB).seed(33));
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeBuilder::new(origin.url())
        .disk_dir(dir.path())
        .spawn()
        .await;
    let url = format!("{}/h.bin", node.url());
    let cold = client().head(&url).send().await.unwrap();
    assert_eq!(
        header(cold.headers(), "cache-status"),
        "casserole; fwd=miss; detail=metadata"
    );
    node.sigterm();
    assert!(node.wait_exit(Duration::from_secs(10)).await.success());

    node.restart().await;
    origin.reset_stats();
    let res = client().head(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(res.headers(), "content-length"),
        (3 * MIB).to_string()
    );
    assert_eq!(
        header(res.headers(), "cache-status"),
        "casserole; hit; detail=metadata-disk"
    );
    assert_eq!(origin.stats().requests, 0, "answered from disk metadata");
    assert_eq!(
        node.metric(r#"casserole_requests_total{result="hit",tier="metadata"}"#)
            .await,
        1.0
    );
    assert_eq!(
        node.metric(r#"casserole_requests_total{result="miss",tier="metadata"}"#)
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_and_truncated_chunk_files_are_dropped_and_fetched_again() {
    let origin = Origin::start().await;
    let obj = origin.put("/c.bin", ObjectSpec::new(8 * MIB).seed(32));
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeBuilder::new(origin.url())
        .disk_dir(dir.path())
        .spawn()
        .await;
    let url = format!("{}/c.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    for _ in 0..100 {
        if chunk_files(dir.path()).len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.sigterm();
    node.wait_exit(Duration::from_secs(10)).await;

    let files = chunk_files(dir.path());
    assert_eq!(files.len(), 4);
    // Flip one byte in the middle of one chunk; cut another short.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .unwrap();
    f.set_len(1000).unwrap();

    node.restart().await;
    origin.reset_stats();
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, obj.sha256(), "bad files never reach a client");
    assert_eq!(
        node.metric("casserole_disk_checksum_failures_total").await,
        2.0
    );
    assert_eq!(
        origin.stats().range_requests,
        2,
        "only the two bad chunks are fetched again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_degrades_to_memory_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (runs as root)"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(dir.path().to_path_buf());

    let origin = Origin::start().await;
    let obj = origin.put("/full.bin", ObjectSpec::new(16 * MIB).seed(33));
    let node = NodeBuilder::new(origin.url())
        .disk_dir(dir.path())
        .arg("--max-disk-usage=1G")
        .arg("--cleaned-disk-usage=800M")
        .spawn()
        .await;
    let url = format!("{}/full.bin", node.url());
    for _ in 0..3 {
        assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    }
    // Disk writes run off the response path: wait (bounded) for them to meet the full disk. A
    // full disk is met either by evicting and retrying (counted as disk-full) or, when that
    // cannot make room, by a failed write.
    let mut full = 0.0;
    for _ in 0..100 {
        full = node.metric("casserole_disk_full_total").await
            + node.metric("casserole_disk_write_errors_total").await;
        if full >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(full >= 1.0, "the full disk was never noticed");
    assert_eq!(
        origin.path_stats("/full.bin").range_requests,
        8,
        "memory still caches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_tier_is_cleaned_down_once_past_its_maximum() {
    let origin = Origin::start().await;
    let obj = origin.put("/e.bin", ObjectSpec::new(32 * MIB).seed(34));
    let dir = tempfile::tempdir().unwrap();
    let node = NodeBuilder::new(origin.url())
        .disk_dir(dir.path())
        .arg("--max-disk-usage=12Mi")
        .arg("--cleaned-disk-usage=8Mi")
        .spawn()
        .await;
    assert_eq!(
        get_sha256(&format!("{}/e.bin", node.url()), &[])
            .await
            .unwrap()
            .sha256,
        obj.sha256()
    );
    let mut used = 0.0;
    for _ in 0..100 {
        used = node.metric("casserole_disk_bytes").await;
        if node.metric("casserole_disk_evictions_total").await > 0.0 && used <= (12 * MIB) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(used <= (12 * MIB) as f64, "disk tier holds {used} bytes");
    assert!(node.metric("casserole_disk_evictions_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_downloads_finish_then_exits_zero() {
    let origin = Origin::start().await;
    // ~1.5 s to download through one connection per chunk.
    let obj = origin.put(
        "/g.bin",
        ObjectSpec::new(12 * MIB).seed(35).throttle(4 * MIB),
    );
    let mut node = NodeBuilder::new(origin.url())
        .arg("--readahead=1")
        .spawn()
        .await;
    let url = format!("{}/g.bin", node.url());
    let download = tokio::spawn(get_sha256(&url, &[]));
    // Wait until the response is under way.
    for _ in 0..100 {
        if origin.path_stats("/g.bin").range_requests > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.sigterm();
    // New connections are refused while draining (the listener closes soon after the signal).
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client().get(&url).send().await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "no new requests after SIGTERM");
    // The admin listener answers through the drain: not ready, still scrapable.
    let readyz = format!("{}/readyz", node.admin_url());
    let not_ready = client()
        .get(&readyz)
        .send()
        .await
        .expect("/readyz answers while draining");
    assert_eq!(not_ready.status(), 503);
    let metrics = format!("{}/metrics", node.admin_url());
    assert_eq!(client().get(&metrics).send().await.unwrap().status(), 200);
    let got = download
        .await
        .unwrap()
        .expect("the in-flight download completes");
    assert_eq!(got.sha256, obj.sha256());
    assert!(node.wait_exit(Duration::from_secs(20)).await.success());
}
