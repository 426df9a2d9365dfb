//! Helpers shared by unit tests.

use http::{header::HeaderName, HeaderMap};

/// A header map from name/value pairs (repeated names append).
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}
