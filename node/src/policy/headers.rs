//! Which of an upstream response's headers a cached response carries: every end-to-end header
//! (RFC 9111 §3.1), in the upstream's order, several values of one name included.

use http::{header, HeaderMap, HeaderName};

use super::cache_control::CacheControl;

/// Headers the cache itself sets on every cached response (length, ranges, age, its own status);
/// the upstream's copies would be wrong for a range or a later hit.
const SET_BY_THE_CACHE: [&str; 6] = [
    "content-length",
    "content-range",
    "accept-ranges",
    "age",
    "cache-status",
    "date",
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
    parse_date(headers.get(name)?.to_str().ok()?)
}

/// An HTTP date in any of the three formats RFC 9110 §5.6.7 has recipients accept. `httpdate`
/// also insists that the day of the week matches the date; a recipient has no use for that
/// check (the date is what counts), so a mismatched day name is read past.
pub fn parse_date(text: &str) -> Option<std::time::SystemTime> {
    let text = text.trim();
    if let Ok(t) = httpdate::parse_http_date(text) {
        return Some(t);
    }
    any_day_name(text).or_else(|| any_day_name(&canonical_date(text)))
}

/// `text` with the letter case of month names and `GMT` as the formats spell them and runs of
/// spaces made one (two before a one-digit day in the asctime format): what senders get wrong
/// and recipients such as Varnish and Squid read anyway.
fn canonical_date(text: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let tokens: Vec<String> = text
        .split_whitespace()
        .map(|token| {
            let canonical = MONTHS.iter().find(|m| m.eq_ignore_ascii_case(token));
            match canonical {
                Some(month) => month.to_string(),
                None if token.eq_ignore_ascii_case("gmt") => "GMT".to_string(),
                None => token.to_string(),
            }
        })
        .collect();
    let asctime = tokens.len() == 5 && MONTHS.contains(&tokens[1].as_str());
    match asctime {
        true if tokens[2].len() == 1 => format!(
            "{} {}  {} {} {}",
            tokens[0], tokens[1], tokens[2], tokens[3], tokens[4]
        ),
        _ => tokens.join(" "),
    }
}

fn any_day_name(text: &str) -> Option<std::time::SystemTime> {
    if let Ok(t) = httpdate::parse_http_date(text) {
        return Some(t);
    }
    let (day, rest) = text.split_at(text.find([',', ' '])?);
    if !day.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let names: &[&str] = if rest.starts_with(',') && day.len() > 3 {
        &[
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
        ]
    } else {
        &["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    };
    names
        .iter()
        .find_map(|name| httpdate::parse_http_date(&format!("{name}{rest}")).ok())
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
/// `no-cache="…"`/`private="…"`, `Set-Cookie` and the headers the cache sets itself. Values
/// that are not visible ASCII/UTF-8 are dropped (the metadata record is text).
pub fn stored_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut excluded = listed_names(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    excluded.extend(CacheControl::parse(headers).qualified_names());
    excluded.extend(SET_BY_THE_CACHE.iter().map(|s| s.to_string()));
    // A cookie is one client's: never stored, whatever let the response get this far.
    excluded.push(header::SET_COOKIE.as_str().to_string());
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name) && !excluded.iter().any(|e| e == name.as_str()))
        .filter_map(|(name, v)| Some((name.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    #[test]
    fn dates_are_read_in_every_format_and_with_common_slips() {
        let want = httpdate::parse_http_date("Thu, 18 Aug 2050 02:01:18 GMT").unwrap();
        for text in [
            "Thu, 18 Aug 2050 02:01:18 GMT",
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Mon, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gmt",
            "Thu,  18 Aug 2050  02:01:18 GMT",
        ] {
            assert_eq!(parse_date(text), Some(want), "{text}");
        }
        let asctime = httpdate::parse_http_date("Thu Aug  8 02:01:18 2050").ok();
        assert!(asctime.is_some() || parse_date("Mon Aug  8 02:01:18 2050").is_some());
        assert_eq!(
            parse_date("Thu Aug 8 02:01:18 2050"),
            parse_date("Mon Aug  8 02:01:18 2050")
        );
        for bad in ["0", "", "yesterday", "Thu, 18 Aug 2050"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
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
