//! Membership tests: static sources, plus the etcd path against a real etcd
//! (`/usr/bin/etcd`, or `$ETCD_BIN`) started per test on free loopback ports.

use super::*;
use crate::cluster::test_etcd::TestEtcd as Etcd;
use etcd_client::GetOptions;

fn m(id: &str, url: &str) -> Member {
    Member::new(id, url)
}

fn ids(ms: &[Member]) -> Vec<&str> {
    ms.iter().map(|m| m.id.as_str()).collect()
}

#[test]
fn standalone_is_self_and_loaded() {
    let me = m("a", "http://127.0.0.1:1");
    let ms = Membership::standalone(me.clone());
    assert!(ms.is_loaded());
    assert_eq!(*ms.members(), vec![me.clone()]);
    assert_eq!(ms.self_member(), &me);
}

#[test]
fn fixed_adds_self_sorts_and_dedups() {
    let me = m("b", "http://127.0.0.1:2");
    let peers = vec![
        m("c", "http://c"),
        m("a", "http://a"),
        m("b", "http://stale"),
    ];
    let ms = Membership::fixed(me.clone(), peers, ClusterMetrics::unregistered());
    assert!(ms.is_loaded());
    assert_eq!(
        *ms.members(),
        vec![m("a", "http://a"), me.clone(), m("c", "http://c")]
    );
    let ms = Membership::fixed(
        me.clone(),
        vec![m("z", "http://z")],
        ClusterMetrics::unregistered(),
    );
    assert_eq!(ids(&ms.members()), vec!["b", "z"]);
}

#[test]
fn parse_kv_rejects_foreign_keys() {
    let p = "/casserole/x/members/";
    assert_eq!(
        parse_kv(p, b"/casserole/x/members/n1", b"http://u"),
        Some(("n1".into(), "http://u".into()))
    );
    assert_eq!(parse_kv(p, b"/casserole/x/members/", b"u"), None);
    assert_eq!(parse_kv(p, b"/casserole/x/members/a/b", b"u"), None);
    assert_eq!(parse_kv(p, b"/casserole/xy/members/a", b"u"), None);
    assert_eq!(
        parse_kv(p, b"/casserole/x/members/http:%2F%2Fh:1", b"http://h:1"),
        Some(("http://h:1".into(), "http://h:1".into())),
        "encoded ids decode"
    );
}

#[test]
fn ttl_rounds_up_to_whole_seconds() {
    let mut c = cfg(&[], "c", "n");
    c.ttl = Duration::from_millis(1500);
    assert_eq!(c.ttl_secs(), 2);
    c.ttl = Duration::from_millis(10);
    assert_eq!(c.ttl_secs(), 1);
    c.ttl = Duration::from_secs(10);
    assert_eq!(c.ttl_secs(), 10);
}

// ---------------------------------------------------------------- etcd

fn cfg(endpoints: &[String], cluster: &str, id: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: endpoints.to_vec(),
        cluster_name: cluster.into(),
        node_id: id.into(),
        peering_url: format!("http://{id}.test:8000"),
        ttl: Duration::from_secs(2),
    }
}

/// Polls `f` every 50 ms for at most `secs` seconds.
async fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_ids(ms: &Membership, want: &[&str]) -> bool {
    ids(&ms.members()) == want
}

#[tokio::test]
async fn two_nodes_see_each_other_and_leave_is_fast() {
    let etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let (ma, mb) = (
        ClusterMetrics::unregistered(),
        ClusterMetrics::unregistered(),
    );
    let a = Membership::etcd(cfg(&ep, "t", "a"), ma.clone());
    let b = Membership::etcd(cfg(&ep, "t", "b"), mb.clone());
    wait_until(3, "first list", || a.is_loaded() && b.is_loaded()).await;
    // Within 1 s of both being registered, each sees the other.
    wait_until(1, "a sees b", || has_ids(&a, &["a", "b"])).await;
    wait_until(1, "b sees a", || has_ids(&b, &["a", "b"])).await;
    assert_eq!(a.members()[1], m("b", "http://b.test:8000"));
    assert_eq!(ma.members.get(), 2);

    // subscribe() sees the next change.
    let mut rx = a.subscribe();
    rx.borrow_and_update();
    let started = Instant::now();
    b.leave().await;
    assert!(
        started.elapsed() < Duration::from_millis(2100),
        "leave is bounded"
    );
    wait_until(1, "a drops b", || has_ids(&a, &["a"])).await;
    timeout(Duration::from_secs(1), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&rx.borrow()), vec!["a"]);
    assert_eq!(ma.members.get(), 1);
    // b's key is gone from etcd, not just from a's view.
    let mut c = etcd.client().await;
    let r = c
        .get(
            "/casserole/t/members/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 1);
    b.leave().await; // idempotent
    a.leave().await;
    assert_eq!(ma.etcd_errors.get(), 0);
    assert_eq!(ma.lease_registrations.get(), 0);
}

