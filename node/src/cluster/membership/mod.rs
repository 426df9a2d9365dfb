//! Cluster membership: who the live peers are.
//!
//! Three sources: standalone (just this node), a fixed `--peers` list, or etcd.
//! With etcd each node registers `/casserole/<cluster>/members/<node_id>` =
//! peering URL under a lease it keeps alive, and watches the prefix. The id is
//! percent-encoded into one key segment (see `member_key`), so any id works,
//! the default (the peering URL, full of `/`) included. The member
//! set is published through a `tokio::sync::watch` channel so readers never
//! block and can subscribe to changes.
//!
//! Failure policy: etcd is a coordination aid, not a dependency of serving.
//! When etcd is unreachable the last known set is kept (a stale ring only costs
//! some extra upstream fetches, an empty one would cost all of them), and the
//! background task reconnects with jittered exponential backoff. After any
//! reconnect the full list is re-read and the watch resumes at that
//! revision + 1, so no change is missed between the list and the watch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Event, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions,
    WatchStream,
};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tracing::{error, info, warn};

use super::etcd::{list_prefix, op, Connection, Etcd, EtcdError, PAGE};
use super::member_key;

pub use super::Member;

/// How long `leave()` may take in total (lease revoke included).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Membership metrics, registered by this module.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Live members, self included.
    pub members: prometheus::IntGauge,
    /// Failed etcd operations (connect, grant, put, get, watch, keep-alive).
    pub etcd_errors: prometheus::IntCounter,
    /// Registrations with a new lease after the first one (lease lost).
    pub lease_registrations: prometheus::IntCounter,
    /// Member lists read from etcd that lacked this node (or listed its id with another URL).
    pub self_missing: prometheus::IntCounter,
}

impl ClusterMetrics {
    pub fn new(r: &crate::metrics::Registrar) -> Self {
        ClusterMetrics {
            members: r.gauge(
                "casserole_cluster_members",
                "Live cluster members known to this node, itself included",
            ),
            etcd_errors: r.counter("casserole_etcd_errors_total", "Failed etcd operations"),
            lease_registrations: r.counter(
                "casserole_lease_registrations_total",
                "Membership re-registrations after a lost etcd lease",
            ),
            self_missing: r.counter(
                "casserole_cluster_self_missing_total",
                "Member lists read from etcd that did not list this node under its id and URL",
            ),
        }
    }

    /// Metrics not registered anywhere (tests, or when metrics are off).
    pub fn unregistered() -> Self {
        ClusterMetrics {
            members: prometheus::IntGauge::new("cluster_members", "live cluster members")
                .expect("valid gauge"),
            etcd_errors: prometheus::IntCounter::new("cluster_etcd_errors_total", "etcd errors")
                .expect("valid counter"),
            lease_registrations: prometheus::IntCounter::new(
                "cluster_lease_registrations_total",
                "re-registrations with a new lease",
            )
            .expect("valid counter"),
            self_missing: prometheus::IntCounter::new(
                "cluster_self_missing_total",
                "lists without this node",
            )
            .expect("valid counter"),
        }
    }
}

/// Settings for etcd membership.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub cluster_name: String,
    pub node_id: String,
    pub peering_url: String,
    /// Lease TTL (default 10 s); keep-alives go every ttl/3. Rounded up to
    /// whole seconds, minimum 1 s, because etcd leases are in seconds.
    pub ttl: Duration,
}

impl EtcdConfig {
    /// `/casserole/<cluster>/members/`: the trailing slash keeps cluster "a"
    /// from seeing cluster "ab".
    pub fn members_prefix(&self) -> String {
        format!("/casserole/{}/members/", self.cluster_name)
    }

    /// This node's own key.
    pub fn self_key(&self) -> String {
        format!(
            "{}{}",
            self.members_prefix(),
            member_key::encode(&self.node_id)
        )
    }

