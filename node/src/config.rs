//! Command-line flags and environment variables.
//!
//! Flag names of the original Go Casserole (`--address`, `--mirror-url`, `--max-memory-usage`, …)
//! are kept so existing deployments translate one to one; its environment names
//! (`UPSTREAM_SERVER`, `ETCD`, `MAX_MEMORY`, `MAX_DISK`) are honoured as fallbacks.
//!
//! Longer than 600 lines on purpose: `Config` is the one flat struct clap derives `--help` and
//! the environment names from, each flag documented where it is declared; split over files, the
//! reference a user reads would be split too. The checks between flags follow it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{parser::ValueSource, ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use regex::RegexSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A size in bytes, written as a Kubernetes quantity: `2097152`, `100M` (10^6), `512Mi` (2^20),
/// `1.5Gi`. The grammar is `casserole_limits`', shared with the operator and the CRD, so the
/// operator can pass `spec.memory.maxUsage` through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        casserole_limits::parse_size(s).map(ByteSize)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    casserole_limits::parse_duration(s)
}

fn parse_upstream(s: &str) -> Result<reqwest::Url, String> {
    let url =
        reqwest::Url::parse(s.trim()).map_err(|e| format!("invalid upstream URL {s:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "upstream scheme must be http or https, not {other:?}"
            ))
        }
    }
    if url.host_str().is_none() {
        return Err(format!("upstream URL {s:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "upstream URL {s:?} must not carry a query or fragment"
        ));
    }
    Ok(url)
}

/// The `--ttl-rule`s used when none is given: files whose names carry their version (or their
/// digest) in package ecosystems, which never change once published, though registries and
/// mirrors often serve them with no validator and no lifetime (verdaccio's npm tarballs).
const DEFAULT_TTL_RULES: [&str; 5] = [
    r"/-/[^/?]+\.tgz$=immutable",
    r"\.(deb|udeb|ddeb)$=immutable",
    r"\.rpm$=immutable",
    r"\.whl$=immutable",
    r"/blobs/sha256:[0-9a-f]{64}$=immutable",
];

#[derive(Debug, Clone, Parser)]
#[command(
    name = "casserole-node",
    version,
    about = "Casserole cache node: a chunked, tiered, streaming HTTP cache for large objects"
)]
pub struct Config {
    /// Address the client-facing HTTP listener binds.
    #[arg(long, env = "CASSEROLE_ADDRESS", default_value = "127.0.0.1:8080")]
    pub address: SocketAddr,

    /// Upstream server to mirror; request paths and queries are appended to it.
    /// Falls back to the original's UPSTREAM_SERVER variable.
    #[arg(long, visible_alias = "mirror-url", env = "CASSEROLE_UPSTREAM", value_parser = parse_upstream)]
    pub upstream: Option<reqwest::Url>,

