//! HTTP URLs as the node reads them: `--upstream`, `--route` targets and `--etcd` endpoints.
//!
//! A deliberately strict subset of what `reqwest::Url` (the node's parser) accepts, so that
//! every URL passing here also starts a node: http or https, a host, an optional port within
//! 1..=65535, an optional path, and no query, fragment, whitespace or control character.

/// The parts of a URL that passed [`parse_http_url`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `user:password` before the `@`, if any.
    pub userinfo: Option<&'a str>,
    /// Host name, IPv4 address, or bracketed IPv6 literal.
    pub host: &'a str,
    pub port: Option<u16>,
    /// Everything after the authority (empty or starting with `/`).
    pub path: &'a str,
}

impl HttpUrl<'_> {
    /// The URL without its credentials (what may be shown in a status or a column).
    pub fn redacted(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}://{}{port}{}", self.scheme, self.host, self.path)
    }
}

fn host_is_valid(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && !host.starts_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Parses an http(s) URL the node can use as an upstream or route target.
pub fn parse_http_url(s: &str) -> Result<HttpUrl<'_>, String> {
    if s.len() > URL_MAX_LEN {
        return Err(format!("must be at most {URL_MAX_LEN} characters"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} contains whitespace or a control character"));
    }
    let (scheme, rest) = s
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .ok_or_else(|| format!("{s:?} is not an http:// or https:// URL"))?;
    if rest.contains(['?', '#']) {
        return Err(format!("{s:?} must not carry a query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((user, hostport)) => (Some(user), hostport),
        None => (None, authority),
    };
    // A port follows the last ':' outside an IPv6 literal's brackets.
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => {
            let digits = &hostport[i + 1..];
            let port = digits
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0 && digits.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| format!("{s:?} has an invalid port {digits:?} (1 to 65535)"))?;
            (&hostport[..i], Some(port))
        }
        _ => (hostport, None),
    };
    if !host_is_valid(host) {
        return Err(format!("{s:?} has no valid host"));
    }
    Ok(HttpUrl {
        scheme,
        userinfo,
        host,
        port,
        path,
    })
}

/// Longest URL accepted (the CRD's `maxLength` too).
pub const URL_MAX_LEN: usize = 2048;

/// An etcd client endpoint the node's etcd client can use: plain `http` (it has no TLS
/// client), a host and a port, no credentials and no path.
pub fn check_etcd_endpoint(s: &str) -> Result<(), String> {
    let url = parse_http_url(s)?;
    if url.scheme != "http" {
        return Err(format!(
            "{s:?}: the node's etcd client has no TLS; use an http:// endpoint (e.g. through a TLS-terminating proxy on the cluster network)"
        ));
    }
    if url.userinfo.is_some() || !(url.path.is_empty() || url.path == "/") {
        return Err(format!(
            "{s:?}: an etcd endpoint is http://host:port, without credentials or path"
        ));
    }
    Ok(())
}

/// The CRD pattern of an upstream or route URL (the parser above decides the port range and
/// the host's characters).
pub const HTTP_URL_PATTERN: &str = r"^https?://([^\s/?#@]+@)?[^\s/?#@]+(/[^\s?#]*)?$";
/// The CRD pattern of an etcd endpoint.
pub const ETCD_ENDPOINT_PATTERN: &str = r"^http://[^\s/?#@,]+/?$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_node_runs() {
        for ok in [
            "http://u",
            "https://downloads.example.com",
            "http://model-hub.ml.svc:8080/base/",
            "https://user:pa%40ss@host:443/p",
            "http://[fd00::1]:8080",
            "http://10.0.0.1",
        ] {
            assert!(parse_http_url(ok).is_ok(), "{ok}: {:?}", parse_http_url(ok));
        }
    }

    #[test]
    fn refuses_what_crash_loops_the_node() {
        for bad in [
            "ftp://x",
            "http://",
            "http://x?a=b",
            "http://x/p#frag",
            "http://x:0",
            "http://x:65536",
            "http://x:8o",
            "http://x:",
            "http://a b",
            "http://[zz::1]",
            "http:/x",
            "HTTP://x",
            "http://x/\u{7f}",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad} passed");
        }
    }

    #[test]
    fn redaction_drops_credentials() {
        let url = parse_http_url("https://user:secret@host:8443/p").unwrap();
        assert_eq!(url.redacted(), "https://host:8443/p");
    }

    #[test]
    fn etcd_endpoints_are_plain_http_host_port() {
        assert!(check_etcd_endpoint("http://etcd.infra.svc:2379").is_ok());
        for bad in [
            "https://etcd:2379",
            "http://u:p@etcd:2379",
            "http://etcd:2379/v3",
        ] {
            assert!(check_etcd_endpoint(bad).is_err(), "{bad}");
        }
        assert!(check_etcd_endpoint("https://etcd:2379")
            .unwrap_err()
            .contains("TLS"));
    }

    #[test]
    fn patterns_admit_every_parsable_url() {
        let re = regex::Regex::new(HTTP_URL_PATTERN).unwrap();
        for ok in ["http://u", "https://user:p@h:1/x", "http://[fd00::1]:80/a"] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["http://x?a", "http://x#f", "ftp://x"] {
            assert!(!re.is_match(bad), "{bad}");
        }
        let re = regex::Regex::new(ETCD_ENDPOINT_PATTERN).unwrap();
        assert!(re.is_match("http://etcd:2379"));
        assert!(!re.is_match("https://etcd:2379"));
    }
}
