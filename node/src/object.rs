//! Object metadata, version keys and chunk arithmetic.
//!
//! An object *version* is identified by the hash of its URL, strongest validator, length and the
//! chunk size it is cut in: a new upstream version is a new key, so chunks of two versions can
//! never be mixed and nothing is overwritten in place.

use std::{
    fmt,
    ops::RangeInclusive,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{header, HeaderMap, HeaderName};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One chunk of one object version. `version` is 64 lowercase hex chars.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ChunkKey {
    pub version: Arc<str>,
    pub index: u64,
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.version, self.index)
    }
}

/// How the cache proves that a range it fetches belongs to the version it has metadata for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Validator {
    /// Sent as `If-Match`; every range response must carry the same ETag.
    StrongEtag(String),
    /// Sent as `If-Unmodified-Since`; every range response must carry the same Last-Modified.
    LastModified(String),
    /// No validator: bytes of two responses can never be proven to belong together, so the
    /// object is only ever taken whole from one response. The token (random, per lookup) makes
    /// each such lookup a version of its own, so chunks of two lookups are never mixed.
    Unvalidated(String),
}

impl Validator {
    /// Whether ranges fetched in separate requests can be checked to belong to one version.
    pub fn validates_ranges(&self) -> bool {
        !matches!(self, Validator::Unvalidated(_))
    }
}

/// What the cache knows about one cacheable object, from the upstream's answer to `HEAD`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Path and query on the upstream.
    pub path: String,
    pub length: u64,
    pub chunk_size: u64,
    pub validator: Validator,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Representation headers replayed to clients (Content-Type, Cache-Control, …).
    pub headers: Vec<(String, String)>,
    /// Fetched only as one whole-object stream, never by ranges: the upstream ignores `Range`
    /// (or refuses it), or there is no validator to check ranges against.
    #[serde(default)]
    pub whole_only: bool,
    /// Unix seconds when the upstream answered.
    pub fetched_at: u64,
    /// Age the response already had when it was received (RFC 9111 §4.2.3).
    pub initial_age: u64,
    /// Unix seconds after which the object is stale and must be revalidated.
    pub fresh_until: u64,
    /// Stored, but revalidated before every use (`no-cache`).
    #[serde(default)]
    pub no_cache: bool,
    /// Seconds past `fresh_until` during which a stale copy may be served when the upstream
    /// answers with an error (the response's `stale-if-error`).
    #[serde(default)]
    pub stale_if_error: u64,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    #[serde(default)]
    pub must_revalidate: bool,
    /// Seconds past `fresh_until` during which a stale copy is served at once while it is
    /// revalidated in the background (`stale-while-revalidate`).
    #[serde(default)]
    pub stale_while_revalidate: u64,
    /// The values of the request headers the response varies on, in the request that it
    /// answered (RFC 9111 §4.1: its selecting header fields); absent headers are not listed.
    #[serde(default)]
    pub selecting: Vec<(String, String)>,
    /// The upstream's status (a `404` or `301` is stored as readily as a `200`, RFC 9111 §3).
    #[serde(default = "ok_status")]
    pub status: u16,
    /// Never revalidated while fresh, not even when a client asks (RFC 8246 `immutable`, or an
    /// `immutable` `--ttl-rule`).
    #[serde(default)]
    pub immutable: bool,
    pub version: String,
    /// The target the upstream is asked for when it is not `path`: the client's signed URL on a
    /// route whose signature parameters are not part of the key (`--ignore-query-param`). One
    /// request's, attached to its own copy of the metadata; never stored, and sent to an owner
    /// peer only in a header of that request.
    #[serde(skip)]
    pub upstream_target: Option<Arc<str>>,
    /// The headers above as responses carry them, rendered once (see `response_headers`).
    #[serde(skip)]
    pub rendered: RenderedHeaders,
}

/// A stored copy's response headers, rendered on first use. A clone starts empty: copies are
/// made to be changed (a revalidation merges new headers into one) and must not keep the old
/// rendering.
#[derive(Default, Debug)]
pub struct RenderedHeaders(OnceLock<HeaderMap>);

impl Clone for RenderedHeaders {
    fn clone(&self) -> Self {
        RenderedHeaders::default()
    }
}

fn ok_status() -> u16 {
    200
}

/// Selecting headers whose list members are case-insensitive and whose order selects nothing
/// (RFC 9110 §12.5.3, §12.5.4: preference is stated by weights): requests that differ only in
/// case or order choose the same stored response.
const UNORDERED_SELECTING: [&str; 2] = ["accept-encoding", "accept-language"];

