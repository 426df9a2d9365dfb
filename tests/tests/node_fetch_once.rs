//! A chunk is fetched from the upstream once, also when the memory tier is full of another
//! object and turns new chunks away (its admission keeps entries read more often than a new
//! one): a chunk that just finished must be found while it is being written to disk.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_bytes, get_sha256},
    harness::{NodeBuilder, NodeProcess},
    origin::{ObjectSpec, Origin},
};
use futures::StreamExt;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 2 * MIB;

/// A node whose memory tier (about 30 MiB) a 48 MiB object read twice fills with chunks read
/// more often than any new one, with its disk tier on.
async fn node_with_full_memory(origin: &Origin, disk: &std::path::Path) -> NodeProcess {
    let big = origin.put("/big.bin", ObjectSpec::new(48 * MIB + 17).seed(71));
    let node = NodeBuilder::new(origin.url())
        .disk_dir(disk)
        .arg("--max-memory-usage=40M")
        .env("CASSEROLE_LOG", "casserole_node=debug")
        .spawn()
        .await;
    let url = format!("{}/big.bin", node.url());
    for _ in 0..2 {
        assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, big.sha256());
    }
    node
}

/// Fails with every range of `path` the origin answered more than once.
fn assert_each_range_once(origin: &Origin, path: &str) {
    let twice: Vec<_> = (origin.path_stats(path).range_counts().into_iter())
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{path}: ranges fetched more than once: {twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_is_fetched_once_when_memory_is_full_of_another_object() {
    let origin = Origin::start().await;
    let disk = tempfile::tempdir().unwrap();
    let node = node_with_full_memory(&origin, disk.path()).await;

    // Each chunk read whole, then asked for again at once (as `wget -c` does with the chunk it
    // was cut in): the second request must find the chunk, not fetch it again.
    let len = 24 * MIB + 5;
    origin.put("/again.bin", ObjectSpec::new(len).seed(72));
    let url = format!("{}/again.bin", node.url());
    for start in (0..len).step_by(CHUNK as usize) {
        let range = format!("bytes={start}-{}", (start + CHUNK).min(len) - 1);
        for _ in 0..2 {
            let (status, _, body) = get_bytes(&url, &[("range", &range)]).await.unwrap();
            assert_eq!(status, 206);
            assert_eq!(body.len() as u64, (len - start).min(CHUNK));
        }
    }
    assert_each_range_once(&origin, "/again.bin");

    // A plain download cut part way, then a second one right behind it.
    let cold = origin.put("/cold.bin", ObjectSpec::new(32 * MIB + 99).seed(73));
    let url = format!("{}/cold.bin", node.url());
    let resp = client().get(&url).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut got = 0;
    while got < 5 * MIB + 12345 {
        got += body.next().await.unwrap().unwrap().len() as u64;
    }
    drop(body);
    let whole = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(whole.sha256, cold.sha256());
    assert_each_range_once(&origin, "/cold.bin");
    // Every chunk once, those the cut client had started included (their fetches ran on).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.path_stats("/cold.bin").ranges.len(), 17);
}
