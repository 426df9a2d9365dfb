//! Client-side range handling (RFC 9110 §14): which bytes a GET asks for, and the
//! `multipart/byteranges` framing for several ranges.

use std::{
    ops::RangeInclusive,
    time::{Duration, UNIX_EPOCH},
};

use http::{header, HeaderMap};
use http_range_header::RangeUnsatisfiableError;

use crate::{
    object::ObjectMeta,
    policy::{date::parse_date, headers::http_date},
};

/// More ranges than this in one request are ignored (answered with the whole object): cheap
/// insurance against requests that fan one GET out into thousands of parts.
const MAX_RANGES: usize = 64;

/// At most this many distinct chunks may hold the first or last byte of a range of one
/// multi-range request. Those are the chunks fetched for fewer bytes than they hold (the chunks
/// inside a range are all sent to the client), so this bounds what a request can cost upstream
/// beyond what it receives: without it, 64 one-byte ranges in 64 chunks cost 64 whole chunks.
pub const MAX_EDGE_CHUNKS: usize = 16;

/// Why a [`RangeRequest::Scattered`] request is refused.
pub const SCATTERED: &str =
    "too many ranges scattered over the object (at most 16 chunks may hold a range's ends)";

#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: the whole representation, 200.
    Whole,
    /// 206 with these ranges (one, or several in multipart/byteranges).
    Partial(Vec<RangeInclusive<u64>>),
    /// 416: no range overlaps the representation.
    Unsatisfiable,
    /// 416: several ranges scattered over more than [`MAX_EDGE_CHUNKS`] chunks.
    Scattered,
}

/// Decides what a GET with these headers gets. A malformed `Range` is ignored (RFC 9110 §14.2),
/// and so is one whose `If-Range` does not match the current representation.
pub fn resolve(headers: &HeaderMap, meta: &ObjectMeta) -> RangeRequest {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeRequest::Whole;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        if !if_range_matches(crate::object::field_text(if_range).trim(), meta) {
            return RangeRequest::Whole;
        }
    }
    let parsed = match http_range_header::parse_range_header(value.trim()) {
        Ok(p) => p,
        Err(_) => return RangeRequest::Whole,
    };
    if parsed.len() > MAX_RANGES {
        return RangeRequest::Whole;
    }
    match parsed.validate(meta.length) {
        // RFC 9110 §14.2: a server MAY ignore or reject a Range of many small ranges (a denial
        // of service, §17.15). Rejected with a 416 rather than ignored: a whole answer would
        // cost the whole object upstream, a 416 costs nothing.
        Ok(ranges)
            if ranges.len() > 1 && edge_chunks(&ranges, meta.chunk_size) > MAX_EDGE_CHUNKS =>
        {
            RangeRequest::Scattered
        }
        Ok(ranges) if !ranges.is_empty() => RangeRequest::Partial(ranges),
        Ok(_) | Err(RangeUnsatisfiableError::Unsatisfiable) => RangeRequest::Unsatisfiable,
        // Overlapping or otherwise rejected sets: the server may ignore the header.
        Err(_) => RangeRequest::Whole,
    }
}

/// How many distinct chunks hold the first or last byte of one of `ranges`.
fn edge_chunks(ranges: &[RangeInclusive<u64>], chunk_size: u64) -> usize {
    let chunk_size = chunk_size.max(1);
    let mut edges: Vec<u64> = ranges
        .iter()
        .flat_map(|r| [r.start() / chunk_size, r.end() / chunk_size])
        .collect();
    edges.sort_unstable();
    edges.dedup();
    edges.len()
}

/// If-Range holds either an entity tag (strong comparison) or an HTTP date (exact match with a
/// Last-Modified, RFC 9110 §13.1.5).
fn if_range_matches(if_range: &str, meta: &ObjectMeta) -> bool {
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        return !if_range.starts_with("W/")
            && meta
                .etag
                .as_deref()
                .is_some_and(|e| !e.starts_with("W/") && e == if_range);
    }
    meta.last_modified.as_deref() == Some(if_range)
}

/// Where the bytes a request wants start, as far as the `Range` header alone tells (the
/// object's length is not known yet): the start of its first `bytes=N-…` range, else 0. Lets a
/// cold lookup's probe fetch the chunk the client wants first.
pub fn first_wanted_byte(headers: &HeaderMap) -> u64 {
    if headers.contains_key(header::IF_RANGE) {
        return 0;
    }
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return 0;
    };
    spec.split(',')
        .filter_map(|r| r.trim().split_once('-'))
        .map(|(start, _)| start.trim().parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()
        .and_then(|starts| starts.into_iter().min())
        .unwrap_or(0)
}

