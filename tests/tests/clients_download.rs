//! Download managers through the cache, on large objects of the project's test origin:
//! `aria2c -x16 -s16 -k1M` (16 connections of 1 MiB ranges) and `wget -c` resuming a download
//! that was cut (wget killed by SIGPIPE part way). Each object is downloaded by both, one of
//! them cold: the files are the object's exact bytes and the origin sent the object once
//! (1.00×).

use std::path::Path;
use std::time::Duration;

use casserole_tests::ecosystem::{command, run, sha256_file, temp_dir, tool, Cache};
use casserole_tests::origin::{ObjectSpec, Origin};

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(240);

async fn aria2c(url: &str, dir: &Path, name: &str) {
    let mut cmd = command(tool("aria2c", &[]));
    cmd.args([
        "--no-conf",
        "-x16",
        "-s16",
        "-k1M",
        "--max-tries=1",
        "--retry-wait=0",
    ])
    .args(["--file-allocation=none", "--allow-overwrite=true"])
    .args(["--auto-file-renaming=false", "--console-log-level=warn"])
    .args(["--summary-interval=0", "--download-result=hide", "-d"])
    .arg(dir)
    .args(["-o", name, url]);
    run("aria2c -x16", &mut cmd, TIMEOUT).await;
}

/// `wget -O - URL | head -c CUT > FILE` (wget dies of SIGPIPE part way), then `wget -c`.
async fn wget_cut_then_resume(url: &str, file: &Path, cut: u64) {
    let wget = tool("wget", &[]);
    let script = format!(
        "'{}' --no-config -q --tries=1 --timeout=60 -O - '{url}' | head -c {cut} > '{}'",
        wget.display(),
        file.display()
    );
    run(
        "wget (cut by head)",
        command(tool("sh", &[])).args(["-c", &script]),
        TIMEOUT,
    )
    .await;
    assert_eq!(
        std::fs::metadata(file).unwrap().len(),
        cut,
        "the cut download holds the first {cut} bytes"
    );
    let mut cmd = command(wget);
    cmd.args(["--no-config", "-q", "--tries=1", "--timeout=60", "-c", "-O"])
        .arg(file)
        .arg(url);
    run("wget -c", &mut cmd, TIMEOUT).await;
}

async fn both_clients(clustered: bool) {
    let origin = Origin::start().await;
    let parallel_first = origin.put("/isos/a.iso", ObjectSpec::new(128 * MIB + 4321).seed(61));
    let resume_first = origin.put("/isos/b.iso", ObjectSpec::new(64 * MIB + 99).seed(62));
    let cache = Cache::start(clustered, &origin.url()).await;
    let dir = temp_dir("downloads");

    // Cold for aria2c, then wget resumes through another member.
    let a_url = format!("{}/isos/a.iso", cache.url(0));
    aria2c(&a_url, dir.path(), "a-aria2.iso").await;
    let a_wget = dir.path().join("a-wget.iso");
    wget_cut_then_resume(
        &format!("{}/isos/a.iso", cache.url(1)),
        &a_wget,
        37 * MIB + 5,
    )
    .await;
    // Cold for the cut wget and its resumption, then aria2c through another member.
    let b_wget = dir.path().join("b-wget.iso");
    wget_cut_then_resume(
        &format!("{}/isos/b.iso", cache.url(0)),
        &b_wget,
        21 * MIB + 3,
    )
    .await;
    aria2c(
        &format!("{}/isos/b.iso", cache.url(1)),
        dir.path(),
        "b-aria2.iso",
    )
    .await;

    for (obj, files) in [
        (&parallel_first, ["a-aria2.iso", "a-wget.iso"]),
        (&resume_first, ["b-wget.iso", "b-aria2.iso"]),
    ] {
        for f in files {
            assert_eq!(
                sha256_file(&dir.path().join(f)),
                obj.sha256(),
                "{f} holds the object's bytes"
            );
        }
        // The node may still be storing what the last client cut short of.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = origin.path_stats(&obj.path);
        assert_eq!(
            stats.body_bytes_sent,
            obj.len,
            "{}: the origin sent the object once for two clients (1.00×); {} requests, \
             {} full GETs, ranges answered more than once: {:?}, ranges in arrival order: {:?}\n{}",
            obj.path,
            stats.requests,
            stats.full_gets,
            stats
                .range_counts()
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .collect::<Vec<_>>(),
            stats.ranges,
            cache.logs(20)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2c_and_wget_through_one_node() {
    both_clients(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2c_and_wget_through_a_cluster() {
    both_clients(true).await;
}
