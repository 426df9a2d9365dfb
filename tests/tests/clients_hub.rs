//! huggingface_hub through the cache: a hub-shaped origin whose resolve endpoints redirect LFS
//! files to a CDN on another host name (`localhost`, another port), a node with
//! `--route /_cdn/=CDN` (so the redirects are rewritten to the node), and two real clients
//! (`snapshot_download`, separate `HF_HOME`s) plus a third (`hf_hub_download`), each through
//! another member in a cluster: every snapshot
//! equals the repository, the CDN sends each LFS file once (1.00×) and sees no request but the
//! node's own. With `--follow-redirects /` the node follows the hub's redirects to presigned CDN
//! URLs (a new signature each time) itself: the hub client and `curl` without `-L` get the files
//! straight from the resolve URLs, and the CDN still sends each once. With
//! `--ignore-query-param` naming the signature parameters, the clients follow presigned URLs
//! through a cluster (a new signature for every client) and the CDN still sends each file once;
//! an expired signature gets 403 from the node, which asks no one.

use std::path::Path;

use casserole_tests::ecosystem::hub::{self, Hub, HubRequest};
use casserole_tests::ecosystem::{filler, temp_dir, tree_digest, Cache};
use casserole_tests::harness::NodePorts;

const REPO: &str = "casserole/demo-model";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_SIZE: usize = 64 << 20;

/// The repository: 64 MiB of weights and a 3 MiB tokenizer in a folder (LFS files, redirected
/// to the CDN) and two small files the hub answers itself.
fn write_repo(root: &Path) {
    std::fs::create_dir_all(root.join("tokenizer")).unwrap();
    std::fs::write(root.join(WEIGHTS), filler(2100, WEIGHTS_SIZE)).unwrap();
    std::fs::write(root.join("tokenizer/tokenizer.bin"), filler(2101, 3 << 20)).unwrap();
    std::fs::write(
        root.join("config.json"),
        b"{\"model_type\": \"casserole\"}\n",
    )
    .unwrap();
    std::fs::write(root.join("README.md"), b"# demo model\n").unwrap();
}

/// The CDN's log: every request carries the node's `Via` and the LFS files left it once.
fn assert_cdn_once(requests: &[HubRequest], repo: &Path) {
    let report = Hub::report(requests);
    let cdn: Vec<&HubRequest> = requests.iter().filter(|r| r.server == "cdn").collect();
    assert!(
        !cdn.is_empty(),
        "the CDN was never asked; requests:\n{report}"
    );
    for r in &cdn {
        assert!(
            r.via.as_deref().unwrap_or("").contains("casserole"),
            "a request reached the CDN other than the node's own: {r:?}; requests:\n{report}"
        );
    }
    let lfs_bytes: u64 = [WEIGHTS, "tokenizer/tokenizer.bin"]
        .iter()
        .map(|f| std::fs::metadata(repo.join(f)).unwrap().len())
        .sum();
    let sent: u64 = cdn.iter().map(|r| r.bytes).sum();
    let revalidations = cdn.iter().filter(|r| r.status == 304).count();
    eprintln!(
        "CDN sent {sent} B for {lfs_bytes} B of LFS files ({:.2}×) in {} requests ({revalidations} \
         answered 304)",
        sent as f64 / lfs_bytes as f64,
        cdn.len()
    );
    assert_eq!(
        sent, lfs_bytes,
        "the CDN sent every LFS file exactly once for three clients (1.00×); requests:\n{report}"
    );
}

