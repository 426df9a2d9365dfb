//! Storage tiers a chunk can be found in, fastest first: memory, (cluster peers,) disk.
//! The upstream is not a tier but the last source; see `fetch`.

pub mod disk;
pub mod memory;
pub mod peer;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// The bytes of one chunk as consecutive parts.
///
/// A chunk arriving from the upstream is assembled into one allocation and handed out in parts as
/// they complete; the memory tier keeps those same parts, so a chunk being streamed and the cached
/// chunk are one copy in memory, not two.
#[derive(Clone, Debug)]
pub struct Chunk {
    parts: Arc<[Bytes]>,
    len: usize,
}

impl Chunk {
    pub fn new(parts: Vec<Bytes>) -> Self {
        let len = parts.iter().map(Bytes::len).sum();
        Chunk {
            parts: parts.into(),
            len,
        }
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

/// Where the bytes of a chunk came from, for `Cache-Status`, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Peer,
    Disk,
    Upstream,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Peer => "peer",
            Source::Disk => "disk",
            Source::Upstream => "upstream",
        }
    }
}
