//! Runs the real `casserole-node` (and `etcd`) as processes for integration tests: free
//! loopback ports, captured logs shown on failure, readiness waits, signals, restarts and
//! Prometheus metrics.

pub mod cluster;
mod etcd;
pub mod metrics;
mod node;
mod process;

use std::collections::HashSet;
use std::net::TcpListener;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::client::{get_bytes, get_sha256, head, BodyDigest};
pub use etcd::EtcdProcess;
pub use node::{NodeBuilder, NodePorts, NodeProcess};

/// The `casserole-node` executable: `$CASSEROLE_NODE_BIN` if set, else the one built into the
/// same target profile directory as the running test executable. Panics if missing.
pub fn node_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CASSEROLE_NODE_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CASSEROLE_NODE_BIN={} does not exist",
            p.display()
        );
        return p;
    }
    let name = format!("casserole-node{}", std::env::consts::EXE_SUFFIX);
    let candidates = node_binary_candidates(&name);
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "casserole-node executable not found (looked at: {}); build it first: \
             cargo build -p casserole-node (scripts/test does this), or set CASSEROLE_NODE_BIN",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn node_binary_candidates(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Test executables live in target/<profile>/deps (cargo test and nextest alike); binaries
    // in target/<profile>. CARGO_TARGET_DIR moves `target` but keeps this layout.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(mut dir) = exe.parent().map(PathBuf::from) {
            if dir.ends_with("deps") {
                dir.pop();
            }
            out.push(dir.join(name));
        }
    }
    // A test binary built elsewhere (e.g. the tests' own target dir) can still find a node
    // built into the default or configured target dir.
    let target_dirs = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        ));
    for dir in target_dirs {
        for profile in ["debug", "release"] {
            out.push(dir.join(profile).join(name));
        }
    }
    out
}

/// Ports handed out by this process, so two tests in one binary never get the same one even
/// if the OS offers it twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1 (bound, read and released; another process could still take
/// it before use, which `NodeBuilder::spawn` tolerates by retrying).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(n);
    let mut handed = HANDED_OUT.lock().unwrap();
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..n * 50 + 50 {
        if held.len() == n {
            break;
        }
        let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        // Holding the listeners until all are chosen keeps the set distinct.
        if handed.insert(port) {
            held.push((port, l));
        }
    }
    assert_eq!(held.len(), n, "could not find {n} free ports");
    held.into_iter().map(|(p, _)| p).collect()
}

/// Polls `url` until it answers 200 or `timeout` passes. `alive` is checked between attempts so
/// a process that died is reported at once instead of after the timeout.
pub(crate) async fn wait_ok(
    url: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let client = crate::client::client();
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        if !alive() {
            return Err("process exited before becoming ready".to_string());
        }
        match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status() == 200 => return Ok(()),
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = format!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} not ready after {timeout:?} (last: {last})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct() {
        let ports = free_ports(20);
        let set: HashSet<_> = ports.iter().collect();
        assert_eq!(set.len(), 20);
        assert!(!ports.contains(&free_port()));
    }

    #[test]
    fn binary_candidates_follow_the_profile_dir() {
        let c = node_binary_candidates("casserole-node");
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        assert_eq!(c[0], exe_dir.join("casserole-node"));
    }

    /// The node lifecycle against a Python stand-in, so the harness is tested before (and
    /// independently of) the real node.
    #[tokio::test]
    async fn node_process_lifecycle_with_a_fake_node() {
        let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .iter()
            .find(|p| Path::new(p).is_file())
        else {
            eprintln!("skipped: no python3");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake_node.py");
        std::fs::write(
            &script,
            format!("#!{python}\n{}", include_str!("fake_node.py")),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut node = NodeBuilder::new("http://127.0.0.1:1")
            .program(&script)
            .arg("--chunk-size=1Mi")
            .spawn()
            .await;
        let args = node.args().join(" ");
        assert!(
            args.contains("--disk-cache-enabled=false") && args.contains("--chunk-size=1Mi"),
            "{args}"
        );
        assert!(
            args.contains(&format!("--peering-address={}", node.peer_url())),
            "{args}"
        );
        assert_eq!(node.metric("casserole_up").await, 1.0);
        assert_eq!(node.metric(r#"hits_total{tier="memory"}"#).await, 4.0);
        assert_eq!(node.try_metric("nope").await, None);
        let admin = node.admin_url();

        node.sigterm();
        assert!(node.wait_exit(Duration::from_secs(10)).await.success());
        assert!(
            node.log_tail(5).contains("got SIGTERM"),
            "{}",
            node.log_tail(5)
        );
        node.restart().await;
        assert_eq!(node.admin_url(), admin);
        assert!(node.is_running());
        node.kill_9().await;
        assert!(!node.is_running());
        assert!(get_bytes(&format!("{admin}/readyz"), &[]).await.is_err());
    }

    #[tokio::test]
    async fn etcd_starts_stops_and_starts_again() {
        let mut etcd = EtcdProcess::start().await;
        let health = format!("{}/health", etcd.endpoint());
        let (status, _, body) = get_bytes(&health, &[]).await.unwrap();
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("true"), "{body:?}");
        let endpoint = etcd.endpoint();

        etcd.stop().await;
        assert!(
            get_bytes(&health, &[]).await.is_err(),
            "stopped etcd still answers"
        );
        etcd.start_again().await;
        assert_eq!(etcd.endpoint(), endpoint);
        assert_eq!(get_bytes(&health, &[]).await.unwrap().0, 200);
    }
}
