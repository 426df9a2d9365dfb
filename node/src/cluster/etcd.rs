//! etcd plumbing shared by membership and purges: one connection per node, the deadline of a
//! unary call, the errors, a paginated read of a prefix, and the lease that purge records share.
//!
//! Membership keeps a lease of its own: a member's key must vanish a TTL after the member dies,
//! while a purge record must outlive its writer for `--purge-ttl`, so one lease cannot serve both.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};
use tokio::{
    sync::Mutex,
    time::{timeout, Instant},
};

/// Deadline for one unary etcd call; streams have their own liveness checks.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Keys per page of a prefix read: one read of a whole prefix fails once the answer passes
/// gRPC's 4 MiB message limit; a page of 128 records of at most a few KiB stays well below it.
pub const PAGE: i64 = 128;

/// Why an etcd call or session ended.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd call timed out")]
    Timeout,
    #[error("{0}")]
    Stream(&'static str),
    /// The lease is gone (expired or revoked): register again at once.
    #[error("lease lost")]
    LeaseLost,
}

/// Wraps one unary call in [`OP_TIMEOUT`].
pub async fn op<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match timeout(OP_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(EtcdError::Timeout),
    }
}

/// No request timeout on the channel: it would also cut the long-lived watch and keep-alive
/// streams. Unary calls use [`op`] instead. HTTP/2 pings find a dead connection; 10 s stays
/// above etcd's minimum ping interval (5 s).
fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(OP_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        // A member cut off from the etcd quorum fails our calls and watches instead of serving
        // a stale view forever.
        .with_require_leader(true)
}

/// The node's one connection to etcd: membership and purges share its HTTP/2 channel.
pub struct Etcd {
    endpoints: Vec<String>,
    current: Mutex<Option<Connection>>,
    generations: AtomicU64,
}

/// A connected client, and which connection it came from (so that a failure reported by a user
/// of an older connection does not drop a newer one).
#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    generation: u64,
}

impl Etcd {
    pub fn new(endpoints: Vec<String>) -> Arc<Etcd> {
        Arc::new(Etcd {
            endpoints,
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
        })
    }

    /// The shared connection, connecting first if there is none.
    pub async fn connection(&self) -> Result<Connection, EtcdError> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current {
            return Ok(c.clone());
        }
        let client = op(Client::connect(&self.endpoints, Some(connect_options()))).await?;
        let conn = Connection {
            client,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// After a failed session on `conn`: the next user connects afresh rather than relying on
    /// the old channel to reconnect by itself once the server is back.
    pub async fn failed(&self, conn: &Connection) {
        let mut current = self.current.lock().await;
        if current.as_ref().map(|c| c.generation) == Some(conn.generation) {
            *current = None;
        }
    }
}

/// Every key under a prefix at one revision.
pub struct Listing {
    pub kvs: Vec<KeyValue>,
    /// The revision read at: a watch from `revision + 1` misses nothing.
    pub revision: i64,
    /// Which etcd cluster answered (a revision means nothing in another one).
    pub cluster_id: u64,
}

/// Reads every key under `prefix`, `page` keys per call, all pages at the revision of the first
/// (a consistent snapshot; a compaction in between fails the read, and the caller starts over).
pub async fn list_prefix(
    client: &mut Client,
    prefix: &str,
    page: i64,
) -> Result<Listing, EtcdError> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut listing = Listing {
        kvs: Vec::new(),
        revision: 0,
        cluster_id: 0,
    };
    loop {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page)
            .with_revision(listing.revision);
        let mut resp = op(client.get(from.clone(), Some(opts))).await?;
        if listing.revision == 0 {
            let header = resp.header();
            listing.revision = header.map(|h| h.revision()).unwrap_or(0);
            listing.cluster_id = header.map(|h| h.cluster_id()).unwrap_or(0);
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let Some(last) = kvs.last() else { break };
        // The next page starts right after the last key read.
        from = last.key().to_vec();
        from.push(0);
        listing.kvs.extend(kvs);
        if !more || listing.revision == 0 {
            break;
        }
    }
    Ok(listing)
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One lease for every record this node writes that must outlive it by `ttl`: granted once and
/// reused for an eighth of its life, so each record lives between ⅞ × ttl and ttl, and the node
/// holds one current lease however many records it writes (a lease per write cost a grant per
/// request).
pub struct SharedLease {
    ttl: Duration,
    current: Mutex<Option<(i64, Instant)>>,
}

impl SharedLease {
    pub fn new(ttl: Duration) -> SharedLease {
        SharedLease {
            ttl: ttl.max(Duration::from_secs(1)),
            current: Mutex::new(None),
        }
    }

