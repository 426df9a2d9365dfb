//! Request-target validation: only clean absolute paths ever reach the upstream.
//!
//! The upstream URL is the upstream base with the client's path and query appended, so anything
//! a URL library or the origin server would *normalise* (backslashes turned into slashes, dot
//! segments resolved, `;` path parameters dropped, percent-encoding decoded once more) could
//! climb out of the base path. Rather than normalising ourselves and hoping to agree with every
//! origin, targets that need normalisation are refused with a 400 (414 when too long).
//!
//! Hand-written rather than a crate: the rules are a deny-list specific to this proxy (what an
//! origin might reinterpret), which no URL crate offers; `percent-encoding` would only save the
//! two-hex-digit decode.

use http::StatusCode;

/// Longest request target (path and query) accepted. Generous for real object paths and signed
/// query strings, yet keeps metadata keys and log lines small.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("request target of {len} bytes is longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("request target must be an absolute path")]
    NotAbsolute,
    #[error("request target must not start with '//'")]
    NetworkPath,
    #[error("request target must not contain control or non-ASCII bytes (percent-encode them)")]
    ControlByte,
    #[error("request target must not contain a fragment")]
    Fragment,
    #[error("path must not contain a backslash, encoded or not")]
    Backslash,
    #[error("path must not contain an encoded '/'")]
    EncodedSlash,
    #[error("path must not contain '.' or '..' segments, encoded or not")]
    DotSegment,
    #[error("path contains a malformed or double percent-encoding")]
    BadPercent,
    #[error("percent-encoded bytes in the path must be UTF-8")]
    NotUtf8,
}

impl TargetError {
    pub fn status(&self) -> StatusCode {
        match self {
            TargetError::TooLong { .. } => StatusCode::URI_TOO_LONG,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks a request's path and query (`/a/b?x=1`) and returns it unchanged if it is clean.
/// Used for the client listener and for paths named by peers (`x-casserole-path`).
/// Whether `path_and_query` passes [`validate`] (the peer API holds peers to the same rule).
pub fn is_valid(path_and_query: &str) -> bool {
    validate(path_and_query).is_ok()
}

pub fn validate(path_and_query: &str) -> Result<&str, TargetError> {
    if path_and_query.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong {
            len: path_and_query.len(),
            max: MAX_TARGET_LEN,
        });
    }
    // Raw bytes first: hyper refuses most of these already, but peers' headers are not parsed
    // as a URI, and a '\' passes hyper untouched.
    for b in path_and_query.bytes() {
        match b {
            0..=0x1f | 0x7f..=0xff | b' ' => return Err(TargetError::ControlByte),
            b'#' => return Err(TargetError::Fragment),
            b'\\' => return Err(TargetError::Backslash),
            _ => {}
        }
    }
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path);
    if !path.starts_with('/') {
        return Err(TargetError::NotAbsolute);
    }
    if path.starts_with("//") {
        return Err(TargetError::NetworkPath);
    }
    path[1..].split('/').try_for_each(check_segment)?;
    Ok(path_and_query)
}

/// One path segment (between slashes), still percent-encoded.
fn check_segment(raw: &str) -> Result<(), TargetError> {
    let decoded = percent_decode(raw)?;
    if decoded.contains(&b'/') {
        return Err(TargetError::EncodedSlash);
    }
    if decoded.contains(&b'\\') {
        return Err(TargetError::Backslash);
    }
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(TargetError::ControlByte);
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| TargetError::NotUtf8)?;
    // Servlet containers drop `;params` before resolving dots (`/..;/x` climbs); Windows servers
    // ignore trailing dots and spaces (`... ` is `..`); some normalise fullwidth dots.
    let name = text.split(';').next().unwrap_or("");
    let name = name.trim_end_matches(' ');
    let only_dots = !name.is_empty()
        && name
            .chars()
            .all(|c| matches!(c, '.' | '\u{FF0E}' | '\u{2024}' | '\u{FE52}'));
    if only_dots {
        return Err(TargetError::DotSegment);
    }
    Ok(())
}

/// Decodes `%XX` escapes. A malformed escape, or an escaped `%` followed by two hex digits (a
/// double encoding an origin might decode again), is an error.
fn percent_decode(raw: &str) -> Result<Vec<u8>, TargetError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(TargetError::BadPercent)?;
        let value = (hex_value(hex[0]).ok_or(TargetError::BadPercent)? << 4)
            | hex_value(hex[1]).ok_or(TargetError::BadPercent)?;
        let next_is_escape = bytes
            .get(i + 3..i + 5)
            .is_some_and(|h| h.iter().all(|&b| hex_value(b).is_some()));
        if value == b'%' && next_is_escape {
            return Err(TargetError::BadPercent);
        }
        out.push(value);
        i += 3;
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` line, with a valid value (empty
/// is valid); HTTP/1.0 may omit it and HTTP/2 names the authority itself. The value never
/// chooses where a request goes: this only refuses malformed requests with a 400, as the RFC
/// asks.
pub fn check_host(version: http::Version, headers: &http::HeaderMap) -> Result<(), &'static str> {
    let mut lines = headers.get_all(http::header::HOST).iter();
    match (lines.next(), lines.next()) {
        (None, _) if version == http::Version::HTTP_11 => {
            Err("an HTTP/1.1 request needs a Host header")
        }
        (Some(_), Some(_)) => Err("more than one Host header"),
        (Some(value), None) if !is_valid_host(value.as_bytes()) => Err("invalid Host header"),
        _ => Ok(()),
    }
}

fn is_valid_host(value: &[u8]) -> bool {
    value.is_empty()
        || (!value.contains(&b'@')
            && std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<http::uri::Authority>().ok())
                // A port, when there is one, is a number.
                .is_some_and(|a| a.as_str() == a.host() || a.port_u16().is_some()))
}

#[cfg(test)]
mod tests;
