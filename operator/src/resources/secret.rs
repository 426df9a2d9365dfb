//! The Secret holding the peer token the cache nodes authenticate each other with.
//!
//! Unlike every other owned object it is not part of [`super::desired`]: its content is random,
//! so applying it on every reconcile would rotate it. The reconciler creates it once when it is
//! missing and never writes it again; users rotate it (see [`PREVIOUS_TOKEN_KEY`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use rand::RngCore;

use super::common::{object_meta, Component};
use crate::crd::CasseroleCache;

/// Key of the token inside the Secret (and file name in the mounted volume).
pub const TOKEN_KEY: &str = "token";
/// Optional second key during a rotation: a token the nodes also accept (never send).
pub const PREVIOUS_TOKEN_KEY: &str = "previous";

pub fn peer_token_secret_name(cache: &CasseroleCache) -> String {
    format!("{}-peer-token", cache.name_any())
}

/// A fresh 256-bit token, hex encoded (printable, so it survives env vars and files alike).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A short fingerprint of a token, to annotate pods with: it changes with the token (rolling
/// the pods) and, being a truncated SHA-256 of 256 random bits, reveals nothing of it.
pub fn token_fingerprint(token: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(token)[..8])
}

/// A fingerprint of a token the user chose (the admin token, from any Secret a spec names),
/// keyed with the peer token: pod annotations are readable by anyone who may read workloads,
/// who must not get an unsalted hash of a possibly guessable Secret value to test guesses
/// against. It still changes with the token (and with the peer token, which rolls the pods
/// anyway).
pub fn keyed_fingerprint(key: &[u8], token: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update((key.len() as u64).to_be_bytes());
    hash.update(key);
    hash.update(token);
    hex::encode(&hash.finalize()[..8])
}

/// The Secret with the given token.
pub fn peer_token_secret(cache: &CasseroleCache, token: &str) -> Secret {
    Secret {
        metadata: object_meta(cache, peer_token_secret_name(cache), Component::Cache),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), token.to_string())])),
        // Mutable, so a rotation is two patches (docs/operator-runbook.md): add the new token as
        // `previous` (accepted by every node), then swap. Any change rolls the pods through the
        // fingerprint annotation; the operator itself never writes it again.
        immutable: None,
        ..Secret::default()
    }
}