/// What the preconditions of a `GET`/`HEAD` say about the stored representation.
#[derive(Debug, PartialEq, Eq)]
pub enum Precondition {
    Proceed,
    /// `304 Not Modified` (`If-None-Match`, or `If-Modified-Since` without it).
    NotModified,
    /// `412 Precondition Failed`, naming the header that failed.
    Failed(&'static str),
}

/// The entity tags listed in every line of `name`, or `None` when the header is absent.
fn listed_tags(headers: &HeaderMap, name: header::HeaderName) -> Option<Vec<String>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    Some(
        values
            .map(crate::object::field_text)
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// RFC 9110 §13.2.2, in its order: `If-Match`, else `If-Unmodified-Since`; then `If-None-Match`,
/// else `If-Modified-Since`. A date that does not parse makes a date condition void, and so does
/// a representation without a `Last-Modified` for `If-Unmodified-Since`; `If-Modified-Since`
/// is then held against the stored response's `Date`, or the time it was received (RFC 9111
/// §4.3.2).
pub fn preconditions(headers: &HeaderMap, meta: &ObjectMeta) -> Precondition {
    // Parsed only for a date condition: most requests carry none.
    let modified = || {
        meta.last_modified
            .as_deref()
            .and_then(|lm| httpdate::parse_http_date(lm).ok())
    };
    let modified_or_dated = || {
        modified()
            .or_else(|| meta.header("date").and_then(parse_date))
            .unwrap_or_else(|| UNIX_EPOCH + Duration::from_secs(meta.fetched_at))
    };
    if let Some(tags) = listed_tags(headers, header::IF_MATCH) {
        // Strong comparison: only a strong tag equal to a strong ETag matches.
        let strong = meta.etag.as_deref().filter(|e| !e.starts_with("W/"));
        let holds = tags
            .iter()
            .any(|t| t == "*" || strong.is_some_and(|e| e == t));
        if !holds {
            return Precondition::Failed("If-Match");
        }
    } else if let Some(since) = http_date(headers, header::IF_UNMODIFIED_SINCE) {
        if modified().is_some_and(|modified| modified > since) {
            return Precondition::Failed("If-Unmodified-Since");
        }
    }
    if let Some(tags) = listed_tags(headers, header::IF_NONE_MATCH) {
        // Weak comparison: W/"x" and "x" match.
        let opaque = |t: &str| t.trim_start_matches("W/").to_string();
        let etag = meta.etag.as_deref().map(opaque);
        let matched = tags
            .iter()
            .any(|t| t == "*" || etag.as_deref() == Some(opaque(t).as_str()));
        return match matched {
            true => Precondition::NotModified,
            false => Precondition::Proceed,
        };
    }
    if let Some(since) = http_date(headers, header::IF_MODIFIED_SINCE) {
        if modified_or_dated() <= since {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// The framing of a multipart/byteranges body, computed up front so Content-Length is exact.
pub struct Multipart {
    pub boundary: String,
    /// Header block preceding each part.
    pub part_heads: Vec<String>,
    pub tail: String,
}

impl Multipart {
    pub fn new(ranges: &[RangeInclusive<u64>], meta: &ObjectMeta) -> Self {
        let boundary = format!("casserole-{}", &meta.version[..24]);
        let content_type = meta
            .header("content-type")
            .unwrap_or("application/octet-stream");
        let part_heads = ranges
            .iter()
            .map(|r| {
                format!(
                    "\r\n--{boundary}\r\ncontent-type: {content_type}\r\ncontent-range: bytes {}-{}/{}\r\n\r\n",
                    r.start(),
                    r.end(),
                    meta.length
                )
            })
            .collect();
        let tail = format!("\r\n--{boundary}--\r\n");
        Multipart {
            boundary,
            part_heads,
            tail,
        }
    }

    /// Saturating: ranges of a (claimed) huge object never overflow.
    pub fn content_length(&self, ranges: &[RangeInclusive<u64>]) -> u64 {
        let heads: usize = self.part_heads.iter().map(String::len).sum();
        let bodies = ranges.iter().fold(0u64, |sum, r| {
            sum.saturating_add((r.end() - r.start()).saturating_add(1))
        });
        (heads as u64)
            .saturating_add(bodies)
            .saturating_add(self.tail.len() as u64)
    }
}

#[cfg(test)]
mod hint_tests {
    use super::first_wanted_byte;
    use crate::test_support::headers;

    #[test]
    fn the_first_wanted_byte_is_a_hint_only() {
        let at = |v: &str| first_wanted_byte(&headers(&[("range", v)]));
        assert_eq!(at("bytes=700-800"), 700);
        assert_eq!(at("bytes=900-,100-200"), 100);
        assert_eq!(at("bytes=-500"), 0, "a suffix needs the length");
        assert_eq!(at("bytes=5-9,-3"), 0);
        assert_eq!(at("items=5-9"), 0);
        assert_eq!(first_wanted_byte(&headers(&[])), 0);
        let with_if_range = headers(&[("range", "bytes=700-"), ("if-range", "\"x\"")]);
        assert_eq!(first_wanted_byte(&with_if_range), 0);
        assert_eq!(at("bytes=18446744073709551615-"), u64::MAX);
        assert_eq!(at("bytes=18446744073709551616-"), 0, "past u64: no hint");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{headers, object_meta};

    fn meta() -> ObjectMeta {
        ObjectMeta {
            last_modified: Some("Tue, 15 Nov 1994 12:45:26 GMT".into()),
            ..object_meta("/a", 1000, 100)
        }
    }

    #[test]
    fn ranges_resolve_per_rfc_9110() {
        let m = meta();
        assert_eq!(resolve(&headers(&[]), &m), RangeRequest::Whole);
        assert_eq!(
            resolve(&headers(&[("range", "bytes=0-99")]), &m),
            RangeRequest::Partial(vec![0..=99])
        );
        assert_eq!(
            resolve(&headers(&[("range", "bytes=-10")]), &m),
            RangeRequest::Partial(vec![990..=999])
        );
        assert_eq!(
            resolve(&headers(&[("range", "bytes=990-5000")]), &m),
            RangeRequest::Partial(vec![990..=999])
        );
        assert_eq!(
            resolve(&headers(&[("range", "bytes=0-0,500-599")]), &m),
            RangeRequest::Partial(vec![0..=0, 500..=599])
        );
        assert_eq!(
            resolve(&headers(&[("range", "bytes=1000-")]), &m),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            resolve(&headers(&[("range", "bytes=abc")]), &m),
            RangeRequest::Whole
        );
        assert_eq!(
            resolve(&headers(&[("range", "items=0-5")]), &m),
            RangeRequest::Whole
        );
        // A couple of overlapping ranges are served as asked; many (a known amplification
        // trick) are rejected by the parser and the header ignored.
        assert_eq!(
            resolve(&headers(&[("range", "bytes=0-10,5-20")]), &m),
            RangeRequest::Partial(vec![0..=10, 5..=20])
        );
        let many: Vec<String> = (0..40).map(|i| format!("{}-{}", i, 500 + i)).collect();
        let many = format!("bytes={}", many.join(","));
        assert_eq!(
            resolve(&headers(&[("range", many.as_str())]), &m),
            RangeRequest::Whole
        );
    }

    #[test]
    fn ranges_at_the_limits_of_u64_resolve_without_overflow() {
        let m = meta();
        let max = u64::MAX;
        for (range, want) in [
            (format!("bytes={max}-"), RangeRequest::Unsatisfiable),
            (format!("bytes={max}-{max}"), RangeRequest::Unsatisfiable),
            (
                format!("bytes=0-{max}"),
                RangeRequest::Partial(vec![0..=999]),
            ),
            (
                format!("bytes=-{max}"),
                RangeRequest::Partial(vec![0..=999]),
            ),
            (
                format!("bytes=5-9,{max}-"),
                RangeRequest::Partial(vec![5..=9]),
            ),
            (
                "bytes=18446744073709551616-".into(),
                RangeRequest::Unsatisfiable,
            ),
        ] {
            assert_eq!(resolve(&headers(&[("range", &range)]), &m), want, "{range}");
        }
        let huge = ObjectMeta {
            length: max,
            ..meta()
        };
        let ranges = vec![0..=max - 1, 0..=max - 1];
        assert_eq!(Multipart::new(&ranges, &huge).content_length(&ranges), max);
    }

    #[test]
    fn many_ranges_in_many_chunks_are_refused() {
        // 100-byte chunks.
        let m = ObjectMeta {
            length: 10_000,
            ..meta()
        };
        let one_byte_each = |n: u64| {
            let list: Vec<String> = (0..n).map(|i| format!("{0}-{0}", i * 50)).collect();
            resolve(
                &headers(&[("range", &format!("bytes={}", list.join(",")))]),
                &m,
            )
        };
        // 32 ranges, two per chunk: 16 chunks.
        assert!(matches!(one_byte_each(32), RangeRequest::Partial(r) if r.len() == 32));
        assert_eq!(one_byte_each(34), RangeRequest::Scattered);
        // Big ranges cost what they send: only their edges count.
        let wide = headers(&[("range", "bytes=0-4499,5000-9999")]);
        assert!(matches!(resolve(&wide, &m), RangeRequest::Partial(r) if r.len() == 2));
        // One range is never refused.
        let one = headers(&[("range", "bytes=1-9998")]);
        assert_eq!(resolve(&one, &m), RangeRequest::Partial(vec![1..=9998]));
    }

    #[test]
    fn if_range_gates_the_range() {
        let m = meta();
        let r = |ir: &str| resolve(&headers(&[("range", "bytes=0-9"), ("if-range", ir)]), &m);
        assert_eq!(r("\"v1\""), RangeRequest::Partial(vec![0..=9]));
        assert_eq!(r("\"v0\""), RangeRequest::Whole);
        assert_eq!(r("W/\"v1\""), RangeRequest::Whole);
        assert_eq!(
            r("Tue, 15 Nov 1994 12:45:26 GMT"),
            RangeRequest::Partial(vec![0..=9])
        );
        assert_eq!(r("Wed, 16 Nov 1994 12:45:26 GMT"), RangeRequest::Whole);
    }

    #[test]
    fn conditional_requests() {
        use Precondition::*;
        let m = meta();
        let p = |pairs: &[(&str, &str)]| preconditions(&headers(pairs), &m);
        assert_eq!(p(&[]), Proceed);
        assert_eq!(p(&[("if-none-match", "\"v1\"")]), NotModified);
        assert_eq!(p(&[("if-none-match", "\"x\", W/\"v1\"")]), NotModified);
        assert_eq!(
            p(&[("if-none-match", "\"x\""), ("if-none-match", "\"v1\"")]),
            NotModified,
            "every line counts"
        );
        assert_eq!(p(&[("if-none-match", "*")]), NotModified);
        assert_eq!(p(&[("if-none-match", "\"v2\"")]), Proceed);
        let lm = "Tue, 15 Nov 1994 12:45:26 GMT";
        let before = "Mon, 14 Nov 1994 12:45:26 GMT";
        assert_eq!(p(&[("if-modified-since", lm)]), NotModified);
        assert_eq!(p(&[("if-modified-since", before)]), Proceed);
        assert_eq!(p(&[("if-modified-since", "yesterday")]), Proceed);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            p(&[("if-none-match", "\"v2\""), ("if-modified-since", lm)]),
            Proceed
        );
        // If-Match: strong comparison, evaluated first.
        assert_eq!(p(&[("if-match", "\"v1\"")]), Proceed);
        assert_eq!(p(&[("if-match", "*")]), Proceed);
        assert_eq!(p(&[("if-match", "\"v2\"")]), Failed("If-Match"));
        assert_eq!(p(&[("if-match", "W/\"v1\"")]), Failed("If-Match"));
        assert_eq!(
            p(&[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")]),
            Failed("If-Match")
        );
        assert_eq!(p(&[("if-unmodified-since", lm)]), Proceed);
        assert_eq!(
            p(&[("if-unmodified-since", before)]),
            Failed("If-Unmodified-Since")
        );
        assert_eq!(
            p(&[("if-match", "\"v1\""), ("if-unmodified-since", before)]),
            Proceed,
            "If-Unmodified-Since only without If-Match"
        );
        let mut weak = meta();
        weak.etag = Some("W/\"v1\"".into());
        let h = headers(&[("if-match", "W/\"v1\"")]);
        assert_eq!(preconditions(&h, &weak), Failed("If-Match"));
        let h = headers(&[("if-none-match", "\"v1\"")]);
        assert_eq!(preconditions(&h, &weak), NotModified);
    }

    #[test]
    fn if_modified_since_without_last_modified_is_held_against_date_or_receipt() {
        use Precondition::*;
        let date = "Tue, 15 Nov 1994 12:45:26 GMT";
        let (before, after) = (
            "Mon, 14 Nov 1994 12:45:26 GMT",
            "Wed, 16 Nov 1994 12:45:26 GMT",
        );
        let mut dated = object_meta("/a", 1000, 100);
        dated.last_modified = None;
        dated.headers = vec![("date".into(), date.into())];
        let p = |m: &ObjectMeta, since: &str| {
            preconditions(&headers(&[("if-modified-since", since)]), m)
        };
        assert_eq!(p(&dated, date), NotModified);
        assert_eq!(p(&dated, after), NotModified);
        assert_eq!(p(&dated, before), Proceed);
        // Not for If-Unmodified-Since: that is the representation's own date (RFC 9110 §13.1.4).
        let h = headers(&[("if-unmodified-since", before)]);
        assert_eq!(preconditions(&h, &dated), Proceed);
        // No Date either: the time it was received.
        let mut undated = dated.clone();
        undated.headers.clear();
        undated.fetched_at = 784_903_526; // 1994-11-15 12:45:26 UTC
        assert_eq!(p(&undated, date), NotModified);
        assert_eq!(p(&undated, before), Proceed);
    }

    #[test]
    fn multipart_length_is_exact() {
        let m = meta();
        let ranges = vec![0..=9, 100..=199];
        let mp = Multipart::new(&ranges, &m);
        let body_len: usize =
            mp.part_heads.iter().map(String::len).sum::<usize>() + 10 + 100 + mp.tail.len();
        assert_eq!(mp.content_length(&ranges), body_len as u64);
        assert!(mp.part_heads[1].contains("content-range: bytes 100-199/1000"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::proptest_config;

        fn meta_of(length: u64) -> ObjectMeta {
            ObjectMeta { length, ..meta() }
        }

        fn request(range: &str, if_range: Option<&str>) -> Option<HeaderMap> {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, range.parse().ok()?);
            if let Some(v) = if_range {
                h.insert(header::IF_RANGE, v.parse().ok()?);
            }
            Some(h)
        }

        /// Sorted, disjoint ranges inside `0..length`.
        fn disjoint_ranges() -> impl Strategy<Value = (u64, Vec<(u64, u64)>)> {
            (2u64..1 << 40).prop_flat_map(|length| {
                proptest::collection::btree_set(0..length, 2..=16).prop_map(move |cuts| {
                    let cuts: Vec<u64> = cuts.into_iter().collect();
                    let ranges = cuts.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                    (length, ranges)
                })
            })
        }

        proptest! {
            #![proptest_config(proptest_config(512))]

            #[test]
            fn any_range_header_resolves_inside_the_object(
                range in prop_oneof!["bytes=[0-9, -]{0,40}", ".{0,40}"],
                if_range in proptest::option::of(prop_oneof![
                    Just("\"v1\"".to_string()),
                    Just("Tue, 15 Nov 1994 12:45:26 GMT".to_string()),
                    ".{0,30}",
                ]),
                length in 1u64..u64::MAX / 2,
            ) {
                let m = meta_of(length);
                let Some(h) = request(&range, if_range.as_deref()) else {
                    return Ok(());
                };
                if let RangeRequest::Partial(ranges) = resolve(&h, &m) {
                    prop_assert!(!ranges.is_empty() && ranges.len() <= MAX_RANGES);
                    for r in &ranges {
                        prop_assert!(r.start() <= r.end() && *r.end() < length, "{:?}", r);
                    }
                    let mp = Multipart::new(&ranges, &m);
                    let heads: u64 = mp.part_heads.iter().map(|h| h.len() as u64).sum();
                    let bodies: u64 = ranges.iter().map(|r| r.end() - r.start() + 1).sum();
                    prop_assert_eq!(mp.content_length(&ranges), heads + bodies + mp.tail.len() as u64);
                }
            }

            #[test]
            fn written_ranges_round_trip((length, ranges) in disjoint_ranges()) {
                let text = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(",");
                let h = request(&format!("bytes={text}"), None).unwrap();
                let want: Vec<_> = ranges.iter().map(|&(a, b)| a..=b).collect();
                prop_assert_eq!(resolve(&h, &meta_of(length)), RangeRequest::Partial(want));
                // The same ranges behind a matching If-Range apply; behind another validator not.
                let h = request(&format!("bytes={text}"), Some("\"v1\"")).unwrap();
                prop_assert!(matches!(resolve(&h, &meta_of(length)), RangeRequest::Partial(_)));
                let h = request(&format!("bytes={text}"), Some("\"v2\"")).unwrap();
                prop_assert_eq!(resolve(&h, &meta_of(length)), RangeRequest::Whole);
            }

            #[test]
            fn suffix_ranges_take_the_tail(length in 1u64..1 << 40, n in 1u64..1 << 41) {
                let h = request(&format!("bytes=-{n}"), None).unwrap();
                let start = length.saturating_sub(n);
                prop_assert_eq!(resolve(&h, &meta_of(length)), RangeRequest::Partial(vec![start..=length - 1]));
            }
        }
    }
}
