//! Container images: Debian's docker-registry (distribution 2.8) with a config of its own
//! (127.0.0.1, filesystem storage in a temporary directory), an image the test writes as an
//! OCI layout (layers made with tar and gzip, config, manifest and index by hand), pushed with
//! `skopeo copy` and pulled with `skopeo copy docker://… dir:…`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{command, run, tool, Server};

const TIMEOUT: Duration = Duration::from_secs(180);

/// docker-registry serving from a temporary directory.
pub async fn docker_registry(dir: &Path) -> Server {
    let port = crate::harness::free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        dir.display()
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = tokio::process::Command::new(tool("docker-registry", &[]));
    cmd.arg("serve").arg(&path);
    Server::start("docker-registry", cmd, port, "/v2/").await
}

/// An image written as an OCI layout.
#[derive(Debug)]
pub struct OciImage {
    /// The layout directory (`oci:DIR:TAG`).
    pub dir: PathBuf,
    pub tag: String,
    /// `sha256:…` digest and size of every blob: config first, then the layers.
    pub blobs: Vec<(String, u64)>,
}

impl OciImage {
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, n)| n).sum()
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len() as u64)
}

/// Writes an image of one layer per entry of `layer_sizes` (each a tar.gz of one file of
/// filler bytes) into a new OCI layout under `work`.
pub async fn build_image(work: &Path, layer_sizes: &[usize], tag: &str) -> OciImage {
    let dir = work.join("oci");
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let (mut layers, mut diff_ids) = (Vec::new(), Vec::new());
    for (i, size) in layer_sizes.iter().enumerate() {
        let root = work.join(format!("layer{i}"));
        std::fs::create_dir_all(root.join("opt/casserole")).unwrap();
        let file = root.join(format!("opt/casserole/layer{i}.bin"));
        std::fs::write(&file, super::filler(300 + i as u64, *size)).unwrap();
        let tar = work.join(format!("layer{i}.tar"));
        run(
            "tar",
            command(tool("tar", &[]))
                .args([
                    "--sort=name",
                    "--mtime=2024-01-01",
                    "--owner=0",
                    "--group=0",
                ])
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&root)
                .arg("opt"),
            TIMEOUT,
        )
        .await;
        let tar_bytes = std::fs::read(&tar).unwrap();
        diff_ids.push(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(&tar_bytes))
        ));
        run(
            "gzip",
            command(tool("gzip", &[])).args(["-1", "-n"]).arg(&tar),
            TIMEOUT,
        )
        .await;
        let gz = std::fs::read(work.join(format!("layer{i}.tar.gz"))).unwrap();
        layers.push(put_blob(&dir, &gz));
    }
    let config = json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let config = put_blob(&dir, config.to_string().as_bytes());
    let manifest = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, n)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n
        })).collect::<Vec<_>>()});
    let manifest = put_blob(&dir, manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest.0, "size": manifest.1,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    let mut blobs = vec![config];
    blobs.extend(layers);
    OciImage {
        dir,
        tag: tag.to_string(),
        blobs,
    }
}

/// `skopeo` with a home and runtime dir of its own (no credentials, no blob-info cache of
/// the developer's) and no signature policy.
fn skopeo(home: &Path) -> tokio::process::Command {
    let mut cmd = command(tool("skopeo", &[]));
    cmd.env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("REGISTRY_AUTH_FILE")
        .arg("--insecure-policy");
    cmd
}

/// Pushes `image` to the registry at `authority` (`host:port`) as `repo:tag`, directly.
pub async fn push(image: &OciImage, authority: &str, repo: &str) {
    let home = super::temp_dir("skopeo-push");
    let mut cmd = skopeo(home.path());
    cmd.args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{}", image.dir.display(), image.tag))
        .arg(format!("docker://{authority}/{repo}:{}", image.tag));
    run("skopeo copy (push)", &mut cmd, TIMEOUT).await;
}

/// `skopeo copy --src-tls-verify=false docker://AUTHORITY/REPO:TAG dir:…` into a new
/// directory under `work`; returns it.
pub async fn pull(authority: &str, repo: &str, tag: &str, work: &Path) -> PathBuf {
    let dest = work.join("image");
    let home = work.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = skopeo(&home);
    cmd.args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{authority}/{repo}:{tag}"))
        .arg(format!("dir:{}", dest.display()));
    run("skopeo copy (pull)", &mut cmd, TIMEOUT).await;
    dest
}
