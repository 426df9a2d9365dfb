//! What the cache did for one response: rendered as the RFC 9211 `Cache-Status` header and as the
//! labels of `casserole_requests_total`, from one value so the two never disagree.

use std::fmt;

use http::HeaderValue;

use crate::{
    metadata::MetaSource,
    policy::{Bypass, Uncacheable},
    source::SourceKind,
};

pub const HEADER: &str = "cache-status";
/// The cache's name in `Cache-Status`.
const CACHE: &str = "casserole";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Body bytes from a chunk source; `collapsed` when it joined a fetch already under way;
    /// `meta` says how the object's metadata was had (fresh, revalidated, stale).
    Chunks {
        origin: SourceKind,
        collapsed: bool,
        meta: MetaSource,
    },
    /// `HEAD` or `304`, answered from metadata alone.
    Metadata(MetaSource),
    /// The request alone sent it straight to the upstream.
    Bypassed(Bypass),
    /// The upstream's answer said it cannot be cached.
    Uncacheable(Uncacheable),
    /// A stored response exists, but this request differs in a header it varies on.
    VaryMiss,
}

impl CacheStatus {
    /// The `result` label: hit, miss, pass, revalidated or stale.
    pub fn result(&self) -> &'static str {
        if let Some(label) = self.staleness().map(|(label, _)| label) {
            return label;
        }
        match self {
            CacheStatus::Chunks {
                origin: SourceKind::Upstream,
                ..
            }
            | CacheStatus::Metadata(MetaSource::Upstream | MetaSource::ReplacedOnRequest) => "miss",
            CacheStatus::Chunks { .. } | CacheStatus::Metadata(_) => "hit",
            CacheStatus::Bypassed(_) | CacheStatus::Uncacheable(_) | CacheStatus::VaryMiss => {
                "pass"
            }
        }
    }

    /// The `tier` label: which tier answered (or why the cache stood aside).
    pub fn tier(&self) -> &'static str {
        match self {
            CacheStatus::Chunks { origin, .. } => origin.label(),
            CacheStatus::Metadata(_) => "metadata",
            CacheStatus::Bypassed(bypass) => bypass.label(),
            CacheStatus::Uncacheable(_) => "uncacheable",
            CacheStatus::VaryMiss => "vary_miss",
        }
    }

    /// For a stale stored object: the result label and the `Cache-Status` parameters.
    fn staleness(&self) -> Option<(&'static str, &'static str)> {
        let meta = match self {
            CacheStatus::Chunks { meta, .. } | CacheStatus::Metadata(meta) => meta,
            _ => return None,
        };
        match meta {
            MetaSource::Revalidated => Some(("revalidated", "fwd=stale; fwd-status=304")),
            MetaSource::RevalidatedOnRequest => {
                Some(("revalidated", "fwd=request; fwd-status=304"))
            }
            MetaSource::StaleIfError => Some(("stale", "fwd=stale; detail=stale-if-error")),
            MetaSource::StaleOnRequest => Some(("stale", "hit; detail=max-stale")),
            MetaSource::StaleWhileRevalidate => {
                Some(("stale", "hit; detail=stale-while-revalidate"))
            }
            _ => None,
        }
    }

    pub fn header_value(&self) -> HeaderValue {
        match self.hit_text() {
            Some(text) => HeaderValue::from_static(text),
            None => HeaderValue::from_str(&self.to_string()).expect("cache status is ASCII"),
        }
    }

    /// The text of a fresh hit, most responses' status: static rather than formatted for each
    /// (the same text `Display` writes; a test holds them together).
    fn hit_text(&self) -> Option<&'static str> {
        if self.staleness().is_some() {
            return None;
        }
        match self {
            CacheStatus::Chunks { origin, .. } => match origin {
                SourceKind::Memory => Some("casserole; hit; detail=memory"),
                SourceKind::Disk => Some("casserole; hit; detail=disk"),
                SourceKind::Peer => Some("casserole; hit; detail=peer"),
                SourceKind::Upstream => None,
            },
            CacheStatus::Metadata(MetaSource::Memory) => Some("casserole; hit; detail=metadata"),
            _ => None,
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CACHE}; ")?;
        if let Some((_, params)) = self.staleness() {
            return f.write_str(params);
        }
        match self {
            CacheStatus::Chunks {
                origin: SourceKind::Upstream,
                collapsed,
                ..
            } => {
                f.write_str("fwd=miss")?;
                if *collapsed {
                    f.write_str("; collapsed")?;
                }
                Ok(())
            }
            CacheStatus::Chunks { origin, .. } => write!(f, "hit; detail={origin}"),
            CacheStatus::Metadata(MetaSource::Upstream | MetaSource::ReplacedOnRequest) => {
                f.write_str("fwd=miss; detail=metadata")
            }
            CacheStatus::Metadata(MetaSource::Memory) => f.write_str("hit; detail=metadata"),
            CacheStatus::Metadata(source) => write!(f, "hit; detail=metadata-{}", source.label()),
            CacheStatus::Bypassed(Bypass::Method) => f.write_str("fwd=method"),
            CacheStatus::Bypassed(Bypass::Credentials) => {
                f.write_str("fwd=request; detail=credentials")
            }
            CacheStatus::Bypassed(Bypass::PassThroughRule) => f.write_str("fwd=uri-miss"),
            CacheStatus::Bypassed(Bypass::NoStore) => f.write_str("fwd=request; detail=no-store"),
            CacheStatus::Uncacheable(why) => write!(f, "fwd=uri-miss; detail={}", why.detail()),
            CacheStatus::VaryMiss => f.write_str("fwd=vary-miss"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc_9211_and_matching_labels() {
        let cases = [
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Upstream,
                    collapsed: false,
                    meta: MetaSource::Upstream,
                },
                "casserole; fwd=miss",
                ("miss", "upstream"),
            ),
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Upstream,
                    collapsed: true,
                    meta: MetaSource::Upstream,
                },
                "casserole; fwd=miss; collapsed",
                ("miss", "upstream"),
            ),
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Disk,
                    collapsed: false,
                    meta: MetaSource::Memory,
                },
                "casserole; hit; detail=disk",
                ("hit", "disk"),
            ),
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Memory,
                    collapsed: true,
                    meta: MetaSource::Disk,
                },
                "casserole; hit; detail=memory",
                ("hit", "memory"),
            ),
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Peer,
                    collapsed: false,
                    meta: MetaSource::Memory,
                },
                "casserole; hit; detail=peer",
                ("hit", "peer"),
            ),
            (
                CacheStatus::Metadata(MetaSource::Disk),
                "casserole; hit; detail=metadata-disk",
                ("hit", "metadata"),
            ),
            (
                CacheStatus::Metadata(MetaSource::Memory),
                "casserole; hit; detail=metadata",
                ("hit", "metadata"),
            ),
            (
                CacheStatus::Metadata(MetaSource::Upstream),
                "casserole; fwd=miss; detail=metadata",
                ("miss", "metadata"),
            ),
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Memory,
                    collapsed: false,
                    meta: MetaSource::Revalidated,
                },
                "casserole; fwd=stale; fwd-status=304",
                ("revalidated", "memory"),
            ),
            (
                CacheStatus::Metadata(MetaSource::StaleIfError),
                "casserole; fwd=stale; detail=stale-if-error",
                ("stale", "metadata"),
            ),
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Disk,
                    collapsed: false,
                    meta: MetaSource::StaleWhileRevalidate,
                },
                "casserole; hit; detail=stale-while-revalidate",
                ("stale", "disk"),
            ),
            (
                CacheStatus::Bypassed(Bypass::Credentials),
                "casserole; fwd=request; detail=credentials",
                ("pass", "credentials"),
            ),
            (
                CacheStatus::Chunks {
                    origin: SourceKind::Memory,
                    collapsed: false,
                    meta: MetaSource::RevalidatedOnRequest,
                },
                "casserole; fwd=request; fwd-status=304",
                ("revalidated", "memory"),
            ),
            (
                CacheStatus::Bypassed(Bypass::NoStore),
                "casserole; fwd=request; detail=no-store",
                ("pass", "no_store"),
            ),
            (
                CacheStatus::VaryMiss,
                "casserole; fwd=vary-miss",
                ("pass", "vary_miss"),
            ),
            (
                CacheStatus::Uncacheable(Uncacheable::SetCookie),
                "casserole; fwd=uri-miss; detail=set-cookie",
                ("pass", "uncacheable"),
            ),
        ];
        for (status, header, (result, tier)) in cases {
            assert_eq!(status.to_string(), header);
            assert_eq!(status.header_value(), header);
            assert_eq!((status.result(), status.tier()), (result, tier), "{header}");
        }
    }
}