/// A field value as stored text: its octets as ISO-8859-1 characters, so a value with octets
/// past ASCII (RFC 9110 §5.5 obs-text: a raw UTF-8 filename in `Content-Disposition`, an `ETag`
/// with `ü`) is kept byte for byte instead of dropped, as `http::HeaderValue::to_str` would.
pub fn field_text(value: &http::HeaderValue) -> String {
    match value.to_str() {
        Ok(ascii) => ascii.to_string(),
        Err(_) => value.as_bytes().iter().map(|&b| char::from(b)).collect(),
    }
}

/// The field value a stored text stands for (`field_text`'s inverse); `None` for text no field
/// value reads as (a character past U+00FF, a control character).
pub fn field_value(text: &str) -> Option<http::HeaderValue> {
    if text.is_ascii() {
        return http::HeaderValue::from_str(text).ok();
    }
    let octets: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(c).ok()).collect();
    http::HeaderValue::from_bytes(&octets?).ok()
}

/// The value of a selecting header: its field lines combined, each list member trimmed (and,
/// for the headers above, lowercased and sorted).
fn selecting_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let mut members: Vec<String> = lines
        .map(field_text)
        .flat_map(|v| {
            v.split(',')
                .map(|m| m.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    if UNORDERED_SELECTING.contains(&name.to_ascii_lowercase().as_str()) {
        for member in &mut members {
            *member = member.to_ascii_lowercase().replace(' ', "");
        }
        members.sort();
    }
    Some(members.join(","))
}

/// How long stale metadata is kept for a conditional revalidation, which keeps every chunk when
/// the upstream answers `304`.
const KEEP_FOR_REVALIDATION: u64 = 24 * 3600;
/// Longest `--stale-if-error` grace kept for (a week).
const STALE_IF_DISCONNECTED_MAX: u64 = 7 * 24 * 3600;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl ObjectMeta {
    /// The stored representation headers, `ETag` and `Last-Modified`, as every answer from this
    /// copy starts: rendered once per stored copy, so a hit clones a ready map instead of
    /// parsing and checking each stored header again. A header that is not valid HTTP is left
    /// out.
    pub fn response_headers(&self) -> &HeaderMap {
        self.rendered.0.get_or_init(|| {
            let mut h = HeaderMap::with_capacity(self.headers.len() + 2);
            for (name, v) in &self.headers {
                if let (Ok(name), Some(v)) =
                    (HeaderName::from_bytes(name.as_bytes()), field_value(v))
                {
                    h.append(name, v);
                }
            }
            let validators = [
                (header::ETAG, &self.etag),
                (header::LAST_MODIFIED, &self.last_modified),
            ];
            for (name, v) in validators {
                if let Some(v) = v.as_deref().and_then(field_value) {
                    h.insert(name, v);
                }
            }
            h
        })
    }

    /// What the upstream is asked for: the request's signed target, else the key.
    pub fn upstream_target(&self) -> &str {
        self.upstream_target.as_deref().unwrap_or(&self.path)
    }

    /// `meta` for a request whose upstream target is `target` (see `upstream_target`): the same
    /// `Arc` when that is the key.
    pub fn for_target(meta: Arc<ObjectMeta>, target: Option<&Arc<str>>) -> Arc<ObjectMeta> {
        match target {
            Some(t) if **t != *meta.path => Arc::new(ObjectMeta {
                upstream_target: Some(t.clone()),
                ..(*meta).clone()
            }),
            _ => meta,
        }
    }

    /// Derives the version key; call once all other fields are set.
    pub fn compute_version(
        upstream: &str,
        path: &str,
        validator: &Validator,
        length: u64,
        chunk_size: u64,
    ) -> String {
        let mut h = Sha256::new();
        for part in [upstream, path] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        match validator {
            Validator::StrongEtag(e) => h.update(format!("etag:{e}")),
            Validator::LastModified(l) => h.update(format!("lm:{l}")),
            Validator::Unvalidated(token) => h.update(format!("none:{token}")),
        }
        h.update([0]);
        h.update(length.to_be_bytes());
        h.update(chunk_size.to_be_bytes());
        hex::encode(h.finalize())
    }

    /// The request headers this response varies on (RFC 9111 §4.1), lowercased, from its stored
    /// `Vary` lines. The response was selected for a request that carried none of them (the
    /// node's own), so it answers only requests that carry none either. `Accept-Encoding` is
    /// left out: every chunk is fetched as `identity`, which every client accepts.
    pub fn varies_on(&self) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("vary"))
            .flat_map(|(_, value)| value.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty() && name != "accept-encoding")
            .collect()
    }

    /// This metadata as the answer to a request with `headers`: the values it varies on noted.
    pub fn selected_by(mut self, headers: &http::HeaderMap) -> Self {
        self.selecting = self
            .varies_on()
            .into_iter()
            .filter_map(|name| Some((selecting_value(headers, &name)?, name)))
            .map(|(value, name)| (name, value))
            .collect();
        self
    }

    /// The selecting header fields as a request carries them (to ask for the same variant).
    pub fn selecting_headers(&self) -> http::HeaderMap {
        self.selecting
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                    field_value(value)?,
                ))
            })
            .collect()
    }

    /// A header the response varies on whose value in `headers` is not the one it was selected
    /// by (a header absent from both matches), after combining field lines and normalising the
    /// whitespace around commas (RFC 9111 §4.1).
    pub fn mismatched_selecting_header(&self, headers: &http::HeaderMap) -> Option<String> {
        self.varies_on().into_iter().find(|name| {
            let stored = self
                .selecting
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str());
            selecting_value(headers, name).as_deref() != stored
        })
    }

    /// The stored status as a status code (`200` if the record holds an invalid one).
    pub fn status_code(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::OK)
    }

    pub fn chunk_count(&self) -> u64 {
        self.length.div_ceil(self.chunk_size)
    }

    /// Byte range (inclusive) of chunk `index` within the object.
    pub fn chunk_range(&self, index: u64) -> RangeInclusive<u64> {
        let start = index * self.chunk_size;
        let end = (start + self.chunk_size).min(self.length) - 1;
        start..=end
    }

    pub fn chunk_len(&self, index: u64) -> u64 {
        let r = self.chunk_range(index);
        r.end() - r.start() + 1
    }

    /// Chunks that hold the bytes of `range` (inclusive, non-empty, within the object).
    pub fn chunks_for(&self, range: &RangeInclusive<u64>) -> RangeInclusive<u64> {
        (range.start() / self.chunk_size)..=(range.end() / self.chunk_size)
    }

    pub fn chunk_key(&self, version: &Arc<str>, index: u64) -> ChunkKey {
        ChunkKey {
            version: version.clone(),
            index,
        }
    }

    /// Until when this metadata is worth keeping: past freshness, it may still be revalidated
    /// (a `304` keeps every chunk) or served stale within its grace periods.
    pub fn keep_until(&self) -> u64 {
        self.fresh_until
            .saturating_add(self.stale_if_error.max(self.stale_while_revalidate))
            .saturating_add(STALE_IF_DISCONNECTED_MAX)
            .saturating_add(KEEP_FOR_REVALIDATION)
    }

    pub fn time_to_live(&self, now: u64) -> Duration {
        Duration::from_secs(self.fresh_until.saturating_sub(now))
    }

    /// Current `Age` in seconds.
    pub fn age(&self, now: u64) -> u64 {
        self.initial_age + now.saturating_sub(self.fetched_at)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Key of the metadata record for this path, for the disk tier and for ownership.
    pub fn meta_key(path: &str) -> String {
        hex::encode(Sha256::digest(path.as_bytes()))
    }

    /// The key whose owner serves chunk `index`. The first chunk (which arrives with the probe
    /// that looks the object up) and every chunk of a whole-only object (which arrive in one
    /// stream) belong to the owner of the object's metadata, so they are fetched once.
    pub fn owner_key(&self, key: &ChunkKey) -> String {
        if key.index == 0 || self.whole_only {
            Self::meta_key(&self.path)
        } else {
            key.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_stands_for_the_field_value_octet_for_octet() {
        for octets in [
            &b"plain"[..],
            b"\"abc\xfc\"",
            "filename=\"mod\u{e8}le\"".as_bytes(),
        ] {
            let value = http::HeaderValue::from_bytes(octets).unwrap();
            let text = field_text(&value);
            assert_eq!(field_value(&text).unwrap().as_bytes(), octets);
        }
        assert_eq!(
            field_text(&http::HeaderValue::from_static("W/\"x\"")),
            "W/\"x\""
        );
        assert!(field_value("\u{263a}").is_none(), "past U+00FF: no octet");
        assert!(field_value("a\nb").is_none());
    }

    fn meta(length: u64, chunk_size: u64) -> ObjectMeta {
        let validator = Validator::StrongEtag("\"v1\"".into());
        ObjectMeta {
            path: "/a".into(),
            length,
            chunk_size,
            version: ObjectMeta::compute_version("http://u", "/a", &validator, length, chunk_size),
            validator,
            etag: Some("\"v1\"".into()),
            last_modified: None,
            headers: vec![],
            whole_only: false,
            fetched_at: 100,
            initial_age: 5,
            fresh_until: 200,
            no_cache: false,
            stale_if_error: 0,
            must_revalidate: false,
            stale_while_revalidate: 0,
            selecting: vec![],
            status: 200,
            immutable: false,
            upstream_target: None,
            rendered: Default::default(),
        }
    }

    #[test]
    fn chunk_math_covers_the_object_exactly() {
        let m = meta(10, 4);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_range(0), 0..=3);
        assert_eq!(m.chunk_range(2), 8..=9);
        assert_eq!(m.chunk_len(2), 2);
        assert_eq!(m.chunks_for(&(3..=4)), 0..=1);
        assert_eq!(m.chunks_for(&(9..=9)), 2..=2);
        let exact = meta(8, 4);
        assert_eq!(exact.chunk_count(), 2);
        assert_eq!(exact.chunk_range(1), 4..=7);
    }

    #[test]
    fn version_changes_with_validator_length_and_chunk_size() {
        let v = |val: &str, len, cs| {
            ObjectMeta::compute_version(
                "http://u",
                "/a",
                &Validator::StrongEtag(val.into()),
                len,
                cs,
            )
        };
        assert_eq!(v("\"a\"", 10, 4), v("\"a\"", 10, 4));
        assert_ne!(v("\"a\"", 10, 4), v("\"b\"", 10, 4));
        assert_ne!(v("\"a\"", 10, 4), v("\"a\"", 11, 4));
        assert_ne!(v("\"a\"", 10, 4), v("\"a\"", 10, 8));
        assert_eq!(v("\"a\"", 10, 4).len(), 64);
    }

    #[test]
    fn age_and_freshness() {
        let m = meta(10, 4);
        assert_eq!(m.age(110), 15);
        assert!(crate::policy::usable::is_fresh(&m, 199));
        assert!(!crate::policy::usable::is_fresh(&m, 200));
        assert_eq!(m.time_to_live(150), Duration::from_secs(50));
    }

    #[test]
    fn a_variant_is_chosen_by_what_its_selecting_headers_mean() {
        let request = |pairs: &[(&str, &str)]| crate::test_support::headers(pairs);
        let mut stored = meta(10, 4);
        stored.headers = vec![("vary".into(), "Accept-Language, Foo".into())];
        let stored =
            stored.selected_by(&request(&[("accept-language", "en, de"), ("foo", "1, 2")]));
        for same in [
            request(&[("accept-language", "de, en"), ("foo", "1,2")]),
            request(&[("accept-language", "eN,  De"), ("foo", "1"), ("foo", " 2 ")]),
        ] {
            assert_eq!(stored.mismatched_selecting_header(&same), None, "{same:?}");
        }
        for other in [
            request(&[("accept-language", "en"), ("foo", "1, 2")]),
            // Unknown headers keep their order and case.
            request(&[("accept-language", "en, de"), ("foo", "2, 1")]),
            request(&[("accept-language", "en, de")]),
        ] {
            assert!(
                stored.mismatched_selecting_header(&other).is_some(),
                "{other:?}"
            );
        }
    }

    #[test]
    fn response_headers_are_rendered_once_and_a_changed_copy_renders_its_own() {
        let mut stored = meta(10, 4);
        stored.headers = vec![
            ("content-type".into(), "text/plain".into()),
            ("bad name".into(), "x".into()),
        ];
        let rendered = stored.response_headers();
        assert_eq!(rendered["content-type"], "text/plain");
        assert_eq!(rendered[http::header::ETAG], "\"v1\"");
        assert_eq!(
            rendered.len(),
            2,
            "a header that is not valid HTTP is left out"
        );
        let mut changed = stored.clone();
        changed.headers = vec![("content-type".into(), "text/html".into())];
        assert_eq!(changed.response_headers()["content-type"], "text/html");
        assert_eq!(stored.response_headers()["content-type"], "text/plain");
    }
}
