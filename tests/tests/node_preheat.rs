//! Preheat through the admin API (`POST /preheat`, `GET /preheat/<id>`): every chunk of an object
//! fetched once for the cluster, each by its owner, so later clients on any member cost the origin
//! nothing; an object already cached costs the origin nothing to preheat; bad bodies, missing
//! tokens and unknown ids are refused with a reason.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256, header},
    harness::{
        cluster::{member, wait_members},
        EtcdProcess, NodeBuilder, NodeProcess,
    },
    origin::{ObjectSpec, Origin},
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

async fn three(origin: &Origin, etcd: &EtcdProcess, cluster: &str) -> Vec<NodeProcess> {
    let mut nodes = vec![];
    for _ in 0..3 {
        let node = member(&origin.url(), etcd, cluster)
            .args(["--admin-token", ADMIN_TOKEN, "--max-memory-usage=600Mi"])
            .spawn()
            .await;
        nodes.push(node);
    }
    wait_members(&nodes.iter().collect::<Vec<_>>(), 3).await;
    nodes
}

async fn one(origin: &Origin) -> NodeProcess {
    NodeBuilder::new(origin.url())
        .args(["--admin-token", ADMIN_TOKEN])
        .spawn()
        .await
}

/// `POST /preheat` with `body`: the status and the answer's text.
async fn post_preheat(node: &NodeProcess, body: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client()
        .post(format!("{}/preheat", node.admin_url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Starts a preheat of `paths` and returns its id.
async fn start(node: &NodeProcess, paths: &[&str]) -> String {
    let body = serde_json::to_string(paths).unwrap();
    let (status, text) = post_preheat(node, &body, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 202, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let id = answer["id"].as_str().unwrap().to_string();
    assert_eq!(answer["status"], format!("/preheat/{id}"));
    id
}

async fn report(node: &NodeProcess, id: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client().get(format!("{}/preheat/{id}", node.admin_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Polls the preheat's report (bounded) until it says done, and returns it.
async fn finished(node: &NodeProcess, id: &str) -> Value {
    for _ in 0..1200 {
        let (status, text) = report(node, id, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{text}");
        let r: Value = serde_json::from_str(&text).unwrap();
        if r["state"] == "done" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("preheat {id} not done within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preheat_through_one_member_leaves_nothing_for_the_origin_to_send_30_clients() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/model.bin", ObjectSpec::new(256 * MIB).seed(71));
    let nodes = three(&origin, &etcd, "preheat1").await;

    let id = start(&nodes[0], &["/model.bin"]).await;
    let r = finished(&nodes[0], &id).await;
    eprintln!(
        "preheat of {} bytes through one of 3 members: {} s",
        obj.len,
        r["finished"].as_u64().unwrap() - r["started"].as_u64().unwrap()
    );
    assert_eq!(r["complete"], true, "{r:#}");
    let object = &r["objects"][0];
    assert_eq!(object["state"], "done", "{r:#}");
    assert_eq!(object["length"], obj.len);
    assert_eq!(object["chunks_total"], 128, "256 MiB in 2 MiB chunks");
    assert_eq!(object["chunks_done"], 128);
    assert_eq!(object["bytes"], obj.len);
    assert_eq!(r["totals"]["chunks_failed"], 0);

    let stats = origin.path_stats("/model.bin");
    assert_eq!(
        stats.body_bytes_sent, obj.len,
        "the object left the origin once"
    );
    assert!(
        stats.range_counts().values().all(|&n| n == 1),
        "every chunk fetched once"
    );
    // Every member fetched its own chunks: none fetched the whole object for the others.
    for node in &nodes {
        let fetched = node.metric("casserole_upstream_bytes_total").await;
        assert!(
            fetched > 0.0 && fetched < obj.len as f64,
            "{} fetched {fetched} bytes from the origin",
            node.url()
        );
    }
    assert_eq!(
        nodes[0].metric("casserole_preheat_bytes_total").await,
        obj.len as f64
    );
    assert_eq!(
        nodes[0]
            .metric(r#"casserole_preheat_objects_total{result="done"}"#)
            .await,
        1.0
    );

    origin.reset_stats();
    let downloads: Vec<_> = (0..30)
        .map(|i| {
            tokio::spawn(get_sha256(
                &format!("{}/model.bin", nodes[i % 3].url()),
                &[],
            ))
        })
        .collect();
    for d in downloads {
        let got = d.await.unwrap().unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
    }
    let stats = origin.stats();
    assert_eq!(
        (stats.body_bytes_sent, stats.requests),
        (0, 0),
        "30 clients after the preheat cost the origin nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preheating_an_object_the_cluster_holds_costs_the_origin_nothing() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/cached.bin", ObjectSpec::new(16 * MIB).seed(72));
    let nodes = three(&origin, &etcd, "preheat2").await;
    let got = get_sha256(&format!("{}/cached.bin", nodes[2].url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());
    origin.reset_stats();

    let id = start(&nodes[0], &["/cached.bin"]).await;
    let r = finished(&nodes[0], &id).await;
    assert_eq!(r["complete"], true, "{r:#}");
    assert_eq!(r["objects"][0]["chunks_done"], 8);
    assert_eq!(r["objects"][0]["bytes"], obj.len);
    let stats = origin.stats();
    assert_eq!(
        (stats.body_bytes_sent, stats.requests),
        (0, 0),
        "the preheat found every chunk in the cluster"
    );
    assert_eq!(
        nodes[0]
            .metric(r#"casserole_preheat_chunks_total{source="upstream"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn an_object_that_cannot_be_preheated_is_reported_failed_with_its_reason() {
    let origin = Origin::start().await;
    let obj = origin.put("/here.bin", ObjectSpec::new(3 * MIB).seed(73));
    let node = one(&origin).await;
    let id = start(&node, &["/here.bin", "/missing.bin"]).await;
    let r = finished(&node, &id).await;
    assert_eq!(r["complete"], false, "{r:#}");
    assert_eq!(r["objects"][0]["state"], "done");
    assert_eq!(r["objects"][0]["bytes"], obj.len);
    let missing = &r["objects"][1];
    assert_eq!(missing["state"], "failed", "{r:#}");
    let why = missing["errors"][0].as_str().unwrap();
    assert!(
        why.contains("404") || why.contains("not cacheable"),
        "{r:#}"
    );
    assert_eq!(missing["chunks_done"], 0);
    assert_eq!(
        (
            r["totals"]["objects_done"].clone(),
            r["totals"]["objects_failed"].clone()
        ),
        (1.into(), 1.into())
    );
    assert_eq!(
        node.metric(r#"casserole_preheat_objects_total{result="failed"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn bad_preheat_bodies_are_refused_with_a_reason() {
    let origin = Origin::start().await;
    let node = one(&origin).await;
    let too_many = serde_json::to_string(&vec!["/a"; 1001]).unwrap();
    let too_large = format!(r#"["/{}"]"#, "a".repeat(300 * 1024));
    for (body, reason) in [
        ("not json", "JSON list of paths"),
        (r#"{"paths": ["/a"]}"#, "JSON list of paths"),
        ("[]", "empty"),
        (r#"["a.bin"]"#, "starts with /"),
        (r#"["/a/../../b"]"#, "above the root"),
        (too_many.as_str(), "at most 1000"),
        (too_large.as_str(), "body"),
    ] {
        let (status, text) = post_preheat(&node, body, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 400, "{body:.40}: {text}");
        assert!(text.contains(reason), "{body:.40}: {text}");
    }
    // A body refused unread ends its connection, and the answer says so: the client must not
    // send its next request on it.
    let res = client()
        .post(format!("{}/preheat", node.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .body(too_large.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(header(res.headers(), "connection"), "close");
    let res = client()
        .get(format!("{}/preheat", node.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(origin.stats().requests, 0, "nothing reached the origin");
    assert_eq!(node.metric("casserole_preheat_started_total").await, 0.0);
}

#[tokio::test]
async fn preheat_needs_the_admin_token() {
    let origin = Origin::start().await;
    origin.put("/a.bin", ObjectSpec::new(MIB).seed(74));
    let node = one(&origin).await;
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, text) = post_preheat(&node, r#"["/a.bin"]"#, token).await;
        assert_eq!(status, 401, "{token:?}: {text}");
        assert!(text.contains("admin token"), "{text}");
    }
    // Refused before its body was read: the connection ends with the answer.
    let res = client()
        .post(format!("{}/preheat", node.admin_url()))
        .body(r#"["/a.bin"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(header(res.headers(), "connection"), "close");
    let id = start(&node, &["/a.bin"]).await;
    let (status, _) = report(&node, &id, None).await;
    assert_eq!(status, 401, "a report needs the token too");
    finished(&node, &id).await;

    let without = NodeBuilder::new(origin.url()).spawn().await;
    let (status, text) = post_preheat(&without, r#"["/a.bin"]"#, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("--admin-token"), "{text}");
    assert_eq!(
        origin.path_stats("/a.bin").body_bytes_sent,
        MIB,
        "only the authorised preheat fetched"
    );
}

#[tokio::test]
async fn an_unknown_preheat_id_is_404() {
    let origin = Origin::start().await;
    let node = one(&origin).await;
    let (status, text) = report(&node, "0123456789abcdef", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("no preheat"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_preheats_remembered_are_bounded() {
    let origin = Origin::start().await;
    // Slow to answer, so the first preheats are still running when the last is asked for.
    origin.put(
        "/slow.bin",
        ObjectSpec::new(MIB)
            .seed(75)
            .latency(Duration::from_secs(3)),
    );
    let node = one(&origin).await;
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(start(&node, &["/slow.bin"]).await);
    }
    let (status, text) = post_preheat(&node, r#"["/slow.bin"]"#, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("still running"), "{text}");
    for id in &ids {
        assert_eq!(finished(&node, id).await["complete"], true);
    }
    // Once they are done, a new preheat takes the place of the oldest.
    let newest = start(&node, &["/slow.bin"]).await;
    assert_eq!(report(&node, &ids[0], Some(ADMIN_TOKEN)).await.0, 404);
    assert_eq!(report(&node, &ids[1], Some(ADMIN_TOKEN)).await.0, 200);
    finished(&node, &newest).await;
    assert_eq!(
        origin.path_stats("/slow.bin").body_bytes_sent,
        MIB,
        "65 preheats of one object fetched it once"
    );
}