    /// Regex on the request path (and query); matching requests are never cached. Repeat the
    /// flag for several; in CASSEROLE_PASS_THROUGH, put one per line (regexes contain commas).
    #[arg(
        long = "pass-through",
        env = "CASSEROLE_PASS_THROUGH",
        value_delimiter = casserole_limits::PASS_THROUGH_ENV_SEPARATOR
    )]
    pub pass_through: Vec<String>,

    /// Further origins by path prefix, `PREFIX=URL` (repeatable; in CASSEROLE_ROUTES one per
    /// line): `/_cdn/hf/x` with `--route /_cdn/hf/=https://cdn.example/` is
    /// `https://cdn.example/x`. Each route is its own origin for keys, validation and purge, and
    /// an upstream's redirect to a URL under a route is answered with that route on this node.
    #[arg(
        long = "route",
        env = "CASSEROLE_ROUTES",
        value_delimiter = '\n',
        value_parser = casserole_limits::parse_route
    )]
    pub routes: Vec<casserole_limits::Route>,

    /// The node follows the redirects of the route with this prefix itself (`/`: `--upstream`;
    /// repeatable; in CASSEROLE_FOLLOW_REDIRECTS one per line), only into its own origins, and
    /// caches the target under the client's path: for clients that cannot follow redirects.
    #[arg(
        long = "follow-redirects",
        env = "CASSEROLE_FOLLOW_REDIRECTS",
        value_delimiter = '\n'
    )]
    pub follow_redirects: Vec<String>,

    /// On the route with this prefix (`/`: `--upstream`), the query parameter NAME does not
    /// select the object and is left out of the cache key, `ROUTE=NAME` (repeatable; in
    /// CASSEROLE_IGNORE_QUERY_PARAMS one per line): the signature parameters of presigned URLs
    /// (`X-Amz-Signature`, `X-Amz-Date`, `X-Amz-Credential`, `Expires`, `Signature`, …), so every
    /// new signature of an object is a hit. The upstream is still asked with the client's whole
    /// URL; a hit is served to any signature, valid or not (only the origin can check one), and
    /// a URL whose `Expires` or `X-Amz-Date` + `X-Amz-Expires` has passed gets 403.
    #[arg(
        long = "ignore-query-param",
        env = "CASSEROLE_IGNORE_QUERY_PARAMS",
        value_delimiter = '\n',
        value_parser = casserole_limits::parse_ignored_param
    )]
    pub ignore_query_params: Vec<casserole_limits::IgnoredParam>,

    /// The scheme and host clients reach this node by (`https://cache.example`), for the
    /// redirects it rewrites; unset: `http://` and the request's own `Host`.
    #[arg(long, env = "CASSEROLE_PUBLIC_URL", value_parser = parse_upstream)]
    pub public_url: Option<reqwest::Url>,

    /// Freshness by path, `REGEX=DURATION` or `REGEX=immutable` (repeatable; in
    /// CASSEROLE_TTL_RULES one per line): a `200` for a matching path and query is fresh for
    /// at least DURATION, the first match counting, unless it says `no-store`, `private` or
    /// `no-cache` (other statuses keep the lifetime they state). `immutable`: never revalidated while stored, not even on a reload. Giving
    /// any rule replaces the defaults, which make the versioned files of package ecosystems
    /// immutable (npm tarballs, .deb, .rpm, wheels, OCI blobs by digest); `--ttl-rule '^$=0s'`
    /// turns them off.
    #[arg(
        long = "ttl-rule",
        env = "CASSEROLE_TTL_RULES",
        value_delimiter = '\n',
        default_values = DEFAULT_TTL_RULES,
        value_parser = casserole_limits::parse_ttl_rule
    )]
    pub ttl_rules: Vec<casserole_limits::TtlRule>,

    /// Objects whose freshness lifetime is shorter than this are not cached. By default every
    /// storable response is kept (RFC 9111 §3), however short-lived: a stale object with a
    /// validator is revalidated, and a `304` keeps every chunk.
    #[arg(long, env = "CASSEROLE_MIN_TTL", default_value = "0s", value_parser = parse_duration)]
    pub min_ttl: Duration,

    /// Lifetime of `200` responses that carry no freshness information at all (no Cache-Control
    /// max-age/s-maxage, no Expires, no Last-Modified); unset: such responses are not cached.
    #[arg(long, env = "CASSEROLE_DEFAULT_TTL", value_parser = parse_duration)]
    pub default_ttl: Option<Duration>,

    /// Cap on heuristic freshness (10 % of the time since Last-Modified, for responses without
    /// an explicit lifetime).
    #[arg(long, env = "CASSEROLE_MAX_HEURISTIC_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_heuristic_ttl: Duration,

    /// How long past its freshness a cached object may still be served while the upstream
    /// cannot be reached or times out (a `5xx` answer allows only the response's own
    /// `stale-if-error`), unless the response forbids stale serving (`must-revalidate`,
    /// `proxy-revalidate`, `s-maxage`).
    #[arg(long, env = "CASSEROLE_STALE_IF_ERROR", default_value = "10m", value_parser = parse_duration)]
    pub stale_if_error: Duration,

    /// The longest an upstream failure (`5xx` but `501`) is kept when it states a lifetime
    /// itself (`max-age`, `Expires`): the upstream is spared a storm while it fails, and the
    /// error is asked again soon after. Never in place of a copy held (that one is served stale
    /// or the error relayed), never without a stated lifetime. `0s`: failures are never stored.
    #[arg(long, env = "CASSEROLE_MAX_ERROR_TTL", default_value = "10s", value_parser = parse_duration)]
    pub max_error_ttl: Duration,

    /// The name this cache answers to in `Surrogate-Control` (an origin's directives for the
    /// caches acting on its behalf, e.g. `max-age=86400;casserole` beside a short
    /// `Cache-Control` for its clients), and sends upstream as
    /// `Surrogate-Capability: <id>="Surrogate/1.0"`. Empty: `Surrogate-Control` is not read
    /// and nothing is sent.
    #[arg(long, env = "CASSEROLE_SURROGATE_ID", default_value = "casserole")]
    pub surrogate_id: String,

    /// Size of the ranges an object is fetched and cached in.
    #[arg(long, env = "CASSEROLE_CHUNK_SIZE", default_value = "2Mi")]
    pub chunk_size: ByteSize,

    /// Chunks fetched in parallel ahead of the one being sent to a client, fixed. Unset (the
    /// default), the window adapts to the upstream's latency and throughput and the client's pace.
    #[arg(long, env = "CASSEROLE_READAHEAD")]
    pub readahead: Option<usize>,

    /// Upstream chunk fetches (connections) running at once, node-wide; an adaptive window
    /// never grows past it (nor past the fetch memory budget: 15 chunks on the default
    /// `--max-memory-usage`). 64: a 128 MiB object from an origin 50 ms away arrives in two
    /// round trips after the probe instead of three; the window narrows again on an origin
    /// whose capacity is capped.
    #[arg(long, env = "CASSEROLE_MAX_UPSTREAM_FETCHES", default_value_t = 64)]
    pub max_upstream_fetches: usize,

    /// Bytes of chunks kept in the local memory tier (falls back to MAX_MEMORY).
    #[arg(long, env = "CASSEROLE_MAX_MEMORY_USAGE", default_value = "100M")]
    pub max_memory_usage: ByteSize,

    /// Write every page of the memory tier's share of --max-memory-usage once at start-up,
    /// before serving, so a new node's first fill does not pay for the kernel handing over fresh
    /// memory. The process then holds that share from the start, and its peak resident size
    /// grows by a few MiB: leave more headroom than the 64 MiB above the budget.
    #[arg(long, env = "CASSEROLE_PREFAULT_MEMORY", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub prefault_memory: bool,

    /// Bytes of object metadata records kept in memory (on top of --max-memory-usage).
    #[arg(long, env = "CASSEROLE_MAX_METADATA_MEMORY", default_value = "32Mi")]
    pub max_metadata_memory: ByteSize,

    /// Keep chunks and metadata on disk (the cluster persistent tier).
    #[arg(long, env = "CASSEROLE_DISK_CACHE_ENABLED", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub disk_cache_enabled: bool,

    /// Directory of the disk tier.
    #[arg(long, env = "CASSEROLE_DISK_CACHE_DIR", default_value = "./data")]
    pub disk_cache_dir: PathBuf,

    /// Once the disk tier holds more than this, least recently used chunks are evicted (falls back to MAX_DISK).
    #[arg(long, env = "CASSEROLE_MAX_DISK_USAGE", default_value = "1G")]
    pub max_disk_usage: ByteSize,

    /// The size the disk tier is cleaned down to once it passes --max-disk-usage.
    #[arg(long, env = "CASSEROLE_CLEANED_DISK_USAGE", default_value = "800M")]
    pub cleaned_disk_usage: ByteSize,

    /// Address of the admin listener: /metrics, /healthz, /readyz, /purge, /preheat. Loopback
    /// unless set (the operator sets the pod's address).
    #[arg(
        long,
        env = "CASSEROLE_ADMIN_ADDRESS",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_address: SocketAddr,

    /// Timeout for connecting to the upstream.
    #[arg(long, env = "CASSEROLE_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// An upstream response whose headers or body stall for this long is abandoned.
    #[arg(long, env = "CASSEROLE_UPSTREAM_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_read_timeout: Duration,

    /// Skip TLS certificate verification of the upstream (never do this in production).
    #[arg(long, env = "CASSEROLE_UPSTREAM_INSECURE", default_value_t = false)]
    pub upstream_insecure: bool,

    /// Largest request head (request line and headers) accepted from clients.
    #[arg(long, env = "CASSEROLE_MAX_HEADER_SIZE", default_value = "64Ki")]
    pub max_header_size: ByteSize,

    /// Open connections per listener (client, admin, peer each); further clients wait in the
    /// accept backlog until one closes.
    #[arg(long, env = "CASSEROLE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Open connections per client address and listener; further ones are closed at once
    /// (0: no cap). Raise it behind a proxy that connects from few addresses.
    #[arg(
        long,
        env = "CASSEROLE_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 256
    )]
    pub max_connections_per_client: usize,

    /// Do not invalidate a path when a `POST`/`PUT`/`PATCH`/`DELETE` of it succeeds (RFC 9111
    /// §4.4), for upstreams that take writes on cached paths without changing them.
    #[arg(long, env = "CASSEROLE_NO_WRITE_INVALIDATION", default_value_t = false)]
    pub no_write_invalidation: bool,

    /// A connection that sends no request bytes within this is closed.
    #[arg(long, env = "CASSEROLE_FIRST_BYTE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub first_byte_timeout: Duration,

    /// A connection must send a complete request head (HTTP/1) or open a stream (HTTP/2) within
    /// this of connecting.
    #[arg(long, env = "CASSEROLE_REQUEST_HEAD_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_head_timeout: Duration,

    /// A response whose client takes no bytes for this long is closed and the chunks it holds
    /// are released (a stalled reader must not pin memory).
    #[arg(long, env = "CASSEROLE_CLIENT_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub client_idle_timeout: Duration,

    /// A keep-alive connection (HTTP/1 or HTTP/2) with no request in flight for this long is
    /// closed. Longer than the peer client's pool idle time (60 s), so a peer never reuses a
    /// connection this node is closing.
    #[arg(long, env = "CASSEROLE_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Interval of HTTP/2 keep-alive pings; a client that leaves one unanswered (for up to 20 s) is disconnected.
    #[arg(long, env = "CASSEROLE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// On SIGTERM, how long in-flight responses may take to finish before the node exits.
    #[arg(long, env = "CASSEROLE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "CASSEROLE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// etcd endpoints for cluster membership (repeatable or comma-separated; falls back to ETCD).
    #[arg(long, env = "CASSEROLE_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// Name that namespaces this cache's keys in etcd, so several caches can share one etcd.
    #[arg(long, env = "CASSEROLE_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,

    /// Unique, stable name of this node in the cluster (defaults to its peering address).
    #[arg(long, env = "CASSEROLE_NODE_ID")]
    pub node_id: Option<String>,

    /// URL other members reach this node's peer listener at.
    #[arg(
        long,
        env = "CASSEROLE_PEERING_ADDRESS",
        default_value = "http://127.0.0.1:8000"
    )]
    pub peering_address: String,

    /// Address the peer listener binds. Loopback unless set (the operator sets the pod's).
    #[arg(long, env = "CASSEROLE_PEER_ADDRESS", default_value = "127.0.0.1:8000")]
    pub peer_address: SocketAddr,

    /// Static peer list (peering URLs, this node's own included), an alternative to etcd.
    #[arg(long, env = "CASSEROLE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Shared secret every peer request must carry.
    #[arg(long, env = "CASSEROLE_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,

    /// File holding the shared peer secret (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "CASSEROLE_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,

    /// File holding a second peer token this node accepts (never sends) during a token
    /// rotation: nodes on the old and the new token then keep answering each other.
    #[arg(long, env = "CASSEROLE_PEER_TOKEN_PREVIOUS_FILE")]
    pub peer_token_previous_file: Option<PathBuf>,

    /// The token read from `--peer-token-previous-file` (set by `finish`).
    #[arg(skip)]
    pub peer_token_previous: Option<String>,

    /// Give up on a peer that has not answered within this time and fail over.
    #[arg(long, env = "CASSEROLE_PEER_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub peer_timeout: Duration,

    /// Keep a copy of chunks served by their owner peer in this node's memory tier too.
    #[arg(long, env = "CASSEROLE_PEER_HOT_COPY", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub peer_hot_copy: bool,

    /// Bearer token of the admin listener's purge and preheat APIs (POST /purge, POST /preheat,
    /// GET /preheat/<id>); without a token (or a token file) both are off.
    #[arg(long, env = "CASSEROLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "CASSEROLE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// How long a cluster-wide purge stays recorded in etcd: a member away for longer misses it.
    #[arg(long, env = "CASSEROLE_PURGE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub purge_ttl: Duration,

    /// Lease TTL of this node's membership record in etcd.
    #[arg(long, env = "CASSEROLE_MEMBER_TTL", default_value = "10s", value_parser = parse_duration)]
    pub member_ttl: Duration,

    /// Flags given on the command line (their ids), so legacy environment variables never
    /// override them; filled by [`Config::load`].
    #[arg(skip)]
    pub given_on_command_line: Vec<String>,

    /// The compiled `--pass-through` rules, once `finish` has checked them.
    #[arg(skip)]
    pass_through_rules: Option<RegexSet>,
}

