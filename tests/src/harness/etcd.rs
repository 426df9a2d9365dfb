//! A single-member `etcd` (Debian's etcd-server 3.4 at /usr/bin/etcd) as a child process.

use std::path::PathBuf;
use std::time::Duration;

use super::free_ports;
use super::process::{CommandSpec, Supervised};
use super::wait_ok;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `$ETCD_BIN`, else `etcd` from /usr/bin or the PATH.
fn etcd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(p);
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.is_file() {
        return default;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("etcd"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("etcd not found: apt-get install -y etcd-server, or set ETCD_BIN")
        })
}

/// A running etcd on two loopback ports with a temporary data dir. Drop kills it.
#[derive(Debug)]
pub struct EtcdProcess {
    proc: Supervised,
    client_port: u16,
    peer_port: u16,
    /// Outlives restarts, so `start_again` finds the same data.
    _data_dir: tempfile::TempDir,
}

impl EtcdProcess {
    /// Starts etcd and waits until `/health` answers (panics with the log tail after 20 s).
    pub async fn start() -> EtcdProcess {
        let ports = free_ports(2);
        let (client_port, peer_port) = (ports[0], ports[1]);
        let data_dir = tempfile::Builder::new()
            .prefix("casserole-etcd-data-")
            .tempdir()
            .expect("etcd data dir");
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", data_dir.path().join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            "--initial-cluster-state=new".to_string(),
            // Keeps the data dir small and startup fast.
            "--snapshot-count=1000".to_string(),
            "--quota-backend-bytes=134217728".to_string(),
        ];
        let spec = CommandSpec {
            program: etcd_binary(),
            args,
            env: Vec::new(),
        };
        let mut etcd = EtcdProcess {
            proc: Supervised::new("etcd", spec),
            client_port,
            peer_port,
            _data_dir: data_dir,
        };
        etcd.run().await;
        etcd
    }

    async fn run(&mut self) {
        if let Err(e) = self.proc.spawn() {
            self.proc.fail(&format!(
                "cannot start {}: {e}",
                self.proc.spec.program.display()
            ));
        }
        let url = format!("{}/health", self.endpoint());
        let proc = &mut self.proc;
        if let Err(e) = wait_ok(&url, READY_TIMEOUT, || proc.is_running()).await {
            self.proc.fail(&e);
        }
    }

    /// Client URL, `http://127.0.0.1:C` (what `--etcd` takes).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGTERM and wait for exit (SIGKILL if it takes over 10 s).
    pub async fn stop(&mut self) {
        self.proc.sigterm();
        if self.proc.wait_exit(STOP_TIMEOUT).await.is_none() {
            self.proc.kill_9().await;
        }
    }

    /// SIGKILL: an etcd crash.
    pub async fn kill_9(&mut self) {
        self.proc.kill_9().await;
    }

    /// Starts again on the same ports and data dir (stopping it first if it still runs).
    pub async fn start_again(&mut self) {
        if self.proc.is_running() {
            self.stop().await;
        }
        self.run().await;
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}
