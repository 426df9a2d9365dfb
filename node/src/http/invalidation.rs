//! What the front end invalidates (RFC 9111 §4.4), here and cluster-wide: the targets of a
//! successful write, and a path whose reload found a new version.

use http::{header, HeaderMap, StatusCode};

use super::serve::Front;
use crate::object::{ObjectMeta, Validator};

/// Whether an answer to an unsafe request invalidates: only a `2xx` ("non-error" is read as
/// success, RFC 9111 §4.4). A redirect — a login page, a directory's trailing slash, a `POST`
/// answered `303` — changed nothing the cache can know of.
pub(super) fn write_invalidates(status: StatusCode) -> bool {
    status.is_success()
}

/// Whether a reload that found `meta` names a new version worth a cluster-wide purge: not when
/// the object has no validator, as every lookup of such an object is a "new" version (its
/// version is a random lookup token), so every reload would purge.
pub(super) fn is_announced(meta: &ObjectMeta) -> bool {
    !matches!(meta.validator, Validator::Unvalidated(_))
}

impl Front {
    /// After an unsafe request on `path` answered `status`: the path, and the URIs in
    /// `Location` and `Content-Location` when they are this upstream's (never another host's).
    pub(super) async fn after_write(&self, path: &str, status: StatusCode, headers: &HeaderMap) {
        if !self.write_invalidation || !write_invalidates(status) {
            return;
        }
        self.invalidate(path).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let named = headers.get(name).and_then(|v| v.to_str().ok());
            let other = named.and_then(|r| self.upstream.path_of(path, r));
            // Keyed as a client's request for it would be (an expired signature still names it).
            let other = other.map(|o| match self.upstream.cache_key(&o) {
                Ok(key) => key.into_owned(),
                Err(_) => o,
            });
            if let Some(other) = other {
                if other != path {
                    self.invalidate(&other).await;
                }
            }
        }
    }

    /// The metadata here at once (the next request looks the object up afresh), then the other
    /// members through an invalidation of the path.
    async fn invalidate(&self, path: &str) {
        self.metadata.purge_path(path).await;
        self.purge_cluster_wide(path, "a successful unsafe request (invalidation)");
    }

    /// A client's reload found a new version here; the members (the metadata owner among them)
    /// still hold the old one as fresh. Purging the path everywhere makes every member look it
    /// up afresh — here too, once the purge comes round: one more lookup, never the old bytes.
    pub(super) fn announce_new_version(&self, path: &str, meta: &ObjectMeta) {
        if !is_announced(meta) {
            return;
        }
        if self.invalidator.as_ref().is_some_and(|p| p.is_clustered()) {
            self.purge_cluster_wide(path, "a client's reload found a new version");
        }
    }

    /// Queued, never awaited: invalidations of a path are coalesced per window and written to
    /// etcd by one task (see `purge::coalesce`), so a request never waits on etcd and a burst of
    /// requests costs one record per path.
    fn purge_cluster_wide(&self, path: &str, why: &'static str) {
        if let Some(purger) = &self.invalidator {
            purger.invalidate(path, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::object_meta;

    #[test]
    fn only_a_2xx_to_a_write_invalidates() {
        for (code, invalidates) in [
            (200, true),
            (201, true),
            (204, true),
            (301, false),
            (302, false),
            (303, false),
            (304, false),
            (404, false),
            (500, false),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(write_invalidates(status), invalidates, "{code}");
        }
    }

    #[test]
    fn a_reload_of_an_object_without_a_validator_is_not_announced() {
        let validated = object_meta("/a", 10, 4);
        assert!(is_announced(&validated));
        let unvalidated = ObjectMeta {
            validator: Validator::Unvalidated("0123456789abcdef".into()),
            ..validated
        };
        assert!(!is_announced(&unvalidated));
    }
}
