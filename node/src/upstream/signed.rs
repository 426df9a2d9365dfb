//! Signed URLs on routes whose signature parameters do not select the object
//! (`--ignore-query-param`): the cache key is the target without them, and a signature that
//! states its own expiry is checked before the cache serves anything for it.
//!
//! A presigned S3, GCS or CloudFront URL carries a new signature (and date) every time it is
//! issued, so keyed as it comes every download would be a miss. Without them in the key, a hit
//! is served to a request whose signature the node cannot verify (only the origin holds the
//! key): that is why the parameters are named per route, opt-in, and why an expired signature
//! is refused here rather than served, as the origin would refuse it.

use std::{borrow::Cow, time::SystemTime};

/// Why a request on a signed route is refused before the cache (`403`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signed URL expired {0} s ago ({1})")]
    Expired(u64, &'static str),
    #[error("{0} is not {1}")]
    Malformed(&'static str, &'static str),
}

/// The parameters that state when a signature expires, as the object stores issue them.
enum Expiry {
    /// AWS Signature Version 4 (`X-Amz-Date` + `X-Amz-Expires`) and its GCS twin (`X-Goog-…`):
    /// a signing time `YYYYMMDDTHHMMSSZ` and a lifetime in seconds.
    SignedFor {
        date: &'static str,
        seconds: &'static str,
    },
    /// S3 Signature Version 2, CloudFront canned policies, GCS V2: `Expires`, in Unix seconds.
    Until(&'static str),
}

const EXPIRIES: [Expiry; 3] = [
    Expiry::SignedFor {
        date: "X-Amz-Date",
        seconds: "X-Amz-Expires",
    },
    Expiry::SignedFor {
        date: "X-Goog-Date",
        seconds: "X-Goog-Expires",
    },
    Expiry::Until("Expires"),
];

/// `target` without the query parameters named in `ignored` (ASCII case-insensitively, as the
/// stores treat them), the others kept in their order; refused when a signature expiry it
/// states has passed at `now`. Without `ignored`, the target as it is, unchecked.
pub fn cache_key<'a>(
    target: &'a str,
    ignored: &[String],
    now: SystemTime,
) -> Result<Cow<'a, str>, SignatureError> {
    let Some((path, query)) = target.split_once('?') else {
        return Ok(target.into());
    };
    if ignored.is_empty() {
        return Ok(target.into());
    }
    check_expiry(query, now)?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !ignored.iter().any(|name| named(pair, name)))
        .collect();
    if kept.len() == query.split('&').count() {
        return Ok(target.into());
    }
    Ok(match kept.is_empty() {
        true => path.to_string().into(),
        false => format!("{path}?{}", kept.join("&")).into(),
    })
}

/// A query pair's name (the whole pair when it has no `=`) is `name`, ASCII case-insensitively.
fn named(pair: &str, name: &str) -> bool {
    pair.split_once('=')
        .map_or(pair, |(n, _)| n)
        .eq_ignore_ascii_case(name)
}

/// The value of the first pair named `name` that has one.
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter(|pair| named(pair, name))
        .find_map(|pair| pair.split_once('=').map(|(_, v)| v))
}

fn check_expiry(query: &str, now: SystemTime) -> Result<(), SignatureError> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for expiry in EXPIRIES {
        let (until, named) = match expiry {
            Expiry::SignedFor { date, seconds } => {
                let (Some(d), Some(s)) = (param(query, date), param(query, seconds)) else {
                    continue;
                };
                let signed = compact_utc(d).ok_or(SignatureError::Malformed(
                    date,
                    "a UTC time of the form YYYYMMDDTHHMMSSZ",
                ))?;
                let lifetime: u64 = s
                    .parse()
                    .map_err(|_| SignatureError::Malformed(seconds, "a number of seconds"))?;
                (signed.saturating_add(lifetime), date)
            }
            Expiry::Until(name) => {
                let Some(v) = param(query, name) else {
                    continue;
                };
                let until: u64 = v
                    .parse()
                    .map_err(|_| SignatureError::Malformed(name, "a time in Unix seconds"))?;
                (until, name)
            }
        };
        if now > until {
            return Err(SignatureError::Expired(now - until, named));
        }
    }
    Ok(())
}

