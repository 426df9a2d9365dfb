//! Churn: a cluster that keeps changing while clients download through it.
//!
//! Six nodes and etcd; clients download whole objects and random ranges through random live
//! nodes and check every body; every `event_every` a node is killed with `-9`, restarted, or a
//! seventh node joins and leaves (SIGTERM). Used by the CI test (`tests/churn.rs`, short) and
//! the benchmark harness (`casserole-churn`, ≥ 60 s with release binaries).
//!
//! The bound checked on the upstream bytes: every chunk once, plus, for each kill or join, the
//! share of keys that changed owner (1/N of them: a failover owner or the newcomer fetches what
//! it lacks; a node that comes back has its disk), plus the read-ahead window of the requests a
//! killed node was fetching for (partly fetched chunks are lost with it).

use std::{
    collections::HashSet,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::{
    client::get_sha256,
    harness::{EtcdProcess, NodeBuilder, NodeProcess},
    origin::{ObjectInfo, ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;
const PEER_TOKEN: &str = "churn-peer-token-0123456789";
const READAHEAD: u64 = 4;

#[derive(Clone, Debug)]
pub struct ChurnConfig {
    pub duration: Duration,
    pub nodes: usize,
    pub clients: usize,
    pub objects: usize,
    pub object_size: u64,
    pub chunk_size: u64,
    pub event_every: Duration,
    pub seed: u64,
}

impl ChurnConfig {
    /// The CI size: 30 s, six nodes, six clients, 8 × 16 MiB.
    pub fn ci() -> Self {
        ChurnConfig {
            duration: Duration::from_secs(30),
            nodes: 6,
            clients: 6,
            objects: 8,
            object_size: 16 * MIB,
            chunk_size: MIB,
            event_every: Duration::from_secs(3),
            seed: 13,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ChurnReport {
    pub seconds: f64,
    pub requests: u64,
    pub body_bytes: u64,
    pub wrong_bodies: u64,
    /// Failed requests on nodes that stayed up while they ran: must be 0.
    pub client_errors: u64,
    /// Failed requests on a node that was killed or left while they ran.
    pub errors_on_departed_nodes: u64,
    pub kills: u64,
    pub restarts: u64,
    pub joins: u64,
    pub leaves: u64,
    pub unique_bytes: u64,
    pub upstream_bytes: u64,
    pub bound_bytes: u64,
    pub failovers: u64,
    pub first_error: Option<String>,
}

impl ChurnReport {
    pub fn amplification(&self) -> f64 {
        self.upstream_bytes as f64 / self.unique_bytes.max(1) as f64
    }
    pub fn bound(&self) -> f64 {
        self.bound_bytes as f64 / self.unique_bytes.max(1) as f64
    }

    /// A markdown table of the figures.
    pub fn table(&self) -> String {
        let mut t = String::from("| figure | value |\n|---|---:|\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "| {k} | {v} |");
        };
        row("duration", format!("{:.0} s", self.seconds));
        row(
            "requests (whole objects and ranges)",
            self.requests.to_string(),
        );
        row("bytes to clients", format!("{} MiB", self.body_bytes / MIB));
        row("wrong bodies", self.wrong_bodies.to_string());
        row(
            "client errors (node stayed up)",
            self.client_errors.to_string(),
        );
        row(
            "errors on a node killed or leaving mid-request",
            self.errors_on_departed_nodes.to_string(),
        );
        row(
            "kill -9 / restarts / joins / leaves",
            format!(
                "{} / {} / {} / {}",
                self.kills, self.restarts, self.joins, self.leaves
            ),
        );
        row(
            "unique bytes requested (chunks)",
            format!("{} MiB", self.unique_bytes / MIB),
        );
        row(
            "upstream bytes",
            format!("{} MiB", self.upstream_bytes / MIB),
        );
        row(
            "amplification (bound)",
            format!("{:.2}× ({:.2}×)", self.amplification(), self.bound()),
        );
        row("peer failovers", self.failovers.to_string());
        t
    }
}

/// What clients see of one node slot: its URL, whether it is up, and a generation bumped
/// whenever it goes down (so a request knows its node went away while it ran).
struct Slot {
    url: Mutex<String>,
    up: AtomicBool,
    generation: AtomicU64,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    body_bytes: u64,
    wrong: u64,
    errors: u64,
    departed: u64,
    chunks: HashSet<(usize, u64)>,
    first_error: Option<String>,
}

/// The processes of one run: etcd, the origin and its objects, the nodes and their disks.
/// Fields drop in order: the nodes go before their disks, the origin and etcd.
struct Cluster {
    nodes: Vec<NodeProcess>,
    joiner: Option<NodeProcess>,
    /// One per node slot, the joiner's last; kept across restarts.
    disks: Vec<tempfile::TempDir>,
    slots: Arc<Vec<Slot>>,
    objects: Arc<Vec<ObjectInfo>>,
    origin: Origin,
    etcd: EtcdProcess,
    cfg: ChurnConfig,
}

impl Cluster {
    async fn start(cfg: ChurnConfig) -> Cluster {
        let etcd = EtcdProcess::start().await;
        let origin = Origin::start().await;
        let objects = (0..cfg.objects)
            .map(|i| {
                let spec = ObjectSpec::new(cfg.object_size).seed(cfg.seed * 1000 + i as u64);
                origin.put(&format!("/churn/{i}.bin"), spec)
            })
            .collect();
        let disks = (0..=cfg.nodes)
            .map(|_| tempfile::tempdir().expect("disk dir"))
            .collect();
        let slots = (0..=cfg.nodes)
            .map(|_| Slot {
                url: Mutex::new(String::new()),
                up: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            })
            .collect();
        let mut c = Cluster {
            cfg,
            etcd,
            origin,
            objects: Arc::new(objects),
            disks,
            nodes: Vec::new(),
            joiner: None,
            slots: Arc::new(slots),
        };
        for i in 0..c.cfg.nodes {
            let node = c.builder(i).spawn().await;
            c.came_up(i, &node);
            c.nodes.push(node);
        }
        c
    }

    /// Nodes start as a user starts them (no --node-id), on the slot's own disk.
    fn builder(&self, slot: usize) -> NodeBuilder {
        NodeBuilder::new(self.origin.url())
            .etcd(self.etcd.endpoint())
            .disk_dir(self.disks[slot].path())
            .args(["--peer-token", PEER_TOKEN, "--member-ttl", "2s"])
            .arg("--cluster-name=churn")
            .arg(format!("--chunk-size={}", self.cfg.chunk_size))
            .arg(format!("--readahead={READAHEAD}"))
            .args(["--max-memory-usage=256Mi", "--peer-timeout=1s"])
            .args(["--shutdown-grace=10s", "--max-disk-usage=2Gi"])
            .arg("--cleaned-disk-usage=1Gi")
    }

    fn came_up(&self, slot: usize, node: &NodeProcess) {
        *self.slots[slot].url.lock().unwrap() = node.url();
        self.slots[slot].up.store(true, Ordering::SeqCst);
    }

    /// Half the objects are warm before the churn starts, half cold.
    async fn warm_half(&self, tally: &Mutex<Tally>) {
        for (i, obj) in self.objects.iter().enumerate().step_by(2) {
            let url = format!("{}{}", self.nodes[i % self.nodes.len()].url(), obj.path);
            let got = get_sha256(&url, &[]).await.expect("warm-up download");
            assert_eq!(got.sha256, obj.sha256(), "warm-up body");
            let chunks = obj.len.div_ceil(self.cfg.chunk_size);
            tally
                .lock()
                .unwrap()
                .chunks
                .extend((0..chunks).map(|c| (i, c)));
        }
    }

    /// Until `deadline`, every `event_every` in turn: kill -9 a random node, restart it, a
    /// seventh joins, it leaves (SIGTERM). Counts events and failovers into `report`.
    async fn churn(&mut self, deadline: Instant, report: &mut ChurnReport) {
        let (n, mut killed) = (self.cfg.nodes, None);
        let mut rng = StdRng::seed_from_u64(self.cfg.seed);
        let mut tick = 0u64;
        while Instant::now() + self.cfg.event_every < deadline {
            tokio::time::sleep(self.cfg.event_every).await;
            match tick % 4 {
                0 => {
                    let i = rng.random_range(0..n);
                    report.failovers += failovers(&self.nodes[i]).await;
                    go_down(&self.slots[i]);
                    self.nodes[i].kill_9().await;
                    report.kills += 1;
                    killed = Some(i);
                }
                1 => {
                    if let Some(i) = killed.take() {
                        self.nodes[i].restart().await;
                        self.slots[i].up.store(true, Ordering::SeqCst);
                        report.restarts += 1;
                    }
                }
                2 => {
                    let node = self.builder(n).spawn().await;
                    self.came_up(n, &node);
                    self.joiner = Some(node);
                    report.joins += 1;
                }
                _ => {
                    if let Some(mut node) = self.joiner.take() {
                        report.failovers += failovers(&node).await;
                        go_down(&self.slots[n]);
                        node.sigterm();
                        node.wait_exit(Duration::from_secs(30)).await;
                        report.leaves += 1;
                    }
                }
            }
            tick += 1;
        }
        if let Some(i) = killed {
            self.nodes[i].restart().await;
            report.restarts += 1;
        }
    }
}

pub async fn run(cfg: ChurnConfig) -> ChurnReport {
    let mut cluster = Cluster::start(cfg.clone()).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    cluster.warm_half(&tally).await;

    let started = Instant::now();
    let deadline = started + cfg.duration;
    let clients: Vec<_> = (0..cfg.clients)
        .map(|c| {
            tokio::spawn(client_loop(
                cfg.clone(),
                cfg.seed * 7919 + c as u64,
                deadline,
                cluster.slots.clone(),
                cluster.objects.clone(),
                tally.clone(),
            ))
        })
        .collect();
    let mut report = ChurnReport::default();
    cluster.churn(deadline, &mut report).await;
    for c in clients {
        c.await.expect("client task");
    }
    report.seconds = started.elapsed().as_secs_f64();
    for node in cluster.nodes.iter().chain(cluster.joiner.iter()) {
        report.failovers += failovers(node).await;
    }
    let t = tally.lock().unwrap();
    report.requests = t.requests;
    report.body_bytes = t.body_bytes;
    report.wrong_bodies = t.wrong;
    report.client_errors = t.errors;
    report.errors_on_departed_nodes = t.departed;
    report.first_error = t.first_error.clone();
    let objects = &cluster.objects;
    report.unique_bytes = t
        .chunks
        .iter()
        .map(|&(o, c)| cfg.chunk_size.min(objects[o].len - c * cfg.chunk_size))
        .sum();
    report.upstream_bytes = cluster.origin.stats().body_bytes_sent;
    let moved_share = (report.kills + report.joins) as f64 / cfg.nodes as f64;
    let lost_windows = report.kills * cfg.clients as u64 * (READAHEAD + 1) * cfg.chunk_size;
    report.bound_bytes = (report.unique_bytes as f64 * (1.0 + moved_share)) as u64 + lost_windows;
    report
}

fn go_down(slot: &Slot) {
    slot.up.store(false, Ordering::SeqCst);
    slot.generation.fetch_add(1, Ordering::SeqCst);
}

async fn failovers(node: &NodeProcess) -> u64 {
    node.metric("casserole_peer_failovers_total").await as u64
}

/// Downloads until the deadline: a random object, whole or a random range, through a random
/// live node; every body is checked.
async fn client_loop(
    cfg: ChurnConfig,
    seed: u64,
    deadline: Instant,
    slots: Arc<Vec<Slot>>,
    objects: Arc<Vec<ObjectInfo>>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < deadline {
        let live: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].up.load(Ordering::SeqCst))
            .collect();
        let slot = &slots[live[rng.random_range(0..live.len())]];
        let generation = slot.generation.load(Ordering::SeqCst);
        let o = rng.random_range(0..objects.len());
        let obj = &objects[o];
        let (range, want, expect_status) = if rng.random_bool(0.3) {
            (None, obj.sha256(), 200)
        } else {
            let start = rng.random_range(0..obj.len);
            let len = rng.random_range(1..=(6 * cfg.chunk_size).min(obj.len - start));
            let end = start + len - 1;
            (Some((start, end)), obj.range_sha256(start, end), 206)
        };
        let url = format!("{}{}", slot.url.lock().unwrap(), obj.path);
        let header = range.map(|(s, e)| format!("bytes={s}-{e}"));
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("range", h.as_str())).collect();
        let result = get_sha256(&url, &headers).await;
        let departed =
            !slot.up.load(Ordering::SeqCst) || slot.generation.load(Ordering::SeqCst) != generation;
        let mut t = tally.lock().unwrap();
        t.requests += 1;
        let (first, last) = range.unwrap_or((0, obj.len - 1));
        t.chunks
            .extend((first / cfg.chunk_size..=last / cfg.chunk_size).map(|c| (o, c)));
        match result {
            Ok(got) if got.status.as_u16() == expect_status && got.sha256 == want => {
                t.body_bytes += got.len;
            }
            Ok(got) if got.status.as_u16() == expect_status => {
                t.wrong += 1;
                t.first_error
                    .get_or_insert(format!("wrong body: {url} {header:?}"));
            }
            Ok(_) | Err(_) if departed => t.departed += 1,
            other => {
                t.errors += 1;
                let why = match other {
                    Ok(got) => format!("status {}", got.status),
                    Err(e) => format!("{e:#}"),
                };
                t.first_error
                    .get_or_insert(format!("{url} {header:?}: {why}"));
            }
        }
    }
}
