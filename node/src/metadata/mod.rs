//! Object metadata lookups: memory (moka, expiring at the object's freshness), then the owner
//! peer, then the disk tier (so a restarted node still knows its objects), then a `HEAD` to the
//! upstream. Each lookup says which of them answered.
//!
//! Concurrent lookups of one path are collapsed into one (moka's `try_get_with`), so a burst of
//! clients costs the upstream one `HEAD`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{future::Cache, Expiry};

use crate::{
    metrics::Registrar,
    object::{unix_now, ObjectMeta},
    peer::{client::PeerClient, wire::MetaAnswer},
    policy::{
        usable, usable::serves_on_failure, ClientDemands, FreshnessRules, Uncacheable, Usable,
    },
    source::Route,
    tier::disk::DiskTier,
    upstream::{ProbeBody, Relayed, Upstream, UpstreamError},
};

/// What a lookup found: the object's metadata, where it came from, and the body of the probe
/// when this lookup is the one that asked the upstream with a `GET` (the chunk holding the
/// first byte its request wants, or the whole object). Only the lookup that probed gets the
/// body: lookups collapsed onto it get the metadata alone.
pub struct Found {
    pub meta: Arc<ObjectMeta>,
    pub source: MetaSource,
    pub first_chunk: Option<ProbeBody>,
    /// Fields of the upstream's answer that the stored copy leaves out (qualified `no-cache` and
    /// `private`, see `policy::headers::withheld_headers`), for the client of the lookup that
    /// asked, like the probe's body.
    pub withheld: http::HeaderMap,
}

impl Found {
    fn without_body(meta: Arc<ObjectMeta>, source: MetaSource) -> Self {
        Found {
            meta,
            source,
            first_chunk: None,
            withheld: http::HeaderMap::new(),
        }
    }
}

/// Answers without a length read at once to learn it: at most this many chunks of memory
/// (32 MiB at the default chunk size) outside the fetch budget; further lookups wait their turn.
const LEARNING_AT_ONCE: usize = 16;

/// How many uncacheable verdicts are remembered ("hit-for-pass"), and for how long: later
/// requests for such a path go straight through, one upstream request each.
const PASS_VERDICTS: u64 = 10_000;
const PASS_VERDICT_TTL: Duration = Duration::from_secs(60);

/// A path found uncacheable: why, and the status of the upstream's answer that said so.
#[derive(Debug, Clone)]
struct PassVerdict {
    why: Uncacheable,
    status: Option<u16>,
}

/// Why a lookup produced no metadata.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("not cacheable: {0}")]
    Uncacheable(Uncacheable),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// A lookup that produced no metadata: why, and the upstream's own answer when this lookup is
/// the one that asked (relayed to the request that caused it instead of asking again).
pub struct Missed {
    pub error: LookupError,
    pub relay: Option<Box<Relayed>>,
}

impl From<LookupError> for Missed {
    fn from(error: LookupError) -> Self {
        Missed { error, relay: None }
    }
}

impl From<UpstreamError> for Missed {
    fn from(e: UpstreamError) -> Self {
        LookupError::Upstream(e).into()
    }
}

/// What the request that looks an object up brings to the lookup: the byte it wants first (a
/// miss is probed with a `GET` of the chunk holding it; `None`: with a `HEAD`, for requests that
/// want no body), its own headers, which that upstream request forwards, and the target the
/// upstream is asked for when it is not the key (see `ObjectMeta::upstream_target`).
#[derive(Clone, Copy)]
pub struct Asker<'a> {
    pub first_byte: Option<u64>,
    pub headers: &'a http::HeaderMap,
    pub upstream_target: Option<&'a Arc<str>>,
}

impl<'a> Asker<'a> {
    /// What the upstream is asked for on a lookup of `key`.
    pub fn target<'k>(&self, key: &'k str) -> &'k str
    where
        'a: 'k,
    {
        self.upstream_target.map_or(key, |t| t)
    }
}

mod ask;
mod forget;
mod from_peer;
mod on_request;
mod revalidate;

