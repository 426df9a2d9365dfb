//! The operator's own HTTP endpoints: `/metrics` (Prometheus text) and `/healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::health::Liveness;
use crate::metrics::Metrics;

fn respond(
    metrics: &Metrics,
    liveness: &Liveness,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        // Liveness: the process serves requests and no reconcile is stuck. (Readiness to
        // reconcile is leadership, which a standby legitimately lacks: not a health signal.)
        "/healthz" => match liveness.check() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{reason}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds `addr` and returns the bound address and the serving future.
pub async fn bind(
    addr: SocketAddr,
    metrics: Metrics,
    liveness: Liveness,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve = async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let metrics = metrics.clone();
            let liveness = liveness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let resp = respond(&metrics, &liveness, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    };
    Ok((local, serve))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let metrics = Metrics::default();
        metrics.reconciles.inc();
        metrics.duration.with_label_values(&["ok"]).observe(0.2);
        let liveness = Liveness::new(std::time::Duration::from_millis(20));
        let (addr, serve) = bind("127.0.0.1:0".parse().unwrap(), metrics, liveness.clone())
            .await
            .unwrap();
        let server = tokio::spawn(serve);
        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("casserole_operator_reconciles_total 1"), "{m}");
        assert!(
            m.contains("casserole_operator_reconcile_duration_seconds_bucket"),
            "{m}"
        );
        let h = get(addr, "/healthz").await;
        assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        // A reconcile stuck past the limit fails liveness.
        let _stuck = liveness.start();
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        let h = get(addr, "/healthz").await;
        assert!(
            h.starts_with("HTTP/1.1 503") && h.contains("running for"),
            "{h}"
        );
        server.abort();
    }
}
