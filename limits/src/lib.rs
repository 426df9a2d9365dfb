//! The one source of truth for every limit `casserole-node` enforces on its configuration.
//!
//! The node parses its flags with these functions; the operator validates a `CasseroleCache`
//! with them and derives the CRD schema (patterns, ranges, CEL rules) from the same constants,
//! so a spec the apiserver admits is one whose pods start.

mod duration;
mod pass_through;
mod rules;
mod size;
mod url;

pub use duration::{parse_duration, DURATION_PATTERN};
pub use pass_through::{compile_pass_through, PassThroughError, PASS_THROUGH_ENV_SEPARATOR};
pub use rules::{
    check_dns1035_label, check_routes, ignored_param, parse_ignored_param, parse_route,
    parse_ttl_rule, route, ttl_rule, IgnoredParam, Route, TtlRule, DNS1035_PATTERN,
    IGNORED_PARAMS_MAX, IMMUTABLE_TTL, QUERY_PARAM_NAME_PATTERN, ROUTES_MAX, TTL_RULES_MAX,
    TTL_RULE_TTL_PATTERN,
};
pub use size::{parse_size, QUANTITY_PATTERN};
pub use url::{
    check_etcd_endpoint, parse_http_url, HttpUrl, ETCD_ENDPOINT_PATTERN, HTTP_URL_PATTERN,
    URL_MAX_LEN,
};

/// Smallest `--chunk-size`, in bytes and as a quantity (for CEL's `quantity()`).
pub const CHUNK_SIZE_MIN: u64 = 64 << 10;
pub const CHUNK_SIZE_MIN_QUANTITY: &str = "64Ki";
/// Largest `--chunk-size`, in bytes and as a quantity.
pub const CHUNK_SIZE_MAX: u64 = 64 << 20;
pub const CHUNK_SIZE_MAX_QUANTITY: &str = "64Mi";

/// Largest `--readahead` (chunks fetched ahead of the one being sent).
pub const READAHEAD_MAX: usize = 64;

/// Shortest peer token the node accepts.
pub const PEER_TOKEN_MIN_LEN: usize = 16;

/// Shortest admin token the node accepts (`--admin-token`).
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;

/// Checks an admin token's length against the node's minimum.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    if token.trim().len() >= ADMIN_TOKEN_MIN_LEN {
        Ok(())
    } else {
        Err(format!("must be at least {ADMIN_TOKEN_MIN_LEN} characters"))
    }
}

/// Checks a chunk size in bytes against the node's bounds.
pub fn check_chunk_size(bytes: u64) -> Result<(), String> {
    if (CHUNK_SIZE_MIN..=CHUNK_SIZE_MAX).contains(&bytes) {
        Ok(())
    } else {
        Err(format!(
            "must be between {CHUNK_SIZE_MIN_QUANTITY} and {CHUNK_SIZE_MAX_QUANTITY}, got {bytes} bytes"
        ))
    }
}

/// Checks a readahead depth against the node's bound.
pub fn check_readahead(chunks: usize) -> Result<(), String> {
    if chunks <= READAHEAD_MAX {
        Ok(())
    } else {
        Err(format!("at most {READAHEAD_MAX}, got {chunks}"))
    }
}

/// `--surrogate-id`: the node's name in `Surrogate-Control` targets and `Surrogate-Capability`
/// keys, an HTTP token (RFC 9110 §5.6.2); empty turns `Surrogate-Control` off.
pub const SURROGATE_ID_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{0,64}$";
/// Longest `--surrogate-id`.
pub const SURROGATE_ID_MAX_LEN: usize = 64;

/// Checks a surrogate id (see [`SURROGATE_ID_PATTERN`]).
pub fn check_surrogate_id(id: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+.^_`|~-".contains(c);
    if id.len() > SURROGATE_ID_MAX_LEN {
        return Err(format!("at most {SURROGATE_ID_MAX_LEN} characters"));
    }
    match id.chars().all(token) {
        true => Ok(()),
        false => Err("must be a token: letters, digits and !#$%&'*+.^_`|~-".into()),
    }
}

/// Checks a peer token's length against the node's minimum.
pub fn check_peer_token(token: &str) -> Result<(), String> {
    if token.len() >= PEER_TOKEN_MIN_LEN {
        Ok(())
    } else {
        Err(format!("must be at least {PEER_TOKEN_MIN_LEN} characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrogate_ids_are_tokens_as_the_pattern_says() {
        let pattern = regex::Regex::new(SURROGATE_ID_PATTERN).unwrap();
        let long = "a".repeat(65);
        for id in [
            "casserole",
            "edge-1",
            "a.b_c~d",
            "",
            "two words",
            "a;b",
            "x=y",
            &long,
        ] {
            assert_eq!(check_surrogate_id(id).is_ok(), pattern.is_match(id), "{id}");
        }
        assert!(check_surrogate_id("casserole").is_ok());
        assert!(check_surrogate_id("a;b").is_err());
    }

    #[test]
    fn chunk_bounds_agree_with_their_quantities() {
        assert_eq!(parse_size(CHUNK_SIZE_MIN_QUANTITY), Ok(CHUNK_SIZE_MIN));
        assert_eq!(parse_size(CHUNK_SIZE_MAX_QUANTITY), Ok(CHUNK_SIZE_MAX));
        assert!(check_chunk_size(CHUNK_SIZE_MIN).is_ok());
        assert!(check_chunk_size(CHUNK_SIZE_MAX).is_ok());
        assert!(check_chunk_size(CHUNK_SIZE_MIN - 1).is_err());
        assert!(check_chunk_size(CHUNK_SIZE_MAX + 1).is_err());
    }

    #[test]
    fn readahead_and_token_bounds() {
        assert!(check_readahead(READAHEAD_MAX).is_ok());
        assert!(check_readahead(READAHEAD_MAX + 1).is_err());
        assert!(check_peer_token(&"x".repeat(PEER_TOKEN_MIN_LEN)).is_ok());
        assert!(check_peer_token(&"x".repeat(PEER_TOKEN_MIN_LEN - 1)).is_err());
    }
}
