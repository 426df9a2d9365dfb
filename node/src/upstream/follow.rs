//! `--follow-redirects PREFIX`: the node follows the redirects of that route's origin itself, so
//! clients that cannot follow a redirect (or that should not see the signed URL behind it) get
//! the object, and the cache keeps the target's body under the client's path.
//!
//! A redirect is followed only for `GET` and `HEAD`, at most [`MAX_HOPS`] times, and only to an
//! http(s) URL under one of the node's own origins (`--upstream` or a `--route`): a redirect
//! anywhere else is answered as it came (and rewritten into the cache when it can be), so an
//! origin can never make the node fetch from a host it was not configured for. The answer carries
//! the first redirect's identifying headers (a model hub's `X-Repo-Commit`, `X-Linked-Etag`,
//! `X-Linked-Size`), which clients read from the redirect.

use http::{header, HeaderMap, HeaderName, Method, StatusCode};

use super::Upstream;

/// Redirects followed for one request before the last answer is taken as it is.
pub const MAX_HOPS: usize = 5;

/// Headers of a redirect that identify what it points at; copied onto the target's answer when it
/// lacks them. Not `ETag`: the answer's `ETag` is the validator the node's own conditional
/// requests send to the target, which knows only its own.
const IDENTIFYING: [&str; 4] = [
    "x-repo-commit",
    "x-linked-etag",
    "x-linked-size",
    "x-linked-last-modified",
];

/// Headers a request loses when a redirect sends it to another origin (scheme, host, port), as
/// browsers and HTTP clients do: the credentials were meant for the first one.
const CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Upstream {
    /// Sends `req`, made for node target `path`; where `path`'s route follows redirects, a
    /// redirect into one of the node's origins is followed (see the module's doc).
    pub(super) async fn send(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let (client, request) = req.build_split();
        let mut request = request?;
        let follows = self.routes.follows_redirects(path)
            && matches!(*request.method(), Method::GET | Method::HEAD);
        if !follows {
            return client.execute(request).await;
        }
        let mut identifying = HeaderMap::new();
        let mut hop = 0;
        loop {
            // Requests the node follows have no body, so they always clone.
            let again = request.try_clone();
            let from = request.url().clone();
            let mut res = client.execute(request).await?;
            let target = (hop < MAX_HOPS && is_redirect(res.status()))
                .then(|| res.headers().get(header::LOCATION)?.to_str().ok())
                .flatten()
                .and_then(|location| self.routes.redirect_target(&from, location));
            let (Some(target), Some(next)) = (target, again) else {
                for (name, value) in &identifying {
                    if !res.headers().contains_key(name) {
                        res.headers_mut().insert(name.clone(), value.clone());
                    }
                }
                return Ok(res);
            };
            for name in IDENTIFYING {
                if let (Some(value), false) =
                    (res.headers().get(name), identifying.contains_key(name))
                {
                    identifying.insert(HeaderName::from_static(name), value.clone());
                }
            }
            tracing::debug!(path, status = res.status().as_u16(), %target, "following the upstream's redirect");
            request = next;
            if !same_origin(&from, &target) {
                for name in &CREDENTIALS {
                    request.headers_mut().remove(name);
                }
            }
            *request.url_mut() = target;
            hop += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redirect_statuses_are_followed() {
        for code in [301, 302, 303, 307, 308] {
            assert!(is_redirect(StatusCode::from_u16(code).unwrap()));
        }
        for code in [200, 206, 300, 304, 305, 404] {
            assert!(!is_redirect(StatusCode::from_u16(code).unwrap()));
        }
    }

    #[test]
    fn origins_differ_by_scheme_host_or_port() {
        let u = |s: &str| s.parse::<reqwest::Url>().unwrap();
        assert!(same_origin(&u("http://a/x"), &u("http://a:80/y?q")));
        assert!(!same_origin(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_origin(&u("http://a/x"), &u("http://b/x")));
        assert!(!same_origin(&u("http://a/x"), &u("http://a:8080/x")));
    }
}
