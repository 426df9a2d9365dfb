//! Storage tiers a chunk can be found in, fastest first: memory, (cluster peers,) disk.
//! The upstream is not a tier but the last source; see `fetch`.

pub mod disk;
pub mod memory;
pub mod peer;

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
