//! What a client's own `Cache-Control` asks of a stored response (RFC 9111 §5.2.1): `no-cache`,
//! `max-age` and `min-fresh` make the cache confirm its copy with the upstream first (a
//! conditional request: a `304` keeps every chunk), `only-if-cached` forbids going upstream at
//! all, and `no-store` keeps the exchange out of the cache. `Pragma: no-cache` counts as
//! `no-cache` when the request has no `Cache-Control` (RFC 9111 §5.4).
//!
//! `max-stale[=N]` accepts a stale copy by up to N seconds (any, without N) unless the response
//! forbids serving it stale; `no-transform` changes nothing: the cache never transforms bodies.

use http::{header, HeaderMap};

use super::cache_control::CacheControl;

/// The request directives that constrain which stored response may answer it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientDemands {
    /// `no-cache` (or `max-age=0` on a copy with any age): confirm with the upstream first.
    pub no_cache: bool,
    /// `max-age=N`: the stored copy may be at most this old.
    pub max_age: Option<u64>,
    /// `min-fresh=N`: the stored copy must stay fresh for this long.
    pub min_fresh: u64,
    /// Answer from what is stored, or `504`.
    pub only_if_cached: bool,
    /// Neither the request nor its response may be stored.
    pub no_store: bool,
    /// `max-stale[=N]`: a stale copy is accepted, by up to N seconds (any, without N).
    pub max_stale: Option<u64>,
}

impl ClientDemands {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut demands = ClientDemands::default();
        if !headers.contains_key(header::CACHE_CONTROL) {
            demands.no_cache = headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
            return demands;
        }
        for directive in CacheControl::parse(headers).directives() {
            // An argument that is not a number of seconds makes the directive void: it then
            // constrains nothing rather than failing the request.
            let secs = directive.arg.as_deref().and_then(|v| v.parse::<u64>().ok());
            match directive.name.as_str() {
                "no-cache" => demands.no_cache = true,
                "no-store" => demands.no_store = true,
                "only-if-cached" => demands.only_if_cached = true,
                "max-age" => {
                    if let Some(secs) = secs {
                        demands.max_age = Some(demands.max_age.map_or(secs, |m| m.min(secs)));
                    }
                }
                "min-fresh" => demands.min_fresh = demands.min_fresh.max(secs.unwrap_or(0)),
                // A malformed argument makes it void, like max-age's.
                "max-stale" if directive.arg.is_none() => demands.max_stale = Some(u64::MAX),
                "max-stale" => demands.max_stale = secs.or(demands.max_stale),
                _ => {}
            }
        }
        demands
    }

    /// Whether the request may want a stored copy confirmed with the upstream first (`no-cache`,
    /// `max-age`, `min-fresh`).
    pub fn may_ask_for_confirmation(&self) -> bool {
        self.no_cache || self.max_age.is_some() || self.min_fresh > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demands(pairs: &[(&str, &str)]) -> ClientDemands {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        ClientDemands::from_headers(&headers)
    }

    #[test]
    fn directives_are_read_per_rfc_9111() {
        assert_eq!(demands(&[]), ClientDemands::default());
        assert!(demands(&[("cache-control", "no-cache")]).no_cache);
        assert!(demands(&[("cache-control", "No-Cache")]).no_cache);
        assert!(demands(&[("pragma", "no-cache")]).no_cache);
        assert!(
            !demands(&[("pragma", "no-cache"), ("cache-control", "max-stale")]).no_cache,
            "Pragma counts only without Cache-Control"
        );
        assert!(demands(&[("cache-control", "only-if-cached")]).only_if_cached);
        assert!(demands(&[("cache-control", "no-store, max-age=5")]).no_store);
        assert_eq!(
            demands(&[
                ("cache-control", "max-age=60"),
                ("cache-control", "max-age=30")
            ])
            .max_age,
            Some(30),
            "the stricter of two"
        );
        assert_eq!(
            demands(&[("cache-control", "max-age=\"7\"")]).max_age,
            Some(7)
        );
        assert_eq!(demands(&[("cache-control", "max-age=soon")]).max_age, None);
        assert_eq!(demands(&[("cache-control", "min-fresh=20")]).min_fresh, 20);
        assert_eq!(
            demands(&[("cache-control", "no-transform")]),
            ClientDemands::default()
        );
        assert_eq!(
            demands(&[("cache-control", "max-stale")]).max_stale,
            Some(u64::MAX)
        );
        assert_eq!(
            demands(&[("cache-control", "max-stale=30")]).max_stale,
            Some(30)
        );
        assert_eq!(demands(&[("cache-control", "max-stale=x")]).max_stale, None);
    }
}
