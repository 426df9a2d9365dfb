//! The probe that looks an object up, and whole-object streams.
//!
//! A cold lookup is one `GET` of the object's first chunk (`Range: bytes=0-<chunk-1>`): its
//! headers say what a `HEAD` would (status, length from `Content-Range`, validator, freshness),
//! and its body is the first chunk, so the first byte costs one upstream round trip. An upstream
//! that ignores `Range` answers `200` with the whole body, which is then the object's one
//! whole-object stream.

use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::{header, HeaderMap, StatusCode};

use super::{check_validator, conditional, Upstream, UpstreamError, UpstreamStream};
use crate::{object::ObjectMeta, policy::headers::content_length};

/// What the body of a probe is.
pub enum ProbeBody {
    /// `206`: `len` bytes of the object from byte `start` (the chunk the probe asked for).
    Range {
        start: u64,
        len: u64,
        stream: UpstreamStream,
    },
    /// `200`: the whole object, `Content-Length` bytes long (or as long as its body turned out
    /// to be: `Upstream::sized`).
    Whole { len: u64, stream: UpstreamStream },
    /// A whole answer the cache may store but whose length it does not say (chunked or ending
    /// with the connection): unread, until `Upstream::sized` learns its length or relays it.
    Unsized(reqwest::Response),
    /// Not object bytes the cache can use (another status, or a body longer than it will learn
    /// the length of): the body as it comes, so it can be relayed to the client as it is.
    Other(UpstreamStream),
    /// No usable body (a range other than the one asked).
    None,
}

/// An upstream answer the cache does not keep, relayed to the client whose request caused it:
/// its status, headers and body as the upstream sent them, so the first request for an
/// uncacheable object costs the upstream one request (RFC 9111 §3: a cache forwards what it
/// cannot store).
pub struct Relayed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamStream,
}

impl Relayed {
    /// `res` as it came, its body streamed.
    pub fn of(res: reqwest::Response) -> Self {
        let (status, headers) = (res.status(), res.headers().clone());
        let body = body_of(res);
        Relayed {
            status,
            headers,
            body,
        }
    }

    /// The upstream's answer to a `HEAD`.
    pub fn bodiless(status: StatusCode, headers: HeaderMap) -> Self {
        let body: UpstreamStream = Box::pin(futures::stream::empty());
        Relayed {
            status,
            headers,
            body,
        }
    }
}

impl Probe {
    /// This answer as the response to a client that wanted the whole object, or `None` when
    /// its body is only a part of it (the client then needs a request of its own). A `206` that
    /// carries every byte is the whole object (RFC 9110 §15.3.7: a cache may answer `200`).
    pub fn into_relay(self) -> Option<Relayed> {
        let Probe {
            status,
            mut headers,
            length,
            body,
            ..
        } = self;
        let (status, body) = match body {
            ProbeBody::Whole { stream, .. } => (status, stream),
            ProbeBody::Range {
                start: 0,
                len,
                stream,
            } if Some(len) == length => {
                headers.remove(header::CONTENT_RANGE);
                headers.insert(header::CONTENT_LENGTH, len.into());
                (StatusCode::OK, stream)
            }
            ProbeBody::Unsized(res) => return Some(Relayed::of(res)),
            ProbeBody::Other(stream) => (status, stream),
            ProbeBody::Range { .. } | ProbeBody::None => return None,
        };
        Some(Relayed {
            status,
            headers,
            body,
        })
    }
}

/// The body of `res` as it comes.
fn body_of(res: reqwest::Response) -> UpstreamStream {
    Box::pin(res.bytes_stream().map_err(UpstreamError::from_reqwest))
}

/// The upstream's answer to a probe.
pub struct Probe {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub response_time: SystemTime,
    /// The object's length, from `Content-Range` (`206`) or `Content-Length` (`200`).
    pub length: Option<u64>,
    pub body: ProbeBody,
}

/// `bytes <first>-<last>/<total>` with a known total.
pub(super) fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let text = headers.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let (range, total) = text.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total) = (
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (first <= last && last < total).then_some((first, last, total))
}

/// `Range` of a probe of `len` bytes from `start`. `start` comes from a client's `Range`
/// (`bytes=18446744073709551615-`): the last byte saturates instead of overflowing, and the
/// upstream's `416` sends the probe back to the first chunk.
fn probe_range(start: u64, len: u64) -> String {
    let last = start.saturating_add(len.saturating_sub(1));
    format!("bytes={start}-{last}")
}

