//! Member replacement against a real etcd (skipped when no `etcd` binary is on PATH): a
//! three-member cluster loses member 0's data; restarted, it crash-loops with "already
//! bootstrapped" (recognised by `lost_members`'s marker); the operator's gateway client
//! removes and re-adds it; restarted `existing`, it rejoins and the cluster is whole again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use casserole_operator::etcd_members::{replace, Connect, Gateway, LOST_DATA_MARKERS};

const BASE: u16 = 24_379;

fn client_port(i: u16) -> u16 {
    BASE + 10 * i
}
fn peer_url(i: u16) -> String {
    format!("http://127.0.0.1:{}", BASE + 10 * i + 1)
}

fn etcd(dir: &Path, i: u16, state: &str, log: &Path) -> Child {
    let cluster = (0..3)
        .map(|j| format!("m{j}={}", peer_url(j)))
        .collect::<Vec<_>>()
        .join(",");
    Command::new("etcd")
        .args([
            &format!("--name=m{i}"),
            &format!("--data-dir={}", dir.join(format!("m{i}")).display()),
            &format!("--listen-client-urls=http://127.0.0.1:{}", client_port(i)),
            &format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                client_port(i)
            ),
            &format!("--listen-peer-urls={}", peer_url(i)),
            &format!("--initial-advertise-peer-urls={}", peer_url(i)),
            &format!("--initial-cluster={cluster}"),
            &format!("--initial-cluster-state={state}"),
            "--initial-cluster-token=replacement-test",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("etcd starts")
}

/// `GET /health` answers `"health":"true"` once the member serves with a quorum.
fn healthy(i: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", client_port(i))) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    s.write_all(request.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains(r#""health":"true""#)
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Cluster(Vec<Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_member_whose_data_is_gone_is_replaced_and_rejoins() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipped: no etcd on PATH");
        return;
    }
    let dir = tempfile_dir();
    let log = |i: u16, n: u32| dir.join(format!("m{i}.{n}.log"));
    let mut cluster = Cluster((0..3).map(|i| etcd(&dir, i, "new", &log(i, 0))).collect());
    wait("3 healthy members", Duration::from_secs(30), || {
        (0..3).all(healthy)
    });

    // Member 0 loses its data.
    let _ = cluster.0[0].kill();
    let _ = cluster.0[0].wait();
    std::fs::remove_dir_all(dir.join("m0")).unwrap();
    // Restarted as the template said at bootstrap (`new`): it refuses to start.
    let mut crashed = etcd(&dir, 0, "new", &log(0, 1));
    let status = crashed.wait().unwrap();
    assert!(!status.success());
    let said = std::fs::read_to_string(log(0, 1)).unwrap();
    assert!(
        LOST_DATA_MARKERS.iter().any(|m| said.contains(m)),
        "etcd said: {said}"
    );

    // The survivors keep a quorum (a crash loop lasts: the operator acts long after it began).
    wait("2 healthy members", Duration::from_secs(30), || {
        healthy(1) && healthy(2)
    });
    // The operator's repair, through a surviving member's gateway.
    let members = Gateway.connect(&format!("http://127.0.0.1:{}", client_port(1)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(replace(&*members, "m0", &peer_url(0)))
        .unwrap();
    let listed = runtime.block_on(members.list()).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .any(|m| m.name.is_empty() && m.peer_urls == [peer_url(0)]));

    // Restarted `existing` (the template once the cluster formed), it joins as a new member.
    cluster.0[0] = etcd(&dir, 0, "existing", &log(0, 2));
    wait("member 0 healthy again", Duration::from_secs(30), || {
        healthy(0)
    });
    let listed = runtime.block_on(members.list()).unwrap();
    let mut names: Vec<_> = listed.iter().map(|m| m.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("casserole-etcd-replace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
