//! Redirects into the cache: an upstream's redirect to a URL under one of the node's origins
//! (`--upstream` or a `--route`) is answered with that URL on this node, so clients that follow
//! it (a model hub's resolve endpoint sending them to its CDN, a store's presigned URLs) fetch
//! through the cache instead of around it. The new `Location` is absolute: some clients follow
//! relative redirects differently on `HEAD` (the Hugging Face client then misses the hub's
//! headers). Every other header of the redirect passes unchanged (`X-Linked-Etag` and the like
//! are what such clients read).

use http::{header, HeaderValue, Request, Response};

use super::serve::Front;
use crate::body::Body;

impl Front {
    /// The authority a client reached this node by: the request's `Host` (or its HTTP/2
    /// authority), kept as it came (a cheap clone) until a redirect needs it.
    pub(super) fn client_authority<B>(req: &Request<B>) -> Option<HeaderValue> {
        req.headers().get(header::HOST).cloned().or_else(|| {
            let authority = req.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        })
    }

    /// The scheme and authority a client reached this node by: `--public-url`, else `http://`
    /// and the authority it asked.
    fn public_origin(&self, authority: Option<&HeaderValue>) -> Option<String> {
        if let Some(url) = &self.public_url {
            return Some(url.as_str().trim_end_matches('/').to_string());
        }
        let host = authority
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())?;
        Some(format!("http://{host}"))
    }

    /// Rewrites the `Location` of a redirect that points under one of the node's origins.
    pub(super) fn redirect_into_cache(
        &self,
        res: &mut Response<Body>,
        authority: Option<&HeaderValue>,
    ) {
        if !res.status().is_redirection() {
            return;
        }
        let Some(public) = self.public_origin(authority) else {
            return;
        };
        let target = res
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| reqwest::Url::parse(v).ok())
            .and_then(|url| self.upstream.node_path_of(&url));
        if let Some(path) = target {
            if let Ok(value) = HeaderValue::from_str(&format!("{public}{path}")) {
                res.headers_mut().insert(header::LOCATION, value);
            }
        }
    }
}