/// Where the metadata of a lookup came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaSource {
    Memory,
    Peer,
    Disk,
    Upstream,
    /// Stale, and confirmed by the upstream with a `304`.
    Revalidated,
    /// Confirmed by the upstream with a `304` because the request asked for it (`no-cache`,
    /// `max-age`, `min-fresh`).
    RevalidatedOnRequest,
    /// The request asked for confirmation and the upstream answered with another version: the
    /// copies other members hold are now outdated.
    ReplacedOnRequest,
    /// Stale, served because the upstream failed (within `stale-if-error`).
    StaleIfError,
    /// Stale, served at once while it is revalidated in the background.
    StaleWhileRevalidate,
    /// Stale, and accepted so by the client's `max-stale`.
    StaleOnRequest,
}

impl MetaSource {
    /// The upstream answered this lookup with the object (a probe or `HEAD`), not a `304`.
    pub fn is_fresh_from_upstream(self) -> bool {
        matches!(self, MetaSource::Upstream | MetaSource::ReplacedOnRequest)
    }

    /// This lookup already asked the upstream (whatever it answered, or failing to).
    pub fn asked_upstream(self) -> bool {
        self.is_fresh_from_upstream()
            || matches!(
                self,
                MetaSource::Revalidated
                    | MetaSource::RevalidatedOnRequest
                    | MetaSource::StaleIfError
            )
    }

    pub fn label(self) -> &'static str {
        match self {
            MetaSource::Memory => "memory",
            MetaSource::Peer => "peer",
            MetaSource::Disk => "disk",
            MetaSource::Upstream => "upstream",
            MetaSource::Revalidated => "revalidated",
            MetaSource::RevalidatedOnRequest => "revalidated_on_request",
            MetaSource::ReplacedOnRequest => "replaced_on_request",
            MetaSource::StaleIfError => "stale_if_error",
            MetaSource::StaleWhileRevalidate => "stale_while_revalidate",
            MetaSource::StaleOnRequest => "stale_on_request",
        }
    }
}

#[derive(Clone)]
pub struct MetadataMetrics {
    pub lookups: prometheus::IntCounterVec,
}

impl MetadataMetrics {
    pub fn new(r: &Registrar) -> Self {
        MetadataMetrics {
            lookups: r.counter_vec(
                "casserole_metadata_lookups_total",
                "Object metadata lookups by the tier that answered",
                &["tier"],
            ),
        }
    }
}

struct FreshnessExpiry;

impl Expiry<String, Arc<ObjectMeta>> for FreshnessExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<ObjectMeta>,
        _now: Instant,
    ) -> Option<Duration> {
        // Kept past freshness: stale metadata is revalidated (a `304` keeps every chunk) or
        // served within its grace periods.
        Some(Duration::from_secs(
            value.keep_until().saturating_sub(unix_now()),
        ))
    }
}

pub struct MetadataConfig {
    pub rules: FreshnessRules,
    pub chunk_size: u64,
    /// Bound of the in-memory records, in (approximate) bytes.
    pub max_bytes: u64,
}

/// Approximate memory of one cached record: key and strings, plus an allowance for the struct,
/// the `Arc` and moka's per-entry bookkeeping. A long query string makes an entry large, so
/// entries are weighed rather than counted.
fn weigh(path: &str, meta: &ObjectMeta) -> u32 {
    let strings = meta.path.len()
        + meta.version.len()
        + meta.etag.as_deref().map_or(0, str::len)
        + meta.last_modified.as_deref().map_or(0, str::len)
        + meta
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>();
    // The validator repeats the ETag or Last-Modified.
    let validator = meta.etag.as_deref().map_or(32, str::len);
    u32::try_from(path.len() + strings + validator + 320).unwrap_or(u32::MAX)
}

