//! Response body helpers: one boxed body type for every response the node sends.

mod parts;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Not `Sync`: one task polls a response body, and hyper asks only for `Send`; a `Sync` body
/// would make every streamed body go through a lock.
///
/// Its frames are [`Parts`]: several buffers written with one `writev`.
pub type Body = UnsyncBoxBody<Parts, BoxError>;

pub use parts::Parts;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(Parts::from(bytes.into()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A streamed body; an `Err` item aborts the response (the connection is reset rather than the
/// body ending short yet looking complete). The buffers the stream has ready together go out
/// as one frame ([`parts::ReadyBatches`]).
pub fn streaming<S, E>(stream: S) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let batches = parts::ReadyBatches::new(Box::pin(stream.map(|item| item.map_err(Into::into))));
    BodyExt::boxed_unsync(StreamBody::new(batches.map(|item| item.map(Frame::data))))
}

/// The answer to a request that carried a body: a refusal (an error status) may leave the rest
/// of that body on the connection, so the connection ends with the answer, and says so (RFC 9112
/// §9.6). Without `Connection: close` a client puts the connection back in its pool, and its
/// next request there fails when the server drops it (a test saw `IncompleteMessage` on the
/// request after a refused 300 KiB preheat body). For the admin and peer APIs, whose answers
/// are all the node's own.
pub fn after_body(has_body: bool, res: Response<Body>) -> Response<Body> {
    let refused = res.status().is_client_error() || res.status().is_server_error();
    match has_body && refused {
        true => closing(res),
        false => res,
    }
}

/// Whether `req` carries a body (see `after_body`).
pub fn has_body<B: http_body::Body>(req: &http::Request<B>) -> bool {
    !req.body().is_end_stream()
}

/// `res`, ending its connection (see `after_body`); HTTP/2 drops the header and keeps the
/// connection, whose streams end on their own.
pub fn closing(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// A short plain-text error response: the status plus one line saying why.
pub fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response<Body> {
    let text = format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut res = Response::new(full(text));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
