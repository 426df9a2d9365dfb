//! The one seam every chunk source implements: memory, owner peer, disk and upstream.
//!
//! A source opens chunk *i* of an object version at a byte offset and yields `Bytes` as they
//! arrive. `fetch` walks the sources of a chunk in order, once, failing over from one to the
//! next; the finished chunk is then offered back to every source so that stores keep it.

use std::{fmt, pin::Pin, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::{future::BoxFuture, Stream};
use http::StatusCode;

use crate::{
    object::{ChunkKey, ObjectMeta},
    upstream::UpstreamError,
};

/// Which sources a lookup may use. Requests from peers are served from this node's own tiers
/// only, so two nodes that briefly disagree on ownership never bounce a request between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Cluster,
    LocalOnly,
}

/// Where the bytes of a chunk came from, for `Cache-Status`, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Memory,
    Peer,
    Disk,
    Upstream,
}

impl SourceKind {
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::Memory => "memory",
            SourceKind::Peer => "peer",
            SourceKind::Disk => "disk",
            SourceKind::Upstream => "upstream",
        }
    }

    /// Parses [`SourceKind::label`] (peer wire format).
    pub fn from_label(label: &str) -> Option<Self> {
        [Self::Memory, Self::Peer, Self::Disk, Self::Upstream]
            .into_iter()
            .find(|k| k.label() == label)
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a chunk could not be had. Names the party that failed: the client sees the upstream
/// blamed only when the upstream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cluster peer {peer} failed: {message}")]
    Peer { peer: String, message: String },
    #[error("{from} sent more than the chunk's {expected} bytes")]
    TooLong { from: SourceKind, expected: u64 },
    #[error("{from} ended the chunk after {got} of {expected} bytes")]
    Short {
        from: SourceKind,
        expected: u64,
        got: u64,
    },
    #[error("chunk source {0} failed internally")]
    Panicked(SourceKind),
    #[error("chunk fetch abandoned")]
    Abandoned,
    #[error("no source could provide the chunk")]
    NoSource,
    #[error("no memory for a new chunk fetch within {0:?}; try again")]
    Busy(Duration),
}

