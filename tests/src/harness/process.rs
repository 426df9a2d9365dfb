//! A child process with its output captured to a log file, restartable with the same command.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Variables the node (or its legacy fallbacks) read: a developer's shell must not leak them
/// into a test.
const LEAKY_VARS: &[&str] = &["UPSTREAM_SERVER", "ETCD", "MAX_MEMORY", "MAX_DISK"];

/// Everything needed to start the process again.
#[derive(Debug, Clone)]
pub(crate) struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct Supervised {
    pub name: String,
    pub spec: CommandSpec,
    child: Option<Child>,
    /// Keeps the log directory alive as long as the process handle.
    _log_dir: tempfile::TempDir,
    log_path: PathBuf,
    /// Set once a panic message carried the log tail, so Drop doesn't print it twice.
    tail_shown: AtomicBool,
}

impl Supervised {
    pub fn new(name: &str, spec: CommandSpec) -> Self {
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("casserole-{name}-log-"))
            .tempdir()
            .expect("creating a log directory");
        let log_path = log_dir.path().join(format!("{name}.log"));
        Supervised {
            name: name.to_string(),
            spec,
            child: None,
            _log_dir: log_dir,
            log_path,
            tail_shown: AtomicBool::new(false),
        }
    }

    /// Starts (or starts again) the process, appending to the same log.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CASSEROLE_") || LEAKY_VARS.contains(&k.as_ref()) {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        // For debugging a test: CASSEROLE_TEST_LOG=debug is every started process's CASSEROLE_LOG.
        if let Ok(filter) = std::env::var("CASSEROLE_TEST_LOG") {
            cmd.env("CASSEROLE_LOG", filter);
        }
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// `Some(status)` once the process has exited (and forgets it), `None` while it runs.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exited().is_none()
    }

    /// Sends SIGTERM (via `kill(1)`, so no libc/nix dependency).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGKILL and reap.
    pub async fn kill_9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.start_kill();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Waits for exit; `None` if it still runs after `timeout` (it keeps running).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .ok()?
            .ok()?;
        self.child = None;
        Some(status)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the log (reads at most the last 256 KiB).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// A panic message with the log tail appended, so failures explain themselves.
    pub fn fail(&self, what: &str) -> ! {
        self.tail_shown.store(true, Ordering::Relaxed);
        panic!(
            "{}: {what}\n--- last lines of {} ---\n{}",
            self.name,
            self.log_path.display(),
            self.log_tail(80)
        )
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() && !self.tail_shown.load(Ordering::Relaxed) {
            eprintln!(
                "--- {} log tail ({}) ---\n{}--- end of {} log ---",
                self.name,
                self.log_path.display(),
                self.log_tail(60),
                self.name
            );
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// True if `args` already set `--flag` (as `--flag`, `--flag=…`), so defaults don't clash
/// with clap's "cannot be used multiple times".
pub(crate) fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| {
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    })
}
