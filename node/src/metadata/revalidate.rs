//! Stale metadata: a conditional request keeps every chunk when the upstream answers `304`, and
//! `stale-while-revalidate` refreshes off the request path (the cache layer runs it).

use std::sync::Arc;

use super::{Asker, Found, LookupError, MetaSource, MetadataStore, Missed};
use crate::{
    object::ObjectMeta,
    policy::{head_confirms, refresh},
    source::Route,
    upstream::{Relayed, UpstreamError},
};

/// A failing upstream's answer to a revalidation never replaces the copy held, whatever it
/// says of its own lifetime: the caller serves that copy stale within its grace, or relays the
/// answer.
fn failing(status: http::StatusCode) -> Option<LookupError> {
    crate::policy::is_upstream_failure(status.as_u16())
        .then(|| LookupError::Upstream(UpstreamError::Status(status.as_u16())))
}

impl MetadataStore {
    /// Asks the upstream whether `stale` still holds: the probe, made conditional on its
    /// validator. A `304` refreshes its freshness and headers and keeps its version (and so
    /// every chunk); any other answer is a fresh lookup.
    pub(super) async fn revalidate(
        &self,
        path: &str,
        stale: &Arc<ObjectMeta>,
        ask: Asker<'_>,
    ) -> Result<Found, Missed> {
        let Some(byte) = ask.first_byte else {
            return self.revalidate_by_head(path, stale, ask).await;
        };
        let chunk_size = self.cfg.chunk_size;
        let start = byte / chunk_size * chunk_size;
        let probe = self
            .upstream
            .probe(
                ask.target(path),
                start,
                chunk_size,
                Some(stale),
                ask.headers,
            )
            .await?;
        if probe.status == http::StatusCode::NOT_MODIFIED {
            return self.refreshed(path, stale, &probe.headers, probe.response_time);
        }
        if let Some(error) = failing(probe.status) {
            let relay = probe.into_relay().map(Box::new);
            return Err(Missed { error, relay });
        }
        self.take_probe(path, probe, ask.headers).await
    }

    /// A client's `HEAD` wants no body: the stored copy is confirmed with a conditional `HEAD`
    /// (RFC 9110 §9.3.2), and a changed object is looked up from that `HEAD`'s answer. A `200`
    /// that shows the same bytes (§4.3.5: an upstream that ignores the condition, or a copy
    /// without a validator) updates the copy as a `304` would.
    async fn revalidate_by_head(
        &self,
        path: &str,
        stale: &Arc<ObjectMeta>,
        ask: Asker<'_>,
    ) -> Result<Found, Missed> {
        let answer = self
            .upstream
            .head(ask.target(path), ask.headers, Some(stale))
            .await?;
        let confirms = match answer.0 {
            http::StatusCode::NOT_MODIFIED => true,
            http::StatusCode::OK => head_confirms(stale, &answer.1),
            _ => false,
        };
        if confirms {
            return self.refreshed(path, stale, &answer.1, answer.2);
        }
        if let Some(error) = failing(answer.0) {
            let relay = Some(Box::new(Relayed::bodiless(answer.0, answer.1)));
            return Err(Missed { error, relay });
        }
        let meta = self.take_head(path, answer, ask.headers)?;
        Ok(Found::without_body(Arc::new(meta), MetaSource::Upstream))
    }

    /// `stale` confirmed by a `304` with `headers`: its lifetime and headers updated.
    fn refreshed(
        &self,
        path: &str,
        stale: &ObjectMeta,
        headers: &http::HeaderMap,
        response_time: std::time::SystemTime,
    ) -> Result<Found, Missed> {
        let status = stale.status_code();
        let ctx = self.context(path, status, response_time);
        let meta = refresh(&ctx, stale, headers).map_err(LookupError::Uncacheable)?;
        tracing::debug!(path, "revalidated: not modified");
        Ok(Found::without_body(Arc::new(meta), MetaSource::Revalidated))
    }

    /// Revalidates `stale`, served meanwhile within its `stale-while-revalidate` grace: asked as
    /// the stored response was selected (the same variant comes back), from the object's
    /// start. A new version's probe body comes back with the answer, which is not yet kept: the
    /// caller hands that body to the fetcher first, then keeps the record
    /// (`keep_revalidated`), so no request reads the new version before its first chunk's fetch
    /// exists (it would fetch that chunk a second time).
    pub async fn revalidate_stale(
        &self,
        path: &str,
        route: Route,
        stale: Arc<ObjectMeta>,
        upstream_target: Option<&Arc<str>>,
    ) -> Result<Found, Missed> {
        let headers = stale.selecting_headers();
        let ask = Asker {
            first_byte: Some(0),
            headers: &headers,
            upstream_target,
        };
        self.load(path, route, ask, Some(stale)).await
    }

    /// Replaces the record of `path` with what `revalidate_stale` found.
    pub async fn keep_revalidated(&self, path: &str, meta: Arc<ObjectMeta>) {
        self.memory.insert(path.to_string(), meta).await;
    }
}