impl FetchError {
    /// Status a client gets when this happens before response headers were sent.
    pub fn client_status(&self) -> StatusCode {
        match self {
            FetchError::Upstream(e) => e.client_status(),
            FetchError::Busy(_) | FetchError::Abandoned | FetchError::NoSource => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            FetchError::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
            FetchError::Peer { .. } | FetchError::TooLong { .. } | FetchError::Short { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Metric label of the failing party.
    pub fn party(&self) -> &'static str {
        match self {
            FetchError::Upstream(_) => "upstream",
            FetchError::Peer { .. } => "peer",
            FetchError::TooLong { from, .. } | FetchError::Short { from, .. } => from.label(),
            FetchError::Panicked(from) => from.label(),
            FetchError::Abandoned | FetchError::Busy(_) | FetchError::NoSource => "node",
        }
    }

    /// The object changed (or went) upstream: the version being read is gone there, whichever
    /// source or request met it.
    pub fn is_changed(&self) -> bool {
        matches!(self, FetchError::Upstream(UpstreamError::Changed(_)))
    }

    /// Whether the next source may be tried: an object that changed upstream is not a source's
    /// fault, and trying elsewhere would only fetch the new version under the old metadata.
    pub fn fails_over(&self) -> bool {
        !self.is_changed()
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

/// An upstream body as a chunk source's stream.
pub fn from_upstream(stream: crate::upstream::UpstreamStream) -> ChunkStream {
    use futures::StreamExt;
    Box::pin(stream.map(|piece| piece.map_err(FetchError::from)))
}

/// The bytes of one chunk as consecutive parts.
///
/// A chunk arriving from a source is assembled into one allocation and handed out in parts as
/// they complete; the memory tier keeps those same parts, so a chunk being streamed and the cached
/// chunk are one copy in memory, not two.
#[derive(Clone, Debug)]
pub struct Chunk {
    parts: Arc<[Bytes]>,
    len: usize,
    /// The chunk's share of the node's chunk memory (`--max-memory-usage`), held while any copy
    /// of it lives: in the memory tier, or with a reader that has not let go of it yet.
    pin: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl Chunk {
    pub fn new(parts: Vec<Bytes>) -> Self {
        let len = parts.iter().map(Bytes::len).sum();
        Chunk {
            parts: parts.into(),
            len,
            pin: None,
        }
    }

    /// The chunk holding `pin` for as long as it (or a clone) lives.
    pub fn pinned(mut self, pin: Arc<tokio::sync::OwnedSemaphorePermit>) -> Self {
        self.pin = Some(pin);
        self
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The parts from byte `offset` on, without copying.
    pub fn parts_from(&self, mut offset: usize) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(self.parts.len());
        for part in self.parts.iter() {
            if offset >= part.len() {
                offset -= part.len();
                continue;
            }
            out.push(part.slice(offset..));
            offset = 0;
        }
        out
    }

    /// One contiguous buffer (copies unless the chunk is a single part).
    pub fn to_bytes(&self) -> Bytes {
        match &*self.parts {
            [only] => only.clone(),
            parts => {
                let mut whole = BytesMut::with_capacity(self.len);
                for p in parts {
                    whole.extend_from_slice(p);
                }
                whole.freeze()
            }
        }
    }
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Self {
        Chunk::new(vec![bytes])
    }
}

/// What a source is asked for: chunk `key.index` of `meta`, from byte `offset` of the chunk on
/// (non-zero when an earlier source broke off mid-chunk).
#[derive(Clone, Copy)]
pub struct ChunkRequest<'a> {
    pub meta: &'a ObjectMeta,
    pub key: &'a ChunkKey,
    pub offset: u64,
}

/// A source's answer: the bytes as they arrive.
pub struct Opened {
    pub stream: ChunkStream,
    /// The byte of the chunk the stream starts at; at most the offset asked for (a source that
    /// cannot seek starts at 0 and the fetcher skips what it already has).
    pub starts_at: u64,
    /// Where the bytes really come from: an owner peer that had to ask the upstream says so.
    pub origin: SourceKind,
}

/// One place chunks can come from.
pub trait ChunkSource: Send + Sync {
    fn kind(&self) -> SourceKind;

    /// A chunk this source hands out at once, without a fetch (the memory tier).
    fn ready(&self, _key: &ChunkKey) -> Option<Chunk> {
        None
    }

    /// Whether this source holds the chunk locally, as far as a cheap check can tell (the disk
    /// tier's index).
    fn holds(&self, _key: &ChunkKey) -> bool {
        false
    }

    /// Starts reading the chunk. `Ok(None)`: this source does not have it (the next one is tried
    /// and nothing counts as a failure).
    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>>;

    /// A whole, verified chunk that came from `origin`; sources that store chunks keep it.
    fn keep<'a>(
        &'a self,
        _key: &'a ChunkKey,
        _chunk: &'a Chunk,
        _origin: SourceKind,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// This source failed to deliver (before or during the chunk); e.g. a peer is then skipped
    /// for a while.
    fn failed(&self, _error: &FetchError) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_from_slices_without_copying() {
        let a = Bytes::from_static(b"abcd");
        let b = Bytes::from_static(b"efg");
        let chunk = Chunk::new(vec![a.clone(), b]);
        let tail = chunk.parts_from(5);
        assert_eq!(tail, vec![Bytes::from_static(b"fg")]);
        assert_eq!(chunk.parts_from(0)[0].as_ptr(), a.as_ptr());
        assert_eq!(chunk.parts_from(2).concat(), b"cdefg");
        assert!(chunk.parts_from(7).is_empty());
    }

    #[test]
    fn only_an_object_change_stops_failover() {
        assert!(!FetchError::Upstream(UpstreamError::Changed("etag".into())).fails_over());
        assert!(FetchError::Upstream(UpstreamError::Timeout).fails_over());
        let peer = FetchError::Peer {
            peer: "b".into(),
            message: "reset".into(),
        };
        assert!(peer.fails_over());
        assert_eq!(peer.client_status(), StatusCode::BAD_GATEWAY);
        assert!(!peer.to_string().contains("upstream"));
        assert_eq!(
            FetchError::Abandoned.client_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
