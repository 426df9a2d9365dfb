//! A scripted fake API server for tests (the controller-rs way): a `kube::Client` over a
//! `tower_test` mock, and a verifier that expects each request in order, checks it and
//! answers it.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every request lands in the returned handle.
pub fn client() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// One request as the fake server saw it.
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Seen {
    /// Asserts the request is a server-side apply by the operator's field manager.
    pub fn assert_apply(&self) {
        assert_eq!(self.method, Method::PATCH, "{}", self.path);
        assert!(
            self.query.contains("fieldManager=casserole-operator")
                && self.query.contains("force=true"),
            "not a forced apply by casserole-operator: {}?{}",
            self.path,
            self.query
        );
    }
}

pub struct ApiServer(pub Handle);

impl ApiServer {
    /// Waits for the next request, asserts its method and path, and answers `status` with
    /// `response` (a JSON body).
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        respond: impl FnOnce(&Seen) -> (StatusCode, Value),
    ) -> Seen {
        let (request, send) =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
                .unwrap_or_else(|| panic!("client gone while expecting {method} {path}"));
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON request body")
            },
        };
        assert_eq!(
            (&seen.method, seen.path.as_str()),
            (&method, path),
            "unexpected request"
        );
        let (status, value) = respond(&seen);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&value).unwrap()))
                .unwrap(),
        );
        seen
    }

    /// Asserts the client made no further request (call once the client is dropped).
    pub async fn done(mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(std::time::Duration::from_secs(1), self.0.next_request()).await
        {
            panic!(
                "unexpected extra request: {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

/// A Kubernetes `Status` error body.
pub fn status_error(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("fake {reason}"), "reason": reason, "code": code,
        }),
    )
}

/// 200 with the request body echoed back (what an apply of an unchanged object returns).
pub fn echo(seen: &Seen) -> (StatusCode, Value) {
    (StatusCode::OK, seen.body.clone())
}
