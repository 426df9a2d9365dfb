//! The upstream as the last chunk source: a validated, conditional range request from the byte
//! where the previous source stopped.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::{
    source::{from_upstream, ChunkRequest, ChunkSource, FetchError, Opened, SourceKind},
    upstream::Upstream,
};

pub struct UpstreamSource(pub Arc<Upstream>);

impl ChunkSource for UpstreamSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        Box::pin(async move {
            // Whole-only objects come from their whole-object stream, never by ranges.
            if request.meta.whole_only {
                return Ok(None);
            }
            let stream = self
                .0
                .fetch_chunk(request.meta, request.key.index, request.offset)
                .await?;
            Ok(Some(Opened {
                stream: from_upstream(stream),
                starts_at: request.offset,
                origin: SourceKind::Upstream,
            }))
        })
    }
}
