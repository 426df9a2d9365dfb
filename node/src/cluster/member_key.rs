//! Node ids as single etcd key segments.
//!
//! Ids are free text (the default is the peering URL, `http://host:port`), but keys under
//! `…/members/` are one path segment each, so an id is percent-encoded before it becomes a key:
//! `/` and `%` (and control characters and non-ASCII bytes) are escaped, everything else is
//! kept so keys stay readable in `etcdctl get --prefix`. Decoding is exact, so any id a node
//! accepts round-trips.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// What must not appear raw in a key segment: the separator, the escape character itself, and
/// (from `CONTROLS`) bytes that would make keys unreadable in tools.
const SEGMENT: &AsciiSet = &CONTROLS.add(b'/').add(b'%').add(b' ');

/// `id` as one key segment.
pub fn encode(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// The id a key segment stands for; `None` for a segment that is no encoded id (empty, holds a
/// raw `/`, or decodes to invalid UTF-8).
pub fn decode(segment: &str) -> Option<String> {
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    #[test]
    fn the_default_id_becomes_one_segment() {
        let key = encode("http://127.0.0.1:18291");
        assert_eq!(key, "http:%2F%2F127.0.0.1:18291");
        assert!(!key.contains('/'));
        assert_eq!(decode(&key).as_deref(), Some("http://127.0.0.1:18291"));
        assert_eq!(encode("node-1"), "node-1", "plain ids stay as they are");
        assert_eq!(decode("a/b"), None);
        assert_eq!(decode(""), None);
        assert_eq!(decode("%FF"), None, "not UTF-8");
    }

    /// Any string round-trips and never yields a `/`; fixed seed and bounded cases so the
    /// test is reproducible and quick.
    #[test]
    fn any_id_round_trips_as_one_segment() {
        let config = Config {
            cases: 2000,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let ids = prop_oneof![
            any::<String>(),
            "[a-z/%:.0-9 -]{1,40}",
            "https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?(/[a-z%]{0,8}){0,3}",
        ];
        runner
            .run(&ids, |id| {
                let key = encode(&id);
                prop_assert!(!key.contains('/'));
                if id.is_empty() {
                    prop_assert_eq!(decode(&key), None);
                } else {
                    prop_assert_eq!(decode(&key), Some(id));
                }
                Ok(())
            })
            .unwrap();
    }
}
