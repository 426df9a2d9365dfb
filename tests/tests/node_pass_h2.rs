//! Pass-through of request bodies: an HTTP/2 client may send a body without Content-Length
//! (the stream simply stays open); the node must still forward it to the upstream.

use std::convert::Infallible;

use bytes::Bytes;
use casserole_tests::{client::install_crypto_provider, harness::NodeBuilder};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};

/// An upstream that answers every request with `<method> <bytes received> <sha256 of body>`.
async fn echo_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let method = req.method().clone();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let text = format!(
                        "{method} {} {}",
                        body.len(),
                        hex::encode(Sha256::digest(&body))
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_bodies_without_content_length_are_forwarded() {
    install_crypto_provider();
    let upstream = echo_upstream().await;
    let node = NodeBuilder::new(upstream).spawn().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let pieces: Vec<Result<Bytes, Infallible>> = (0..64u8)
        .map(|i| Ok(Bytes::from(vec![i; 16 * 1024])))
        .collect();
    let body: Vec<u8> = pieces
        .iter()
        .flat_map(|p| p.as_ref().unwrap().to_vec())
        .collect();
    let want = format!("{} {}", body.len(), hex::encode(Sha256::digest(&body)));

    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let res = h2
            .request(method.clone(), format!("{}/upload", node.url()))
            .body(reqwest::Body::wrap_stream(futures::stream::iter(
                pieces.clone(),
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), format!("{method} {want}"));
    }
    // A bodiless request stays bodiless (no empty chunked body invented upstream).
    let res = h2
        .delete(format!("{}/upload", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.text().await.unwrap(),
        format!("DELETE 0 {}", hex::encode(Sha256::digest(b"")))
    );
}
