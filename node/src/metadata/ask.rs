//! Asking the upstream for an object's metadata: the probe (a `GET` of the chunk holding the
//! first byte the request wants, whose body comes back with the metadata) or a `HEAD`, and the
//! verdict on the answer. `MetadataStore`'s methods are split by concern over this module's
//! files (lookups in `mod.rs`, client demands in `on_request`, stale copies in `revalidate`,
//! forgetting in `forget`), each file under the size the project allows.

use std::{sync::Arc, time::SystemTime};

use super::{Asker, Found, LookupError, MetaSource, MetadataStore, Missed};
use crate::{
    object::ObjectMeta,
    policy::{
        evaluate, evaluate_head, headers::withheld_headers, HeadContext, LookupAnswer, Uncacheable,
    },
    upstream::{Probe, ProbeBody, Relayed, UpstreamError},
};

/// An upstream answer's verdict as it holds for the request that asked: shared only as the answer
/// allows when the request carried credentials (RFC 9111 §3.5), and noting the values of the
/// headers it varies on (its selecting header fields).
fn for_asker(
    verdict: Result<ObjectMeta, LookupError>,
    response: &http::HeaderMap,
    client: &http::HeaderMap,
) -> Result<ObjectMeta, LookupError> {
    let meta = verdict?;
    crate::policy::shareable_with_credentials(client, response)
        .map_err(LookupError::Uncacheable)?;
    Ok(meta.selected_by(client))
}

impl MetadataStore {
    /// A fresh lookup: the probe, or a `HEAD` for requests that want no body.
    pub(super) async fn ask_upstream(&self, path: &str, ask: Asker<'_>) -> Result<Found, Missed> {
        match ask.first_byte {
            Some(byte) => self.probe(path, byte, ask).await,
            None => {
                let answer = self
                    .upstream
                    .head(ask.target(path), ask.headers, None)
                    .await?;
                let withheld = withheld_headers(&answer.1);
                let meta = self.take_head(path, answer, ask.headers)?;
                Ok(Found {
                    withheld,
                    ..Found::without_body(Arc::new(meta), MetaSource::Upstream)
                })
            }
        }
    }

    /// Metadata from the upstream's answer to a `HEAD`; an answer that makes none is handed
    /// back to be relayed.
    pub(super) fn take_head(
        &self,
        path: &str,
        (status, headers, response_time): (http::StatusCode, http::HeaderMap, SystemTime),
        client: &http::HeaderMap,
    ) -> Result<ObjectMeta, Missed> {
        let verdict = evaluate_head(&self.context(path, status, response_time), &headers)
            .map_err(|why| failed_or(status.as_u16(), why));
        match for_asker(verdict, &headers, client) {
            Ok(meta) => Ok(meta),
            Err(error) => Err(Missed {
                error,
                relay: Some(Box::new(Relayed::bodiless(status, headers))),
            }),
        }
    }

    pub(super) fn context<'a>(
        &'a self,
        path: &'a str,
        status: http::StatusCode,
        response_time: std::time::SystemTime,
    ) -> HeadContext<'a> {
        HeadContext {
            upstream: self.upstream.base(),
            path,
            status: status.as_u16(),
            rules: &self.cfg.rules,
            chunk_size: self.cfg.chunk_size,
            response_time,
        }
    }

    /// Looks `path` up with a `GET` of the chunk holding `byte`, whose body comes back with the
    /// metadata, so the first byte costs one round trip.
    async fn probe(&self, path: &str, byte: u64, ask: Asker<'_>) -> Result<Found, Missed> {
        let chunk_size = self.cfg.chunk_size;
        let start = byte / chunk_size * chunk_size;
        let probe = self
            .upstream
            .probe(ask.target(path), start, chunk_size, None, ask.headers)
            .await?;
        self.take_probe(path, probe, ask.headers).await
    }

    /// A probe answered without a length (chunked, or ending with the connection) has it learnt
    /// by reading up to a chunk of its body, when the answer would be stored (a bounded number
    /// at once: the bytes are held outside the fetch budget); one that would not (`no-store`, a
    /// stream of events, …) is relayed unread, as it comes.
    async fn sized(
        &self,
        path: &str,
        probe: Probe,
        client: &http::HeaderMap,
    ) -> Result<Probe, UpstreamError> {
        if !matches!(probe.body, ProbeBody::Unsized(_)) {
            return Ok(probe);
        }
        // The verdict `take_probe` will give it once the length is known.
        let ctx = self.context(path, probe.status, probe.response_time);
        let verdict = evaluate(&ctx, LookupAnswer::Whole { length: 0 }, &probe.headers)
            .map_err(LookupError::Uncacheable);
        if for_asker(verdict, &probe.headers, client).is_err() {
            return Ok(probe);
        }
        let _reading = self.learning.acquire().await.expect("never closed");
        self.upstream.sized(probe, self.cfg.chunk_size, path).await
    }

    /// Metadata from a probe's answer (its length learnt first when it says none), with its
    /// body when the object has bytes. An answer that makes no metadata is handed back to be
    /// relayed.
    pub(super) async fn take_probe(
        &self,
        path: &str,
        probe: Probe,
        client: &http::HeaderMap,
    ) -> Result<Found, Missed> {
        let probe = self.sized(path, probe, client).await?;
        let verdict = self.judge_probe(path, &probe);
        let meta = match for_asker(verdict, &probe.headers, client) {
            Ok(meta) => meta,
            Err(error) => {
                let relay = probe.into_relay().map(Box::new);
                return Err(Missed { error, relay });
            }
        };
        let withheld = withheld_headers(&probe.headers);
        let first_chunk = (meta.length > 0).then_some(probe.body);
        Ok(Found {
            meta: Arc::new(meta),
            source: MetaSource::Upstream,
            first_chunk,
            withheld,
        })
    }

    fn judge_probe(&self, path: &str, probe: &Probe) -> Result<ObjectMeta, LookupError> {
        let code = probe.status.as_u16();
        let answer = match (code, probe.length) {
            (206, Some(length)) => LookupAnswer::Ranged { length },
            (other, Some(length)) if crate::policy::is_storable_status(other) => {
                LookupAnswer::Whole { length }
            }
            (200 | 206, None) => return Err(LookupError::Uncacheable(Uncacheable::UnknownLength)),
            (other, _) => return Err(failed_or(other, Uncacheable::Status(other))),
        };
        // A `206` is a part of the `200` the object is.
        let status = match answer {
            LookupAnswer::Ranged { .. } => http::StatusCode::OK,
            _ => probe.status,
        };
        let ctx = self.context(path, status, probe.response_time);
        evaluate(&ctx, answer, &probe.headers).map_err(|why| failed_or(code, why))
    }
}

/// Why an answer with `status` made no metadata: an upstream failing now that did not say its
/// failure may be kept is an error to report (or to serve stale through), not a verdict on the
/// object.
fn failed_or(status: u16, why: Uncacheable) -> LookupError {
    match crate::policy::is_upstream_failure(status) {
        true => LookupError::Upstream(UpstreamError::Status(status)),
        false => LookupError::Uncacheable(why),
    }
}
