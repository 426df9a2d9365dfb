//! Metadata a peer sends is input like any other: checked before it is believed.

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName};

use crate::{
    object::{field_value, ObjectMeta},
    policy::{freshness::freshness, headers::stored_headers, FreshnessRules},
};

/// How far ahead of this node's clock a peer's "fetched at" may be before it is not believed.
const CLOCK_SKEW: u64 = 60;

/// `meta` as this node will use it, or `None` when it cannot be: a non-empty object whose
/// stored headers are filtered like an upstream's, and whose freshness this node's own rules
/// allow (never longer than they would give the same headers). Whether it is the peer's view of
/// this node's own upstream is checked separately (the version).
pub fn accept(rules: &FreshnessRules, mut meta: ObjectMeta, now: u64) -> Option<ObjectMeta> {
    if meta.length == 0 || meta.fetched_at > now + CLOCK_SKEW || meta.fresh_until < meta.fetched_at
    {
        return None;
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &meta.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        headers.append(name, field_value(value)?);
    }
    meta.headers = stored_headers(&headers);
    let fetched = UNIX_EPOCH + Duration::from_secs(meta.fetched_at);
    let ours = freshness(rules, &meta.path, meta.status, &headers, fetched).ok()?;
    meta.fresh_until = meta.fresh_until.min(meta.fetched_at + ours.ttl.as_secs());
    meta.no_cache |= ours.no_cache;
    meta.must_revalidate |= ours.must_revalidate;
    meta.stale_if_error = meta.stale_if_error.min(ours.stale_if_error.as_secs());
    meta.stale_while_revalidate = meta
        .stale_while_revalidate
        .min(ours.stale_while_revalidate.as_secs());
    Some(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(headers: &[(&str, &str)], fresh_for: u64) -> ObjectMeta {
        ObjectMeta {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fetched_at: 1_000,
            fresh_until: 1_000 + fresh_for,
            ..crate::test_support::object_meta("/a", 10, 4)
        }
    }

    #[test]
    fn a_peer_cannot_stretch_freshness_or_smuggle_headers() {
        let rules = FreshnessRules::default();
        let got = accept(
            &rules,
            meta(
                &[
                    ("cache-control", "max-age=600"),
                    ("connection", "x-secret"),
                    ("x-secret", "1"),
                    ("transfer-encoding", "chunked"),
                    ("x-kept", "ok"),
                ],
                1_000_000,
            ),
            1_100,
        )
        .unwrap();
        assert_eq!(got.fresh_until, 1_600, "capped at what max-age=600 gives");
        let names: Vec<_> = got.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["cache-control", "x-kept"]);
    }

    #[test]
    fn impossible_metadata_is_refused() {
        let rules = FreshnessRules::default();
        let cc = [("cache-control", "max-age=600")];
        let mut empty = meta(&cc, 100);
        empty.length = 0;
        assert!(accept(&rules, empty, 1_100).is_none());
        assert!(
            accept(&rules, meta(&cc, 100), 500).is_none(),
            "from the future"
        );
        let no_store = meta(&[("cache-control", "no-store")], 100);
        assert!(accept(&rules, no_store, 1_100).is_none());
        let mut backwards = meta(&cc, 0);
        backwards.fresh_until = 10;
        assert!(accept(&rules, backwards, 1_100).is_none());
        let bad_header = meta(&[("bad header", "x")], 100);
        assert!(accept(&rules, bad_header, 1_100).is_none());
    }
}
