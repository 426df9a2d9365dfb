//! HTTP client helpers for tests: stream bodies into a digest (never buffering a large object)
//! and turn an aborted or short body into an error instead of a silently short result.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_LENGTH};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// A body read to its end without being kept.
#[derive(Debug, Clone)]
pub struct BodyDigest {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// SHA-256 of the body, hex.
    pub sha256: String,
    pub len: u64,
}

/// A shared client: no proxy (a developer's `http_proxy` must not intercept loopback tests),
/// no automatic decompression, and a read timeout so a stalled server fails a test rather than
/// hanging it.
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| builder().build().expect("building the test HTTP client"))
}

/// Like [`client`], but a redirect is answered to the test as it came, never followed.
pub fn not_following() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the test HTTP client")
    })
}

fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
}

/// reqwest is built with `rustls-no-provider`, so building any client (even for plain HTTP)
/// needs a process-wide provider. Idempotent; a provider installed by someone else is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn request(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut req = client().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// Fails when a declared `Content-Length` was not delivered. hyper already errors when the
/// connection closes early; this also catches a server that ends a body "cleanly" but short.
fn check_length(headers: &HeaderMap, len: u64, head: bool) -> Result<()> {
    if head {
        return Ok(());
    }
    if let Some(declared) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if declared != len {
            bail!("body has {len} bytes but Content-Length said {declared}");
        }
    }
    Ok(())
}

/// GET `url`, hashing the body as it streams. An aborted body is an `Err`.
///
/// The request is built before the returned future is polled, so the header slice need not
/// outlive it (handy with `join!`).
pub fn get_sha256(
    url: &str,
    headers: &[(&str, &str)],
) -> impl Future<Output = Result<BodyDigest>> + Send + 'static {
    let req = request(reqwest::Method::GET, url, headers);
    let url = url.to_string();
    async move { digest(req, &url).await }
}

async fn digest(req: reqwest::RequestBuilder, url: &str) -> Result<BodyDigest> {
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("GET {url}: body aborted after {len} bytes"))?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    check_length(&headers, len, false).with_context(|| format!("GET {url}"))?;
    Ok(BodyDigest {
        status,
        headers,
        sha256: hex::encode(hasher.finalize()),
        len,
    })
}

/// GET `url` into memory (for small bodies). An aborted body is an `Err`.
pub fn get_bytes(
    url: &str,
    headers: &[(&str, &str)],
) -> impl Future<Output = Result<(StatusCode, HeaderMap, Bytes)>> + Send + 'static {
    let req = request(reqwest::Method::GET, url, headers);
    let url = url.to_string();
    async move { bytes(req, &url).await }
}

async fn bytes(req: reqwest::RequestBuilder, url: &str) -> Result<(StatusCode, HeaderMap, Bytes)> {
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("GET {url}: body aborted"))?;
    check_length(&headers, body.len() as u64, false).with_context(|| format!("GET {url}"))?;
    Ok((status, headers, body))
}

/// HEAD `url`.
pub fn head(
    url: &str,
    headers: &[(&str, &str)],
) -> impl Future<Output = Result<(StatusCode, HeaderMap)>> + Send + 'static {
    let req = request(reqwest::Method::HEAD, url, headers);
    let url = url.to_string();
    async move {
        let resp = req.send().await.with_context(|| format!("HEAD {url}"))?;
        Ok((resp.status(), resp.headers().clone()))
    }
}

/// SHA-256 (hex) of a byte slice, for comparing small bodies.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A header as a string ("" when absent), for terse assertions.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