/// Unix seconds of `YYYYMMDDTHHMMSSZ` (ISO 8601 basic format, UTC), as SigV4 writes its date.
/// By hand: one fixed format, and the node has no calendar crate (httpdate reads HTTP dates
/// only); the day count is Howard Hinnant's `days_from_civil`.
fn compact_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const SIGV4: [&str; 4] = [
        "X-Amz-Signature",
        "X-Amz-Date",
        "X-Amz-Credential",
        "X-Amz-Expires",
    ];

    #[test]
    fn signature_parameters_leave_the_key_and_the_others_keep_their_order() {
        let ignored = names(&SIGV4);
        let now = at(1_796_601_600); // 2026-12-07T00:00:00Z
        let key = |t| cache_key(t, &ignored, now).unwrap().into_owned();
        assert_eq!(
            key("/b/w.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261207&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=ab12"),
            "/b/w.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-SignedHeaders=host"
        );
        assert_eq!(key("/b/w.bin?x-amz-signature=1&v=2"), "/b/w.bin?v=2");
        assert_eq!(key("/b/w.bin?X-Amz-Signature=1"), "/b/w.bin");
        assert_eq!(key("/b/w.bin?X-Amz-Signature"), "/b/w.bin", "a bare name");
        assert_eq!(key("/b/w.bin?v=2"), "/b/w.bin?v=2");
        assert_eq!(key("/b/w.bin"), "/b/w.bin");
        assert_eq!(
            key("/b/w.bin?X-Amz-SignatureX=1"),
            "/b/w.bin?X-Amz-SignatureX=1",
            "whole names only"
        );
        assert_eq!(
            cache_key("/b?X-Amz-Signature=1", &[], at(0)).unwrap(),
            "/b?X-Amz-Signature=1",
            "nothing ignored: the target is the key"
        );
    }

    #[test]
    fn expired_signatures_are_refused() {
        let ignored = names(&["X-Amz-Signature"]);
        let signed = "/o?X-Amz-Date=20261207T000000Z&X-Amz-Expires=60&X-Amz-Signature=s";
        let midnight = 1_796_601_600;
        assert!(cache_key(signed, &ignored, at(midnight + 60)).is_ok());
        assert_eq!(
            cache_key(signed, &ignored, at(midnight + 61)),
            Err(SignatureError::Expired(1, "X-Amz-Date"))
        );
        let goog = "/o?X-Goog-Date=20261207T000000Z&X-Goog-Expires=10&X-Goog-Signature=s";
        assert!(cache_key(goog, &ignored, at(midnight + 11)).is_err());
        let until = "/o?Expires=1796601600&Signature=s&Key-Pair-Id=k";
        assert!(cache_key(until, &ignored, at(midnight)).is_ok());
        assert_eq!(
            cache_key(until, &ignored, at(midnight + 5)),
            Err(SignatureError::Expired(5, "Expires"))
        );
    }

    #[test]
    fn malformed_expiries_are_refused() {
        let ignored = names(&["Signature"]);
        for bad in [
            "/o?X-Amz-Date=2026-12-07T00:00:00Z&X-Amz-Expires=60",
            "/o?X-Amz-Date=20261307T000000Z&X-Amz-Expires=60",
            "/o?X-Amz-Date=20261207T000000Z&X-Amz-Expires=-1",
            "/o?Expires=tomorrow",
        ] {
            let err = cache_key(bad, &ignored, at(0)).unwrap_err();
            assert!(matches!(err, SignatureError::Malformed(..)), "{bad}: {err}");
        }
    }

    #[test]
    fn compact_dates_count_from_the_epoch() {
        assert_eq!(compact_utc("19700101T000000Z"), Some(0));
        assert_eq!(compact_utc("20000301T000001Z"), Some(951_868_801));
        assert_eq!(compact_utc("20261207T000000Z"), Some(1_796_601_600));
        assert_eq!(compact_utc("20240229T235959Z"), Some(1_709_251_199));
        assert_eq!(compact_utc("2026120T0000000Z"), None);
        assert_eq!(compact_utc("+0261207T000000Z"), None);
    }
}