pub struct MetadataStore {
    memory: Cache<String, Arc<ObjectMeta>>,
    /// Paths recently found uncacheable, and why.
    uncacheable: Cache<String, PassVerdict>,
    /// Revalidations clients asked for (`no-cache`, `max-age`, `min-fresh`) under way, by path:
    /// requests arriving meanwhile share the one running (see `on_request`).
    on_request: Cache<String, (Arc<ObjectMeta>, MetaSource)>,
    disk: Option<Arc<DiskTier>>,
    peers: Option<Arc<PeerClient>>,
    upstream: Arc<Upstream>,
    /// Answers without a length being read to learn it (`ask::sized`), each up to a chunk.
    learning: tokio::sync::Semaphore,
    cfg: MetadataConfig,
    metrics: MetadataMetrics,
}

impl MetadataStore {
    pub fn new(
        cfg: MetadataConfig,
        upstream: Arc<Upstream>,
        disk: Option<Arc<DiskTier>>,
        peers: Option<Arc<PeerClient>>,
        metrics: MetadataMetrics,
    ) -> Arc<Self> {
        let memory = Cache::builder()
            .weigher(|path: &String, meta: &Arc<ObjectMeta>| weigh(path, meta))
            .max_capacity(cfg.max_bytes)
            .expire_after(FreshnessExpiry)
            .build();
        Arc::new(MetadataStore {
            memory,
            uncacheable: Cache::builder()
                .max_capacity(PASS_VERDICTS)
                .time_to_live(PASS_VERDICT_TTL)
                .build(),
            // Entries live only while their revalidation runs (the revalidating request
            // removes its own); the bound is for safety.
            on_request: Cache::builder()
                .max_capacity(PASS_VERDICTS)
                .time_to_live(Duration::from_secs(1))
                .build(),
            disk,
            peers,
            upstream,
            learning: tokio::sync::Semaphore::new(LEARNING_AT_ONCE),
            cfg,
            metrics,
        })
    }

    /// Metadata of `path` if it is cacheable, and where it came from (see `lookup`), whatever
    /// the request asks of it. A stale copy served while it is revalidated
    /// (`MetaSource::StaleWhileRevalidate`) is revalidated by the caller (the cache layer, which
    /// also takes over the body of that revalidation's probe).
    async fn find(
        &self,
        path: &str,
        route: Route,
        ask: Asker<'_>,
        demands: &ClientDemands,
    ) -> Result<Found, Missed> {
        if let Some(verdict) = self.uncacheable.get(path).await {
            self.metrics
                .lookups
                .with_label_values(&["pass_verdict"])
                .inc();
            return Err(LookupError::Uncacheable(verdict.why).into());
        }
        let stale = match self.memory.get(path).await {
            Some(meta) => {
                let verdict = usable(&meta, unix_now(), demands);
                let served = match verdict {
                    // Confirmed on the request's behalf by `lookup`; the copy itself is fine.
                    Usable::Fresh | Usable::Revalidate { requested: true } => {
                        Some(MetaSource::Memory)
                    }
                    Usable::StaleOnRequest => Some(MetaSource::StaleOnRequest),
                    Usable::StaleWhileRevalidate => Some(MetaSource::StaleWhileRevalidate),
                    Usable::Revalidate { requested: false } | Usable::Gone => None,
                };
                if let Some(source) = served {
                    self.count(source);
                    return Ok(Found::without_body(meta, source));
                }
                self.memory.invalidate(path).await;
                (verdict != Usable::Gone).then_some(meta)
            }
            None => None,
        };
        // Concurrent lookups collapse into one load; only the loader learns where it looked,
        // and only its request gets the upstream's answer (to relay, or the probe's body):
        // `failed` is set only in the request whose load failed.
        let loaded = Mutex::new(None);
        let failed = Mutex::new(None);
        let kept = stale.clone();
        let meta = self
            .memory
            .try_get_with(path.to_string(), async {
                match self.load(path, route, ask, stale).await {
                    Ok(found) => {
                        let meta = found.meta.clone();
                        *loaded.lock().expect("lookup lock") = Some(found);
                        Ok(meta)
                    }
                    Err(missed) => {
                        *failed.lock().expect("lookup lock") = Some(missed.relay);
                        Err(missed.error)
                    }
                }
            })
            .await
            .map_err(|e: Arc<LookupError>| (*e).clone());
        let meta = match (meta, failed.into_inner().expect("lookup lock")) {
            (Ok(meta), _) => meta,
            // The loader's own `not_found` keeps what its answer taught; a request that joined
            // it may have asked otherwise (a `GET` joining a `HEAD`) and must not judge by it.
            (Err(error), None) => return Err(Missed { error, relay: None }),
            (Err(error), Some(relay)) => {
                let looked_up_by_head = ask.first_byte.is_none();
                return Err(self
                    .not_found(path, error, relay, kept, looked_up_by_head)
                    .await);
            }
        };
        let found = loaded
            .into_inner()
            .expect("lookup lock")
            .unwrap_or_else(|| Found::without_body(meta, MetaSource::Memory));
        self.count(found.source);
        Ok(found)
    }

