//! The disk tier as a chunk source: it serves the chunks it holds and keeps what this node
//! fetched from the upstream itself (chunks from a peer live on their owner's disk).

use futures::future::BoxFuture;

use super::DiskTier;
use crate::{
    object::ChunkKey,
    source::{Chunk, ChunkRequest, ChunkSource, FetchError, Opened, SourceKind},
};

impl ChunkSource for DiskTier {
    fn kind(&self) -> SourceKind {
        SourceKind::Disk
    }

    fn holds(&self, key: &ChunkKey) -> bool {
        self.contains(key)
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        Box::pin(async move {
            if !self.contains(request.key) {
                return Ok(None);
            }
            let expected = request.meta.chunk_len(request.key.index) as usize;
            match self.get(request.key).await {
                Some(bytes) if bytes.len() == expected => {
                    let rest = bytes.slice(request.offset as usize..);
                    Ok(Some(Opened {
                        stream: Box::pin(futures::stream::once(async move { Ok(rest) })),
                        starts_at: request.offset,
                        origin: SourceKind::Disk,
                    }))
                }
                // Corrupt or foreign files were dropped (and counted) by the tier: a miss.
                _ => {
                    tracing::info!(chunk = %request.key, "disk tier could not serve chunk");
                    Ok(None)
                }
            }
        })
    }

    fn keep<'a>(
        &'a self,
        key: &'a ChunkKey,
        chunk: &'a Chunk,
        origin: SourceKind,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if origin != SourceKind::Upstream {
                return;
            }
            if let Err(e) = self.put(key, chunk.to_bytes()).await {
                tracing::warn!(chunk = %key, error = %e,
                    "disk tier write failed; chunk kept in memory only");
            }
        })
    }
}
