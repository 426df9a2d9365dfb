//! A minimal HTTP/1.1 client for the plain-HTTP endpoints the operator reads inside the
//! cluster: etcd's JSON gateway and the cache nodes' `/metrics`.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// How long one request may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request (`body` makes it a JSON POST, else a GET) and returns the status and the
/// body.
pub async fn request(url: &str, body: Option<String>) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let call = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let builder = match &body {
            Some(_) => http::Request::post(uri.path())
                .header(http::header::CONTENT_TYPE, "application/json"),
            None => http::Request::get(uri.path()),
        };
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let request = builder
            .header(http::header::HOST, authority)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .map_err(|_| format!("{url}: timed out"))?
}
