//! The peer protocol between cluster members, wire types, client and server side together.
//!
//! Peers share chunks and metadata over HTTP on a listener of their own; every request carries
//! the shared peer token as a Bearer token.
//!
//! * `POST /v1/chunk/<index>` with the object's metadata as JSON: the chunk's bytes, streamed,
//!   with [`wire::SOURCE_HEADER`] saying where the owner found them.
//! * `GET /v1/meta` with [`wire::PATH_HEADER`]: the owner's metadata verdict for that path.
//!
//! An owner answers from its own tiers only and only for objects of its own upstream, so two
//! nodes that briefly disagree on ownership never bounce a request, and a token holder cannot
//! make a node fetch from anywhere else.

pub mod client;
pub mod server;
pub mod wire;

use crate::metrics::Registrar;

#[derive(Clone)]
pub struct PeerMetrics {
    /// Requests this node sent to peers, by kind (chunk, meta) and result (ok, refused, unreachable).
    pub requests: prometheus::IntCounterVec,
    /// Requests this node's peer API answered, by kind and result.
    pub api_requests: prometheus::IntCounterVec,
    /// Chunk bytes exchanged with peers (direction = received, sent).
    pub bytes: prometheus::IntCounterVec,
    pub failovers: prometheus::IntCounter,
    /// Error answers in which a peer relayed its upstream's failure; the peer was not marked
    /// suspect for them.
    pub relayed_errors: prometheus::IntCounter,
}

impl PeerMetrics {
    pub fn new(r: &Registrar) -> Self {
        PeerMetrics {
            requests: r.counter_vec(
                "casserole_peer_requests_total",
                "Requests sent to peers by kind and result",
                &["kind", "result"],
            ),
            api_requests: r.counter_vec(
                "casserole_peer_api_requests_total",
                "Peer API requests answered by kind and result",
                &["kind", "result"],
            ),
            bytes: r.counter_vec(
                "casserole_peer_bytes_total",
                "Chunk bytes exchanged with peers",
                &["direction"],
            ),
            failovers: r.counter(
                "casserole_peer_failovers_total",
                "Peer requests that failed and went to the next owner or the upstream",
            ),
            relayed_errors: r.counter(
                "casserole_peer_relayed_errors_total",
                "Peer answers relaying an upstream's failure (the peer was not marked suspect)",
            ),
        }
    }
}
