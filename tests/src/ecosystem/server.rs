//! A real server (nginx, verdaccio, pypiserver, docker-registry) as a child process on a
//! loopback port: output to a log file, ready when it answers HTTP, killed on drop, its log
//! shown when a test fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Server {
    name: String,
    child: Child,
    port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Server {
    /// Starts `cmd` and waits until `http://127.0.0.1:port{ready_path}` answers anything below
    /// 500 (panics with the log after 60 s or if the process exits).
    pub async fn start(name: &str, mut cmd: Command, port: u16, ready_path: &str) -> Server {
        let log_dir = super::temp_dir(&format!("{name}-log"));
        let log = log_dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("server log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for var in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let mut server = Server {
            name: name.to_string(),
            child,
            port,
            log,
            _log_dir: log_dir,
        };
        server.wait_ready(ready_path).await;
        server
    }

    async fn wait_ready(&mut self, path: &str) {
        let url = format!("{}{path}", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = crate::client::client();
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("exited ({status}) before answering {url}"));
            }
            match client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().as_u16() < 500 => return,
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = format!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(&format!(
            "{url} not ready after {READY_TIMEOUT:?} (last: {last})"
        ));
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// The last `lines` lines of the server's output.
    pub fn log_tail(&self, lines: usize) -> String {
        super::tail(
            &String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()),
            lines,
        )
    }

    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- {} ---\n{}",
            self.name,
            self.log.display(),
            self.log_tail(40)
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log tail ({}) ---\n{}\n--- end of {} log ---",
                self.name,
                self.log.display(),
                self.log_tail(30),
                self.name
            );
        }
    }
}
