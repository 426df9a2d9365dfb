//! The one bearer-token check, for the admin API (`--admin-token`) and the peer API
//! (`--peer-token`, and the previous one during a rotation).

use http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// The token a request presents in `Authorization: Bearer <token>`, or an empty one.
pub fn presented(headers: &HeaderMap) -> &[u8] {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .as_bytes()
}

/// Whether `headers` present one of `accepted` (an absent one never matches). Each is compared in
/// constant time, and all of them always, so a token cannot be guessed byte by byte from
/// response timing.
pub fn accepts<'a>(headers: &HeaderMap, accepted: impl IntoIterator<Item = &'a str>) -> bool {
    let presented = presented(headers);
    accepted.into_iter().fold(false, |ok, token| {
        let matches =
            presented.len() == token.len() && bool::from(presented.ct_eq(token.as_bytes()));
        ok | (matches && !token.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn tokens_must_match_exactly() {
        assert!(accepts(&with("Bearer s3cret"), ["s3cret"]));
        assert!(!accepts(&with("Bearer s3cre"), ["s3cret"]));
        assert!(!accepts(&with("Bearer s3creT"), ["s3cret"]));
        assert!(!accepts(&with("Basic s3cret"), ["s3cret"]));
        assert!(!accepts(&HeaderMap::new(), ["s3cret"]));
        assert!(
            !accepts(&with("Bearer "), [""]),
            "an empty token never matches"
        );
        assert!(accepts(
            &with("Bearer old-token"),
            ["new-token", "old-token"]
        ));
    }
}
