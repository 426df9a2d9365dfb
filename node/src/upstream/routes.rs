//! Where a node path goes: `--route PREFIX=URL`s by longest prefix, else `--upstream`.
//!
//! Each route is its own origin: the node path keeps its prefix, so keys, versions and purges of
//! one route never meet another's, and every URL built must stay under its route's base (the
//! path checks apply per route). A model hub's resolve endpoint on `--upstream` and its CDN on
//! `--route /_cdn/hf/=https://cdn-lfs.example/` are then one cache for the client.

use super::target;

/// One origin and the node paths it serves.
#[derive(Debug, Clone)]
struct Origin {
    /// Node path prefix without a trailing slash (`/_cdn/hf`); empty for `--upstream`.
    prefix: String,
    /// Base URL without a trailing slash; the rest of the node path is appended.
    base: String,
    base_url: reqwest::Url,
    /// `--follow-redirects`: the node follows this origin's redirects itself.
    follows_redirects: bool,
    /// `--ignore-query-param`: query parameters left out of this origin's cache keys.
    ignored_params: Vec<String>,
    /// Its `route` label on the upstream metrics: the prefix as configured, `/` for `--upstream`.
    label: String,
}

impl Origin {
    fn new(prefix: &str, base_url: reqwest::Url) -> Self {
        Origin {
            prefix: prefix.trim_end_matches('/').to_string(),
            base: base_url.as_str().trim_end_matches('/').to_string(),
            base_url,
            follows_redirects: false,
            ignored_params: Vec::new(),
            label: match prefix {
                "" => "/".to_string(),
                given => given.to_string(),
            },
        }
    }

    /// The part of `path_and_query` after this origin's prefix, when it is this origin's.
    fn rest<'a>(&self, path_and_query: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        let rest = path_and_query.strip_prefix(self.prefix.as_str())?;
        match rest.as_bytes().first() {
            Some(b'/') => Some(rest.into()),
            None | Some(b'?') => Some(format!("/{rest}").into()),
            Some(_) => None,
        }
    }

    fn contains(&self, url: &reqwest::Url) -> bool {
        let base = &self.base_url;
        let prefix = base.path().trim_end_matches('/');
        let path = url.path();
        url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
            && url.username() == base.username()
            && url.password() == base.password()
            && path.starts_with(prefix)
            && path[prefix.len()..].starts_with('/')
    }
}

/// Why a set of routes cannot run, and the flag to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct RoutesError {
    pub flag: &'static str,
    pub message: String,
}

/// The origins of a node, longest prefix first, `--upstream` last.
#[derive(Debug, Clone)]
pub struct Routes {
    origins: Vec<Origin>,
}

impl Routes {
    /// `follow_redirects`: the prefixes of the routes whose redirects the node follows itself
    /// (`/` for `--upstream`); `ignored`: query parameters each route leaves out of its keys.
    /// Both must name a route.
    pub fn new(
        upstream: reqwest::Url,
        routes: &[casserole_limits::Route],
        follow_redirects: &[String],
        ignored: &[casserole_limits::IgnoredParam],
    ) -> Result<Self, RoutesError> {
        let mut origins = Vec::with_capacity(routes.len() + 1);
        for route in routes {
            let url = reqwest::Url::parse(&route.url).map_err(|e| RoutesError {
                flag: "--route",
                message: format!("{}: {e}", route.url),
            })?;
            origins.push(Origin::new(&route.prefix, url));
        }
        origins.sort_by_key(|o| std::cmp::Reverse(o.prefix.len()));
        origins.push(Origin::new("", upstream));
        let mut routes = Routes { origins };
        for prefix in follow_redirects {
            routes
                .named("--follow-redirects", prefix)?
                .follows_redirects = true;
        }
        for param in ignored {
            let origin = routes.named("--ignore-query-param", &param.prefix)?;
            origin.ignored_params.push(param.name.clone());
        }
        Ok(routes)
    }

    /// The origin a flag names by its route prefix (`/`: `--upstream`).
    fn named(&mut self, flag: &'static str, prefix: &str) -> Result<&mut Origin, RoutesError> {
        let wanted = prefix.trim_end_matches('/');
        self.origins
            .iter_mut()
            .find(|o| o.prefix == wanted)
            .ok_or_else(|| RoutesError {
                flag,
                message: format!(
                    "{prefix:?} names no route (a --route prefix, or / for --upstream)"
                ),
            })
    }

