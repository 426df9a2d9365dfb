//! The one `Cache-Control` parser (RFC 9111 §5.2), for requests and responses alike: parsed
//! once per message, then asked for what freshness, stored-header filtering and client demands
//! need.
//!
//! Hand-written rather than taken from `http-cache-semantics` (which parses internally but does
//! not expose its directives, and drops quoted arguments' commas): the grammar is small, and the
//! cache needs the qualified forms (`no-cache="Set-Cookie, X-A"`) and the argument spelling
//! (`max-age="7"`, malformed numbers) the crate cannot tell apart.

use http::{header, HeaderMap};

/// One directive: its name lowercased (names are case-insensitive), and its argument with
/// quotes and escapes removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub arg: Option<String>,
}

/// The directives of every `Cache-Control` field line of a message, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    directives: Vec<Directive>,
}

/// What a delta-seconds directive says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seconds {
    Absent,
    Valid(u64),
    /// Present but not a number of seconds (RFC 9111 §1.2.2: a cache treats such a lifetime as
    /// invalid, so the response counts as stale; a request directive then constrains nothing).
    Invalid,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> Self {
        let directives = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(split_list)
            .filter_map(|item| parse_directive(&item))
            .collect();
        CacheControl { directives }
    }

    pub fn is_empty(&self) -> bool {
        self.directives.is_empty()
    }

    pub fn directives(&self) -> &[Directive] {
        &self.directives
    }

    /// Whether `name` is present, with or without an argument.
    pub fn has(&self, name: &str) -> bool {
        self.directives.iter().any(|d| d.name == name)
    }

    /// Whether `name` is present without an argument (`no-cache`, not `no-cache="x"`).
    pub fn has_bare(&self, name: &str) -> bool {
        self.directives
            .iter()
            .any(|d| d.name == name && d.arg.is_none())
    }

    /// The first occurrence of a delta-seconds directive (RFC 9111 §4.2.1: a cache uses the
    /// first of duplicates). Values too large for 64 bits saturate (§1.2.2: 2^31 at least).
    pub fn seconds(&self, name: &str) -> Seconds {
        let Some(d) = self.directives.iter().find(|d| d.name == name) else {
            return Seconds::Absent;
        };
        let Some(arg) = d.arg.as_deref() else {
            return Seconds::Invalid;
        };
        if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
            return Seconds::Invalid;
        }
        Seconds::Valid(arg.parse().unwrap_or(u64::MAX))
    }

    /// A valid delta-seconds argument of `name`, or `None`.
    pub fn valid_seconds(&self, name: &str) -> Option<u64> {
        match self.seconds(name) {
            Seconds::Valid(secs) => Some(secs),
            _ => None,
        }
    }

    /// The field names that qualified `no-cache="…"` and `private="…"` list (RFC 9111
    /// §5.2.2.4, §5.2.2.7), lowercased.
    pub fn qualified_names(&self) -> Vec<String> {
        self.directives
            .iter()
            .filter(|d| d.name == "no-cache" || d.name == "private")
            .filter_map(|d| d.arg.as_deref())
            .flat_map(|arg| arg.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// The directives rendered back as one field value, minus those `drop` refuses.
    pub fn render_without(&self, drop: impl Fn(&Directive) -> bool) -> String {
        self.directives
            .iter()
            .filter(|d| !drop(d))
            .map(|d| match &d.arg {
                None => d.name.clone(),
                Some(arg) if is_token(arg) => format!("{}={arg}", d.name),
                Some(arg) => format!("{}=\"{}\"", d.name, arg.replace(['"', '\\'], "")),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Splits a list field value on commas outside quoted strings.
pub(super) fn split_list(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                current.push(c);
                continue;
            }
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
}

/// `name`, `name=token` or `name="quoted string"`; an item without a valid name is skipped.
/// The grammar has no whitespace around `=` (RFC 9111 §5.2): a spaced argument is kept as
/// written, space included, so it is no valid number (`max-age = 60` is an invalid lifetime).
pub(super) fn parse_directive(item: &str) -> Option<Directive> {
    let item = item.trim();
    let (name, arg) = match item.split_once('=') {
        Some((name, arg)) if name.ends_with(char::is_whitespace) => {
            (name.trim_end(), Some(format!(" {arg}")))
        }
        Some((name, arg)) if arg.starts_with(char::is_whitespace) => (name, Some(arg.to_string())),
        Some((name, arg)) => (name, Some(unquote(arg))),
        None => (item, None),
    };
    if name.is_empty() || !is_token(name) {
        return None;
    }
    Some(Directive {
        name: name.to_ascii_lowercase(),
        arg,
    })
}

fn unquote(arg: &str) -> String {
    let Some(inner) = arg.strip_prefix('"') else {
        return arg.to_string();
    };
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// RFC 9110 §5.6.2 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn cc(values: &[&str]) -> CacheControl {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("cache-control", *v)).collect();
        CacheControl::parse(&headers(&pairs))
    }

    #[test]
    fn names_are_case_insensitive_and_lines_combine() {
        let c = cc(&["Max-Age=60, No-Cache", "must-revalidate"]);
        assert_eq!(c.seconds("max-age"), Seconds::Valid(60));
        assert!(c.has_bare("no-cache") && c.has("must-revalidate"));
        assert!(!c.has("no-store"));
    }

    #[test]
    fn quoted_arguments_keep_their_commas() {
        let c = cc(&[r#"no-cache="Set-Cookie, X-A", max-age=5, private="x-b""#]);
        assert_eq!(c.qualified_names(), ["set-cookie", "x-a", "x-b"]);
        assert!(!c.has_bare("no-cache"));
        assert_eq!(c.valid_seconds("max-age"), Some(5));
        let escaped = cc(&[r#"ext="a\"b,c", max-age=7"#]);
        assert_eq!(escaped.directives()[0].arg.as_deref(), Some("a\"b,c"));
        assert_eq!(escaped.valid_seconds("max-age"), Some(7));
    }

    #[test]
    fn malformed_and_duplicate_arguments() {
        assert_eq!(cc(&["max-age=\"7\""]).seconds("max-age"), Seconds::Valid(7));
        assert_eq!(cc(&["max-age=soon"]).seconds("max-age"), Seconds::Invalid);
        assert_eq!(cc(&["max-age=-1"]).seconds("max-age"), Seconds::Invalid);
        assert_eq!(cc(&["max-age"]).seconds("max-age"), Seconds::Invalid);
        assert_eq!(cc(&["max-age=1.5"]).seconds("max-age"), Seconds::Invalid);
        // No whitespace around `=` in the grammar.
        for spaced in ["max-age= 60", "max-age =60", "max-age = 60"] {
            let c = cc(&[spaced]);
            assert!(c.has("max-age"), "{spaced}");
            assert_eq!(c.seconds("max-age"), Seconds::Invalid, "{spaced}");
        }
        assert_eq!(cc(&[" max-age=60 "]).seconds("max-age"), Seconds::Valid(60));
        assert_eq!(
            cc(&["max-age=99999999999999999999999"]).seconds("max-age"),
            Seconds::Valid(u64::MAX)
        );
        assert_eq!(
            cc(&["max-age=60", "max-age=30"]).seconds("max-age"),
            Seconds::Valid(60),
            "the first of duplicates"
        );
        assert!(cc(&[", ,  , "]).is_empty());
        assert!(cc(&["=5, a b"]).is_empty(), "items without a token name");
    }

    #[test]
    fn renders_back_without_dropped_directives() {
        let c = cc(&[r#"no-cache="x", max-age=5, proxy-revalidate, ext="a b""#]);
        let kept = c.render_without(|d| {
            d.name == "proxy-revalidate" || d.arg.is_some() && d.name == "no-cache"
        });
        assert_eq!(kept, r#"max-age=5, ext="a b""#);
    }
}
