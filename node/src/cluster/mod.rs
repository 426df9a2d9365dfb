//! Cluster membership and ownership (placeholder until the real modules land).
pub mod membership;
pub mod ring;
