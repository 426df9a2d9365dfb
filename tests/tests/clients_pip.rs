//! pip through the cache: pypiserver serving wheels the test builds, `pip download --index-url
//! http://cache/simple/` twice (one client with a cache dir of its own, one with
//! `--no-cache-dir`): both get the wheels' exact bytes, and the origin serves each wheel once.

use casserole_tests::ecosystem::pip::{self, Wheel};
use casserole_tests::ecosystem::{sha256_file, temp_dir, Cache, CountingProxy};

fn wheels() -> Vec<Wheel> {
    vec![
        Wheel {
            name: "casserole_demo",
            version: "1.0.0",
            payload: 4 * 1024 * 1024 + 99,
        },
        Wheel {
            name: "casserole_extra",
            version: "0.3.0",
            payload: 300 * 1024,
        },
    ]
}

async fn two_downloads(clustered: bool) {
    let packages = temp_dir("pypi-packages");
    let list = wheels();
    let mut built = Vec::new();
    for (i, wheel) in list.iter().enumerate() {
        built.push(pip::build_wheel(wheel, 700 + i as u64, packages.path()).await);
    }
    let server = pip::pypiserver(packages.path()).await;
    let proxy = CountingProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let cache = Cache::start(clustered, &proxy.url()).await;
    let requirements = ["casserole-demo==1.0.0", "casserole-extra==0.3.0"];

    for i in 0..2 {
        let client = temp_dir("pip-client");
        let pip_cache = client.path().join("pip-cache");
        let index = format!("{}/simple/", cache.url(i));
        let cache_dir = (i == 0).then_some(pip_cache.as_path());
        let dest = pip::download(&index, &requirements, client.path(), cache_dir).await;
        for wheel in &built {
            let got = dest.join(wheel.file_name().unwrap());
            assert!(
                got.is_file(),
                "client {i}: pip did not write {}",
                got.display()
            );
            assert_eq!(
                sha256_file(&got),
                sha256_file(wheel),
                "client {i}: {} differs from the index's",
                got.display()
            );
        }
    }

    proxy.settle().await;
    eprintln!("origin log:\n{}", proxy.report());
    let wheel_bytes: u64 = built
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        proxy.body_bytes(|t| t.ends_with(".whl")),
        wheel_bytes,
        "the origin served every wheel exactly once for two clients (1.00×); origin log:\n{}",
        proxy.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_download_through_one_node() {
    two_downloads(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_download_through_a_cluster() {
    two_downloads(true).await;
}
