//! Container images through the cache: Debian's docker-registry as the origin, an image the
//! test writes as an OCI layout and pushes to it directly with skopeo, then `skopeo copy
//! --src-tls-verify=false docker://CACHE/… dir:…` twice: both copies hold the pushed blobs
//! byte for byte, and the origin serves each blob once (1.00×).

use casserole_tests::ecosystem::registry::{self, OciImage};
use casserole_tests::ecosystem::{sha256_file, temp_dir, Cache, CountingProxy};

const REPO: &str = "casserole/app";

fn assert_blobs(image: &OciImage, copy: &std::path::Path, client: usize) {
    for (digest, size) in &image.blobs {
        let hex = digest.trim_start_matches("sha256:");
        let path = copy.join(hex);
        assert!(
            path.is_file(),
            "client {client}: skopeo did not write blob {digest}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            *size,
            "client {client}: {digest}"
        );
        assert_eq!(
            sha256_file(&path),
            hex,
            "client {client}: blob {digest} differs from the pushed one"
        );
    }
}

async fn two_pulls(clustered: bool) {
    let dir = temp_dir("registry");
    let server = registry::docker_registry(dir.path()).await;
    let image = registry::build_image(dir.path(), &[6 * 1024 * 1024 + 5, 512 * 1024], "v1").await;
    let origin = format!("127.0.0.1:{}", server.port());
    registry::push(&image, &origin, REPO).await;
    let proxy = CountingProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let cache = Cache::start(clustered, &proxy.url()).await;

    for i in 0..2 {
        let client = temp_dir("skopeo-client");
        let copy = registry::pull(&cache.authority(i), REPO, &image.tag, client.path()).await;
        assert_blobs(&image, &copy, i);
    }

    proxy.settle().await;
    eprintln!("origin log:\n{}", proxy.report());
    assert_eq!(
        proxy.body_bytes(|t| t.contains("/blobs/sha256:")),
        image.blob_bytes(),
        "the origin served every blob exactly once for two clients (1.00×); origin log:\n{}",
        proxy.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copy_through_one_node() {
    two_pulls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copy_through_a_cluster() {
    two_pulls(true).await;
}
