//! `Surrogate-Control` (W3C Edge Architecture Specification 1.0): an origin's word to the
//! caches that act on its behalf, apart from the `Cache-Control` its clients get — e.g. a day
//! in the cache and a minute in browsers. The node is such a surrogate: it names itself to
//! upstreams (`Surrogate-Capability: <id>="Surrogate/1.0"`, appended by `upstream`), and
//! follows the directives aimed at it.
//!
//! Targeting: `max-age=60;mycache, no-store;othercache`. A directive aimed at another
//! surrogate is ignored; when any directive names this node's id, the untargeted ones are
//! ignored too (they are for the surrogates not named).
//!
//! What the node acts on: `no-store`, `no-store-remote` (the node stands near its clients, so
//! it is a remote surrogate; both mean "do not store"), and `max-age=<fresh>[+<extension>]`
//! (the extension: how long past freshness the copy may still be served, as a grace period).
//! Other directives (`content="ESI/1.0"`) are not acted on. The header itself is relayed to
//! clients unchanged, as every other response field; it means nothing to them.

use std::time::Duration;

use http::HeaderMap;

use super::cache_control::{self, Directive};

/// The response field, lowercase (no constant in `http`).
pub const SURROGATE_CONTROL: &str = "surrogate-control";
/// The request field a surrogate names itself in.
pub const SURROGATE_CAPABILITY: &str = "surrogate-capability";

/// What `Surrogate-Control` says to the surrogate named `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SurrogateControl {
    /// Do not store (`no-store`, `no-store-remote`).
    NoStore,
    /// Fresh for `fresh` from the response's age of zero; then servable stale for `grace`.
    /// A malformed `max-age` is a lifetime of zero (stale at once), as in `Cache-Control`.
    Lifetime { fresh: Duration, grace: Duration },
}

impl SurrogateControl {
    /// The directives of `headers`' `Surrogate-Control` lines that apply to `id`, or `None`
    /// when none that the node acts on does (then `Cache-Control` decides alone).
    pub fn parse(headers: &HeaderMap, id: &str) -> Option<Self> {
        let items: Vec<(Directive, Option<String>)> = headers
            .get_all(SURROGATE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cache_control::split_list)
            .filter_map(|item| targeted(&item))
            .collect();
        let named = items
            .iter()
            .any(|(_, t)| t.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(id)));
        let applies = |target: &Option<String>| match target {
            Some(t) => t.eq_ignore_ascii_case(id),
            None => !named,
        };
        let ours: Vec<&Directive> = items
            .iter()
            .filter(|(_, t)| applies(t))
            .map(|(d, _)| d)
            .collect();
        if ours
            .iter()
            .any(|d| d.name == "no-store" || d.name == "no-store-remote")
        {
            return Some(SurrogateControl::NoStore);
        }
        // The first `max-age` counts, as of duplicates in `Cache-Control` (RFC 9111 §4.2.1).
        let max_age = ours.iter().find(|d| d.name == "max-age")?;
        let (fresh, grace) = match max_age.arg.as_deref().and_then(lifetime) {
            Some((fresh, grace)) => (fresh, grace),
            None => (0, 0),
        };
        Some(SurrogateControl::Lifetime {
            fresh: Duration::from_secs(fresh),
            grace: Duration::from_secs(grace),
        })
    }
}

/// `directive[;target]`: the directive, and the surrogate it is aimed at.
fn targeted(item: &str) -> Option<(Directive, Option<String>)> {
    let (directive, target) = match item.rsplit_once(';') {
        // A `;` inside a quoted argument (`content="a;b"`) is not a target.
        Some((d, t)) if !t.contains('"') => (d, Some(t.trim().to_string())),
        _ => (item, None),
    };
    let directive = cache_control::parse_directive(directive)?;
    Some((directive, target.filter(|t| !t.is_empty())))
}

/// `<seconds>` or `<seconds>+<seconds>`: digits only, values too large saturate.
fn lifetime(arg: &str) -> Option<(u64, u64)> {
    let seconds = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().unwrap_or(u64::MAX))
    };
    match arg.split_once('+') {
        Some((fresh, grace)) => Some((seconds(fresh)?, seconds(grace)?)),
        None => Some((seconds(arg)?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn sc(values: &[&str]) -> Option<SurrogateControl> {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("surrogate-control", *v)).collect();
        SurrogateControl::parse(&headers(&pairs), "casserole")
    }

    fn fresh(secs: u64, grace: u64) -> Option<SurrogateControl> {
        Some(SurrogateControl::Lifetime {
            fresh: Duration::from_secs(secs),
            grace: Duration::from_secs(grace),
        })
    }

    #[test]
    fn untargeted_directives_apply_and_names_are_case_insensitive() {
        assert_eq!(sc(&["max-age=3600"]), fresh(3600, 0));
        assert_eq!(sc(&["MaX-aGe=3600"]), fresh(3600, 0));
        assert_eq!(sc(&["foobar, max-age=3600"]), fresh(3600, 0));
        assert_eq!(sc(&["max-age=60+30"]), fresh(60, 30));
        assert_eq!(sc(&["max-age=99999999999"]), fresh(99_999_999_999, 0));
        assert_eq!(sc(&["no-store"]), Some(SurrogateControl::NoStore));
        assert_eq!(sc(&["no-store-remote"]), Some(SurrogateControl::NoStore));
        assert_eq!(sc(&[]), None);
        assert_eq!(
            sc(&["content=\"ESI/1.0\""]),
            None,
            "nothing the node acts on"
        );
    }

    #[test]
    fn a_directive_aimed_elsewhere_is_ignored_and_one_aimed_here_wins() {
        assert_eq!(sc(&["max-age=3600;not-for-you"]), None);
        assert_eq!(sc(&["max-age=3600;casserole"]), fresh(3600, 0));
        assert_eq!(sc(&["max-age=3600;CASSEROLE"]), fresh(3600, 0));
        // Named: the untargeted directives are for the others.
        assert_eq!(sc(&["no-store, max-age=60;casserole"]), fresh(60, 0));
        assert_eq!(sc(&["max-age=60, no-store;cdn"]), fresh(60, 0));
        assert_eq!(
            sc(&["max-age=60;cdn", "no-store;casserole"]),
            Some(SurrogateControl::NoStore)
        );
        assert_eq!(
            sc(&["content=\"a;b\", max-age=5"]),
            fresh(5, 0),
            "a quoted ; is no target"
        );
    }

    #[test]
    fn a_malformed_lifetime_is_stale_at_once() {
        for bad in [
            "max-age =100",
            "max-age= 100",
            "max-age=1.5",
            "max-age",
            "max-age=5+",
        ] {
            assert_eq!(sc(&[bad]), fresh(0, 0), "{bad}");
        }
        assert_eq!(
            sc(&["max-age=5, max-age=600"]),
            fresh(5, 0),
            "the first counts"
        );
    }
}
