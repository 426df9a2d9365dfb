//! apt: small `.deb`s made with `dpkg-deb --build`, a flat and a mirror-layout repository
//! (`dpkg-scanpackages`, `apt-ftparchive`) served by nginx, and `apt-get update` +
//! `apt-get download` with state of their own (`APT_CONFIG`), as the current user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{command, run, tool, Server};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A package of the test repositories.
#[derive(Debug, Clone)]
pub struct Deb {
    pub name: &'static str,
    pub version: &'static str,
    /// Payload size (the `.deb` is a little larger).
    pub payload: usize,
}

impl Deb {
    /// The file name `apt-get download` gives it: `name_version_all.deb` with the epoch's
    /// `:` written `%3a`.
    pub fn file_name(&self) -> String {
        format!("{}_{}_all.deb", self.name, self.version.replace(':', "%3a"))
    }
}

/// Three packages: a small one, one spanning several 2 MiB chunks, and one whose version has
/// an epoch, so its file name holds a literal `%3a` and apt asks for `%253a`.
pub fn packages() -> Vec<Deb> {
    vec![
        Deb {
            name: "casserole-hello",
            version: "1.0-1",
            payload: 96 * 1024,
        },
        Deb {
            name: "casserole-data",
            version: "2.3-1",
            payload: 5 * 1024 * 1024 + 12_345,
        },
        Deb {
            name: "casserole-epoch",
            version: "1:4.2-1",
            payload: 700 * 1024,
        },
    ]
}

/// Builds `deb` into `out_dir` with `dpkg-deb --build`; returns its path.
pub async fn build_deb(deb: &Deb, seed: u64, work: &Path, out_dir: &Path) -> PathBuf {
    let root = work.join(format!("{}-root", deb.name));
    let data = root.join("usr/share").join(deb.name);
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: Casserole tests \
             <tests@casserole.invalid>\nSection: misc\nPriority: optional\nDescription: {} \
             (a Casserole client test package)\n",
            deb.name, deb.version, deb.name
        ),
    )
    .unwrap();
    std::fs::write(data.join("payload.bin"), super::filler(seed, deb.payload)).unwrap();
    std::fs::create_dir_all(out_dir).unwrap();
    let out = out_dir.join(deb.file_name());
    run(
        "dpkg-deb --build",
        command(tool("dpkg-deb", &[]))
            .args(["--build", "--root-owner-group", "-Znone"])
            .arg(&root)
            .arg(&out),
        TIMEOUT,
    )
    .await;
    // Pool files keep the time they were published (a mirror syncs with rsync -t).
    super::age_file(&out, 30);
    out
}

/// The two layouts apt reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `deb [trusted=yes] http://cache/deb ./`: Packages and `.deb`s in one directory.
    Flat,
    /// `deb [trusted=yes] http://cache/debian stable main`: dists/ and pool/.
    Mirror,
}

impl Layout {
    /// The sources.list line for a cache at `base` (`http://host:port`).
    pub fn sources_line(self, base: &str) -> String {
        match self {
            Layout::Flat => format!("deb [trusted=yes] {base}/deb ./\n"),
            Layout::Mirror => format!("deb [trusted=yes] {base}/debian stable main\n"),
        }
    }
}

/// Writes the repository of `layout` with `debs` under `www` (nginx's root); returns the
/// built `.deb` paths.
pub async fn build_repository(layout: Layout, debs: &[Deb], www: &Path) -> Vec<PathBuf> {
    let work = super::temp_dir("deb-build");
    let mut built = Vec::new();
    match layout {
        Layout::Flat => {
            let dir = www.join("deb");
            for (i, deb) in debs.iter().enumerate() {
                built.push(build_deb(deb, 100 + i as u64, work.path(), &dir).await);
            }
            let packages = run(
                "dpkg-scanpackages",
                command(tool("dpkg-scanpackages", &[]))
                    .args(["--multiversion", "."])
                    .current_dir(&dir),
                TIMEOUT,
            )
            .await;
            std::fs::write(dir.join("Packages"), &packages).unwrap();
            gzip(&dir.join("Packages")).await;
            release(&dir, ".", &[]).await;
        }
        Layout::Mirror => {
            let root = www.join("debian");
            for (i, deb) in debs.iter().enumerate() {
                let pool = root.join("pool/main/c").join(deb.name);
                built.push(build_deb(deb, 200 + i as u64, work.path(), &pool).await);
            }
            let binary = root.join("dists/stable/main/binary-amd64");
            std::fs::create_dir_all(&binary).unwrap();
            let packages = run(
                "apt-ftparchive packages",
                command(tool("apt-ftparchive", &[]))
                    .args(["packages", "pool"])
                    .current_dir(&root),
                TIMEOUT,
            )
            .await;
            std::fs::write(binary.join("Packages"), &packages).unwrap();
            gzip(&binary.join("Packages")).await;
            let fields = [
                "Suite=stable",
                "Codename=stable",
                "Architectures=amd64",
                "Components=main",
            ];
            release(&root, "dists/stable", &fields).await;
        }
    }
    built
}

