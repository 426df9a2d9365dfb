//! `--ttl-rule`: freshness by path for origins that send none. On defaults, the versioned files
//! of package ecosystems (npm tarballs, .deb, wheels, OCI blobs) are immutable: cached without a
//! validator or a lifetime, never revalidated, not even on a reload; other paths follow the
//! response. A response's `no-store` still wins.

use casserole_tests::{
    client::{get_sha256, header},
    harness::NodeBuilder,
    origin::{EtagMode, ObjectSpec, Origin},
};

/// No validator, no lifetime: what verdaccio and many mirrors send.
fn bare(size: u64, seed: u64) -> ObjectSpec {
    ObjectSpec::new(size)
        .seed(seed)
        .no_cache_control()
        .etag(EtagMode::None)
        .no_last_modified()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versioned_package_files_are_immutable_on_defaults() {
    let origin = Origin::start().await;
    let tgz = origin.put("/@s/core/-/core-1.0.0.tgz", bare(300_000, 1));
    let deb = origin.put("/pool/main/h/hello_2.10-3_amd64.deb", bare(1_500_000, 2));
    let index = origin.put("/dists/stable/Release", bare(5000, 3));
    let refused = origin.put(
        "/-/secret-1.0.0.tgz",
        bare(1000, 4).cache_control("no-store"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for (path, obj, cached) in [
        ("/@s/core/-/core-1.0.0.tgz", &tgz, true),
        ("/pool/main/h/hello_2.10-3_amd64.deb", &deb, true),
        ("/dists/stable/Release", &index, false),
        ("/-/secret-1.0.0.tgz", &refused, false),
    ] {
        let url = format!("{}{path}", node.url());
        for ask in [&[][..], &[("cache-control", "no-cache")][..]] {
            let got = get_sha256(&url, ask).await.unwrap();
            assert_eq!(
                (got.status.as_u16(), got.sha256.as_str()),
                (200, obj.sha256().as_str())
            );
            if cached && ask.is_empty() {
                // The first request of all was the miss; later ones are hits.
                let status = header(&got.headers, "cache-status");
                assert!(
                    status.contains("miss") || status.contains("hit"),
                    "{status}"
                );
            }
        }
        let got = get_sha256(&url, &[]).await.unwrap();
        let stats = origin.path_stats(path);
        if cached {
            assert!(
                header(&got.headers, "cache-status").contains("hit"),
                "{path}"
            );
            assert_eq!(
                stats.body_bytes_sent, obj.len,
                "{path}: the origin sent it once"
            );
        } else {
            assert_eq!(stats.requests, 3, "{path}: never stored");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_rules_replace_the_defaults() {
    let origin = Origin::start().await;
    let iso = origin.put("/images/a.iso", bare(100_000, 5));
    let tgz = origin.put("/-/p-1.0.0.tgz", bare(1000, 6));
    let node = NodeBuilder::new(origin.url())
        .args(["--ttl-rule", r"^/images/.*\.iso$=1h"])
        .spawn()
        .await;
    for _ in 0..2 {
        let got = get_sha256(&format!("{}/images/a.iso", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(got.sha256, iso.sha256());
        let got = get_sha256(&format!("{}/-/p-1.0.0.tgz", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(got.sha256, tgz.sha256());
    }
    assert_eq!(origin.path_stats("/images/a.iso").requests, 1, "the rule");
    assert_eq!(
        origin.path_stats("/-/p-1.0.0.tgz").requests,
        2,
        "defaults replaced"
    );
    // A bad rule is refused at start with a message naming it.
    let out = std::process::Command::new(casserole_tests::harness::node_binary())
        .args(["--upstream", "http://127.0.0.1:1", "--ttl-rule", "([=1h"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ttl-rule") && err.contains("pattern"), "{err}");
}

/// A client that asks for a package file before the mirror has it (a sync in progress, a
/// publish not yet propagated) gets the `404`; the immutable rule for package files must not
/// keep that `404`, or the file would stay missing through the cache for a year.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_package_file_missing_at_first_is_served_once_it_appears() {
    let origin = Origin::start().await;
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let path = "/pool/main/h/hello_2.10-3_amd64.deb";
    let url = format!("{}{path}", node.url());
    for _ in 0..2 {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(got.status.as_u16(), 404);
    }
    assert_eq!(origin.path_stats(path).requests, 2, "the 404 was not kept");
    let deb = origin.put(path, bare(1_500_000, 9));
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.sha256.as_str()),
        (200, deb.sha256().as_str())
    );
    // That answer was relayed on the `404`s' pass verdict, and dropped it: the next request
    // stores the file, and the one after is a hit.
    let stored = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(stored.sha256, deb.sha256());
    let again = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(again.sha256, deb.sha256());
    let status = header(&again.headers, "cache-status");
    assert!(status.contains("hit"), "{status}");
    assert_eq!(origin.path_stats(path).body_bytes_sent, 2 * deb.len);
}
