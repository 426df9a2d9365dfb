//! pip: wheels the test builds (a zip with dist-info, written by Python's zipfile), served by
//! pypiserver (scripts/setup.sh pins it in requirements-dev.txt), and `pip download` with a
//! configuration of its own (`--isolated`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{command, run, tool, Server};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Writes a pure-Python wheel: `argv[1]` dir, `argv[2]` name, `argv[3]` version, `argv[4]`
/// payload file. Prints the wheel's path.
const WHEEL_PY: &str = r#"
import base64, hashlib, sys, zipfile
out, name, version, payload = sys.argv[1:5]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": b"VALUE = 'casserole'\n",
    f"{name}/payload.bin": open(payload, "rb").read(),
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
    f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: casserole-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(data)}")
record.append(f"{dist}/RECORD,,")
files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
wheel = f"{out}/{name}-{version}-py3-none-any.whl"
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
    for path, data in files.items():
        z.writestr(zipfile.ZipInfo(path, (2024, 1, 1, 0, 0, 0)), data)
print(wheel)
"#;

fn python() -> PathBuf {
    tool("python3", &[])
}

/// A wheel to build: `name` is the distribution name with underscores.
#[derive(Debug, Clone)]
pub struct Wheel {
    pub name: &'static str,
    pub version: &'static str,
    pub payload: usize,
}

/// Builds `wheel` into `dir`; returns its path.
pub async fn build_wheel(wheel: &Wheel, seed: u64, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let payload = dir.join(format!("{}.payload", wheel.name));
    std::fs::write(&payload, super::filler(seed, wheel.payload)).unwrap();
    let out = run(
        "building a wheel",
        command(python())
            .args(["-c", WHEEL_PY])
            .arg(dir)
            .args([wheel.name, wheel.version])
            .arg(&payload),
        TIMEOUT,
    )
    .await;
    std::fs::remove_file(&payload).unwrap();
    let path = PathBuf::from(out.trim());
    // Uploaded long ago, as most of an index is.
    super::age_file(&path, 30);
    path
}

/// pypiserver serving `packages` (no fallback to pypi.org, no uploads, no auth).
pub async fn pypiserver(packages: &Path) -> Server {
    let port = crate::harness::free_port();
    let probe = command(python())
        .args(["-c", "import pypiserver"])
        .output()
        .await
        .expect("running python3");
    assert!(
        probe.status.success(),
        "pypiserver is not installed for {}: run `bash scripts/setup.sh` (requirements-dev.txt \
         pins it)",
        python().display()
    );
    let mut cmd = tokio::process::Command::new(python());
    cmd.args(["-m", "pypiserver", "run", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-a", ".", "-P", ".", "--disable-fallback", "-v"])
        .arg(packages);
    Server::start("pypiserver", cmd, port, "/simple/").await
}

/// `pip download NAMES… --index-url INDEX` into a new directory under `work`, with the
/// given cache (`None`: `--no-cache-dir`); returns the directory.
pub async fn download(index: &str, names: &[&str], work: &Path, cache: Option<&Path>) -> PathBuf {
    let dest = work.join("download");
    std::fs::create_dir_all(&dest).unwrap();
    let mut cmd = command(python());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PIP_") {
            cmd.env_remove(k);
        }
    }
    cmd.args([
        "-m",
        "pip",
        "download",
        "--isolated",
        "--disable-pip-version-check",
    ])
    .args([
        "--no-input",
        "--no-deps",
        "--only-binary=:all:",
        "--retries",
        "0",
    ])
    .args(["--timeout", "30", "--index-url", index, "--dest"])
    .arg(&dest);
    match cache {
        Some(dir) => cmd.arg("--cache-dir").arg(dir),
        None => cmd.arg("--no-cache-dir"),
    };
    cmd.args(names).env("HOME", work);
    run("pip download", &mut cmd, TIMEOUT).await;
    dest
}