async fn through_the_cache(clustered: bool) {
    hub::require_client().await;
    let repo = temp_dir("hub-repo");
    write_repo(repo.path());
    let hub = Hub::start(repo.path(), REPO).await;
    let route = format!("--route=/_cdn/={}/", hub.cdn_url());
    // Redirects into the cache name the node by another host than `HF_ENDPOINT` does: the
    // client follows a `HEAD` redirect whose target has the endpoint's own origin (scheme, host,
    // port) and would then read the CDN's answer, which has no `X-Repo-Commit`, and fail.
    let args = |ports: &NodePorts| {
        vec![
            route.clone(),
            format!("--public-url=http://localhost:{}", ports.http),
        ]
    };
    let cache = Cache::start_with(clustered, &hub.url(), &args).await;
    let expected = tree_digest(repo.path());

    let mut snapshots = Vec::new();
    for i in 0..2 {
        let home = temp_dir("hf-home");
        let snapshot = hub::snapshot_download(&cache.url(i), home.path(), REPO).await;
        assert!(
            snapshot.ends_with(hub::COMMIT),
            "client {i}: snapshot {} is not at the hub's commit",
            snapshot.display()
        );
        assert_eq!(
            tree_digest(&snapshot),
            expected,
            "client {i}: the snapshot differs from the repository"
        );
        snapshots.push((home, snapshot));
    }
    assert_eq!(tree_digest(&snapshots[0].1), tree_digest(&snapshots[1].1));

    let home = temp_dir("hf-home");
    let weights = hub::hf_hub_download(&cache.url(2), home.path(), REPO, WEIGHTS).await;
    assert_eq!(
        casserole_tests::ecosystem::sha256_file(&weights),
        casserole_tests::ecosystem::sha256_file(&repo.path().join(WEIGHTS)),
        "hf_hub_download: the weights differ from the repository's"
    );

    let requests = hub.requests().await;
    eprintln!("hub and CDN log:\n{}", Hub::report(&requests));
    assert_cdn_once(&requests, repo.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_downloads_through_one_node() {
    through_the_cache(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_downloads_through_a_cluster() {
    through_the_cache(true).await;
}

/// A hub whose CDN URLs are presigned (a new signature on every redirect, checked by the CDN)
/// and one node that follows the hub's redirects into its `/_cdn/` route.
async fn following_node(repo: &Path) -> (Hub, Cache) {
    let hub = Hub::start_with(repo, REPO, &["--sign-secret", "test-secret"]).await;
    let route = format!("--route=/_cdn/={}/", hub.cdn_url());
    let args = |_: &NodePorts| vec![route.clone(), "--follow-redirects=/".to_string()];
    let cache = Cache::start_with(false, &hub.url(), &args).await;
    (hub, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_downloads_through_a_node_that_follows_redirects() {
    hub::require_client().await;
    let repo = temp_dir("hub-repo");
    write_repo(repo.path());
    let (hub, cache) = following_node(repo.path()).await;
    let expected = tree_digest(repo.path());
    for _ in 0..2 {
        let home = temp_dir("hf-home");
        let snapshot = hub::snapshot_download(&cache.url(0), home.path(), REPO).await;
        assert!(snapshot.ends_with(hub::COMMIT), "{}", snapshot.display());
        assert_eq!(tree_digest(&snapshot), expected);
    }
    // Not `hf_hub_download(revision="main")` as well: followed, an object is cached under the
    // resolve URL, and `main` names another URL than the commit the snapshots resolved.
    let requests = hub.requests().await;
    assert!(
        requests.iter().all(|r| r.status != 403),
        "every presigned URL the node followed was valid:\n{}",
        Hub::report(&requests)
    );
    assert_cdn_once(&requests, repo.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_without_following_redirects_gets_the_weights() {
    let repo = temp_dir("hub-repo");
    write_repo(repo.path());
    let (hub, cache) = following_node(repo.path()).await;
    let out = temp_dir("curl-out");
    let url = format!("{}/{REPO}/resolve/main/{WEIGHTS}", cache.url(0));
    for i in 0..2 {
        let file = out.path().join(format!("weights-{i}"));
        let head = out.path().join(format!("headers-{i}"));
        // No -L: a client that cannot follow redirects.
        let run = std::process::Command::new("curl")
            .args(["-sS", "-w", "%{http_code}", "-D"])
            .arg(&head)
            .arg("-o")
            .arg(&file)
            .arg(&url)
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&run.stdout), "200", "{run:?}");
        assert_eq!(
            casserole_tests::ecosystem::sha256_file(&file),
            casserole_tests::ecosystem::sha256_file(&repo.path().join(WEIGHTS))
        );
        let headers = std::fs::read_to_string(&head).unwrap().to_ascii_lowercase();
        // What a hub client reads from the redirect, copied onto the answer.
        for name in ["x-repo-commit: ", "x-linked-etag: ", "x-linked-size: "] {
            assert!(headers.contains(name), "{name}missing in:\n{headers}");
        }
        assert!(headers.contains(hub::COMMIT), "{headers}");
    }
    let requests = hub.requests().await;
    let cdn_bytes: u64 = requests
        .iter()
        .filter(|r| r.server == "cdn")
        .map(|r| r.bytes)
        .sum();
    assert_eq!(
        cdn_bytes,
        WEIGHTS_SIZE as u64,
        "the CDN sent the weights once:\n{}",
        Hub::report(&requests)
    );
}

/// The SigV4 query parameters that change with every presigned URL of one object.
const SIGNATURE_PARAMS: [&str; 4] = [
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-Credential",
    "X-Amz-Expires",
];

/// A hub whose CDN URLs are presigned, and nodes (three in a cluster, or one) whose `/_cdn/`
/// route leaves the signature out of its keys.
async fn signed_cache(repo: &Path, clustered: bool, extra: &[&str]) -> (Hub, Cache) {
    let hub = Hub::start_with(repo, REPO, &["--sign-secret", "test-secret"]).await;
    let route = format!("--route=/_cdn/={}/", hub.cdn_url());
    let args = |ports: &NodePorts| {
        let mut args = vec![
            route.clone(),
            format!("--public-url=http://localhost:{}", ports.http),
        ];
        args.extend(
            SIGNATURE_PARAMS
                .iter()
                .map(|name| format!("--ignore-query-param=/_cdn/={name}")),
        );
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let cache = Cache::start_with(clustered, &hub.url(), &args).await;
    (hub, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_cdn_urls_are_one_object_to_a_cluster() {
    hub::require_client().await;
    let repo = temp_dir("hub-repo");
    write_repo(repo.path());
    let (hub, cache) = signed_cache(repo.path(), true, &[]).await;
    let expected = tree_digest(repo.path());
    // Each client through another member, each redirected to a URL with a signature of its own.
    for i in 0..2 {
        let home = temp_dir("hf-home");
        let snapshot = hub::snapshot_download(&cache.url(i), home.path(), REPO).await;
        assert_eq!(tree_digest(&snapshot), expected, "client {i}");
    }
    let home = temp_dir("hf-home");
    let weights = hub::hf_hub_download(&cache.url(2), home.path(), REPO, WEIGHTS).await;
    assert_eq!(
        casserole_tests::ecosystem::sha256_file(&weights),
        casserole_tests::ecosystem::sha256_file(&repo.path().join(WEIGHTS))
    );
    let requests = hub.requests().await;
    assert!(
        requests.iter().all(|r| r.status != 403),
        "every request reached the CDN with the signature it was issued:\n{}",
        Hub::report(&requests)
    );
    assert_cdn_once(&requests, repo.path());
}

/// `url` with the value of query parameter `name` replaced.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').expect("a query");
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((n, _)) if n == name => format!("{n}={value}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

/// The presigned CDN URL a resolve redirect names, rewritten to the node.
async fn presigned_url(client: &reqwest::Client, node: &str) -> String {
    let resolve = format!("{node}/{REPO}/resolve/main/{WEIGHTS}");
    let res = client.get(&resolve).send().await.unwrap();
    assert_eq!(res.status(), 302, "{resolve}");
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("/_cdn/") && location.contains("X-Amz-Signature="),
        "{location}"
    );
    location
}

/// A node of `signed_cache` and a client that does not follow redirects.
async fn signed_node(repo: &Path, extra: &[&str]) -> (Hub, Cache, reqwest::Client) {
    let (hub, cache) = signed_cache(repo, false, extra).await;
    (hub, cache, casserole_tests::client::not_following().clone())
}

/// Requests the CDN answered, and the body bytes of its successful answers.
async fn cdn_traffic(hub: &Hub) -> (usize, u64) {
    let requests = hub.requests().await;
    let cdn = requests.iter().filter(|r| r.server == "cdn");
    let sent = cdn
        .clone()
        .filter(|r| r.status < 300)
        .map(|r| r.bytes)
        .sum();
    (cdn.count(), sent)
}

async fn get_weights(client: &reqwest::Client, url: &str, weights: &[u8]) {
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    assert!(res.bytes().await.unwrap() == weights, "{url}: other bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_signatures_get_403_and_reach_no_origin() {
    let repo = temp_dir("hub-repo");
    write_repo(repo.path());
    let (hub, cache, client) = signed_node(repo.path(), &[]).await;
    let signed = presigned_url(&client, &cache.url(0)).await;
    let expired = with_param(&signed, "X-Amz-Date", "20200101T000000Z");
    let res = client.get(&expired).send().await.unwrap();
    assert_eq!(res.status(), 403, "{expired}");
    let why = res.text().await.unwrap();
    assert!(why.contains("expired"), "{why}");
    let malformed = with_param(&signed, "X-Amz-Date", "yesterday");
    let res = client.get(&malformed).send().await.unwrap();
    assert_eq!(res.status(), 403, "{malformed}");
    assert!(res.text().await.unwrap().contains("X-Amz-Date"));
    assert_eq!(
        cdn_traffic(&hub).await.0,
        0,
        "refused before anyone was asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_copies_are_revalidated_with_the_clients_own_signature() {
    let repo = temp_dir("hub-repo");
    write_repo(repo.path());
    // The CDN's answers carry an ETag and no freshness: every use is revalidated.
    let (hub, cache, client) = signed_node(repo.path(), &[]).await;
    let weights = std::fs::read(repo.path().join(WEIGHTS)).unwrap();
    let signed = presigned_url(&client, &cache.url(0)).await;
    get_weights(&client, &signed, &weights).await;
    let (_, sent) = cdn_traffic(&hub).await;
    assert_eq!(sent, WEIGHTS_SIZE as u64);
    // The origin checks the signature of every revalidation: a forged one gets its 403.
    let forged = with_param(&signed, "X-Amz-Signature", "forged");
    let res = client.get(&forged).send().await.unwrap();
    assert_eq!(res.status(), 403, "{forged}");
    // A new valid signature is the same object: revalidated (304), nothing sent again, and the
    // refused request took nothing away.
    let again = presigned_url(&client, &cache.url(0)).await;
    assert_ne!(again, signed, "a new signature for every redirect");
    get_weights(&client, &again, &weights).await;
    let report = Hub::report(&hub.requests().await);
    assert_eq!(
        cdn_traffic(&hub).await.1,
        sent,
        "the CDN sent the weights once:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_copies_are_served_to_any_signature() {
    let repo = temp_dir("hub-repo");
    write_repo(repo.path());
    // Content-addressed CDN paths made fresh for good: the node asks no one for a hit, so it
    // cannot tell a forged signature from a valid one (why the parameters are opt-in).
    let (hub, cache, client) = signed_node(repo.path(), &["--ttl-rule=^/_cdn/=immutable"]).await;
    let weights = std::fs::read(repo.path().join(WEIGHTS)).unwrap();
    let signed = presigned_url(&client, &cache.url(0)).await;
    get_weights(&client, &signed, &weights).await;
    let asked = cdn_traffic(&hub).await;
    let again = presigned_url(&client, &cache.url(0)).await;
    let forged = with_param(&signed, "X-Amz-Signature", "forged");
    for url in [&again, &forged] {
        get_weights(&client, url, &weights).await;
    }
    assert_eq!(cdn_traffic(&hub).await, asked, "both were hits");
}
