//! Connection floods: idle HTTP/1 sockets and HTTP/2 prefaces that stop. The admin listener and
//! normal requests keep working, and the node closes the idle connections after its timeouts.

use std::time::{Duration, Instant};

use casserole_tests::{
    client::{get_bytes, get_sha256},
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const IDLE: usize = 2000;

/// The test needs ~2,100 sockets and the node (which inherits the limit) as many: raise the
/// soft open-file limit towards the hard one, and say so plainly if that is not enough.
fn raise_fd_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < need {
            lim.rlim_cur = need.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    assert!(
        lim.rlim_cur >= need,
        "open-file limit {} < {need} and the hard limit does not allow more",
        lim.rlim_cur
    );
}

/// Reads until the node closes the connection; false if it is still open at `deadline`.
async fn closed_by_node(mut s: TcpStream, deadline: Instant) -> bool {
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // SETTINGS, pings, GOAWAY
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connection_flood_leaves_the_node_serving() {
    raise_fd_limit(5000);
    let origin = Origin::start().await;
    let obj = origin.put("/obj", ObjectSpec::new(100_000).seed(41));
    let mut node = NodeBuilder::new(origin.url())
        .args([
            "--max-connections=1200",
            "--first-byte-timeout=2s",
            "--request-head-timeout=3s",
            "--idle-timeout=3s",
            "--http2-keepalive-interval=2s",
        ])
        .spawn()
        .await;
    let addr = node.url().trim_start_matches("http://").to_string();

    // Half send nothing, half an HTTP/2 preface and then nothing (never a SETTINGS frame).
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        if i % 2 == 1 {
            s.write_all(H2_PREFACE).await.unwrap();
        }
        idle.push(s);
    }
    // And a few HTTP/1 keep-alive connections that made one request and then stay idle.
    let mut kept = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /obj HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        kept.push(s);
    }

    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", node.pid().unwrap()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let flooded = Instant::now();
    eprintln!("node RSS with {IDLE} idle connections open: {rss_kib}");

    // The admin listener has its own connection slots: it answers at once.
    for path in ["/healthz", "/metrics"] {
        let url = format!("{}{path}", node.admin_url());
        let res = tokio::time::timeout(Duration::from_secs(10), get_bytes(&url, &[]))
            .await
            .unwrap_or_else(|_| panic!("{path} did not answer during the flood"))
            .unwrap();
        assert_eq!(res.0, 200, "{path}");
    }
    // A normal client is served once the idle connections' slots are freed by the timeouts.
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        get_sha256(&format!("{}/obj", node.url()), &[]),
    )
    .await
    .expect("a normal GET did not answer during the flood")
    .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.sha256, obj.sha256());

    // Every idle connection is closed by the node (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    let closed = futures::stream::iter(idle.into_iter().chain(kept))
        .map(|s| closed_by_node(s, deadline))
        .buffer_unordered(256)
        .filter(|closed| futures::future::ready(*closed))
        .count()
        .await;
    eprintln!(
        "all idle connections closed {:?} after the flood",
        flooded.elapsed()
    );
    assert_eq!(closed, IDLE + 10, "idle connections left open");
    // The cap was really reached (the flood is larger than --max-connections), and said so.
    assert!(
        node.log_tail(500).contains("connection limit reached"),
        "{}",
        node.log_tail(20)
    );
    assert!(node.is_running());
}
