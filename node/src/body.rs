//! Response body helpers: one boxed body type for every response the node sends.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A streamed body; an `Err` item aborts the response (the connection is reset rather than the
/// body ending short yet looking complete).
pub fn streaming<S, E>(stream: S) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + Sync + 'static,
    E: Into<BoxError> + 'static,
{
    BodyExt::boxed(StreamBody::new(
        stream.map(|item| item.map(Frame::data).map_err(Into::into)),
    ))
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

/// Wraps a `Send` stream so that it is also `Sync`, as the boxed body type requires; only one
/// task ever polls a response body, so the mutex is never contended.
pub fn sync_stream<S, T>(stream: S) -> impl Stream<Item = T> + Send + Sync + 'static
where
    S: Stream<Item = T> + Send + 'static,
{
    let stream = std::sync::Mutex::new(Box::pin(stream));
    futures::stream::poll_fn(move |cx| {
        stream
            .lock()
            .expect("body stream lock")
            .as_mut()
            .poll_next(cx)
    })
}
