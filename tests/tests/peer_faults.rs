//! A peer that misbehaves — sends more than a chunk, hangs up mid-chunk, answers implausible
//! metadata — costs the client nothing: the node fails over, the body is right, and the node
//! serves the object afterwards. The peer is a fake on loopback, in a static two-member cluster.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use casserole_node::{
    cluster::{ring, Member},
    object::ObjectMeta,
};
use casserole_tests::{
    client::get_sha256,
    harness::{NodeBuilder, NodePorts},
    origin::{ObjectInfo, ObjectSpec, Origin},
};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "test-peer-token-0123456789";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// The right chunk bytes, then more.
    TooMany,
    /// Half the chunk, then the connection drops.
    HangsUp,
    /// Metadata of an empty object.
    EmptyMetadata,
}

/// What the fake answers: chunks from `object`'s real bytes, bent as `how` says.
async fn answer(
    how: Misbehaviour,
    object: Arc<ObjectInfo>,
    req: Request<hyper::body::Incoming>,
) -> Response<BoxBody<Bytes, BoxError>> {
    let full = |bytes: Vec<u8>| {
        Full::new(Bytes::from(bytes))
            .map_err(|e| match e {})
            .boxed()
    };
    let path = req.uri().path().to_string();
    if path == "/v1/meta" {
        let empty = serde_json::json!({"Cacheable": {
            "path": object.path, "length": 0, "chunk_size": 2 * MIB,
            "validator": {"StrongEtag": "\"x\""}, "etag": "\"x\"", "last_modified": null,
            "headers": [], "fetched_at": 0, "initial_age": 0, "fresh_until": u64::MAX,
            "version": "00".repeat(32)}});
        return Response::new(full(empty.to_string().into_bytes()));
    }
    let Some(index) = path
        .strip_prefix("/v1/chunk/")
        .and_then(|i| i.parse::<u64>().ok())
    else {
        let mut res = Response::new(full(b"no".to_vec()));
        *res.status_mut() = hyper::StatusCode::NOT_FOUND;
        return res;
    };
    let start = index * 2 * MIB;
    let end = (start + 2 * MIB).min(object.len) - 1;
    let mut bytes = object.bytes(start, end);
    match how {
        Misbehaviour::TooMany | Misbehaviour::EmptyMetadata => {
            bytes.extend_from_slice(&[0xee; 1000]);
            Response::new(full(bytes))
        }
        Misbehaviour::HangsUp => {
            bytes.truncate(bytes.len() / 2);
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                vec![Ok(Frame::data(Bytes::from(bytes))), Err("hung up".into())];
            Response::new(BodyExt::boxed(StreamBody::new(futures::stream::iter(
                frames,
            ))))
        }
    }
}

/// Serves the fake peer on `addr` until the test ends.
async fn fake_peer(addr: SocketAddr, how: Misbehaviour, object: Arc<ObjectInfo>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let object = object.clone();
            let service = service_fn(move |req| {
                let object = object.clone();
                async move { Ok::<_, Infallible>(answer(how, object, req).await) }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A path whose metadata `want_peer_owner` says who owns (the fake or the node).
fn path_owned_by(members: &[Member], owner: &str, prefix: &str) -> String {
    (0..1000)
        .map(|i| format!("/{prefix}-{i}.bin"))
        .find(|p| ring::owners(&ObjectMeta::meta_key(p), members)[0].id == owner)
        .expect("some path hashes to each member")
}

async fn misbehaving_peer_costs_the_client_nothing(how: Misbehaviour) {
    let origin = Origin::start().await;
    let (node_ports, fake_ports) = (NodePorts::pick(), NodePorts::pick());
    let (node_url, fake_url) = (node_ports.peer_url(), fake_ports.peer_url());
    let members = [
        Member::new(&node_url, &node_url),
        Member::new(&fake_url, &fake_url),
    ];
    // Chunk faults need the node to own the metadata (chunk 0 too); the metadata fault the fake.
    let owner = match how {
        Misbehaviour::EmptyMetadata => &fake_url,
        _ => &node_url,
    };
    let path = path_owned_by(&members, owner, &format!("{how:?}"));
    let object = Arc::new(origin.put(&path, ObjectSpec::new(24 * MIB + 7).seed(91)));
    let fake_addr: SocketAddr = fake_url.trim_start_matches("http://").parse().unwrap();
    fake_peer(fake_addr, how, object.clone()).await;
    let node = NodeBuilder::new(origin.url())
        .ports(node_ports)
        .args(["--peer-token", TOKEN])
        .arg(format!("--peers={node_url},{fake_url}"))
        .spawn()
        .await;
    let url = format!("{}{path}", node.url());
    let got = get_sha256(&url, &[]).await.expect("the client is served");
    assert_eq!(got.sha256, object.sha256(), "{how:?}: the right body");
    assert!(
        node.metric("casserole_peer_failovers_total").await >= 1.0,
        "{how:?}: the fake was asked and failed over from"
    );
    let again = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(again.sha256, object.sha256(), "{how:?}: served afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_sending_too_many_bytes_is_failed_over() {
    misbehaving_peer_costs_the_client_nothing(Misbehaviour::TooMany).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_hanging_up_mid_chunk_is_failed_over() {
    misbehaving_peer_costs_the_client_nothing(Misbehaviour::HangsUp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn implausible_peer_metadata_is_refused() {
    misbehaving_peer_costs_the_client_nothing(Misbehaviour::EmptyMetadata).await;
}
