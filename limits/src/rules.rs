//! `--ttl-rule REGEX=DURATION`, `--route PREFIX=URL`, `--ignore-query-param ROUTE=NAME`, and the
//! names of Kubernetes objects.

use std::time::Duration;

use regex::Regex;

use crate::duration::parse_duration;
use crate::url::parse_http_url;

/// Most `--ttl-rule` flags (and `spec.ttlRules` entries).
pub const TTL_RULES_MAX: usize = 64;
/// Most `--route` flags (and `spec.routes` entries).
pub const ROUTES_MAX: usize = 64;

/// One `--ttl-rule`: objects whose path and query match `pattern` are fresh for `ttl`.
#[derive(Clone, Debug)]
pub struct TtlRule {
    pub pattern: Regex,
    pub ttl: Duration,
    /// `REGEX=immutable`: never revalidated while stored, not even on a client's reload.
    pub immutable: bool,
}

/// What the lifetime of a rule may be: a duration, or `immutable` (for the CRD's schema).
pub const TTL_RULE_TTL_PATTERN: &str = r"^(immutable|[0-9]+(\.[0-9]+)?(ms|s|m|h)?)$";

/// The lifetime of an `immutable` rule: a year, the longest RFC 9111 §5.3 asks senders to
/// state.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `REGEX=DURATION`. The duration follows the last `=` (a duration never holds one,
/// a regex may).
pub fn parse_ttl_rule(s: &str) -> Result<TtlRule, String> {
    let (pattern, ttl) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not REGEX=DURATION or REGEX=immutable"))?;
    ttl_rule(pattern, ttl)
}

/// Checks a rule given as its two parts.
pub fn ttl_rule(pattern: &str, ttl: &str) -> Result<TtlRule, String> {
    if pattern.is_empty() {
        return Err("the pattern is empty".into());
    }
    let pattern = Regex::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
    let immutable = ttl == "immutable";
    let ttl = match immutable {
        true => IMMUTABLE_TTL,
        false => parse_duration(ttl).map_err(|e| format!("{e}, or immutable"))?,
    };
    Ok(TtlRule {
        pattern,
        ttl,
        immutable,
    })
}

/// One `--route`: requests whose path starts with `prefix` go to `url` instead of the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub url: String,
}

/// Parses `PREFIX=URL`; the prefix ends at the first `=` (and may hold none).
pub fn parse_route(s: &str) -> Result<Route, String> {
    let (prefix, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PREFIX=URL"))?;
    route(prefix, url)
}

/// A route's path prefix: starts with `/`, holds no `=`, `?`, `#` or whitespace.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/')
        || prefix.contains(['=', '?', '#'])
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "prefix {prefix:?} must start with '/' and hold no '=', '?', '#' or whitespace"
        ));
    }
    Ok(())
}

/// Checks a route given as its two parts.
pub fn route(prefix: &str, url: &str) -> Result<Route, String> {
    check_prefix(prefix)?;
    parse_http_url(url)?;
    Ok(Route {
        prefix: prefix.into(),
        url: url.into(),
    })
}

/// Checks a list of routes: each valid, no prefix twice; returns the index of the first bad one.
pub fn check_routes<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Route>, (usize, String)> {
    let mut out: Vec<Route> = Vec::new();
    for (i, (prefix, url)) in routes.into_iter().enumerate() {
        if i >= ROUTES_MAX {
            return Err((i, format!("at most {ROUTES_MAX} routes")));
        }
        let r = route(prefix, url).map_err(|e| (i, e))?;
        if out.iter().any(|o| o.prefix == r.prefix) {
            return Err((i, format!("prefix {prefix:?} is routed twice")));
        }
        out.push(r);
    }
    Ok(out)
}

/// Most `--ignore-query-param` flags (and names in all `spec.routes[].ignoreQueryParams`).
pub const IGNORED_PARAMS_MAX: usize = 64;

/// The CRD pattern of a query parameter name the cache key may ignore.
pub const QUERY_PARAM_NAME_PATTERN: &str = "^[A-Za-z0-9._~-]{1,128}$";

/// One `--ignore-query-param`: on the route with `prefix`, the query parameter `name` does not
/// select the object (a signature, its date or expiry), so it is left out of the cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredParam {
    pub prefix: String,
    pub name: String,
}

