//! Chunk sources below the fetcher, fastest first: memory, disk, and the upstream as the last
//! source. Each implements [`crate::source::ChunkSource`]; the cluster memory tier (owner peers)
//! is the peer protocol's client, in [`crate::peer`].

pub mod disk;
pub mod memory;
pub mod upstream;
