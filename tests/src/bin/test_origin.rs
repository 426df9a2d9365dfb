//! `casserole-test-origin`: the test origin as a standalone server, for benchmarks and local
//! cluster recipes.
//!
//! ```text
//! casserole-test-origin --listen 127.0.0.1:9000 \
//!     --object /big.bin=1Gi,seed=7 --object /small.bin=64Mi,throttle=50M,max-age=60 \
//!     --throttle 200M --latency 50ms --total-throttle 200M
//! ```
//! Prints its URL on the first stdout line, then one line per object (path, size, ETag);
//! stops on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use casserole_tests::origin::{ObjectSpec, Origin};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "casserole-test-origin",
    about = "Serves generated objects for Casserole tests and benchmarks"
)]
struct Args {
    /// Address to listen on (loopback by default; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// `/path=SIZE[,seed=N][,throttle=BYTES_PER_SEC][,max-age=S][,latency=DURATION]`; sizes take K/M/G (powers of
    /// 1000) or Ki/Mi/Gi (powers of 1024) suffixes. Repeatable.
    #[arg(long = "object", value_parser = parse_object)]
    objects: Vec<(String, ObjectSpec)>,

    /// Default per-response rate limit in bytes/s for objects without their own.
    #[arg(long, value_parser = parse_size)]
    throttle: Option<u64>,

    /// Cap on the bytes/s of all responses together, whatever their own throttle: an origin whose
    /// total capacity does not grow with more connections (responses take turns, frame by frame).
    #[arg(long, value_parser = parse_size)]
    total_throttle: Option<u64>,

    /// Wait this long before answering each request (`50ms`, `0.2s`; a bare number is ms), as a
    /// distant origin would; objects may set their own.
    #[arg(long, value_parser = parse_latency)]
    latency: Option<Duration>,

    /// Also print each object's SHA-256 (costs one pass over every object at startup).
    #[arg(long)]
    sha: bool,

    /// Exit by itself after this many seconds (for scripts that might forget to stop it).
    #[arg(long)]
    exit_after: Option<u64>,
}

/// `64Mi`, `1Gi`, `100M`, `4096`, `1.5Gi`; a trailing `B`/`iB` is accepted.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return Err(format!("bad size unit in {s:?}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("bad size {s:?}"));
    }
    Ok((n * mult as f64).round() as u64)
}

/// `50ms`, `0.2s`, `150` (ms). Hand-written: two units do not justify a dependency.
fn parse_latency(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(secs) = t.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (t, 1e-3)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad latency {s:?} (use e.g. 50ms or 0.2s)"))?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("bad latency {s:?}"));
    }
    Ok(Duration::from_secs_f64(n * scale))
}

fn parse_object(s: &str) -> Result<(String, ObjectSpec), String> {
    let (path, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("expected /path=SIZE[,…], got {s:?}"))?;
    if !path.starts_with('/') {
        return Err(format!("object path must start with '/': {path:?}"));
    }
    let mut parts = rest.split(',');
    let mut spec = ObjectSpec::new(parse_size(parts.next().unwrap_or(""))?);
    for part in parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {part:?}"))?;
        spec = match k.trim() {
            "seed" => spec.seed(v.parse().map_err(|_| format!("bad seed {v:?}"))?),
            "throttle" => spec.throttle(parse_size(v)?),
            "max-age" => spec.max_age(v.parse().map_err(|_| format!("bad max-age {v:?}"))?),
            "latency" => spec.latency(parse_latency(v)?),
            other => return Err(format!("unknown object option {other:?}")),
        };
    }
    Ok((path.to_string(), spec))
}

async fn stop_signal(exit_after: Option<u64>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let deadline = async {
        match exit_after {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = deadline => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.objects.is_empty() {
        bail!("nothing to serve: give at least one --object /path=SIZE");
    }
    let origin = Origin::try_start_on(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    origin.set_default_throttle(args.throttle);
    origin.set_default_latency(args.latency);
    origin.set_total_throttle(args.total_throttle);
    println!("{}", origin.url());
    for (path, spec) in args.objects {
        let info = origin.put(&path, spec);
        let etag = info.etag.clone().unwrap_or_default();
        if args.sha {
            println!("{path} {} {etag} sha256={}", info.len, info.sha256());
        } else {
            println!("{path} {} {etag}", info.len);
        }
    }
    stop_signal(args.exit_after).await?;
    origin.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_objects() {
        assert_eq!(parse_size("64Mi"), Ok(64 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("100M"), Ok(100_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        let (path, spec) = parse_object("/a.bin=2Mi,seed=3,throttle=1M,max-age=60").unwrap();
        assert_eq!(path, "/a.bin");
        assert_eq!(
            (spec.size, spec.seed, spec.throttle_bytes_per_sec),
            (2 << 20, 3, Some(1_000_000))
        );
        assert_eq!(spec.cache_control.as_deref(), Some("public, max-age=60"));
        assert_eq!(parse_latency("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_latency("0.2s"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_latency("150"), Ok(Duration::from_millis(150)));
        assert!(parse_latency("soon").is_err());
        let (_, spec) = parse_object("/l.bin=1Mi,latency=20ms").unwrap();
        assert_eq!(spec.latency, Some(Duration::from_millis(20)));
        assert!(parse_object("a=1").is_err());
        assert!(parse_object("/a=1,color=red").is_err());
    }
}