    fn ttl_secs(&self) -> i64 {
        let ms = self.ttl.as_millis().max(1);
        (ms.div_ceil(1000) as i64).max(1)
    }
}

/// State shared by every handle and the background task.
struct Shared {
    self_member: Member,
    tx: watch::Sender<Arc<Vec<Member>>>,
    loaded: AtomicBool,
    metrics: ClusterMetrics,
}

impl Shared {
    fn new(self_member: Member, loaded: bool, metrics: ClusterMetrics) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(vec![self_member.clone()]));
        metrics.members.set(1);
        Arc::new(Shared {
            self_member,
            tx,
            loaded: AtomicBool::new(loaded),
            metrics,
        })
    }

    /// Publishes `others` ∪ self (self always wins for its own id, so a stale
    /// etcd value for this node never replaces the configured URL), logging
    /// each change once.
    fn publish(&self, others: &BTreeMap<String, String>) {
        let mut set: BTreeMap<&str, &str> = others
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        set.insert(&self.self_member.id, &self.self_member.url);
        let new: Vec<Member> = set
            .into_iter()
            .map(|(id, url)| Member::new(id, url))
            .collect();
        let old = self.tx.borrow().clone();
        if *old == new {
            return;
        }
        log_changes(&old, &new);
        self.metrics.members.set(new.len() as i64);
        // send_replace: works with no receivers, which is the usual case.
        self.tx.send_replace(Arc::new(new));
    }
}

fn log_changes(old: &[Member], new: &[Member]) {
    let old_map: BTreeMap<&str, &str> = old
        .iter()
        .map(|m| (m.id.as_str(), m.url.as_str()))
        .collect();
    let new_map: BTreeMap<&str, &str> = new
        .iter()
        .map(|m| (m.id.as_str(), m.url.as_str()))
        .collect();
    for (id, url) in &new_map {
        match old_map.get(id) {
            None => info!(member = %id, url = %url, "cluster member joined"),
            Some(prev) if prev != url => {
                info!(member = %id, url = %url, previous_url = %prev, "cluster member changed url")
            }
            _ => {}
        }
    }
    for (id, url) in &old_map {
        if !new_map.contains_key(id) {
            info!(member = %id, url = %url, "cluster member left");
        }
    }
}

/// Control of the etcd background task. Dropping the last handle drops the
/// stop sender, which also stops the task (and revokes the lease).
struct Control {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The live member set. Cheap to clone (all clones share one state).
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
    control: Option<Arc<Control>>,
    /// The node's etcd connection, shared with the purges.
    etcd: Option<Arc<Etcd>>,
}

impl Membership {
    /// Just this node; loaded at once.
    pub fn standalone(self_member: Member) -> Membership {
        Self::fixed(self_member, Vec::new(), ClusterMetrics::unregistered())
    }

    /// A static peer list (`--peers`); self is added if not listed, and self's
    /// own URL wins over a listed one. Loaded at once.
    pub fn fixed(self_member: Member, peers: Vec<Member>, metrics: ClusterMetrics) -> Membership {
        let shared = Shared::new(self_member, true, metrics);
        let others: BTreeMap<String, String> = peers.into_iter().map(|m| (m.id, m.url)).collect();
        shared.publish(&others);
        Membership {
            shared,
            control: None,
            etcd: None,
        }
    }

    /// etcd membership. Returns at once; must be called inside a tokio runtime.
    /// Until the first full list has been read the set is `[self]` and
    /// `is_loaded()` is false. Runs until `leave()` (or until every handle is
    /// dropped).
    pub fn etcd(cfg: EtcdConfig, metrics: ClusterMetrics) -> Membership {
        let self_member = Member::new(cfg.node_id.clone(), cfg.peering_url.clone());
        let shared = Shared::new(self_member, false, metrics);
        let (stop_tx, stop_rx) = watch::channel(false);
        let etcd = Etcd::new(cfg.endpoints.clone());
        let task = tokio::spawn(run(cfg, etcd.clone(), shared.clone(), stop_rx));
        Membership {
            shared,
            control: Some(Arc::new(Control {
                stop: stop_tx,
                task: Mutex::new(Some(task)),
            })),
            etcd: Some(etcd),
        }
    }

