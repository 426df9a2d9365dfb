//! Cluster membership (who is alive) and ownership (who owns a key).
//!
//! `membership` keeps the live member set current (etcd, a static list, or
//! standalone); `ring` maps a key onto that set by rendezvous hashing. Both
//! only depend on [`Member`], so the ring can be used with any member source.
//! `etcd` is the node's one connection to etcd and its plumbing, used by
//! membership and by purges.

pub mod etcd;
pub mod member_key;
pub mod membership;
pub mod ring;
#[cfg(test)]
pub(crate) mod test_etcd;

/// One cache node as its peers see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Stable node id (unique in the cluster); the ring hashes it, so it must
    /// not change across restarts or ownership moves.
    pub id: String,
    /// Peering URL, e.g. `http://10.0.0.5:8000`.
    pub url: String,
}

impl Member {
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        Member {
            id: id.into(),
            url: url.into(),
        }
    }
}