    /// A lookup that made no metadata: verdicts on the object are remembered; when the upstream
    /// failed or refused only this request (a forged signature, a client over its rate), the
    /// stale copy is kept to revalidate (or to serve stale within its grace) next time: one
    /// client's refusal neither evicts the object nor turns it into a pass for everyone. A
    /// `HEAD`'s answer without a length is no verdict: a `GET`'s body can still tell it.
    async fn not_found(
        &self,
        path: &str,
        error: LookupError,
        relay: Option<Box<Relayed>>,
        kept: Option<Arc<ObjectMeta>>,
        looked_up_by_head: bool,
    ) -> Missed {
        let keep_stale = match &error {
            LookupError::Uncacheable(Uncacheable::UnknownLength) if looked_up_by_head => true,
            LookupError::Uncacheable(why)
                if why.is_about_the_object(relay.as_ref().map(|r| r.status.as_u16())) =>
            {
                let verdict = PassVerdict {
                    why: why.clone(),
                    status: relay.as_ref().map(|r| r.status.as_u16()),
                };
                self.uncacheable.insert(path.to_string(), verdict).await;
                false
            }
            LookupError::Uncacheable(_) | LookupError::Upstream(_) => true,
        };
        if let (true, Some(stale)) = (keep_stale, kept) {
            self.memory.insert(path.to_string(), stale).await;
        }
        Missed { error, relay }
    }

    fn count(&self, source: MetaSource) {
        self.metrics
            .lookups
            .with_label_values(&[source.label()])
            .inc();
    }

    async fn load(
        &self,
        path: &str,
        route: Route,
        ask: Asker<'_>,
        mut stale: Option<Arc<ObjectMeta>>,
    ) -> Result<Found, Missed> {
        let key = ObjectMeta::meta_key(path);
        if let (Some(peers), Route::Cluster) = (&self.peers, route) {
            for peer in peers.remote_owners(&key) {
                match peers.fetch_meta(&peer, path, ask.upstream_target).await {
                    Ok(MetaAnswer::Cacheable(meta)) if self.is_consistent(&meta, path) => {
                        match from_peer::accept(&self.cfg.rules, *meta, unix_now()) {
                            Some(meta) => {
                                return Ok(Found::without_body(Arc::new(meta), MetaSource::Peer))
                            }
                            None => peers.mark_suspect(&peer, &"implausible metadata"),
                        }
                    }
                    Ok(MetaAnswer::Cacheable(meta)) => {
                        peers.mark_suspect(
                            &peer,
                            &format_args!(
                            "metadata version {} does not match this node's upstream or chunk size",
                            meta.version
                        ),
                        );
                    }
                    Ok(MetaAnswer::Uncacheable(why)) => {
                        return Err(LookupError::Uncacheable(why).into())
                    }
                    Err(e) => peers.failed(&peer, &e),
                }
            }
        }
        if let Some(meta) = self.stored_on_disk(path).await {
            // Whatever this request demands is applied by `lookup`: the load is shared.
            if usable(&meta, unix_now(), &ClientDemands::default()) == Usable::Fresh {
                return Ok(Found::without_body(meta, MetaSource::Disk));
            }
            stale = stale.or(Some(meta));
        }
        let answer = match &stale {
            Some(old) => self.revalidate(path, old, ask).await,
            None => self.ask_upstream(path, ask).await,
        };
        let found = match (answer, stale) {
            (Ok(found), _) => found,
            (
                Err(Missed {
                    error: LookupError::Upstream(e),
                    ..
                }),
                Some(old),
            ) if serves_on_failure(
                &old,
                unix_now(),
                e.is_disconnection(),
                self.cfg.rules.stale_if_error.as_secs(),
            ) =>
            {
                tracing::warn!(path, error = %e, "upstream failed; serving stale within stale-if-error");
                return Ok(Found::without_body(old, MetaSource::StaleIfError));
            }
            (Err(e), _) => return Err(e),
        };
        self.persist(path, &found.meta).await;
        Ok(found)
    }