    /// The node's etcd connection (with etcd membership), for the other users of etcd.
    pub fn etcd_connection(&self) -> Option<Arc<Etcd>> {
        self.etcd.clone()
    }

    pub fn self_member(&self) -> &Member {
        &self.shared.self_member
    }

    /// Current members, sorted by id, self included.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.shared.tx.borrow().clone()
    }

    /// Receiver that sees every new member set (sorted by id, self included).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.shared.tx.subscribe()
    }

    /// True once a full member list has been read (always for static sources).
    pub fn is_loaded(&self) -> bool {
        self.shared.loaded.load(Ordering::Acquire)
    }

    /// Revokes the lease (peers drop this node at once) and stops the
    /// background task; bounded by 2 s. Idempotent; a no-op without etcd.
    pub async fn leave(&self) {
        let Some(control) = &self.control else { return };
        control.stop.send_replace(true);
        let task = control.task.lock().expect("membership task lock").take();
        if let Some(mut task) = task {
            if timeout(LEAVE_TIMEOUT, &mut task).await.is_err() {
                warn!("cluster leave timed out; lease will expire by TTL");
                task.abort();
            }
        }
    }
}

/// What survives across sessions.
struct State {
    cfg: EtcdConfig,
    shared: Arc<Shared>,
    etcd: Arc<Etcd>,
    client: Option<Connection>,
    /// Current lease, kept across reconnects: if etcd was down for less than
    /// the TTL the registration is still valid and peers never saw us leave.
    lease: Option<i64>,
    registered_once: bool,
    /// Set by a failed session, so recovery is logged once.
    degraded: bool,
    /// Remote view of the members (id → url), as last read from etcd.
    remote: BTreeMap<String, String>,
}

/// Resolves when `leave()` was called or every handle was dropped.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // wait_for errors when the sender is gone, which also means stop.
    let _ = rx.wait_for(|s| *s).await;
}

