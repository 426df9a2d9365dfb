//! `casserole-node` as a child process.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::metrics;
use super::process::{has_flag, CommandSpec, Supervised};
use super::{free_ports, node_binary, wait_ok};

/// How long a node may take to answer `/readyz` by default.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Spawn attempts when a picked port was taken by someone else in the meantime.
const PORT_RETRIES: usize = 3;

/// The three listeners of a node. Pick them up front (`NodePorts::pick()`) when other nodes
/// must know a node's peering URL before it starts (static `--peers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub http: u16,
    pub admin: u16,
    pub peer: u16,
}

impl NodePorts {
    pub fn pick() -> Self {
        let p = free_ports(3);
        NodePorts {
            http: p[0],
            admin: p[1],
            peer: p[2],
        }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }
    /// The peering URL (`--peering-address`) other members use.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }
}

/// Builds the command line of a node; `spawn` starts it and waits until it is ready.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    upstream: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    disk_dir: Option<PathBuf>,
    ports: Option<NodePorts>,
    node_id: Option<String>,
    ready_timeout: Duration,
    program: Option<PathBuf>,
}

impl NodeBuilder {
    pub fn new(upstream_url: impl Into<String>) -> Self {
        NodeBuilder {
            upstream: upstream_url.into(),
            args: Vec::new(),
            env: Vec::new(),
            disk_dir: None,
            ports: None,
            node_id: None,
            ready_timeout: READY_TIMEOUT,
            program: None,
        }
    }
    /// An extra flag, e.g. `.arg("--chunk-size=1Mi")`. Flags given here replace the harness's
    /// defaults for the same flag.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Enables the disk tier in `dir` (otherwise it is disabled).
    pub fn disk_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.disk_dir = Some(dir.as_ref().to_path_buf());
        self
    }
    /// Use these ports instead of fresh ones.
    pub fn ports(mut self, ports: NodePorts) -> Self {
        self.ports = Some(ports);
        self
    }
    /// `--node-id` (default: none, so the node uses its peering URL, as a user's would).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }
    /// `--etcd <endpoint>`.
    pub fn etcd(self, endpoint: impl Into<String>) -> Self {
        self.arg("--etcd").arg(endpoint)
    }
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
    /// Run another executable than [`node_binary`] (mainly for testing the harness itself).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    fn command(&self, ports: NodePorts, program: PathBuf) -> CommandSpec {
        let user = &self.args;
        let mut args = vec!["--upstream".to_string(), self.upstream.clone()];
        let mut default = |flag: &str, value: String| {
            if !has_flag(user, flag) {
                args.push(format!("{flag}={value}"));
            }
        };
        default("--address", format!("127.0.0.1:{}", ports.http));
        default("--admin-address", format!("127.0.0.1:{}", ports.admin));
        default("--peer-address", format!("127.0.0.1:{}", ports.peer));
        default("--peering-address", ports.peer_url());
        // No --node-id unless asked for: a user starting a cluster leaves it out, so the tests
        // run on the default id (the peering URL).
        if let Some(id) = &self.node_id {
            default("--node-id", id.clone());
        }
        default("--log-format", "text".to_string());
        match &self.disk_dir {
            Some(dir) => {
                default("--disk-cache-enabled", "true".to_string());
                default("--disk-cache-dir", dir.display().to_string());
            }
            None => default("--disk-cache-enabled", "false".to_string()),
        }
        args.extend(user.iter().cloned());
        let mut env = vec![("RUST_BACKTRACE".to_string(), "1".to_string())];
        env.extend(self.env.iter().cloned());
        CommandSpec { program, args, env }
    }

    /// Starts the node and waits until `/readyz` answers 200; panics (with the log tail) if it
    /// does not within the ready timeout. Retries with new ports if one was taken meanwhile.
    pub async fn spawn(self) -> NodeProcess {
        let program = self.program.clone().unwrap_or_else(node_binary);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = self.ports.unwrap_or_else(NodePorts::pick);
            let mut node = NodeProcess {
                proc: Supervised::new("casserole-node", self.command(ports, program.clone())),
                ports,
                ready_timeout: self.ready_timeout,
            };
            match node.start().await {
                Ok(()) => return node,
                Err(e) => {
                    let port_clash = node.log_tail(40).contains("Address already in use");
                    if port_clash && self.ports.is_none() && attempt < PORT_RETRIES {
                        node.kill_9().await;
                        continue;
                    }
                    node.proc.fail(&e);
                }
            }
        }
    }
}

/// A running `casserole-node`. Dropping it kills the process (SIGKILL); if the test is
/// panicking, the tail of its log is printed.
#[derive(Debug)]
pub struct NodeProcess {
    proc: Supervised,
    ports: NodePorts,
    ready_timeout: Duration,
}

impl NodeProcess {
    async fn start(&mut self) -> Result<(), String> {
        self.proc
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.proc.spec.program.display()))?;
        let url = format!("{}/readyz", self.admin_url());
        let proc = &mut self.proc;
        wait_ok(&url, self.ready_timeout, || proc.is_running()).await
    }

    /// Client-facing URL, `http://127.0.0.1:P`.
    pub fn url(&self) -> String {
        self.ports.url()
    }
    pub fn admin_url(&self) -> String {
        self.ports.admin_url()
    }
    /// The peering URL other members use.
    pub fn peer_url(&self) -> String {
        self.ports.peer_url()
    }
    pub fn ports(&self) -> NodePorts {
        self.ports
    }
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
    /// The full command line, for messages.
    pub fn args(&self) -> &[String] {
        &self.proc.spec.args
    }
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGKILL and reap: a crash, no goodbye to peers or etcd.
    pub async fn kill_9(&mut self) {
        self.proc.kill_9().await;
    }

    /// SIGTERM; follow with [`NodeProcess::wait_exit`].
    pub fn sigterm(&self) {
        self.proc.sigterm();
    }

    /// Waits for the process to exit; panics with the log tail after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.proc.wait_exit(timeout).await {
            Some(status) => status,
            None => self.proc.fail(&format!(
                "still running {timeout:?} after being asked to stop"
            )),
        }
    }

    /// Starts the node again with the same arguments and ports (killing it first if it still
    /// runs) and waits until it is ready.
    pub async fn restart(&mut self) {
        if self.proc.is_running() {
            self.proc.kill_9().await;
        }
        if let Err(e) = self.start().await {
            self.proc.fail(&format!("restart: {e}"));
        }
    }

    /// The `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        let url = format!("{}/metrics", self.admin_url());
        match crate::client::get_bytes(&url, &[]).await {
            Ok((status, _, body)) if status == 200 => String::from_utf8_lossy(&body).into_owned(),
            Ok((status, _, _)) => self.proc.fail(&format!("GET {url}: status {status}")),
            Err(e) => self.proc.fail(&format!("{e:#}")),
        }
    }

    /// The value of a metric, summed over every series whose labels include the given ones
    /// (`name` or `name{label="v"}`); `None` if there is no such series.
    pub async fn try_metric(&self, query: &str) -> Option<f64> {
        metrics::lookup(&metrics::parse(&self.metrics_text().await), query)
    }

    /// Like [`NodeProcess::try_metric`], but 0 when no series matches: Prometheus client
    /// libraries only expose a labelled counter once it was first incremented. Check
    /// spelling with `try_metric` or `metrics_text`.
    pub async fn metric(&self, query: &str) -> f64 {
        self.try_metric(query).await.unwrap_or(0.0)
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }
    /// The last `lines` lines of the node's stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}
