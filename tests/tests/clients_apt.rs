//! apt through the cache: `apt-get update` and `apt-get download` (state of their own) against
//! a flat and a mirror-layout repository served by nginx, built with dpkg-scanpackages /
//! apt-ftparchive from packages made with `dpkg-deb --build`, one of them with an epoch (its
//! file name holds `%3a`, so apt asks for `%253a`). Two clients with separate state: each gets
//! the packages' exact bytes, and the origin serves each `.deb` once (1.00×).

use casserole_tests::ecosystem::apt::{self, AptClient, Layout};
use casserole_tests::ecosystem::{sha256_file, temp_dir, Cache, CountingProxy};

async fn two_clients(layout: Layout, clustered: bool) {
    let www = temp_dir("apt-www");
    let prefix = temp_dir("nginx-prefix");
    let debs = apt::packages();
    let built = apt::build_repository(layout, &debs, www.path()).await;
    let nginx = apt::nginx(www.path(), prefix.path()).await;
    let proxy = CountingProxy::start(([127, 0, 0, 1], nginx.port()).into()).await;
    let cache = Cache::start(clustered, &proxy.url()).await;
    let names: Vec<&str> = debs.iter().map(|d| d.name).collect();

    for i in 0..2 {
        let client = AptClient::new(&layout.sources_line(&cache.url(i)));
        let update = client.update().await;
        assert!(
            !update.contains("Err:"),
            "client {i}: apt-get update reported errors:\n{update}\n{}",
            proxy.report()
        );
        let dir = client.download(&names).await;
        for (deb, original) in debs.iter().zip(&built) {
            let got = dir.join(deb.file_name());
            assert!(
                got.is_file(),
                "client {i}: apt-get download did not write {}",
                got.display()
            );
            assert_eq!(
                sha256_file(&got),
                sha256_file(original),
                "client {i}: {} differs from the repository's",
                deb.file_name()
            );
        }
    }

    proxy.settle().await;
    eprintln!("origin log:\n{}", proxy.report());
    let deb_bytes: u64 = built
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        proxy.body_bytes(|t| t.ends_with(".deb")),
        deb_bytes,
        "the origin served every .deb exactly once for two clients (1.00×); origin log:\n{}",
        proxy.report()
    );
    // The epoch package was asked for as apt spells it, and reached nginx spelled the same.
    assert!(
        proxy
            .exchanges()
            .iter()
            .any(|e| e.target.contains("casserole-epoch_1%253a4.2-1_all.deb")
                && (200..300).contains(&e.status)),
        "{}",
        proxy.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_flat_repository_through_one_node() {
    two_clients(Layout::Flat, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_mirror_repository_through_one_node() {
    two_clients(Layout::Mirror, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_flat_repository_through_a_cluster() {
    two_clients(Layout::Flat, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_mirror_repository_through_a_cluster() {
    two_clients(Layout::Mirror, true).await;
}