impl Upstream {
    /// Looks `path` up with a `GET` of bytes `start..start + len` (the chunk a client wants
    /// first); past the end of the object, of its first `len` bytes instead. With `stale`, the
    /// request is conditional on its validator and may be answered `304`.
    pub async fn probe(
        &self,
        path: &str,
        start: u64,
        len: u64,
        stale: Option<&ObjectMeta>,
        client: &HeaderMap,
    ) -> Result<Probe, UpstreamError> {
        let probe = self.probe_at(path, start, len, stale, client).await?;
        if probe.status == StatusCode::RANGE_NOT_SATISFIABLE && start > 0 {
            return self.probe_at(path, 0, len, stale, client).await;
        }
        Ok(probe)
    }

    async fn probe_at(
        &self,
        path: &str,
        start: u64,
        len: u64,
        stale: Option<&ObjectMeta>,
        client: &HeaderMap,
    ) -> Result<Probe, UpstreamError> {
        let kind = if stale.is_some() {
            "revalidate"
        } else {
            "probe"
        };
        self.count_request(path, kind);
        let mut req = self
            .client
            .get(self.url_for(path)?)
            .headers(self.lookup_headers(client))
            .header(header::RANGE, probe_range(start, len))
            .header(header::ACCEPT_ENCODING, "identity");
        if let Some(stale) = stale {
            req = super::if_changed(req, stale);
        }
        let sent = std::time::Instant::now();
        let res = self
            .send(path, req)
            .await
            .map_err(|e| self.failed(path, UpstreamError::from_reqwest(e)))?;
        self.round_trips.observe(sent.elapsed());
        let (status, headers) = (res.status(), res.headers().clone());
        let response_time = SystemTime::now();
        if status.is_server_error() {
            self.failed(path, UpstreamError::Status(status.as_u16()));
        }
        let (length, body) = match status {
            StatusCode::PARTIAL_CONTENT => match content_range(&headers) {
                Some((first, last, total))
                    if first == start
                        && content_length(&headers).is_none_or(|l| l == last - first + 1) =>
                {
                    let len = last - first + 1;
                    let stream = self.validated_body(res, len, path);
                    (Some(total), ProbeBody::Range { start, len, stream })
                }
                Some((_, _, total)) => (Some(total), ProbeBody::None),
                None => (None, ProbeBody::None),
            },
            // A `200` (the upstream ignores `Range`), or another status the cache may store
            // (`404`, `301`, …): its body is the whole object.
            other if crate::policy::is_storable_status(other.as_u16()) => {
                // A `204` has no body, whatever it says (RFC 9110 §15.3.5).
                let no_body = other == StatusCode::NO_CONTENT;
                match content_length(&headers)
                    .filter(|_| !no_body)
                    .or(no_body.then_some(0))
                {
                    Some(len) => {
                        let stream = self.validated_body(res, len, path);
                        (Some(len), ProbeBody::Whole { len, stream })
                    }
                    None => (None, ProbeBody::Unsized(res)),
                }
            }
            _ => (None, ProbeBody::Other(body_of(res))),
        };
        Ok(Probe {
            status,
            headers,
            response_time,
            length,
            body,
        })
    }

    /// The object of `meta` as one stream, from byte `from` on where the upstream honours
    /// `Range` and from byte 0 where it does not: returns the byte the stream starts at. The
    /// answer must be the same version, and exactly as long as announced.
    pub async fn fetch_whole(
        &self,
        meta: &ObjectMeta,
        from: u64,
    ) -> Result<(u64, UpstreamStream), UpstreamError> {
        self.count_request(&meta.path, "whole");
        let mut req = self
            .client
            .get(self.url_for(meta.upstream_target())?)
            .header(header::ACCEPT_ENCODING, "identity");
        if from > 0 {
            req = req.header(header::RANGE, format!("bytes={from}-"));
        }
        let res = self
            .send(meta.upstream_target(), conditional(req, &meta.validator))
            .await
            .map_err(|e| self.failed(&meta.path, UpstreamError::from_reqwest(e)))?;
        let headers = res.headers().clone();
        let starts_at = match res.status() {
            StatusCode::OK => 0,
            // An object stored with another status (a `404`, a `301`) is that status again.
            status if status.as_u16() == meta.status => 0,
            StatusCode::PARTIAL_CONTENT => match content_range(&headers) {
                Some((first, last, total))
                    if first == from && last + 1 == meta.length && total == meta.length =>
                {
                    from
                }
                _ => {
                    return Err(self.failed(
                        &meta.path,
                        UpstreamError::BadRange(
                            "unexpected Content-Range for the rest of an object".into(),
                        ),
                    ))
                }
            },
            StatusCode::PRECONDITION_FAILED => {
                return Err(self.failed(
                    &meta.path,
                    UpstreamError::Changed("412 to a conditional GET".into()),
                ))
            }
            other => return Err(self.failed(&meta.path, UpstreamError::Status(other.as_u16()))),
        };
        check_validator(&meta.validator, &headers).map_err(|e| self.failed(&meta.path, e))?;
        let expected = meta.length - starts_at;
        if content_length(&headers).is_some_and(|l| l != expected) {
            return Err(self.failed(
                &meta.path,
                UpstreamError::Changed(format!(
                    "Content-Length {:?}, expected {expected}",
                    content_length(&headers)
                )),
            ));
        }
        Ok((starts_at, self.validated_body(res, expected, &meta.path)))
    }

