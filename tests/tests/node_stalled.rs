//! Clients that stop reading: after `--client-idle-timeout` without taking a byte, their
//! responses are closed and the chunks they held released, while other clients are served.

use std::time::Duration;

use casserole_tests::{
    client::get_sha256,
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MIB: u64 = 1 << 20;

/// Asks for `path` from `offset` on and reads only the first few KiB.
async fn stalled_reader(addr: &str, path: &str, offset: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes={offset}-\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 4096];
    let n = stream.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 206"),
        "{:?}",
        &head[..n.min(64)]
    );
    stream
}

/// Reads until the node closes the connection; the bytes read on the way.
async fn drain(mut stream: TcpStream) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n as u64,
            Err(_) => panic!("the connection neither closed nor delivered data for 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_readers_are_closed_and_others_served_meanwhile() {
    let origin = Origin::start().await;
    let big = origin.put("/big.bin", ObjectSpec::new(256 * MIB).seed(71));
    let other = origin.put("/other.bin", ObjectSpec::new(4 * MIB).seed(72));
    let node = NodeBuilder::new(origin.url())
        .args(["--client-idle-timeout", "2s", "--max-memory-usage", "64Mi"])
        .spawn()
        .await;
    let addr = node.url().trim_start_matches("http://").to_string();
    let mut readers = Vec::new();
    for k in 0..20u64 {
        readers.push(stalled_reader(&addr, "/big.bin", k * 10 * MIB).await);
    }
    // Meanwhile, another client is served in full.
    let got = get_sha256(&format!("{}/other.bin", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, other.sha256());
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Long past the idle timeout: each stalled response was cut off, far short of its range
    // (the smallest range wanted is 66 MiB).
    for (k, reader) in readers.into_iter().enumerate() {
        let wanted = big.len - k as u64 * 10 * MIB;
        let read = drain(reader).await;
        // What the socket buffers held when the node closed: a few MiB, not the range.
        assert!(
            read < 32 * MIB,
            "reader {k} got {read} of {wanted} bytes: its response was not closed"
        );
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_stalled_readers_stay_within_the_memory_bound() {
    let origin = Origin::start().await;
    origin.put("/huge.bin", ObjectSpec::new(1 << 30).seed(73));
    let node = NodeBuilder::new(origin.url())
        .args([
            "--client-idle-timeout",
            "3s",
            "--max-memory-usage",
            "100M",
            "--disk-cache-enabled",
            "false",
        ])
        .spawn()
        .await;
    let pid = node.pid().expect("running");
    let addr = node.url().trim_start_matches("http://").to_string();
    let mut peak = rss_mib(pid);
    let mut readers = Vec::new();
    let step = (1u64 << 30) / 300;
    for k in 0..300 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let request = format!(
            "GET /huge.bin HTTP/1.1\r\nHost: x\r\nRange: bytes={}-\r\n\r\n",
            k * step
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        readers.push(stream);
        peak = peak.max(rss_mib(pid));
    }
    for _ in 0..40 {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 100 MB of chunk memory plus the process itself.
    eprintln!("peak RSS {peak} MiB of {} allowed", 95 + 64);
    assert!(peak <= 95 + 64, "peak RSS {peak} MiB");
    drop(readers);
}