#[tokio::test]
async fn url_change_is_applied() {
    let etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let a = Membership::etcd(cfg(&ep, "u", "a"), ClusterMetrics::unregistered());
    wait_until(3, "loaded", || a.is_loaded()).await;
    let mut c = etcd.client().await;
    c.put("/casserole/u/members/x", "http://x:1", None)
        .await
        .unwrap();
    wait_until(1, "x joins", || a.members().contains(&m("x", "http://x:1"))).await;
    c.put("/casserole/u/members/x", "http://x:2", None)
        .await
        .unwrap();
    wait_until(1, "x url updated", || {
        a.members().contains(&m("x", "http://x:2"))
    })
    .await;
    assert_eq!(a.members().len(), 2);
    // Junk under the prefix is ignored, not turned into a member.
    c.put("/casserole/u/members/x/extra", "junk", None)
        .await
        .unwrap();
    c.delete("/casserole/u/members/x", None).await.unwrap();
    wait_until(1, "x leaves", || has_ids(&a, &["a"])).await;
    a.leave().await;
}

#[tokio::test]
async fn cluster_names_are_isolated() {
    let etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let a = Membership::etcd(cfg(&ep, "one", "a"), ClusterMetrics::unregistered());
    let b = Membership::etcd(cfg(&ep, "one", "b"), ClusterMetrics::unregistered());
    // "onex" shares a string prefix with "one": must still be isolated.
    let c = Membership::etcd(cfg(&ep, "onex", "c"), ClusterMetrics::unregistered());
    wait_until(3, "a sees b", || has_ids(&a, &["a", "b"])).await;
    wait_until(3, "c loaded", || c.is_loaded()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&c.members()), vec!["c"]);
    assert_eq!(ids(&a.members()), vec!["a", "b"]);
    for x in [a, b, c] {
        x.leave().await;
    }
}

#[tokio::test]
async fn etcd_down_keeps_members_and_recovers_after_restart() {
    restart_scenario(false).await;
}

/// Same, but the leases are gone when etcd comes back (what happens when
/// etcd stays down, or the node is cut off, for longer than the TTL; a
/// restarted etcd itself extends surviving leases, so revoke them by hand).
#[tokio::test]
async fn lease_expired_during_outage_re_registers_after_restart() {
    restart_scenario(true).await;
}

async fn restart_scenario(expire_leases: bool) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let (ma, mb) = (
        ClusterMetrics::unregistered(),
        ClusterMetrics::unregistered(),
    );
    let a = Membership::etcd(cfg(&ep, "r", "a"), ma.clone());
    let b = Membership::etcd(cfg(&ep, "r", "b"), mb.clone());
    wait_until(3, "a sees b", || has_ids(&a, &["a", "b"])).await;
    wait_until(3, "b sees a", || has_ids(&b, &["a", "b"])).await;

    etcd.kill();
    // Longer than the 2 s TTL: on the node side the lease is presumed lost.
    let down_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < down_until {
        assert!(has_ids(&a, &["a", "b"]), "a keeps the last known set");
        assert!(has_ids(&b, &["a", "b"]), "b keeps the last known set");
        assert!(a.is_loaded());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ma.etcd_errors.get() > 0, "errors are counted");

    etcd.spawn().await;
    let mut c = etcd.client().await;
    if expire_leases {
        for l in c.leases().await.unwrap().leases() {
            c.lease_revoke(l.id()).await.unwrap();
        }
    }
    // Backoff is capped at 5 s (jitter only shortens it): both are back then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .get(
                "/casserole/r/members/",
                Some(GetOptions::new().with_prefix()),
            )
            .await;
        if r.map(|r| r.kvs().len() == 2).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "both nodes re-registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(has_ids(&a, &["a", "b"]) && has_ids(&b, &["a", "b"]));
    // Watches are live again: a newcomer is seen by both (within the 5 s
    // backoff cap plus a second).
    let c_node = Membership::etcd(cfg(&ep, "r", "c"), ClusterMetrics::unregistered());
    wait_until(7, "a sees c", || has_ids(&a, &["a", "b", "c"])).await;
    wait_until(7, "b sees c", || has_ids(&b, &["a", "b", "c"])).await;
    // Leases are kept alive again: the keys outlive a TTL and more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = c
        .get(
            "/casserole/r/members/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 3);
    c_node.leave().await;
    let expected = u64::from(expire_leases);
    assert_eq!(ma.lease_registrations.get(), expected);
    assert_eq!(mb.lease_registrations.get(), expected);
    // The sets stay correct after recovery: a leave is seen again.
    b.leave().await;
    wait_until(1, "a drops b after recovery", || has_ids(&a, &["a"])).await;
    a.leave().await;
}