    /// `probe` with the length of an unsized answer learnt: its body read, when it ends within
    /// `limit` bytes, and then a whole answer of that length (a dynamic page or index sent
    /// chunked is stored like any other). A longer body is relayed as it comes, from the bytes
    /// already read on; a body that fails before its end fails the lookup, as a probe's would.
    pub async fn sized(
        &self,
        mut probe: Probe,
        limit: u64,
        path: &str,
    ) -> Result<Probe, UpstreamError> {
        let ProbeBody::Unsized(mut res) = probe.body else {
            return Ok(probe);
        };
        let received = self
            .metrics
            .bytes
            .with_label_values(&[self.routes.label_of(path)]);
        let mut read = bytes::BytesMut::new();
        loop {
            let piece = res
                .chunk()
                .await
                .map_err(|e| self.failed(path, UpstreamError::from_reqwest(e)))?;
            let Some(piece) = piece else { break };
            received.inc_by(piece.len() as u64);
            read.extend_from_slice(&piece);
            if read.len() as u64 > limit {
                let head = futures::stream::once(futures::future::ready(Ok(read.freeze())));
                probe.body = ProbeBody::Other(Box::pin(head.chain(body_of(res))));
                return Ok(probe);
            }
        }
        let len = read.len() as u64;
        let stream = futures::stream::once(futures::future::ready(Ok(read.freeze())));
        probe.length = Some(len);
        probe.body = ProbeBody::Whole {
            len,
            stream: Box::pin(stream),
        };
        Ok(probe)
    }

    /// The body of `res` (for `path`), validated as it streams: never more than `expected`
    /// bytes, never silently fewer.
    pub(super) fn validated_body(
        &self,
        res: reqwest::Response,
        expected: u64,
        path: &str,
    ) -> UpstreamStream {
        let body = Box::pin(res.bytes_stream());
        let route = self.routes.label_of(path).to_string();
        let metrics = (
            self.metrics.bytes.with_label_values(&[&route]),
            self.metrics.errors.clone(),
            route,
        );
        let state = (body, 0u64, false, metrics);
        let stream = futures::stream::unfold(
            state,
            move |(mut body, mut received, done, metrics)| async move {
                if done {
                    return None;
                }
                let item: Result<Bytes, UpstreamError> = match body.next().await {
                    Some(Ok(piece)) => {
                        received += piece.len() as u64;
                        metrics.0.inc_by(piece.len() as u64);
                        if received > expected {
                            Err(UpstreamError::TooLong { expected })
                        } else {
                            Ok(piece)
                        }
                    }
                    Some(Err(e)) => Err(UpstreamError::from_reqwest(e)),
                    None if received < expected => Err(UpstreamError::Truncated {
                        expected,
                        got: received,
                    }),
                    None => return None,
                };
                if let Err(e) = &item {
                    metrics.1.with_label_values(&[e.label(), &metrics.2]).inc();
                }
                let done = item.is_err();
                Some((item, (body, received, done, metrics)))
            },
        );
        Box::pin(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    #[test]
    fn probe_ranges_never_overflow() {
        assert_eq!(probe_range(0, 4), "bytes=0-3");
        assert_eq!(probe_range(4, 4), "bytes=4-7");
        let max = u64::MAX;
        assert_eq!(probe_range(max, 4), format!("bytes={max}-{max}"));
        let last_chunk = max / (2 << 20) * (2 << 20);
        assert_eq!(
            probe_range(last_chunk, 2 << 20),
            format!("bytes={last_chunk}-{max}")
        );
        assert_eq!(probe_range(7, 0), "bytes=7-7");
    }

    #[test]
    fn content_ranges_parse_strictly() {
        let cr = |v| content_range(&headers(&[("content-range", v)]));
        assert_eq!(cr("bytes 0-99/1000"), Some((0, 99, 1000)));
        assert_eq!(cr("bytes 0-99/*"), None);
        assert_eq!(cr("bytes 99-0/1000"), None);
        assert_eq!(cr("bytes 0-1000/1000"), None);
        assert_eq!(cr("items 0-1/2"), None);
    }
}