/// Parses `PREFIX=NAME` (`/` is `--upstream`); the prefix ends at the first `=`.
pub fn parse_ignored_param(s: &str) -> Result<IgnoredParam, String> {
    let (prefix, name) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ROUTE=NAME"))?;
    ignored_param(prefix, name)
}

/// Checks an ignored parameter given as its two parts: a route prefix as `--route` takes it,
/// and a name of unreserved characters (RFC 3986 §2.3), as signed URLs' parameters are.
pub fn ignored_param(prefix: &str, name: &str) -> Result<IgnoredParam, String> {
    check_prefix(prefix)?;
    let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-');
    if name.is_empty() || name.len() > 128 || !name.chars().all(unreserved) {
        return Err(format!(
            "query parameter name {name:?} must be 1 to 128 letters, digits, '.', '_', '~' or '-'"
        ));
    }
    Ok(IgnoredParam {
        prefix: prefix.into(),
        name: name.into(),
    })
}

/// An RFC 1035 label (what a Service name must be): lower-case letters, digits and '-',
/// starting with a letter, ending with a letter or digit, at most `max` characters.
pub fn check_dns1035_label(name: &str, max: usize) -> Result<(), String> {
    let ok = name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be a DNS-1035 label: at most {max} lower-case letters, digits and '-', starting with a letter and ending with a letter or digit"
        ))
    }
}

/// The CEL/regex pattern of [`check_dns1035_label`] (length checked apart).
pub const DNS1035_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_params_name_a_route_and_an_unreserved_name() {
        let p = parse_ignored_param("/_cdn/s3/=X-Amz-Signature").unwrap();
        assert_eq!(
            (p.prefix.as_str(), p.name.as_str()),
            ("/_cdn/s3/", "X-Amz-Signature")
        );
        assert_eq!(parse_ignored_param("/=Expires").unwrap().prefix, "/");
        for bad in [
            "X-Amz-Signature",
            "_cdn=Expires",
            "/a=",
            "/a=b&c",
            "/a=b=c",
            "/a=na me",
            "/a?=b",
        ] {
            assert!(parse_ignored_param(bad).is_err(), "{bad}");
        }
        let long = format!("/={}", "a".repeat(129));
        assert!(parse_ignored_param(&long).is_err());
    }

    #[test]
    fn ttl_rules_split_at_the_last_equals() {
        let i = parse_ttl_rule(r"/-/[^/]+\.tgz$=immutable").unwrap();
        assert!(i.immutable && i.ttl == IMMUTABLE_TTL);
        let r = parse_ttl_rule(r"^/a=b/.*\.iso$=1h").unwrap();
        assert!(!r.immutable);
        assert_eq!(r.ttl, Duration::from_secs(3600));
        assert!(r.pattern.is_match("/a=b/x.iso"));
        for bad in ["^/x", "(=1h", "^/x=1d", "=1h"] {
            assert!(parse_ttl_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_need_a_path_prefix_and_a_url_the_node_runs() {
        let r = parse_route("/models/=http://hub.ml.svc:8080/base").unwrap();
        assert_eq!(
            (r.prefix.as_str(), r.url.as_str()),
            ("/models/", "http://hub.ml.svc:8080/base")
        );
        for bad in [
            "models=http://x",
            "/m=ftp://x",
            "/m=http://x?q",
            "/m http://x",
            "/a b=http://x",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
        let dup = check_routes([("/a", "http://x"), ("/a", "http://y")]).unwrap_err();
        assert_eq!(dup.0, 1);
    }

    #[test]
    fn dns1035_labels() {
        let re = Regex::new(DNS1035_PATTERN).unwrap();
        for ok in ["web", "a", "my-cache-2"] {
            assert!(check_dns1035_label(ok, 42).is_ok(), "{ok}");
            assert!(re.is_match(ok));
        }
        for bad in ["my.cache", "1cache", "-a", "a-", "Web", "", "a_b"] {
            assert!(check_dns1035_label(bad, 42).is_err(), "{bad}");
            assert!(!re.is_match(bad), "{bad}");
        }
        assert!(check_dns1035_label(&"a".repeat(43), 42).is_err());
    }
}