async fn run(
    cfg: EtcdConfig,
    etcd: Arc<Etcd>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut st = State {
        cfg,
        shared,
        etcd,
        client: None,
        lease: None,
        registered_once: false,
        degraded: false,
        remote: BTreeMap::new(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut established = false;
        let res = tokio::select! {
            r = session(&mut st, &mut established) => r,
            _ = stopped(&mut stop) => break,
        };
        if established {
            backoff = BACKOFF_MIN;
        }
        match res {
            Err(EtcdError::LeaseLost) => {
                // Not an etcd failure, so not counted; the session was up, so
                // the backoff is at its minimum and re-registration is quick.
                warn!(node = %st.cfg.node_id, "etcd lease lost, re-registering");
                st.lease = None;
            }
            Err(e) => {
                st.shared.metrics.etcd_errors.inc();
                st.degraded = true;
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "etcd membership error; keeping last known members");
                // A fresh channel on retry: don't rely on the old one
                // reconnecting by itself after the server came back.
                if let Some(failed) = st.client.take() {
                    st.etcd.failed(&failed).await;
                }
            }
            Ok(()) => {}
        }
        // Equal jitter: between half and all of the backoff, so restarting
        // nodes don't hit etcd in lockstep.
        let half = backoff / 2;
        let delay = half + half.mul_f64(rand::rng().random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    // Leaving: revoke first so peers drop us now, not after the TTL. Also
    // when between sessions (etcd just came back, we were in backoff): a
    // fresh connection is tried within the same bound.
    if let Some(lease) = st.lease {
        let revoke = async {
            let mut client = match st.client.take() {
                Some(c) => c.client,
                None => st.etcd.connection().await?.client,
            };
            op(client.lease_revoke(lease)).await
        };
        match timeout(LEAVE_TIMEOUT - Duration::from_millis(300), revoke).await {
            Ok(Ok(_)) => info!(node = %st.cfg.node_id, "left cluster (lease revoked)"),
            Ok(Err(e)) => warn!(error = %e, "lease revoke failed; lease will expire by TTL"),
            Err(_) => warn!("lease revoke timed out; lease will expire by TTL"),
        }
    }
}

/// Reads the member list and publishes it; returns the revision to watch from.
async fn list_members(st: &mut State, client: &mut Client, prefix: &str) -> Result<i64, EtcdError> {
    let listing = list_prefix(client, prefix, PAGE).await?;
    let revision = listing.revision;
    let mut remote = BTreeMap::new();
    for kv in &listing.kvs {
        if let Some((id, url)) = parse_kv(prefix, kv.key(), kv.value()) {
            remote.insert(id, url);
        }
    }
    st.remote = remote;
    check_self_listed(st);
    st.shared.publish(&st.remote);
    if !st.shared.loaded.swap(true, Ordering::AcqRel) {
        info!(
            members = st.shared.tx.borrow().len(),
            "cluster member list loaded from etcd"
        );
    }
    Ok(revision)
}

/// Applies watched member changes; returns whether this node's own key was deleted.
fn apply_events(st: &mut State, prefix: &str, self_key: &str, events: &[Event]) -> bool {
    let mut self_deleted = false;
    for ev in events {
        let Some(kv) = ev.kv() else { continue };
        match ev.event_type() {
            EventType::Put => {
                if let Some((id, url)) = parse_kv(prefix, kv.key(), kv.value()) {
                    st.remote.insert(id, url);
                }
            }
            EventType::Delete => {
                if kv.key() == self_key.as_bytes() {
                    self_deleted = true;
                }
                if let Some((id, _)) = parse_kv(prefix, kv.key(), b"") {
                    st.remote.remove(&id);
                }
            }
        }
    }
    if !self_deleted {
        check_self_listed(st);
    }
    self_deleted
}

/// One connected session: (re)register, list, then watch and keep the lease
/// alive until something fails. Only returns with an error; sets
/// `established` once the list has been read.
async fn session(st: &mut State, established: &mut bool) -> Result<(), EtcdError> {
    if st.client.is_none() {
        st.client = Some(st.etcd.connection().await?);
    }
    let mut client = st.client.clone().expect("client set above").client;
    let ttl = st.cfg.ttl_secs();

    let (mut keeper, mut ka_stream) = register(st, &mut client, ttl).await?;

    let prefix = st.cfg.members_prefix();
    let revision = list_members(st, &mut client, &prefix).await?;
    *established = true;
    if std::mem::take(&mut st.degraded) {
        info!("etcd reachable again; member list re-read");
    }

    // Resume right after the list: nothing between the two is lost.
    let wopts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch: WatchStream = op(client.watch(prefix.as_str(), Some(wopts))).await?;

    let ka_every = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
    let mut tick = tokio::time::interval(ka_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ka = Instant::now();
    let lease_ttl = Duration::from_secs(ttl as u64);
    let self_key = st.cfg.self_key();

    loop {
        tokio::select! {
            _ = tick.tick() => {
                // No keep-alive answer for a whole TTL: the lease may be gone
                // and the connection is likely dead; start over.
                if last_ka.elapsed() > lease_ttl {
                    return Err(EtcdError::Stream("no lease keep-alive answer within the TTL"));
                }
                keeper.keep_alive().await?;
            }
            msg = ka_stream.message() => match msg? {
                Some(r) if r.ttl() > 0 => last_ka = Instant::now(),
                Some(_) => return Err(EtcdError::LeaseLost),
                None => return Err(EtcdError::Stream("keep-alive stream closed")),
            },
            msg = watch.message() => {
                let Some(resp) = msg? else {
                    return Err(EtcdError::Stream("watch stream closed"));
                };
                if resp.canceled() {
                    // E.g. compacted past our revision: re-list and re-watch.
                    warn!(reason = resp.cancel_reason(), compact_revision = resp.compact_revision(), "etcd watch canceled");
                    return Err(EtcdError::Stream("watch canceled"));
                }
                let self_deleted = apply_events(st, &prefix, &self_key, resp.events());
                st.shared.publish(&st.remote);
                if self_deleted {
                    // Our key vanished: lease revoked or expired elsewhere, or
                    // the key deleted by hand. Register anew either way, which
                    // is unambiguous (a keep-alive answer already in flight
                    // could still say the old lease lives); an old lease that
                    // still lives has no key left and simply expires.
                    return Err(EtcdError::LeaseLost);
                }
            }
        }
    }
}

/// Makes sure we hold a live lease and our key is written under it. Reuses
/// the previous lease if etcd still knows it.
async fn register(
    st: &mut State,
    client: &mut Client,
    ttl: i64,
) -> Result<(LeaseKeeper, LeaseKeepAliveStream), EtcdError> {
    // `lease_keep_alive` sends the first keep-alive itself and fails with
    // `LeaseKeepAliveError` when the server answers TTL 0 (lease unknown).
    if let Some(lease) = st.lease {
        match op(client.lease_keep_alive(lease)).await {
            Ok((keeper, stream)) => {
                put_self(st, client, lease).await?;
                return Ok((keeper, stream));
            }
            Err(EtcdError::Etcd(etcd_client::Error::LeaseKeepAliveError(e))) => {
                info!(lease, error = %e, "etcd lease expired while disconnected");
                st.lease = None;
            }
            Err(e) => return Err(e),
        }
    }
    let lease = op(client.lease_grant(ttl, None)).await?.id();
    st.lease = Some(lease);
    let (keeper, stream) = op(client.lease_keep_alive(lease)).await?;
    put_self(st, client, lease).await?;
    // Counted once the member key is written again: a grant whose put then failed registered
    // nothing (and a watcher of the counter would see a member that is not listed yet).
    if st.registered_once {
        st.shared.metrics.lease_registrations.inc();
    }
    st.registered_once = true;
    info!(node = %st.cfg.node_id, url = %st.cfg.peering_url, lease, ttl, "registered in etcd");
    Ok((keeper, stream))
}

async fn put_self(st: &State, client: &mut Client, lease: i64) -> Result<(), EtcdError> {
    let key = st.cfg.self_key();
    let opts = PutOptions::new().with_lease(lease);
    op(client.put(key, st.cfg.peering_url.as_str(), Some(opts))).await?;
    Ok(())
}

/// A list that lacks this node right after it registered means its key and
/// the parser disagree (or another node uses the same id): peers will not
/// route to it, so say so loudly instead of running as a silent one-member
/// cluster.
fn check_self_listed(st: &State) {
    let listed = st.remote.get(&st.cfg.node_id);
    if listed == Some(&st.cfg.peering_url) {
        return;
    }
    st.shared.metrics.self_missing.inc();
    match listed {
        None => error!(node = %st.cfg.node_id, key = %st.cfg.self_key(), members = st.remote.len(),
            "this node is missing from the member list it read from etcd; peers will not route to it"),
        Some(other) => {
            error!(node = %st.cfg.node_id, url = %st.cfg.peering_url, listed_url = %other,
            "another URL is registered under this node's id: is --node-id used twice?")
        }
    }
}

/// `<prefix><encoded id>` → (id, url). Keys deeper than one level, not
/// UTF-8 or not a valid encoding are ignored rather than trusted.
fn parse_kv(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, String)> {
    let key = std::str::from_utf8(key).ok()?;
    let id = member_key::decode(key.strip_prefix(prefix)?)?;
    let url = std::str::from_utf8(value).ok()?;
    Some((id, url.to_string()))
}

#[cfg(test)]
mod tests;