    /// The key a normalised node target is cached under: without the query parameters its
    /// route ignores, and refused when it is a signed URL that has expired (see `signed`).
    pub fn cache_key<'a>(
        &self,
        path_and_query: &'a str,
        now: std::time::SystemTime,
    ) -> Result<std::borrow::Cow<'a, str>, super::signed::SignatureError> {
        let ignored = self
            .origin_of(path_and_query)
            .map_or(&[][..], |o| &o.ignored_params[..]);
        super::signed::cache_key(path_and_query, ignored, now)
    }

    /// The origin serving a normalised node target.
    fn origin_of(&self, path_and_query: &str) -> Option<&Origin> {
        self.origins
            .iter()
            .find(|o| o.rest(path_and_query).is_some())
    }

    /// The `route` label of the origin serving `path_and_query` (`/` for `--upstream`).
    pub fn label_of(&self, path_and_query: &str) -> &str {
        self.origin_of(path_and_query)
            .map_or("/", |o| o.label.as_str())
    }

    /// Whether the node follows the redirects of the origin serving `path_and_query`.
    pub fn follows_redirects(&self, path_and_query: &str) -> bool {
        self.origin_of(path_and_query)
            .is_some_and(|o| o.follows_redirects)
    }

    /// Where a redirect from `from` to `location` leads, when the node may follow it: an http(s)
    /// URL under one of the node's origins, rebuilt from its node path (so it passes the same
    /// checks as a client's target). Any other host, scheme or path gives `None`: the node never
    /// becomes a way to reach what it was not configured for.
    pub fn redirect_target(&self, from: &reqwest::Url, location: &str) -> Option<reqwest::Url> {
        let url = from.join(location).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        self.url_for(&self.node_path(&url)?).ok()
    }

    /// The default origin's base URL (`--upstream`, no trailing slash).
    pub fn default_base(&self) -> &str {
        &self.origins.last().expect("the default origin").base
    }

    /// The URL of a normalised node target: its route's base with the rest appended, checked to
    /// stay under that base.
    pub fn url_for(&self, path_and_query: &str) -> Result<reqwest::Url, String> {
        let clean = target::validate(path_and_query).map_err(|e| e.to_string())?;
        let (origin, rest) = self
            .origins
            .iter()
            .find_map(|o| Some((o, o.rest(&clean)?)))
            .ok_or_else(|| format!("{clean:?} matches no route"))?;
        let url = reqwest::Url::parse(&format!("{}{}", origin.base, rest))
            .map_err(|e| format!("{clean:?}: {e}"))?;
        if !origin.contains(&url) {
            return Err(format!("{clean:?} leaves the base URL of its route"));
        }
        Ok(url)
    }

    /// The node target that serves `url` (an absolute URL under one of the routes' bases, or
    /// `--upstream`'s), the longest base first; `None` for any other URL.
    pub fn node_path(&self, url: &reqwest::Url) -> Option<String> {
        let origin = self
            .origins
            .iter()
            .filter(|o| o.contains(url))
            .max_by_key(|o| o.base_url.path().len())?;
        let base_path = origin.base_url.path().trim_end_matches('/');
        let mut path = format!("{}{}", origin.prefix, &url.path()[base_path.len()..]);
        if let Some(query) = url.query() {
            path = format!("{path}?{query}");
        }
        target::validate(&path)
            .ok()
            .map(std::borrow::Cow::into_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let route = |s| casserole_limits::parse_route(s).unwrap();
        Routes::new(
            "http://hub.test/api/".parse().unwrap(),
            &[
                route("/_cdn/hf/=https://cdn.test/"),
                route("/_cdn=https://other.test/base"),
            ],
            &["/".into(), "/_cdn/".into()],
            &[casserole_limits::parse_ignored_param("/_cdn/hf/=X-Amz-Signature").unwrap()],
        )
        .unwrap()
    }

    #[test]
    fn only_routes_that_name_a_parameter_leave_it_out_of_their_keys() {
        let r = routes();
        let now = std::time::SystemTime::now();
        let key = |t| r.cache_key(t, now).unwrap().into_owned();
        assert_eq!(key("/_cdn/hf/w?X-Amz-Signature=1&v=2"), "/_cdn/hf/w?v=2");
        assert_eq!(
            key("/_cdn/x?X-Amz-Signature=1"),
            "/_cdn/x?X-Amz-Signature=1"
        );
        assert_eq!(key("/w?X-Amz-Signature=1"), "/w?X-Amz-Signature=1");
        let err = Routes::new(
            "http://hub.test/".parse().unwrap(),
            &[],
            &[],
            &[casserole_limits::parse_ignored_param("/x/=Signature").unwrap()],
        )
        .unwrap_err();
        assert_eq!(err.flag, "--ignore-query-param");
        assert!(err.message.contains("\"/x/\" names no route"), "{err}");
    }

    #[test]
    fn redirects_are_followed_where_configured_and_only_into_an_origin() {
        let r = routes();
        assert!(r.follows_redirects("/models/a"));
        assert!(r.follows_redirects("/_cdn/x"));
        assert!(!r.follows_redirects("/_cdn/hf/x"));
        let from: reqwest::Url = "http://hub.test/api/m/resolve/main/w".parse().unwrap();
        let to = |l: &str| r.redirect_target(&from, l).map(|u| u.to_string());
        assert_eq!(
            to("https://cdn.test/repos/a?X-Amz-Signature=1").as_deref(),
            Some("https://cdn.test/repos/a?X-Amz-Signature=1")
        );
        assert_eq!(
            to("../other").as_deref(),
            Some("http://hub.test/api/m/resolve/other"),
            "relative to the request"
        );
        for refused in [
            "http://169.254.169.254/latest/meta-data/",
            "https://cdn.test.evil/repos/a",
            "http://cdn.test/repos/a",
            "https://cdn.test:8443/repos/a",
            "http://hub.test/other/a",
            "file:///etc/passwd",
            "https://user@cdn.test/a",
        ] {
            assert_eq!(to(refused), None, "{refused}");
        }
    }

    #[test]
    fn following_redirects_must_name_a_route() {
        let err = Routes::new(
            "http://hub.test/".parse().unwrap(),
            &[],
            &["/x/".into()],
            &[],
        )
        .unwrap_err();
        assert_eq!(err.flag, "--follow-redirects");
        assert!(err.message.contains("names no route"), "{err}");
    }

    #[test]
    fn paths_go_to_their_longest_route() {
        let r = routes();
        let url = |p| r.url_for(p).map(|u| u.to_string());
        assert_eq!(
            url("/_cdn/hf/repos/a?sig=1").unwrap(),
            "https://cdn.test/repos/a?sig=1"
        );
        assert_eq!(url("/_cdn/x").unwrap(), "https://other.test/base/x");
        assert_eq!(url("/_cdn").unwrap(), "https://other.test/base/");
        assert_eq!(url("/_cdnx").unwrap(), "http://hub.test/api/_cdnx");
        assert_eq!(url("/models/a").unwrap(), "http://hub.test/api/models/a");
        assert_eq!(url("/_cdn/hf/../../x").unwrap(), "http://hub.test/api/x");
        assert_eq!(r.default_base(), "http://hub.test/api");
    }

    #[test]
    fn urls_under_a_route_map_back_to_node_paths() {
        let r = routes();
        let path = |u: &str| r.node_path(&u.parse().unwrap());
        assert_eq!(
            path("https://cdn.test/repos/a?sig=1").as_deref(),
            Some("/_cdn/hf/repos/a?sig=1")
        );
        assert_eq!(
            path("https://other.test/base/x").as_deref(),
            Some("/_cdn/x")
        );
        assert_eq!(
            path("http://hub.test/api/models/a").as_deref(),
            Some("/models/a")
        );
        assert_eq!(path("https://cdn.test:8443/repos/a"), None, "another port");
        assert_eq!(path("https://elsewhere.test/x"), None);
        assert_eq!(
            path("http://hub.test/other/a"),
            None,
            "outside the base path"
        );
    }
}
