//! npm: verdaccio 6.8 (installed into `.tools/` by scripts/setup.sh) as the registry, with a
//! config of its own (storage in a temporary directory, 127.0.0.1, no uplinks), packages
//! published to it directly with a real `npm publish`, and `npm install` with its own cache
//! and configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{command, run, tool, Server};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The `verdaccio` executable: `$VERDACCIO_BIN`, `.tools/node_modules/.bin`, or the PATH.
fn verdaccio_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VERDACCIO_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "VERDACCIO_BIN={} does not exist", p.display());
        return p;
    }
    tool("verdaccio", &[super::tools_dir().join("node_modules/.bin")])
}

/// A running verdaccio and the token of a user registered on it.
#[derive(Debug)]
pub struct Verdaccio {
    server: Server,
    token: String,
    _dir: tempfile::TempDir,
}

impl Verdaccio {
    pub async fn start() -> Verdaccio {
        let node = tool("node", &[]);
        let dir = super::temp_dir("verdaccio");
        let port = crate::harness::free_port();
        let d = dir.path().display();
        let config = format!(
            "storage: {d}/storage\nauth:\n  htpasswd:\n    file: {d}/htpasswd\n    max_users: 10\n\
             uplinks: {{}}\npackages:\n  '**':\n    access: $all\n    publish: $authenticated\n\
             listen: 127.0.0.1:{port}\nlog: {{ type: stdout, format: pretty, level: http }}\n\
             web: {{ enable: false }}\n"
        );
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = tokio::process::Command::new(node);
        cmd.arg(verdaccio_bin())
            .arg("--config")
            .arg(&config_path)
            .env("HOME", dir.path());
        let server = Server::start("verdaccio", cmd, port, "/-/ping").await;
        let token = register(&server.url()).await;
        Verdaccio {
            server,
            token,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.server.port()).into()
    }
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `npm publish TARBALL` straight to verdaccio (not through the cache).
    pub async fn publish(&self, tarball: &Path) {
        let home = super::temp_dir("npm-publish");
        let authority = self.url().trim_start_matches("http:").to_string();
        let npmrc = home.path().join(".npmrc");
        std::fs::write(
            &npmrc,
            format!(
                "registry={}/\n{authority}/:_authToken={}\n",
                self.url(),
                self.token
            ),
        )
        .unwrap();
        let mut cmd = npm(home.path());
        cmd.arg("publish")
            .arg(tarball)
            .arg("--userconfig")
            .arg(&npmrc)
            .arg("--cache")
            .arg(home.path().join("cache"));
        run("npm publish", &mut cmd, TIMEOUT).await;
    }
}

/// Registers a user the way `npm adduser` does (PUT /-/user/org.couchdb.user:NAME) and
/// returns its token.
async fn register(base: &str) -> String {
    let url = format!("{base}/-/user/org.couchdb.user:casserole");
    let resp = crate::client::client()
        .put(&url)
        .header("content-type", "application/json")
        .body(serde_json::json!({"name": "casserole", "password": "casserole-tests-1"}).to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = resp.status();
    let body = resp.bytes().await.expect("verdaccio's answer");
    let body: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("PUT {url}: {status}: {e}: {body:?}"));
    assert!(status.is_success(), "PUT {url}: {status} {body}");
    body["token"].as_str().expect("token").to_string()
}

/// `npm` with a home, user and global config of its own: nothing of the developer's leaks in.
fn npm(home: &Path) -> tokio::process::Command {
    let mut cmd = command(tool("npm", &[]));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_lowercase()
            .starts_with("npm_config_")
        {
            cmd.env_remove(k);
        }
    }
    let empty = home.join("empty-globalrc");
    std::fs::write(&empty, "").unwrap();
    cmd.env("HOME", home)
        .env("NPM_CONFIG_GLOBALCONFIG", empty)
        .env("NPM_CONFIG_UPDATE_NOTIFIER", "false")
        .current_dir(home);
    cmd
}

/// A package to publish: its name, version, dependencies, and a payload file.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub dependencies: Vec<(&'static str, &'static str)>,
    pub payload: usize,
}

impl Package {
    /// The payload `data.bin` the package ships.
    pub fn data(&self, seed: u64) -> Vec<u8> {
        super::filler(seed, self.payload)
    }
}

/// Writes `pkg` in `work` and packs it with `npm pack`; returns the tarball.
pub async fn pack(pkg: &Package, seed: u64, work: &Path) -> PathBuf {
    let dir = work.join(pkg.name.replace('/', "__"));
    std::fs::create_dir_all(&dir).unwrap();
    let deps: serde_json::Map<String, serde_json::Value> = pkg
        .dependencies
        .iter()
        .map(|(n, v)| (n.to_string(), serde_json::Value::from(*v)))
        .collect();
    let manifest = serde_json::json!({
        "name": pkg.name, "version": pkg.version, "main": "index.js",
        "license": "MIT", "description": "A Casserole client test package",
        "files": ["index.js", "data.bin"], "dependencies": deps,
    });
    std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.join("index.js"), "module.exports = 'casserole';\n").unwrap();
    std::fs::write(dir.join("data.bin"), pkg.data(seed)).unwrap();
    let out = run(
        "npm pack",
        npm(&dir)
            .args(["pack", "--json", "--cache"])
            .arg(work.join("pack-cache")),
        TIMEOUT,
    )
    .await;
    let packed: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("npm pack --json: {e}: {out}"));
    dir.join(packed[0]["filename"].as_str().expect("npm pack filename"))
}

/// `npm install` of `deps` in a new project through `registry`, with cache `cache`;
/// returns the project directory (node_modules inside).
pub async fn install(registry: &str, deps: &[(&str, &str)], work: &Path, cache: &Path) -> PathBuf {
    let project = work.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let deps: serde_json::Map<String, serde_json::Value> = deps
        .iter()
        .map(|(n, v)| (n.to_string(), serde_json::Value::from(*v)))
        .collect();
    let manifest = serde_json::json!({"name": "client-project", "version": "1.0.0",
        "private": true, "dependencies": deps});
    std::fs::write(project.join("package.json"), manifest.to_string()).unwrap();
    // The .npmrc a user writes (docs/clients.md): the cache as the registry, and tarball
    // URLs that name the origin rewritten to it.
    let npmrc = project.join(".npmrc");
    std::fs::write(
        &npmrc,
        format!("registry={registry}/\nreplace-registry-host=always\n"),
    )
    .unwrap();
    let mut cmd = npm(&project);
    cmd.arg("install")
        .arg("--userconfig")
        .arg(&npmrc)
        .arg("--cache")
        .arg(cache)
        .args([
            "--no-audit",
            "--no-fund",
            "--fetch-retries=0",
            "--fetch-timeout=60000",
        ]);
    run("npm install", &mut cmd, TIMEOUT).await;
    project
}
