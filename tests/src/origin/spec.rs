//! What an object looks like to clients: its size, seed and the headers it is served with.

use std::time::SystemTime;

use super::content::Content;

/// Which validator the origin sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtagMode {
    /// `ETag: "…"`, usable with `If-Match` and as a cache version key.
    #[default]
    Strong,
    /// `ETag: W/"…"`: never matches `If-Match` (strong comparison), still matches `If-None-Match`.
    Weak,
    /// No `ETag` header.
    None,
}

/// Description of a generated object. Builder-style: `ObjectSpec::new(64 << 20).seed(3)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    pub size: u64,
    pub seed: u64,
    /// `Cache-Control` value; `None` sends no header.
    pub cache_control: Option<String>,
    pub etag: EtagMode,
    /// Send `Last-Modified`.
    pub last_modified: bool,
    pub content_type: Option<String>,
    /// Only the header: the body is never actually encoded.
    pub content_encoding: Option<String>,
    /// Send `Accept-Ranges: none` and ignore `Range` (always answer 200 with the full body).
    pub accept_ranges_none: bool,
    pub vary: Option<String>,
    pub set_cookie: bool,
    /// Status of a normal answer. Anything but 200 is sent with the full body and no range
    /// handling (no body for 204/304).
    pub status: u16,
    pub extra_headers: Vec<(String, String)>,
    /// Pace each response body to this many bytes per second.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Wait this long before answering each request (a distant origin).
    pub latency: Option<std::time::Duration>,
    /// No `Content-Length` on GET and HEAD (HTTP/1.1 then uses chunked encoding).
    pub chunked: bool,
    /// Requests must carry exactly this `Authorization` value, else 401.
    pub require_auth: Option<String>,
    /// Headers of the `204` that answers a write (`POST`, `PUT`, `PATCH`, `DELETE`).
    pub write_headers: Vec<(String, String)>,
    /// Status of the answer to a write (`204` unless set).
    pub write_status: u16,
}

impl ObjectSpec {
    pub fn new(size: u64) -> Self {
        ObjectSpec {
            size,
            seed: 0,
            cache_control: Some("public, max-age=3600".to_string()),
            etag: EtagMode::Strong,
            last_modified: true,
            content_type: Some("application/octet-stream".to_string()),
            content_encoding: None,
            accept_ranges_none: false,
            vary: None,
            set_cookie: false,
            status: 200,
            extra_headers: Vec::new(),
            throttle_bytes_per_sec: None,
            latency: None,
            chunked: false,
            require_auth: None,
            write_headers: Vec::new(),
            write_status: 204,
        }
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn cache_control(mut self, value: impl Into<String>) -> Self {
        self.cache_control = Some(value.into());
        self
    }
    pub fn max_age(self, seconds: u64) -> Self {
        self.cache_control(format!("public, max-age={seconds}"))
    }
    pub fn no_cache_control(mut self) -> Self {
        self.cache_control = None;
        self
    }
    pub fn etag(mut self, mode: EtagMode) -> Self {
        self.etag = mode;
        self
    }
    pub fn no_last_modified(mut self) -> Self {
        self.last_modified = false;
        self
    }
    pub fn content_type(mut self, value: impl Into<String>) -> Self {
        self.content_type = Some(value.into());
        self
    }
    pub fn content_encoding(mut self, value: impl Into<String>) -> Self {
        self.content_encoding = Some(value.into());
        self
    }
    pub fn accept_ranges_none(mut self) -> Self {
        self.accept_ranges_none = true;
        self
    }
    pub fn vary(mut self, value: impl Into<String>) -> Self {
        self.vary = Some(value.into());
        self
    }
    pub fn set_cookie(mut self) -> Self {
        self.set_cookie = true;
        self
    }
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }
    /// A header of the answer to writes of this path (e.g. `Location`).
    pub fn write_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.write_headers.push((name.into(), value.into()));
        self
    }
    /// The status writes of this path are answered with (e.g. a `303` to a result page).
    pub fn write_status(mut self, status: u16) -> Self {
        self.write_status = status;
        self
    }
    pub fn throttle(mut self, bytes_per_sec: u64) -> Self {
        self.throttle_bytes_per_sec = Some(bytes_per_sec);
        self
    }
    pub fn latency(mut self, latency: std::time::Duration) -> Self {
        self.latency = Some(latency);
        self
    }
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
    pub fn require_auth(mut self, authorization: impl Into<String>) -> Self {
        self.require_auth = Some(authorization.into());
        self
    }
}

/// A snapshot of one object version as the origin serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub path: String,
    pub len: u64,
    pub seed: u64,
    pub version: u64,
    /// The `ETag` header value as sent (quotes and `W/` included), if any.
    pub etag: Option<String>,
    /// The `Last-Modified` header value as sent, if any.
    pub last_modified: Option<String>,
    pub content: Content,
}

impl ObjectInfo {
    /// SHA-256 (hex) of the full body. Computed on demand (not at `put`) because a 1 GiB object
    /// would otherwise cost seconds even when no test looks at it.
    pub fn sha256(&self) -> String {
        self.content.sha256(0, self.len)
    }
    /// SHA-256 (hex) of the bytes `start..=end` (inclusive, as in `Range: bytes=start-end`).
    pub fn range_sha256(&self, start: u64, end: u64) -> String {
        self.content
            .sha256(start, end.saturating_add(1).min(self.len))
    }
    /// The bytes `start..=end` (inclusive); for small ranges.
    pub fn bytes(&self, start: u64, end: u64) -> Vec<u8> {
        self.content
            .bytes(start, end.saturating_add(1).min(self.len))
    }
}

/// The origin's state for one path.
#[derive(Debug, Clone)]
pub(crate) struct ObjectState {
    pub spec: ObjectSpec,
    pub version: u64,
    pub modified: SystemTime,
}

impl ObjectState {
    pub fn content(&self) -> Content {
        Content::new(self.spec.seed, self.version)
    }

    /// Strong or weak validator; seed, version and size all feed it so any content change
    /// changes it.
    pub fn etag(&self) -> Option<String> {
        let tag = format!(
            "\"{:x}-{}-{:x}\"",
            self.spec.seed, self.version, self.spec.size
        );
        match self.spec.etag {
            EtagMode::Strong => Some(tag),
            EtagMode::Weak => Some(format!("W/{tag}")),
            EtagMode::None => None,
        }
    }

    pub fn last_modified(&self) -> Option<String> {
        self.spec
            .last_modified
            .then(|| httpdate::fmt_http_date(self.modified))
    }

    pub fn info(&self, path: &str) -> ObjectInfo {
        ObjectInfo {
            path: path.to_string(),
            len: self.spec.size,
            seed: self.spec.seed,
            version: self.version,
            etag: self.etag(),
            last_modified: self.last_modified(),
            content: self.content(),
        }
    }

    /// New content version; `Last-Modified` moves forward by at least one second (its
    /// resolution) so `If-Unmodified-Since` with the old date fails.
    pub fn bump(&mut self) {
        self.version += 1;
        self.modified = later(self.modified);
    }
}

/// `now` truncated to whole seconds, but strictly after `previous`.
pub(crate) fn later(previous: SystemTime) -> SystemTime {
    let now = whole_seconds(SystemTime::now());
    let next = previous + std::time::Duration::from_secs(1);
    now.max(next)
}

pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}
