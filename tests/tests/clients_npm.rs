//! npm through the cache: verdaccio 6.8 as the registry (its own config, storage in a temporary
//! directory, no uplinks), a scoped (`@casserole/core`, requested as `/@casserole%2fcore`)
//! and an unscoped package published to it directly, then `npm install` twice through the
//! cache with separate caches: both installs get the published bytes, and the second costs the
//! origin 0 tarball bytes.

use std::path::Path;

use casserole_tests::client::sha256_hex;
use casserole_tests::ecosystem::npm::{self, Package, Verdaccio};
use casserole_tests::ecosystem::{sha256_file, temp_dir, Cache, CountingProxy};

fn packages() -> Vec<Package> {
    vec![
        Package {
            name: "@casserole/core",
            version: "1.0.0",
            dependencies: vec![],
            payload: 3 * 1024 * 1024 + 777,
        },
        Package {
            name: "casserole-app",
            version: "2.1.0",
            dependencies: vec![("@casserole/core", "^1.0.0")],
            payload: 600 * 1024,
        },
    ]
}

fn is_tarball(target: &str) -> bool {
    target.contains("/-/") && target.ends_with(".tgz")
}

async fn two_installs(clustered: bool) {
    let verdaccio = Verdaccio::start().await;
    let work = temp_dir("npm-packages");
    let pkgs = packages();
    let mut tarball_bytes = 0;
    for (i, pkg) in pkgs.iter().enumerate() {
        let tarball = npm::pack(pkg, 500 + i as u64, work.path()).await;
        tarball_bytes += std::fs::metadata(&tarball).unwrap().len();
        verdaccio.publish(&tarball).await;
    }
    let proxy = CountingProxy::start(verdaccio.addr()).await;
    let cache = Cache::start(clustered, &proxy.url()).await;

    let mut after_first = 0;
    for i in 0..2 {
        let client = temp_dir("npm-client");
        let project = npm::install(
            &cache.url(i),
            &[("casserole-app", "2.1.0")],
            client.path(),
            &client.path().join("npm-cache"),
        )
        .await;
        for (j, pkg) in pkgs.iter().enumerate() {
            let installed = project.join("node_modules").join(pkg.name).join("data.bin");
            assert_installed(&installed, &pkg.data(500 + j as u64), i);
        }
        proxy.settle().await;
        if i == 0 {
            after_first = proxy.body_bytes(is_tarball);
        }
    }
    // verdaccio gzips a tarball for a request that accepts it (a few bytes more than the
    // .tgz); the node's own fetch normally takes it as it is.
    eprintln!("origin log:\n{}", proxy.report());
    assert!(
        (tarball_bytes..=tarball_bytes + tarball_bytes / 100).contains(&after_first),
        "the first install fetched each tarball once through the cache (1.00×: {tarball_bytes} \
         bytes, got {after_first}); origin log:\n{}",
        proxy.report()
    );
    assert_eq!(
        proxy.body_bytes(is_tarball) - after_first,
        0,
        "the second install cost the origin 0 tarball bytes; origin log:\n{}",
        proxy.report()
    );
    assert!(
        proxy
            .exchanges()
            .iter()
            .any(|e| e.target.eq_ignore_ascii_case("/@casserole%2fcore")
                && (200..300).contains(&e.status)),
        "the scoped packument reached verdaccio as npm spelled it; origin log:\n{}",
        proxy.report()
    );
}

fn assert_installed(path: &Path, want: &[u8], client: usize) {
    assert!(
        path.is_file(),
        "client {client}: npm install did not write {}",
        path.display()
    );
    assert_eq!(
        sha256_file(path),
        sha256_hex(want),
        "client {client}: {} differs from the published file",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_install_through_one_node() {
    two_installs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_install_through_a_cluster() {
    two_installs(true).await;
}