/// Configuration errors found after parsing, each naming the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--upstream (or --mirror-url, CASSEROLE_UPSTREAM, UPSTREAM_SERVER) is required")]
    MissingUpstream,
    #[error("UPSTREAM_SERVER: {0}")]
    BadUpstreamEnv(String),
    #[error("--pass-through: {0}")]
    BadPassThrough(casserole_limits::PassThroughError),
    #[error("--chunk-size: {0}")]
    BadChunkSize(String),
    #[error("--cleaned-disk-usage ({cleaned}) must be smaller than --max-disk-usage ({max})")]
    BadDiskWatermarks { cleaned: u64, max: u64 },
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

impl Config {
    /// Parses flags and environment, then applies the original's fallback variables and checks
    /// the rules that span several flags.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_matches(Self::command().get_matches(), |name| {
            std::env::var(name).ok()
        })
    }

    /// Like [`Config::load`], from given arguments and environment (tests).
    pub fn load_from(
        args: &[&str],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let matches =
            Self::command()
                .try_get_matches_from(args)
                .map_err(|e| ConfigError::Invalid {
                    flag: "arguments",
                    message: e.to_string(),
                })?;
        Self::from_matches(matches, env)
    }

    fn from_matches(
        matches: clap::ArgMatches,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cfg.given_on_command_line = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
        cfg.finish(env)
    }

    fn given(&self, id: &str) -> bool {
        self.given_on_command_line.iter().any(|g| g == id)
    }

    /// Resolves legacy variables through `env` and validates; split out so tests need not touch
    /// the process environment.
    pub fn finish(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        self.apply_legacy_environment(env)?;
        self.check_limits()?;
        self.check_routes()?;
        self.pass_through_rules = Some(
            casserole_limits::compile_pass_through(&self.pass_through)
                .map_err(ConfigError::BadPassThrough)?,
        );
        // Token files are read once, here.
        self.peer_token = self.peer_token()?;
        self.peer_token_file = None;
        self.peer_token_previous = read_token(
            &self.peer_token_previous,
            &self.peer_token_previous_file,
            "--peer-token-previous-file",
        )?;
        self.peer_token_previous_file = None;
        self.admin_token = self.admin_token()?;
        self.admin_token_file = None;
        self.check_identity()?;
        Ok(self)
    }

    /// The original's variables (`UPSTREAM_SERVER`, `ETCD`, `MAX_MEMORY`, `MAX_DISK`), where no
    /// flag or `CASSEROLE_*` variable set the value.
    fn apply_legacy_environment(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if self.upstream.is_none() {
            if let Some(legacy) = env("UPSTREAM_SERVER") {
                self.upstream = Some(parse_upstream(&legacy).map_err(ConfigError::BadUpstreamEnv)?);
            }
        }
        if self.upstream.is_none() {
            return Err(ConfigError::MissingUpstream);
        }
        if self.etcd.is_empty() {
            if let Some(legacy) = env("ETCD") {
                self.etcd = legacy
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
        }
        let legacy_size = |name: &'static str| -> Result<Option<ByteSize>, ConfigError> {
            env(name)
                .map(|v| {
                    v.parse().map_err(|message| ConfigError::Invalid {
                        flag: name,
                        message,
                    })
                })
                .transpose()
        };
        if env("CASSEROLE_MAX_MEMORY_USAGE").is_none() && !self.given("max_memory_usage") {
            if let Some(size) = legacy_size("MAX_MEMORY")? {
                self.max_memory_usage = size;
            }
        }
        if env("CASSEROLE_MAX_DISK_USAGE").is_none() && !self.given("max_disk_usage") {
            if let Some(size) = legacy_size("MAX_DISK")? {
                self.max_disk_usage = size;
                // The original cleaned down to 80% of the maximum.
                self.cleaned_disk_usage = ByteSize(size.0 / 10 * 8);
            }
        }
        Ok(())
    }

    /// The bounds every value must keep (shared with the operator through `casserole-limits`).
    fn check_limits(&self) -> Result<(), ConfigError> {
        casserole_limits::check_chunk_size(self.chunk_size.0).map_err(ConfigError::BadChunkSize)?;
        if self.disk_cache_enabled && self.cleaned_disk_usage.0 >= self.max_disk_usage.0 {
            return Err(ConfigError::BadDiskWatermarks {
                cleaned: self.cleaned_disk_usage.0,
                max: self.max_disk_usage.0,
            });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                flag: "--max-connections",
                message: "must be at least 1".into(),
            });
        }
        for (flag, value) in [
            ("--first-byte-timeout", self.first_byte_timeout),
            ("--request-head-timeout", self.request_head_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--client-idle-timeout", self.client_idle_timeout),
            ("--http2-keepalive-interval", self.http2_keepalive_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    flag,
                    message: "must be longer than 0".into(),
                });
            }
        }
        if !(1..=256).contains(&self.max_upstream_fetches) {
            return Err(ConfigError::Invalid {
                flag: "--max-upstream-fetches",
                message: format!("must be 1 to 256, got {}", self.max_upstream_fetches),
            });
        }
        if let Some(readahead) = self.readahead {
            casserole_limits::check_readahead(readahead).map_err(|message| {
                ConfigError::Invalid {
                    flag: "--readahead",
                    message,
                }
            })?;
        }
        Ok(())
    }

    /// `--route`s: no prefix twice, and every route another flag names exists (`/` is
    /// `--upstream`'s): the routes as the upstream client will build them.
    fn check_routes(&self) -> Result<(), ConfigError> {
        casserole_limits::check_routes(
            self.routes
                .iter()
                .map(|r| (r.prefix.as_str(), r.url.as_str())),
        )
        .map_err(|(_, message)| ConfigError::Invalid {
            flag: "--route",
            message,
        })?;
        crate::upstream::Routes::new(
            self.upstream().clone(),
            &self.routes,
            &self.follow_redirects,
            &self.ignore_query_params,
        )
        .map_err(|e| ConfigError::Invalid {
            flag: e.flag,
            message: e.message,
        })?;
        let ignored = self.ignore_query_params.len();
        if ignored > casserole_limits::IGNORED_PARAMS_MAX {
            return Err(ConfigError::Invalid {
                flag: "--ignore-query-param",
                message: format!(
                    "at most {} in all, got {ignored}",
                    casserole_limits::IGNORED_PARAMS_MAX
                ),
            });
        }
        Ok(())
    }

    /// Node id, tokens and cluster settings.
    fn check_identity(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.node_id {
            // Any other text works as a member key (it is percent-encoded); an empty id has no
            // key, and the ownership hash separates id and key with a NUL byte.
            if id.trim().is_empty() || id.contains('\0') {
                return Err(ConfigError::Invalid {
                    flag: "--node-id",
                    message: "must be non-empty and contain no NUL byte".into(),
                });
            }
        }
        casserole_limits::check_surrogate_id(self.surrogate_id.trim()).map_err(|message| {
            ConfigError::Invalid {
                flag: "--surrogate-id",
                message,
            }
        })?;
        if let Some(token) = self.admin_token()? {
            if token.len() < 16 {
                return Err(ConfigError::Invalid {
                    flag: "--admin-token",
                    message: "must be at least 16 characters".into(),
                });
            }
        }
        if self.purge_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                flag: "--purge-ttl",
                message: "must be at least 1s".into(),
            });
        }
        if self.clustered() {
            match self.peer_token()? {
                Some(token) => casserole_limits::check_peer_token(&token).map_err(|message| {
                    ConfigError::Invalid {
                        flag: "--peer-token",
                        message,
                    }
                })?,
                None => return Err(ConfigError::Invalid {
                    flag: "--peer-token",
                    message:
                        "cluster mode (--etcd or --peers) needs --peer-token or --peer-token-file"
                            .into(),
                }),
            }
            if let Some(previous) = &self.peer_token_previous {
                casserole_limits::check_peer_token(previous).map_err(|message| {
                    ConfigError::Invalid {
                        flag: "--peer-token-previous-file",
                        message,
                    }
                })?;
            }
            for url in std::iter::once(&self.peering_address).chain(&self.peers) {
                parse_upstream(url).map_err(|message| ConfigError::Invalid {
                    flag: "--peering-address/--peers",
                    message,
                })?;
            }
        }
        Ok(())
    }

    /// The freshness rules the flags set.
    pub fn freshness_rules(&self) -> crate::policy::FreshnessRules {
        crate::policy::FreshnessRules {
            min_ttl: self.min_ttl,
            default_ttl: self.default_ttl,
            max_heuristic_ttl: self.max_heuristic_ttl,
            stale_if_error: self.stale_if_error,
            ttl_rules: self.ttl_rules.clone(),
            max_error_ttl: self.max_error_ttl,
            surrogate_id: self.surrogate_id(),
        }
    }

    /// `--surrogate-id`, unless empty.
    pub fn surrogate_id(&self) -> Option<String> {
        Some(self.surrogate_id.trim().to_string()).filter(|id| !id.is_empty())
    }

    pub fn upstream(&self) -> &reqwest::Url {
        self.upstream.as_ref().expect("validated in finish()")
    }

    /// The compiled `--pass-through` rules (compiled once, by `finish`).
    pub fn pass_through_set(&self) -> Result<RegexSet, ConfigError> {
        match &self.pass_through_rules {
            Some(rules) => Ok(rules.clone()),
            None => casserole_limits::compile_pass_through(&self.pass_through)
                .map_err(ConfigError::BadPassThrough),
        }
    }

    /// Ownership hashes on member ids, so the default must be unique and stable: the peering URL
    /// is both (Kubernetes passes the pod name instead).
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| self.peering_address.clone())
    }

    /// Whether this node shares chunks with others (etcd or a static peer list).
    pub fn clustered(&self) -> bool {
        !self.etcd.is_empty() || !self.peers.is_empty()
    }

    /// The shared peer secret from `--peer-token` or `--peer-token-file`.
    pub fn peer_token(&self) -> Result<Option<String>, ConfigError> {
        read_token(&self.peer_token, &self.peer_token_file, "--peer-token-file")
    }
}

