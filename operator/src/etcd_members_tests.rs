//! Member replacement: recognising a member whose data is gone, the remove/add sequence on a
//! fake membership API, and the whole heal on the scripted Kubernetes API.

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::json;

use super::*;
use crate::context::Context;
use crate::etcd_heal::heal;
use crate::metrics::Metrics;
use crate::mock::{self, echo};
use crate::resources::testing::default_cache;

fn pod(name: &str, last_words: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"containerStatuses": [{
            "name": "etcd", "image": "etcd", "imageID": "", "ready": false, "restartCount": 7,
            "lastState": {"terminated": {"exitCode": 1, "message": last_words}},
        }]}
    }))
    .unwrap()
}

#[test]
fn members_whose_data_is_gone_are_recognised_by_their_last_words() {
    let pods = [
        pod("web-etcd-2", "... member 8e9e05c52164694d has already been bootstrapped"),
        pod("web-etcd-0", "tocommit(41) is out of range [lastIndex(0)]. Was the raft log corrupted, truncated, or lost?"),
        pod("web-etcd-1", "dial tcp: lookup web-etcd-0: no such host"),
    ];
    assert_eq!(lost_members(&pods), ["web-etcd-0", "web-etcd-2"]);
}

/// A membership API that records what it was asked.
#[derive(Default)]
struct Fake {
    members: Mutex<Vec<Member>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Members for Fake {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Member>, String>> {
        self.calls.lock().unwrap().push("list".into());
        let members = self.members.lock().unwrap().clone();
        Box::pin(async move { Ok(members) })
    }
    fn remove(&self, id: &str) -> BoxFuture<'_, Result<(), String>> {
        self.calls.lock().unwrap().push(format!("remove {id}"));
        self.members.lock().unwrap().retain(|m| m.id != id);
        Box::pin(async { Ok(()) })
    }
    fn add(&self, peer_url: &str) -> BoxFuture<'_, Result<(), String>> {
        self.calls.lock().unwrap().push(format!("add {peer_url}"));
        self.members.lock().unwrap().push(Member {
            id: "99".into(),
            name: String::new(),
            peer_urls: vec![peer_url.into()],
        });
        Box::pin(async { Ok(()) })
    }
}

const PEER: &str = "http://web-etcd-0.web-etcd-peer.cdn.svc:2380";

fn three_members() -> Vec<Member> {
    (0..3)
        .map(|i| Member {
            id: format!("{}", 100 + i),
            name: format!("web-etcd-{i}"),
            peer_urls: vec![PEER.replace("etcd-0", &format!("etcd-{i}"))],
        })
        .collect()
}

#[tokio::test]
async fn a_lost_member_is_removed_then_added_under_its_peer_url_once() {
    let fake = Fake {
        members: Mutex::new(three_members()),
        ..Fake::default()
    };
    replace(&fake, "web-etcd-0", PEER).await.unwrap();
    // Again (the pod has not restarted yet): the re-added member is left alone.
    replace(&fake, "web-etcd-0", PEER).await.unwrap();
    assert_eq!(
        *fake.calls.lock().unwrap(),
        ["list", "remove 100", &format!("add {PEER}"), "list"]
    );
}

struct FakeConnect(Arc<Mutex<Vec<String>>>);

impl Connect for FakeConnect {
    fn connect(&self, client_url: &str) -> Box<dyn Members> {
        self.0.lock().unwrap().push(format!("connect {client_url}"));
        Box::new(Fake {
            members: Mutex::new(three_members()),
            calls: self.0.clone(),
        })
    }
}

#[tokio::test]
async fn heal_replaces_the_member_and_restarts_its_pod() {
    let (client, mut server) = mock::client();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut ctx = Context::new(client, Metrics::default(), Some("test".into()));
    ctx.etcd_members = Arc::new(FakeConnect(calls.clone()));
    let cache = default_cache();
    let scenario = async {
        let list = server
            .expect(Method::GET, "/api/v1/namespaces/cdn/pods", |_| {
                let pods = [
                    pod("web-etcd-0", "member 1 has already been bootstrapped"),
                    pod("web-etcd-1", ""),
                ];
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
                )
            })
            .await;
        assert!(list.query.contains("component%3Detcd"), "{}", list.query);
        server
            .expect(Method::DELETE, "/api/v1/namespaces/cdn/pods/web-etcd-0", |_| {
                (StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))
            })
            .await;
        let event = server
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/cdn/events",
                echo,
            )
            .await;
        assert_eq!(event.body["reason"], "EtcdMemberReplaced");
    };
    let (result, ()) = tokio::join!(heal(&ctx, &cache), scenario);
    result.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "connect http://web-etcd.cdn.svc:2379",
            "list",
            "remove 100",
            &format!("add {PEER}")
        ]
    );
    drop(ctx);
    server.done().await;
}

#[test]
fn the_template_says_existing_once_the_cluster_formed() {
    use crate::resources::{desired_for, Inputs, Object};
    let cache = default_cache();
    let args = |bootstrapped: bool| {
        let inputs = Inputs {
            etcd_bootstrapped: bootstrapped,
            ..Inputs::default()
        };
        let objects = desired_for(&cache, &inputs).unwrap();
        let Some(Object::StatefulSet(sts)) = objects
            .iter()
            .find(|o| o.name() == "web-etcd" && o.kind() == "StatefulSet")
        else {
            panic!("no etcd StatefulSet");
        };
        let c = &sts.spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        c.args.clone().unwrap()
    };
    assert!(args(false).contains(&"--initial-cluster-state=new".to_string()));
    assert!(args(true).contains(&"--initial-cluster-state=existing".to_string()));
    // A single member always bootstraps anew (nothing to rejoin).
    let single = crate::resources::testing::cache_from_spec(
        "upstream: http://u\netcd: {managed: {replicas: 1}}\n",
    );
    let managed = single.spec.etcd.managed.clone().unwrap();
    assert_eq!(
        crate::resources::etcd::initial_cluster_state(&managed, true),
        "new"
    );
}
