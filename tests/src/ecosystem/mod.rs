//! The real clients and servers of package and artifact ecosystems (apt + nginx, npm +
//! verdaccio, pip + pypiserver, huggingface_hub + a hub-shaped origin, skopeo +
//! docker-registry, aria2c and wget), run by the `clients_*` tests against a node or a cluster
//! on loopback.
//!
//! Every tool is installed by `scripts/setup.sh`; a test whose tool is missing fails and says
//! so ([`tool`]). Every origin sits behind a [`CountingProxy`], which counts the body bytes it
//! passes per path: that is what the origin served, whatever its own logs say (the hub-shaped
//! origin, a test script, counts the bytes it writes itself).

pub mod apt;
mod cache;
pub mod hub;
pub mod npm;
pub mod pip;
mod proxy;
pub mod registry;
mod server;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use cache::Cache;
pub use proxy::{CountingProxy, Exchange};
pub use server::Server;

/// Where `scripts/setup.sh` puts project-local tools (verdaccio).
pub fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools")
}

/// The executable `name` from the PATH (or /usr/sbin, /usr/bin, `extra` dirs); panics naming
/// scripts/setup.sh when it is missing: a test without its tool must fail, not pass.
pub fn tool(name: &str, extra: &[PathBuf]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = extra
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed: run `bash scripts/setup.sh` (it installs the clients and \
         servers of the ecosystem tests)"
    )
}

/// A command that runs a real client: no proxy variables of the developer's shell, no
/// standard input, output captured.
pub fn command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end within `timeout` and returns its output, whatever its exit status.
pub async fn output(what: &str, cmd: &mut tokio::process::Command, timeout: Duration) -> Output {
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what}: waiting for {cmd:?}: {e}"),
        Err(_) => panic!(
            "{what}: still running after {:?} (killed): {cmd:?}",
            started.elapsed()
        ),
    }
}

/// Runs `cmd` and asserts it exits 0; returns its stdout. The panic shows both outputs.
pub async fn run(what: &str, cmd: &mut tokio::process::Command, timeout: Duration) -> String {
    let out = output(what, cmd, timeout).await;
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 60),
        tail(&String::from_utf8_lossy(&out.stderr), 60)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SHA-256 (hex) of a file's content.
pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// Every regular file under `dir`, as (path relative to `dir`, SHA-256), sorted.
pub fn tree_digest(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.is_file() {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, sha256_file(&path)));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A fresh temporary directory named after `what`.
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("casserole-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir for {what}: {e}"))
}

/// Deterministic filler bytes (so packages have a size worth counting and never compress to
/// nothing).
pub fn filler(seed: u64, len: usize) -> Vec<u8> {
    let content = crate::origin::Content::new(seed, 0);
    let mut out = vec![0u8; len];
    content.fill(0, &mut out);
    out
}

/// Sets a file's modification time `days` days in the past, as a mirror synced with its
/// original times has it (`rsync -t`): recent files get too short a heuristic freshness for
/// any cache.
pub fn age_file(path: &Path, days: u64) {
    let when = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.set_modified(when)
        .unwrap_or_else(|e| panic!("setting the time of {}: {e}", path.display()));
}

/// [`age_file`] on every file under `dir`.
pub fn age_tree(dir: &Path, days: u64) {
    for (rel, _) in tree_digest(dir) {
        age_file(&dir.join(rel), days);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "run `bash scripts/setup.sh`")]
    fn a_missing_tool_fails_the_test_and_names_the_setup_script() {
        tool("casserole-no-such-client", &[]);
    }

    #[test]
    fn tools_are_found_on_the_path() {
        assert!(tool("sh", &[]).is_file());
    }
}