impl Config {
    /// The admin token from `--admin-token` or `--admin-token-file`; `None` turns purging off.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        read_token(
            &self.admin_token,
            &self.admin_token_file,
            "--admin-token-file",
        )
    }
}

/// A secret given inline, else read from a file (e.g. a mounted Kubernetes Secret), trimmed.
fn read_token(
    inline: &Option<String>,
    file: &Option<PathBuf>,
    file_flag: &'static str,
) -> Result<Option<String>, ConfigError> {
    if let Some(token) = inline {
        return Ok(Some(token.trim().to_string()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(file).map_err(|e| ConfigError::Invalid {
        flag: file_flag,
        message: format!("{}: {e}", file.display()),
    })?;
    Ok(Some(token.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["casserole-node"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap().finish(|_| None)
    }

    #[test]
    fn a_previous_peer_token_is_read_checked_and_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (current, previous) = (dir.path().join("token"), dir.path().join("previous"));
        std::fs::write(&current, "current-token-0123456789\n").unwrap();
        std::fs::write(&previous, "previous-token-0123456789\n").unwrap();
        let args = |prev: &std::path::Path| {
            vec![
                "--upstream".to_string(),
                "http://x".into(),
                "--peers".into(),
                "http://127.0.0.1:1".into(),
                format!("--peer-token-file={}", current.display()),
                format!("--peer-token-previous-file={}", prev.display()),
            ]
        };
        let a = args(&previous);
        let c = parse(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            c.peer_token_previous.as_deref(),
            Some("previous-token-0123456789")
        );
        std::fs::write(&previous, "short").unwrap();
        let err = parse(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err();
        assert!(
            err.to_string().contains("--peer-token-previous-file"),
            "{err}"
        );
    }

    #[test]
    fn the_surrogate_id_is_a_token_or_empty() {
        let with = |id: &str| parse(&["--upstream", "http://x", &format!("--surrogate-id={id}")]);
        assert_eq!(
            with("edge-1")
                .unwrap()
                .freshness_rules()
                .surrogate_id
                .as_deref(),
            Some("edge-1")
        );
        assert_eq!(with("").unwrap().freshness_rules().surrogate_id, None);
        for bad in ["two words", "a;b", "quo\"te", "x=y"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("--surrogate-id"), "{bad}: {err}");
        }
        let default = parse(&["--upstream", "http://x"]).unwrap();
        assert_eq!(default.surrogate_id().as_deref(), Some("casserole"));
    }

    #[test]
    fn sizes_follow_kubernetes_quantities() {
        assert_eq!("100M".parse::<ByteSize>().unwrap().0, 100_000_000);
        assert_eq!("512Mi".parse::<ByteSize>().unwrap().0, 512 * 1024 * 1024);
        assert_eq!("1G".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert_eq!("2097152".parse::<ByteSize>().unwrap().0, 2 * 1024 * 1024);
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn original_flag_names_are_accepted() {
        let c = parse(&[
            "--mirror-url",
            "http://example.com/base",
            "--max-memory-usage",
            "1G",
            "--disk-cache-enabled",
            "false",
            "--disk-cache-dir",
            "/tmp/x",
            "--etcd",
            "http://a:2379,http://b:2379",
            "--peering-address",
            "http://10.0.0.1:8000",
            "--address",
            "127.0.0.1:9999",
            "--peer-token",
            "0123456789abcdef",
        ])
        .unwrap();
        assert_eq!(c.upstream().as_str(), "http://example.com/base");
        assert_eq!(c.max_memory_usage.0, 1_000_000_000);
        assert!(!c.disk_cache_enabled);
        assert_eq!(c.etcd.len(), 2);
    }

    #[test]
    fn legacy_sizes_never_override_a_flag() {
        let env = |k: &str| match k {
            "MAX_MEMORY" => Some("2G".to_string()),
            "MAX_DISK" => Some("10G".to_string()),
            _ => None,
        };
        let flagged = Config::load_from(
            &[
                "casserole-node",
                "--upstream",
                "http://x",
                "--max-memory-usage",
                "1G",
            ],
            env,
        )
        .unwrap();
        assert_eq!(flagged.max_memory_usage.0, 1_000_000_000, "the flag wins");
        assert_eq!(
            flagged.max_disk_usage.0, 10_000_000_000,
            "the legacy variable fills in"
        );
        assert_eq!(flagged.cleaned_disk_usage.0, 8_000_000_000);
    }

    #[test]
    fn legacy_environment_is_a_fallback() {
        let c = Config::try_parse_from(["casserole-node", "--peer-token", "0123456789abcdef"])
            .unwrap()
            .finish(|k| match k {
                "UPSTREAM_SERVER" => Some("https://mirror.example/".into()),
                "ETCD" => Some("http://etcd:2379".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(c.upstream().host_str(), Some("mirror.example"));
        assert_eq!(c.etcd, vec!["http://etcd:2379".to_string()]);
    }

    #[test]
    fn bad_input_names_the_flag() {
        assert!(matches!(parse(&[]), Err(ConfigError::MissingUpstream)));
        let err = parse(&["--upstream", "http://x", "--pass-through", "("]).unwrap_err();
        assert!(err.to_string().contains("--pass-through"), "{err}");
        let err = parse(&[
            "--upstream",
            "http://x",
            "--max-disk-usage",
            "1G",
            "--cleaned-disk-usage",
            "2G",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--cleaned-disk-usage"), "{err}");
        assert!(Config::try_parse_from(["casserole-node", "--upstream", "ftp://x"]).is_err());
        let err = parse(&["--upstream", "http://x", "--peers", "http://127.0.0.1:1"]).unwrap_err();
        assert!(err.to_string().contains("--peer-token"), "{err}");
        let err = parse(&["--upstream", "http://x", "--admin-token", "short"]).unwrap_err();
        assert!(err.to_string().contains("--admin-token"), "{err}");
        let err = parse(&[
            "--upstream",
            "http://x",
            "--admin-token-file",
            "/nonexistent/t",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--admin-token-file"), "{err}");
        let err = parse(&["--upstream", "http://x", "--node-id", ""]).unwrap_err();
        assert!(err.to_string().contains("--node-id"), "{err}");
        let err = parse(&["--upstream", "http://x", "--max-upstream-fetches", "0"]).unwrap_err();
        assert!(err.to_string().contains("--max-upstream-fetches"), "{err}");
        let c = parse(&["--upstream", "http://x"]).unwrap();
        assert_eq!((c.readahead, c.max_upstream_fetches), (None, 64));
    }

    #[test]
    fn flags_that_name_a_route_must_name_one() {
        let base = ["--upstream", "http://x", "--route", "/cdn/=http://cdn"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(&args).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(with(&["--follow-redirects", "/"]).is_ok());
        assert!(with(&["--follow-redirects", "/cdn"]).is_ok());
        assert!(with(&["--ignore-query-param", "/cdn/=X-Amz-Signature"]).is_ok());
        let err = with(&["--follow-redirects", "/other/"]).unwrap_err();
        assert!(
            err.contains("--follow-redirects") && err.contains("names no route"),
            "{err}"
        );
        let err = with(&["--ignore-query-param", "/other/=Signature"]).unwrap_err();
        assert!(
            err.contains("--ignore-query-param") && err.contains("names no route"),
            "{err}"
        );
        let err = with(&["--route", "/cdn/=http://again"]).unwrap_err();
        assert!(
            err.contains("--route") && err.contains("routed twice"),
            "{err}"
        );
        assert!(matches!(
            parse(&["--upstream", "http://x", "--chunk-size", "1"]),
            Err(ConfigError::BadChunkSize(_))
        ));
        assert!(Config::try_parse_from(["casserole-node", "--chunk-size", "+1k"]).is_err());
    }

    #[test]
    fn pass_through_patterns_keep_their_commas() {
        let c = parse(&[
            "--upstream",
            "http://x",
            "--pass-through",
            "^/a{1,3}$",
            "--pass-through",
            "\\.sig$",
        ])
        .unwrap();
        assert_eq!(c.pass_through, ["^/a{1,3}$", "\\.sig$"]);
        assert!(c.pass_through_set().unwrap().is_match("/aaa"));
        // One pattern per line in the environment variable: commas stay in the pattern.
        use clap::CommandFactory;
        let cmd = Config::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "pass_through")
            .unwrap();
        assert_eq!(arg.get_value_delimiter(), Some('\n'));
    }

    #[test]
    fn the_memory_budget_is_prefaulted_only_when_asked() {
        assert!(!parse(&["--upstream", "http://x"]).unwrap().prefault_memory);
        for on in [&["--prefault-memory"][..], &["--prefault-memory", "true"]] {
            let args: Vec<&str> = ["--upstream", "http://x"]
                .iter()
                .chain(on)
                .copied()
                .collect();
            assert!(parse(&args).unwrap().prefault_memory, "{on:?}");
        }
        let off = parse(&["--upstream", "http://x", "--prefault-memory=false"]).unwrap();
        assert!(!off.prefault_memory);
    }

    #[test]
    fn connection_bounds_have_defaults_and_refuse_zero() {
        let c = parse(&["--upstream", "http://x"]).unwrap();
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.max_connections_per_client, 256);
        assert!(!c.no_write_invalidation);
        assert!(c.admin_address.ip().is_loopback() && c.peer_address.ip().is_loopback());
        let off = parse(&["--upstream", "http://x", "--no-write-invalidation"]).unwrap();
        assert!(off.no_write_invalidation);
        assert_eq!(c.first_byte_timeout, Duration::from_secs(10));
        assert_eq!(c.request_head_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.http2_keepalive_interval, Duration::from_secs(30));
        assert_eq!(c.max_metadata_memory.0, 32 << 20);
        for (flag, value) in [
            ("--max-connections", "0"),
            ("--first-byte-timeout", "0s"),
            ("--request-head-timeout", "0ms"),
            ("--idle-timeout", "0"),
            ("--http2-keepalive-interval", "0s"),
        ] {
            let err = parse(&["--upstream", "http://x", flag, value]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }
}
