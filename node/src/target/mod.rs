//! Request targets: normalised once (RFC 3986), refused only when they could escape.
//!
//! The upstream URL is the upstream base with the client's path and query appended, so anything
//! a URL library or the origin server might still *reinterpret* (backslashes turned into
//! slashes, encoded dot segments resolved, `;` path parameters dropped before dots are resolved,
//! double encodings decoded once more) could climb out of the base path. Those are refused with a
//! 400 (414 when too long). What every URL library and origin agree on is normalised here
//! instead, so real clients work (`apt` asks for `/deb/./InRelease` in flat repositories):
//!
//! - literal `.` and `..` segments are removed as RFC 3986 §5.2.4 says; a `..` that would climb
//!   above the root is refused;
//! - escapes of unreserved characters are decoded (RFC 3986 §6.2.2.2: `/%73ecret` is
//!   `/secret`), so one object has one key and one purge target;
//! - every other escape is kept as the client sent it (`@types%2fnode` reaches the origin with
//!   its `%2f`, `%253a` as `%253a`): decoding is only for the checks.
//!
//! The normalised form is the cache key, the purge target and what is forwarded.
//!
//! Hand-written rather than a crate: the rules are a deny-list specific to this proxy (what an
//! origin might reinterpret), which no URL crate offers (`url` resolves encoded dots and
//! backslashes silently, the very thing to refuse); `percent-encoding` would only save the
//! two-hex-digit decode.

use std::borrow::Cow;

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
    #[error("path must not contain encoded dot segments, or dot segments with parameters")]
    DotSegment,
    #[error("path climbs above the root with '..'")]
    AboveRoot,
    #[error("path contains a malformed percent-encoding")]
    BadPercent,
    #[error("path contains a double percent-encoding of '.', '/' or '\\'")]
    DoubleEncoding,
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

/// Whether `path_and_query` is already in the normalised form [`validate`] gives (the peer API
/// holds peers to it: they only ever name keys).
pub fn is_valid(path_and_query: &str) -> bool {
    validate(path_and_query).is_ok_and(|clean| clean == path_and_query)
}

/// Checks a request's path and query (`/a/./b?x=1`) and returns its normalised form
/// (`/a/b?x=1`), borrowed when nothing changed. Used for the client listener, for references in
/// upstream responses and again before any upstream URL is built.
pub fn validate(path_and_query: &str) -> Result<Cow<'_, str>, TargetError> {
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
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    if !path.starts_with('/') {
        return Err(TargetError::NotAbsolute);
    }
    if path.starts_with("//") {
        return Err(TargetError::NetworkPath);
    }
    let clean = normalise_path(path)?;
    if clean == path {
        return Ok(Cow::Borrowed(path_and_query));
    }
    Ok(Cow::Owned(match query {
        Some(query) => format!("{clean}?{query}"),
        None => clean.into_owned(),
    }))
}

/// RFC 3986 §5.2.4 on literal dot segments, after every segment passed [`check_segment`];
/// borrowed when nothing changes (most paths: they are checked without building a copy).
fn normalise_path(path: &str) -> Result<Cow<'_, str>, TargetError> {
    for raw in path[1..].split('/') {
        let kept = !matches!(raw, "." | "..") && matches!(check_segment(raw)?, Cow::Borrowed(_));
        if !kept {
            return rebuilt_path(path).map(Cow::Owned);
        }
    }
    Ok(Cow::Borrowed(path))
}

/// The path built anew, segment by segment (see `normalise_path`).
fn rebuilt_path(path: &str) -> Result<String, TargetError> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut out: Vec<Cow<'_, str>> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, raw) in segments.into_iter().enumerate() {
        match raw {
            // A dot segment that ends the path leaves a directory: `/a/b/..` is `/a/`.
            "." | ".." => {
                if raw == ".." && out.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
                if i == last {
                    out.push(Cow::Borrowed(""));
                }
            }
            _ => out.push(check_segment(raw)?),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// One path segment (between slashes, not a literal dot segment), still percent-encoded:
/// refused if an origin could read it as something that climbs, else returned with escapes of
/// unreserved characters decoded.
fn check_segment(raw: &str) -> Result<Cow<'_, str>, TargetError> {
    if !raw.contains('%') && !raw.contains(';') && !raw.ends_with('.') {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = percent_decode(raw.as_bytes()).ok_or(TargetError::BadPercent)?;
    if decoded.contains(&b'\\') {
        return Err(TargetError::Backslash);
    }
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(TargetError::ControlByte);
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| TargetError::NotUtf8)?;
    // An encoded '/' is harmless (npm's `@scope%2fname`) unless it hides a dot segment.
    if text.split('/').any(is_dot_name) {
        return Err(TargetError::DotSegment);
    }
    if hides_separator(text) {
        return Err(TargetError::DoubleEncoding);
    }
    Ok(Cow::Owned(decode_unreserved(raw)))
}

/// What some origin might take for `.` or `..`: servlet containers drop `;params` before
/// resolving dots (`/..;/x` climbs); Windows servers ignore trailing dots and spaces (`... ` is
/// `..`); some normalise fullwidth dots.
fn is_dot_name(piece: &str) -> bool {
    let name = piece.split(';').next().unwrap_or("").trim_end_matches(' ');
    !name.is_empty()
        && name
            .chars()
            .all(|c| matches!(c, '.' | '\u{FF0E}' | '\u{2024}' | '\u{FE52}'))
}

/// Whether decoding `text` again (and again) reveals an escaped `.`, `/` or `\`: an origin that
/// decodes twice would see a separator the checks above never saw.
fn hides_separator(text: &str) -> bool {
    let mut level = text.as_bytes().to_vec();
    for _ in 0..4 {
        let lower = level.to_ascii_lowercase();
        if [b"%2e", b"%2f", b"%5c"]
            .iter()
            .any(|esc| lower.windows(3).any(|w| w == *esc))
        {
            return true;
        }
        match percent_decode(&level) {
            Some(next) if next != level => level = next,
            _ => return false,
        }
    }
    true
}

/// Decodes `%XX` escapes; `None` when one is malformed.
fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(escaped_byte(bytes.get(i + 1..i + 3)?)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn escaped_byte(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    Some(digit(hex[0])? << 4 | digit(hex[1])?)
}

/// RFC 3986 §6.2.2.2: escapes of unreserved characters are the characters themselves; every
/// other escape is kept exactly as sent. Only called on segments [`percent_decode`] accepted.
fn decode_unreserved(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let unreserved = (bytes[i] == b'%')
            .then(|| escaped_byte(&bytes[i + 1..i + 3]))
            .flatten()
            .filter(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        match unreserved {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    out
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
