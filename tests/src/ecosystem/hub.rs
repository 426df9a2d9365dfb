//! Model hubs: a Hugging Face Hub-shaped origin (tests/hub/hub_origin.py: the hub API, resolve
//! endpoints that redirect LFS files to a CDN on another host name, and the CDN) and the real
//! `huggingface_hub` client (scripts/setup.sh pins it in requirements-dev.txt), run with an
//! `HF_HOME` of its own and `HF_ENDPOINT` on the cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{command, run, tool, Server};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The revision every file of the test repository is at (what `X-Repo-Commit` says).
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

const SNAPSHOT_PY: &str = r#"
import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1], revision="main"))
"#;

const DOWNLOAD_PY: &str = r#"
import sys
from huggingface_hub import hf_hub_download
print(hf_hub_download(sys.argv[1], sys.argv[2], revision="main"))
"#;

fn python() -> PathBuf {
    tool("python3", &[])
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hub/hub_origin.py")
}

/// Panics naming scripts/setup.sh when `huggingface_hub` is not importable.
pub async fn require_client() {
    let probe = command(python())
        .args(["-c", "import huggingface_hub"])
        .output()
        .await
        .expect("running python3");
    assert!(
        probe.status.success(),
        "huggingface_hub is not installed for {}: run `bash scripts/setup.sh` \
         (requirements-dev.txt pins it)",
        python().display()
    );
}

/// The hub and its CDN (one process, two 127.0.0.1 ports); the CDN is named `localhost` in
/// the hub's redirects, another host than the hub's `127.0.0.1`.
#[derive(Debug)]
pub struct Hub {
    server: Server,
    cdn_port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// One request the hub or its CDN answered.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HubRequest {
    pub server: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub range: Option<String>,
    pub user_agent: Option<String>,
    pub via: Option<String>,
    pub if_none_match: Option<String>,
    pub bytes: u64,
}

impl Hub {
    /// Serves the files under `root` as the model repository `repo`; files over 64 KiB are LFS
    /// files (resolved by a redirect to the CDN).
    pub async fn start(root: &Path, repo: &str) -> Hub {
        Self::start_with(root, repo, &[]).await
    }

    /// [`Hub::start`] with further arguments of `hub_origin.py` (`--sign-secret S`: the CDN
    /// URLs are presigned, S3-style, and the CDN checks them).
    pub async fn start_with(root: &Path, repo: &str, args: &[&str]) -> Hub {
        let ports = crate::harness::free_ports(2);
        let (hub_port, cdn_port) = (ports[0], ports[1]);
        let log_dir = super::temp_dir("hub-requests");
        let log = log_dir.path().join("requests.jsonl");
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(script())
            .arg("--root")
            .arg(root)
            .args(["--repo", repo, "--cdn-host", "localhost"])
            .args(["--hub-port", &hub_port.to_string()])
            .args(["--cdn-port", &cdn_port.to_string()])
            .arg("--log")
            .arg(&log)
            .args(args);
        let server = Server::start("hub-origin", cmd, hub_port, "/api/models/").await;
        Hub {
            server,
            cdn_port,
            log,
            _log_dir: log_dir,
        }
    }

    /// `http://127.0.0.1:HUBPORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `http://localhost:CDNPORT`, as the hub's redirects name it.
    pub fn cdn_url(&self) -> String {
        format!("http://localhost:{}", self.cdn_port)
    }

    /// Every request answered so far, once the log has stood still for half a second (a
    /// node's read-ahead may still be running when the clients are done).
    pub async fn requests(&self) -> Vec<HubRequest> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if last.as_ref() == Some(&text) || Instant::now() > deadline {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("hub log line"))
                    .collect();
            }
            last = Some(text);
        }
    }

    /// The requests one line each, for assertion messages.
    pub fn report(requests: &[HubRequest]) -> String {
        let lines: Vec<String> = requests
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} -> {} {} B range={:?} via={:?} ua={:?}",
                    r.server, r.method, r.path, r.status, r.bytes, r.range, r.via, r.user_agent
                )
            })
            .collect();
        lines.join("\n")
    }
}

/// A client: `python3 -c` with `HF_HOME` = `home`, `HF_ENDPOINT` = `endpoint`, Xet and
/// telemetry off, online; no `HF_*` variable of the developer's shell.
fn client(endpoint: &str, home: &Path, code: &str) -> tokio::process::Command {
    let mut cmd = command(python());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HF_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["-c", code])
        .env("HF_HOME", home)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_OFFLINE", "0")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_ETAG_TIMEOUT", "30")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "60");
    cmd
}

fn printed_path(out: &str) -> PathBuf {
    PathBuf::from(out.lines().last().unwrap_or_default().trim())
}

/// `snapshot_download(repo, revision="main")`; returns the snapshot directory it printed.
pub async fn snapshot_download(endpoint: &str, home: &Path, repo: &str) -> PathBuf {
    let mut cmd = client(endpoint, home, SNAPSHOT_PY);
    cmd.arg(repo);
    printed_path(&run("huggingface_hub snapshot_download", &mut cmd, TIMEOUT).await)
}

/// `hf_hub_download(repo, file, revision="main")`; returns the path it printed.
pub async fn hf_hub_download(endpoint: &str, home: &Path, repo: &str, file: &str) -> PathBuf {
    let mut cmd = client(endpoint, home, DOWNLOAD_PY);
    cmd.args([repo, file]);
    printed_path(&run("huggingface_hub hf_hub_download", &mut cmd, TIMEOUT).await)
}