    /// This node's disk record of `path`, fresh or still worth revalidating; records that are
    /// unreadable, for another path, upstream or chunk size, or past keeping are dropped.
    async fn stored_on_disk(&self, path: &str) -> Option<Arc<ObjectMeta>> {
        let disk = self.disk.as_ref()?;
        let key = ObjectMeta::meta_key(path);
        let raw = disk.get_meta(&key).await?;
        match serde_json::from_slice::<ObjectMeta>(&raw) {
            // Another upstream's record (the data directory outlived a change of --upstream)
            // names another object: never served for this one.
            Ok(meta)
                if self.is_consistent(&meta, path)
                    && usable(&meta, unix_now(), &ClientDemands::default()) != Usable::Gone =>
            {
                return Some(Arc::new(meta));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path, error = %e, "unreadable metadata record on disk, dropped")
            }
        }
        disk.remove_meta(&key).await;
        None
    }

    /// Keeps metadata the upstream just gave or confirmed, in memory and on disk.
    async fn remember(&self, path: &str, meta: &Arc<ObjectMeta>) {
        self.memory.insert(path.to_string(), meta.clone()).await;
        self.persist(path, meta).await;
    }

    async fn persist(&self, path: &str, meta: &ObjectMeta) {
        if let Some(disk) = &self.disk {
            let record = Bytes::from(serde_json::to_vec(meta).expect("metadata serializes"));
            if let Err(e) = disk.put_meta(&ObjectMeta::meta_key(path), record).await {
                tracing::warn!(path, error = %e, "could not persist metadata; it stays in memory only");
            }
        }
    }

    /// Whether metadata from a peer describes `path` on this node's upstream, cut in this node's
    /// chunk size: a misconfigured peer must not make this node cache foreign bytes.
    pub fn is_consistent(&self, meta: &ObjectMeta, path: &str) -> bool {
        meta.path == path
            && meta.chunk_size == self.cfg.chunk_size
            && meta.version
                == ObjectMeta::compute_version(
                    self.upstream.base(),
                    path,
                    &meta.validator,
                    meta.length,
                    meta.chunk_size,
                )
    }
}

impl MetadataStore {
    /// The key a client's target is stored under (see `Upstream::cache_key`).
    pub fn cache_key<'a>(
        &self,
        target: &'a str,
    ) -> Result<std::borrow::Cow<'a, str>, crate::upstream::SignatureError> {
        self.upstream.cache_key(target)
    }

    /// A lookup on behalf of a peer (this node owns the path's metadata): this node's own tiers
    /// and upstream only, probing from the object's start as a client's `GET` would.
    pub async fn lookup_local(
        &self,
        path: &str,
        upstream_target: Option<&Arc<str>>,
    ) -> Result<Found, Missed> {
        let ask = Asker {
            first_byte: Some(0),
            headers: &http::HeaderMap::new(),
            upstream_target,
        };
        self.find(path, Route::LocalOnly, ask, &ClientDemands::default())
            .await
    }
}
