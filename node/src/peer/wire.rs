//! What crosses the wire between peers.

use crate::{object::ObjectMeta, policy::Uncacheable};

/// Response header of a chunk: where the owner found it (`memory`, `disk`, `upstream`).
pub const SOURCE_HEADER: &str = "x-casserole-source";
/// Request header of a metadata lookup: the path (and query) on the upstream.
pub const PATH_HEADER: &str = "x-casserole-path";
/// Request header of a metadata lookup or chunk request made for a client's signed URL: the
/// target the owner asks its upstream for (see `ObjectMeta::upstream_target`), whose key must be
/// the path the request is for.
pub const UPSTREAM_TARGET_HEADER: &str = "x-casserole-upstream-target";
/// Response header of an error answer that relays what the owner's upstream did (an error
/// status, a timeout, a broken transfer): the owner itself worked and is not suspect.
pub const RELAYED_HEADER: &str = "x-casserole-relayed";
pub const CHUNK_PREFIX: &str = "/v1/chunk/";
pub const META_PATH: &str = "/v1/meta";
/// Metadata records are small; anything bigger is not one.
pub const MAX_META_BODY: usize = 64 * 1024;

/// A metadata answer from an owner peer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum MetaAnswer {
    Cacheable(Box<ObjectMeta>),
    Uncacheable(Uncacheable),
}

/// Parses the chunk index out of a chunk request path.
pub fn chunk_index(path: &str) -> Option<u64> {
    let digits = path.strip_prefix(CHUNK_PREFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_paths_parse_strictly() {
        assert_eq!(chunk_index("/v1/chunk/0"), Some(0));
        assert_eq!(chunk_index("/v1/chunk/42"), Some(42));
        for bad in [
            "/v1/chunk/",
            "/v1/chunk/+1",
            "/v1/chunk/1a",
            "/v1/chunk/-1",
            "/v1/meta",
        ] {
            assert_eq!(chunk_index(bad), None, "{bad}");
        }
        assert_eq!(chunk_index("/v1/chunk/99999999999999999999999"), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(512))]

            #[test]
            fn chunk_paths_round_trip(index in any::<u64>()) {
                prop_assert_eq!(chunk_index(&format!("{CHUNK_PREFIX}{index}")), Some(index));
            }

            #[test]
            fn any_path_or_answer_decodes_without_panic(
                path in ".{0,40}",
                raw in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let _ = chunk_index(&path);
                let _ = serde_json::from_slice::<MetaAnswer>(&raw);
                let _ = serde_json::from_slice::<crate::object::ObjectMeta>(&raw);
            }

            #[test]
            fn metadata_answers_round_trip(length in 1u64.., fresh_for in 0u64..1_000_000) {
                let meta = crate::object::ObjectMeta {
                    fresh_until: fresh_for,
                    ..crate::test_support::object_meta("/p", length, 2 << 20)
                };
                let json = serde_json::to_vec(&MetaAnswer::Cacheable(Box::new(meta.clone()))).unwrap();
                match serde_json::from_slice::<MetaAnswer>(&json).unwrap() {
                    MetaAnswer::Cacheable(back) => {
                        prop_assert_eq!(back.version, meta.version);
                        prop_assert_eq!(back.length, meta.length);
                        prop_assert_eq!(back.fresh_until, meta.fresh_until);
                    }
                    MetaAnswer::Uncacheable(_) => prop_assert!(false, "kind changed"),
                }
            }
        }
    }
}
