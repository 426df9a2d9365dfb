//! Stale metadata: a conditional request keeps every chunk when the upstream answers `304`, and
//! `stale-while-revalidate` refreshes in the background.

use std::sync::Arc;

use super::{Asker, LookupError, MetaSource, MetadataStore, Missed};
use crate::{object::ObjectMeta, policy::refresh, source::Route};

impl MetadataStore {
    /// Asks the upstream whether `stale` still holds: the probe, made conditional on its
    /// validator. A `304` refreshes its freshness and headers and keeps its version (and so
    /// every chunk); any other answer is a fresh lookup.
    pub(super) async fn revalidate(
        &self,
        path: &str,
        stale: &Arc<ObjectMeta>,
        ask: Asker<'_>,
    ) -> Result<(Arc<ObjectMeta>, MetaSource), Missed> {
        let Some(byte) = ask.first_byte else {
            return self.revalidate_by_head(path, stale, ask).await;
        };
        let chunk_size = self.cfg.chunk_size;
        let start = byte / chunk_size * chunk_size;
        let probe = self
            .upstream
            .probe(path, start, chunk_size, Some(stale), ask.headers)
            .await?;
        if probe.status == http::StatusCode::NOT_MODIFIED {
            return self.refreshed(path, stale, &probe.headers, probe.response_time);
        }
        let meta = self.take_probe(path, probe, ask.headers)?;
        Ok((Arc::new(meta), MetaSource::Upstream))
    }

    /// A client's `HEAD` wants no body: the stored copy is confirmed with a conditional `HEAD`
    /// (RFC 9110 §9.3.2), and a changed object is looked up from that `HEAD`'s answer.
    async fn revalidate_by_head(
        &self,
        path: &str,
        stale: &Arc<ObjectMeta>,
        ask: Asker<'_>,
    ) -> Result<(Arc<ObjectMeta>, MetaSource), Missed> {
        let answer = self.upstream.head(path, ask.headers, Some(stale)).await?;
        if answer.0 == http::StatusCode::NOT_MODIFIED {
            return self.refreshed(path, stale, &answer.1, answer.2);
        }
        let meta = self.take_head(path, answer, ask.headers)?;
        Ok((Arc::new(meta), MetaSource::Upstream))
    }

    /// `stale` confirmed by a `304` with `headers`: its lifetime and headers updated.
    fn refreshed(
        &self,
        path: &str,
        stale: &ObjectMeta,
        headers: &http::HeaderMap,
        response_time: std::time::SystemTime,
    ) -> Result<(Arc<ObjectMeta>, MetaSource), Missed> {
        let status = stale.status_code();
        let ctx = self.context(path, status, response_time);
        let meta = refresh(&ctx, stale, headers).map_err(LookupError::Uncacheable)?;
        tracing::debug!(path, "revalidated: not modified");
        Ok((Arc::new(meta), MetaSource::Revalidated))
    }

    /// Revalidates `stale` off the request path (one at a time per path); the request that
    /// noticed it is served the stale copy at once.
    pub(super) fn revalidate_in_background(
        &self,
        path: &str,
        route: Route,
        stale: Arc<ObjectMeta>,
    ) {
        let Some(me) = self.me.upgrade() else { return };
        if !self
            .revalidating
            .lock()
            .expect("revalidating lock")
            .insert(path.to_string())
        {
            return;
        }
        let path = path.to_string();
        tokio::spawn(async move {
            // Asked as the stored response was selected: the same variant comes back.
            let headers = stale.selecting_headers();
            let ask = Asker {
                first_byte: Some(0),
                headers: &headers,
            };
            match me.load(&path, route, ask, Some(stale)).await {
                Ok((meta, _)) => me.memory.insert(path.clone(), meta).await,
                Err(missed) => {
                    tracing::warn!(path, error = %missed.error, "background revalidation failed")
                }
            }
            me.revalidating
                .lock()
                .expect("revalidating lock")
                .remove(&path);
        });
    }
}
