//! A private etcd for unit tests (`/usr/bin/etcd`, or `$ETCD_BIN`) on free loopback ports, with
//! a temporary data dir; killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::Client;
use tokio::time::{timeout, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct TestEtcd {
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestEtcd {
    pub async fn start() -> TestEtcd {
        let mut e = TestEtcd::unstarted();
        e.spawn().await;
        e
    }

    /// Ports and a data dir reserved, etcd not started yet ([`TestEtcd::spawn`] starts it).
    pub fn unstarted() -> TestEtcd {
        TestEtcd {
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts) etcd on the same ports and data dir and waits until it answers, at
    /// most 15 s.
    pub async fn spawn(&mut self) {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data: PathBuf = self.dir.path().join("data");
        let child = Command::new(bin)
            .args(["--name", "default", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Ok(mut c)) = timeout(
                Duration::from_secs(1),
                Client::connect([client.as_str()], None),
            )
            .await
            {
                if let Ok(Ok(_)) = timeout(Duration::from_secs(1), c.get("probe", None)).await {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None).await.unwrap()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}