async fn gzip(file: &Path) {
    run(
        "gzip",
        command(tool("gzip", &[]))
            .args(["-k", "-9", "-n"])
            .arg(file),
        TIMEOUT,
    )
    .await;
}

/// `apt-ftparchive release DIR > DIR/Release`, run in `cwd`.
async fn release(cwd: &Path, dir: &str, fields: &[&str]) {
    let mut cmd = command(tool("apt-ftparchive", &[]));
    for f in fields {
        cmd.arg("-o").arg(format!("APT::FTPArchive::Release::{f}"));
    }
    let text = run(
        "apt-ftparchive release",
        cmd.args(["release", dir]).current_dir(cwd),
        TIMEOUT,
    )
    .await;
    std::fs::write(cwd.join(dir).join("Release"), text).unwrap();
}

/// nginx on a free loopback port serving `root`, with a prefix, config and logs of its own
/// (never the system service), in the foreground as one process.
pub async fn nginx(root: &Path, prefix: &Path) -> Server {
    let port = crate::harness::free_port();
    for dir in ["logs", "tmp"] {
        std::fs::create_dir_all(prefix.join(dir)).unwrap();
    }
    let p = prefix.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
         error_log stderr notice;\nevents {{ worker_connections 512; }}\n\
         http {{\n  access_log {p}/logs/access.log;\n  client_body_temp_path {p}/tmp/body;\n\
         proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fastcgi;\n\
         uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n\
         types {{ application/vnd.debian.binary-package deb; text/plain Packages Release; }}\n\
         default_type application/octet-stream;\n  sendfile on;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {};\n  }}\n}}\n",
        root.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = tokio::process::Command::new(tool("nginx", &[]));
    cmd.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf_path)
        .args(["-e", "stderr"]);
    Server::start("nginx", cmd, port, "/").await
}

/// One apt client: its own configuration, state, lists and archive cache, so clients share
/// nothing but the cache in front of the repository.
#[derive(Debug)]
pub struct AptClient {
    dir: tempfile::TempDir,
}

impl AptClient {
    /// A client whose only source is `sources_line`.
    pub fn new(sources_line: &str) -> AptClient {
        let dir = super::temp_dir("apt-client");
        let d = dir.path();
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "log",
            "download",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("state/status"), "").unwrap();
        std::fs::write(d.join("sources.list"), sources_line).unwrap();
        let p = d.display();
        let conf = format!(
            "Dir::State \"{p}/state\";\nDir::State::status \"{p}/state/status\";\n\
             Dir::Cache \"{p}/cache\";\nDir::Log \"{p}/log\";\n\
             Dir::Etc::SourceList \"{p}/sources.list\";\nDir::Etc::SourceParts \"/dev/null\";\n\
             Dir::Etc::Parts \"/dev/null\";\nDir::Etc::main \"/dev/null\";\n\
             Dir::Etc::Preferences \"/dev/null\";\nDir::Etc::PreferencesParts \"/dev/null\";\n\
             Debug::NoLocking \"true\";\nAPT::Sandbox::User \"root\";\n\
             APT::Architecture \"amd64\";\nAPT::Architectures {{ \"amd64\"; }};\n\
             Acquire::Languages \"none\";\nAcquire::Retries \"0\";\n\
             Acquire::http::Timeout \"30\";\nAcquire::http::Proxy \"DIRECT\";\n"
        );
        std::fs::write(d.join("apt.conf"), conf).unwrap();
        AptClient { dir }
    }

    fn apt_get(&self) -> tokio::process::Command {
        let mut cmd = command(tool("apt-get", &[]));
        cmd.env("APT_CONFIG", self.dir.path().join("apt.conf"))
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// `apt-get update` (exit status asserted; a repository that fails is an error, not a
    /// warning: `-o APT::Update::Error-Mode=any`).
    pub async fn update(&self) -> String {
        run(
            "apt-get update",
            self.apt_get()
                .args(["-o", "APT::Update::Error-Mode=any", "update"]),
            TIMEOUT,
        )
        .await
    }

    /// `apt-get download NAMES…` into this client's download directory; returns it.
    pub async fn download(&self, names: &[&str]) -> PathBuf {
        let dest = self.dir.path().join("download");
        run(
            "apt-get download",
            self.apt_get()
                .arg("download")
                .args(names)
                .current_dir(&dest),
            TIMEOUT,
        )
        .await;
        dest
    }
}
