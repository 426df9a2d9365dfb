//! Which of an upstream response's headers a cached response carries: every end-to-end header
//! (RFC 9111 §3.1), in the upstream's order, several values of one name included.

use http::{header, HeaderMap, HeaderName};

use super::cache_control::CacheControl;
use crate::object::field_text;

/// Headers the cache itself sets on every cached response (length, ranges, age, its own status);
/// the upstream's copies would be wrong for a range or a later hit. `Date` is the upstream's:
/// it says when the response was generated, and `Age` counts from it (RFC 9110 §6.6.1).
const SET_BY_THE_CACHE: [&str; 5] = [
    "content-length",
    "content-range",
    "accept-ranges",
    "age",
    "cache-status",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded in either direction.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// What this node adds to `Via` in every request it sends upstream (RFC 9110 §7.6.3: a gateway
/// MUST).
pub const VIA: &str = "1.1 casserole";

/// `headers` minus hop-by-hop headers and the headers named in `Connection` (RFC 9110 §7.6.1):
/// what an intermediary forwards, in either direction.
pub fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let listed = listed_names(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_hop_by_hop(name) && !listed.iter().any(|l| l == name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The HTTP date in header `name`, when there is one that parses.
pub fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<std::time::SystemTime> {
    super::date::parse_date(headers.get(name)?.to_str().ok()?)
}

/// The `Content-Length` of a message, when it has one that parses.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The `Max-Forwards` of an `OPTIONS` or `TRACE` request, when it has a valid one.
pub fn max_forwards(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(header::MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Field names listed in a comma-separated header, lowercased.
fn listed_names<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().trim_matches('"').trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// `headers` as a freshness calculator should read them: the qualified `no-cache="…"` and
/// `private="…"` directives only keep the named fields out of the cache (done by
/// `stored_headers`), and `proxy-revalidate` only forbids serving stale (RFC 9111 §5.2.2.8;
/// handled by the caller) — `http-cache-semantics` reads the first two as their unqualified
/// forms and the last as "stale at once".
pub fn for_lifetime(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    out.remove(header::CACHE_CONTROL);
    let cc = CacheControl::parse(headers);
    let kept = cc.render_without(|d| {
        (d.arg.is_some() && (d.name == "no-cache" || d.name == "private"))
            || d.name == "proxy-revalidate"
    });
    if let Ok(v) = http::HeaderValue::from_str(&kept) {
        if !kept.is_empty() {
            out.insert(header::CACHE_CONTROL, v);
        }
    }
    out
}

/// The end-to-end headers of `headers` to store with an object and replay on hits: all of them,
/// in order, minus hop-by-hop headers, headers named in `Connection`, names qualified by
/// `no-cache="…"`/`private="…"`, `Set-Cookie` and the headers the cache sets itself — but
/// `Content-Range`: on a response other than a `206` it is the origin's own field, stored like
/// any other (RFC 9111 §3.1); a `206`'s describes the part it carries, and `evaluate` leaves it
/// out. Values that are not visible ASCII/UTF-8 are dropped (the metadata record is text).
pub fn stored_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut excluded = listed_names(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    excluded.extend(CacheControl::parse(headers).qualified_names());
    excluded.extend(
        SET_BY_THE_CACHE
            .iter()
            .filter(|&&s| s != "content-range")
            .map(|s| s.to_string()),
    );
    // A cookie is one client's: never stored, whatever let the response get this far.
    excluded.push(header::SET_COOKIE.as_str().to_string());
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name) && !excluded.iter().any(|e| e == name.as_str()))
        .map(|(name, v)| (name.as_str().to_string(), field_text(v)))
        .collect()
}

/// The end-to-end fields of `headers` that a qualified `no-cache="…"` or `private="…"` keeps out
/// of the stored copy: they are still the origin's answer to the request that fetched it, and go
/// to that client alone (RFC 9111 §5.2.2.4, §5.2.2.7 restrict reuse and storage, not delivery).
/// Never a field the cache sets itself, nor `Set-Cookie` (a response that sets a cookie is not
/// stored; it is relayed whole).
pub fn withheld_headers(headers: &HeaderMap) -> HeaderMap {
    let qualified = CacheControl::parse(headers).qualified_names();
    let mut out = HeaderMap::new();
    if qualified.is_empty() {
        return out;
    }
    for (name, value) in &end_to_end(headers) {
        let named = qualified.iter().any(|q| q == name.as_str());
        let ours = SET_BY_THE_CACHE.contains(&name.as_str()) || name == header::SET_COOKIE;
        if named && !ours {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    #[test]
    fn fields_kept_out_by_qualified_directives_are_withheld_for_the_fetching_client() {
        let h = headers(&[
            (
                "cache-control",
                r#"max-age=60, no-cache="x-a, age", private="x-b""#,
            ),
            ("x-a", "1"),
            ("x-a", "2"),
            ("x-b", "3"),
            ("x-c", "4"),
            ("age", "5"),
        ]);
        let withheld = withheld_headers(&h);
        let got: Vec<_> = withheld
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(got, [("x-a", "1"), ("x-a", "2"), ("x-b", "3")]);
        assert!(stored_headers(&h)
            .iter()
            .all(|(n, _)| n != "x-a" && n != "x-b"));
        let plain = headers(&[("cache-control", "max-age=60, no-cache"), ("x-a", "1")]);
        assert!(withheld_headers(&plain).is_empty());
    }

    #[test]
    fn every_end_to_end_header_is_kept_in_order_with_all_its_values() {
        let h = headers(&[
            ("content-type", "application/octet-stream"),
            ("x-checksum-sha256", "abc123"),
            ("link", "<https://a>; rel=\"a\""),
            ("link", "<https://b>; rel=\"b\""),
            ("docker-content-digest", "sha256:ff"),
            ("content-disposition", "attachment; filename=\"x.bin\""),
            ("x-amz-meta-owner", "team"),
            ("x-goog-hash", "crc32c=AAAA"),
            ("x-goog-hash", "md5=BBBB"),
            ("etag", "\"v1\""),
        ]);
        assert_eq!(
            stored_headers(&h),
            vec![
                ("content-type".into(), "application/octet-stream".into()),
                ("x-checksum-sha256".into(), "abc123".into()),
                ("link".into(), "<https://a>; rel=\"a\"".into()),
                ("link".into(), "<https://b>; rel=\"b\"".into()),
                ("docker-content-digest".into(), "sha256:ff".into()),
                (
                    "content-disposition".into(),
                    "attachment; filename=\"x.bin\"".into()
                ),
                ("x-amz-meta-owner".into(), "team".into()),
                ("x-goog-hash".into(), "crc32c=AAAA".into()),
                ("x-goog-hash".into(), "md5=BBBB".into()),
                ("etag".into(), "\"v1\"".into()),
            ]
        );
    }

    #[test]
    fn forwarding_drops_hop_by_hop_and_connection_listed_headers() {
        let h = headers(&[
            ("connection", "keep-alive, X-Trace-Hop"),
            ("x-trace-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("host", "client.example"),
            ("via", "1.1 edge"),
            ("accept", "*/*"),
            ("x-end", "a"),
            ("x-end", "b"),
        ]);
        let out = end_to_end(&h);
        let names: Vec<_> = out
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("via", "1.1 edge"),
                ("accept", "*/*"),
                ("x-end", "a"),
                ("x-end", "b")
            ]
        );
        assert_eq!(max_forwards(&headers(&[("max-forwards", " 3 ")])), Some(3));
        assert_eq!(max_forwards(&headers(&[("max-forwards", "-1")])), None);
        assert_eq!(max_forwards(&HeaderMap::new()), None);
    }

    #[test]
    fn hop_by_hop_connection_listed_and_qualified_names_are_dropped() {
        let h = headers(&[
            ("connection", "x-trace, Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("transfer-encoding", "chunked"),
            (
                "cache-control",
                "max-age=3600, no-cache=\"x-internal, X-Session\", private=x-owner",
            ),
            ("x-internal", "secret"),
            ("x-session", "s"),
            ("x-owner", "o"),
            ("content-length", "10"),
            ("age", "5"),
            ("x-kept", "yes"),
            ("set-cookie", "s=1"),
        ]);
        let kept: Vec<String> = stored_headers(&h).into_iter().map(|(n, _)| n).collect();
        assert_eq!(kept, vec!["cache-control", "x-kept"]);
    }
}