#[tokio::test]
async fn lost_lease_re_registers() {
    let etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let (ma, mb) = (
        ClusterMetrics::unregistered(),
        ClusterMetrics::unregistered(),
    );
    let a = Membership::etcd(cfg(&ep, "l", "a"), ma.clone());
    let b = Membership::etcd(cfg(&ep, "l", "b"), mb.clone());
    wait_until(3, "a sees b", || has_ids(&a, &["a", "b"])).await;
    // Revoke every lease behind the nodes' backs (as if it had expired).
    let mut c = etcd.client().await;
    for l in c.leases().await.unwrap().leases() {
        c.lease_revoke(l.id()).await.unwrap();
    }
    wait_until(3, "both re-registered", || {
        ma.lease_registrations.get() == 1 && mb.lease_registrations.get() == 1
    })
    .await;
    wait_until(1, "a sees b again", || has_ids(&a, &["a", "b"])).await;
    let r = c
        .get(
            "/casserole/l/members/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 2);
    assert!(r.kvs().iter().all(|kv| kv.lease() != 0));
    a.leave().await;
    b.leave().await;
}

#[tokio::test]
async fn unreachable_at_start_stays_self_until_first_list() {
    // Reserve ports, but start etcd only later.
    let mut etcd = Etcd::unstarted();
    let ep = vec![etcd.endpoint()];
    let metrics = ClusterMetrics::unregistered();
    let a = Membership::etcd(cfg(&ep, "s", "a"), metrics.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!a.is_loaded());
    assert_eq!(*a.members(), vec![m("a", "http://a.test:8000")]);
    assert_eq!(metrics.members.get(), 1);
    assert!(metrics.etcd_errors.get() > 0);

    etcd.spawn().await;
    wait_until(8, "loaded after etcd came up", || a.is_loaded()).await;
    assert_eq!(
        metrics.lease_registrations.get(),
        0,
        "first registration is not a re-registration"
    );
    a.leave().await;
}

#[tokio::test]
async fn dropping_every_handle_stops_the_task() {
    let etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let a = Membership::etcd(cfg(&ep, "d", "a"), ClusterMetrics::unregistered());
    let b = Membership::etcd(cfg(&ep, "d", "b"), ClusterMetrics::unregistered());
    wait_until(3, "a sees b", || has_ids(&a, &["a", "b"])).await;
    drop(b);
    // The task notices the dropped stop sender and revokes its lease.
    wait_until(2, "a drops b", || has_ids(&a, &["a"])).await;
    a.leave().await;
}

/// The default node id is the peering URL: ids full of `/` (and `%`) must
/// form a cluster, and each node must find itself in what it reads.
#[tokio::test]
async fn url_shaped_ids_form_a_cluster() {
    let etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let ids = ["http://127.0.0.1:18291", "http://127.0.0.1:18292/a%20b"];
    let metrics: Vec<ClusterMetrics> = ids.iter().map(|_| ClusterMetrics::unregistered()).collect();
    let nodes: Vec<Membership> = ids
        .iter()
        .zip(&metrics)
        .map(|(id, m)| {
            let mut c = cfg(&ep, "urls", id);
            c.peering_url = id.to_string();
            Membership::etcd(c, m.clone())
        })
        .collect();
    for n in &nodes {
        wait_until(3, "both listed", || has_ids(n, &ids)).await;
    }
    let mut c = etcd.client().await;
    let r = c
        .get(
            "/casserole/urls/members/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let keys: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(
        keys,
        vec![
            "/casserole/urls/members/http:%2F%2F127.0.0.1:18291",
            "/casserole/urls/members/http:%2F%2F127.0.0.1:18292%2Fa%2520b",
        ]
    );
    for m in &metrics {
        assert_eq!(m.self_missing.get(), 0);
        assert_eq!(m.members.get(), 2);
    }
    for n in nodes {
        n.leave().await;
    }
}

/// A node whose own key is not in the list it reads (here: another process
/// overwrote it with a different URL, i.e. a duplicate id) reports it.
#[tokio::test]
async fn a_node_missing_from_its_list_is_counted() {
    let etcd = Etcd::start().await;
    let ep = vec![etcd.endpoint()];
    let metrics = ClusterMetrics::unregistered();
    let a = Membership::etcd(cfg(&ep, "dup", "a"), metrics.clone());
    wait_until(3, "loaded", || a.is_loaded()).await;
    assert_eq!(metrics.self_missing.get(), 0);
    let mut c = etcd.client().await;
    c.put("/casserole/dup/members/a", "http://impostor:1", None)
        .await
        .unwrap();
    wait_until(2, "counted", || metrics.self_missing.get() >= 1).await;
    a.leave().await;
}