    /// The current lease, granted anew once an eighth of its life has passed.
    pub async fn id(&self, client: &mut Client) -> Result<i64, EtcdError> {
        let mut current = self.current.lock().await;
        if let Some((id, granted)) = *current {
            if granted.elapsed() < self.ttl / 8 {
                return Ok(id);
            }
        }
        let secs = self.ttl.as_secs().max(1) as i64;
        let id = op(client.lease_grant(secs, None)).await?.id();
        *current = Some((id, Instant::now()));
        Ok(id)
    }

    /// After a write under `id` failed (the lease may be gone, e.g. etcd lost its data): the
    /// next write gets a new one.
    pub async fn forget(&self, id: i64) {
        let mut current = self.current.lock().await;
        if current.is_some_and(|(c, _)| c == id) {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::PutOptions;

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[tokio::test]
    async fn a_prefix_of_more_keys_than_a_page_is_read_whole_at_one_revision() {
        let etcd = crate::cluster::test_etcd::TestEtcd::start().await;
        let mut client = etcd.client().await;
        for i in 0..300 {
            client
                .put(format!("/p/{i:04}"), "v", None::<PutOptions>)
                .await
                .unwrap();
        }
        client.put("/p0", "outside", None).await.unwrap();
        client.put("/o/1", "outside", None).await.unwrap();
        let listing = list_prefix(&mut client, "/p/", 128).await.unwrap();
        let keys: Vec<String> = listing
            .kvs
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..300).map(|i| format!("/p/{i:04}")).collect();
        assert_eq!(keys, want, "every key once, in order, none outside");
        assert!(listing.revision > 300);
        // Pages of one key, and an empty prefix.
        let listing = list_prefix(&mut client, "/p/00", 1).await.unwrap();
        assert_eq!(listing.kvs.len(), 100);
        let listing = list_prefix(&mut client, "/none/", 128).await.unwrap();
        assert!(listing.kvs.is_empty() && listing.revision > 0);
    }

    #[tokio::test]
    async fn the_shared_connection_is_replaced_only_after_its_own_failure() {
        let etcd = crate::cluster::test_etcd::TestEtcd::start().await;
        let shared = Etcd::new(vec![etcd.endpoint()]);
        let first = shared.connection().await.unwrap();
        let again = shared.connection().await.unwrap();
        assert_eq!(first.generation, again.generation, "one connection");
        shared.failed(&first).await;
        let second = shared.connection().await.unwrap();
        assert_ne!(second.generation, first.generation);
        shared.failed(&first).await; // a late report about the old one
        assert_eq!(
            shared.connection().await.unwrap().generation,
            second.generation
        );
    }

    #[tokio::test]
    async fn records_share_one_lease() {
        let etcd = crate::cluster::test_etcd::TestEtcd::start().await;
        let mut client = etcd.client().await;
        let lease = SharedLease::new(Duration::from_secs(3600));
        let a = lease.id(&mut client).await.unwrap();
        let b = lease.id(&mut client).await.unwrap();
        assert_eq!(a, b);
        lease.forget(a).await;
        assert_ne!(lease.id(&mut client).await.unwrap(), a);
    }
}
