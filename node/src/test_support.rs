//! Helpers shared by unit tests.

use http::{header::HeaderName, HeaderMap};

use crate::object::{ObjectMeta, Validator};

/// A header map from name/value pairs (repeated names append).
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

/// Property-test settings: a fixed seed and algorithm, whatever `PROPTEST_*` variables say, so
/// every run (CI included) tries the same bounded set of cases; no failure files are written.
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngAlgorithm, RngSeed};
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0xca55_e201),
        rng_algorithm: RngAlgorithm::ChaCha,
        failure_persistence: None,
        max_shrink_iters: 1024,
        ..Config::default()
    }
}

/// Metadata of a fresh object `path` on upstream `u` with a strong ETag `"v1"`; tests adjust the
/// fields they care about.
pub fn object_meta(path: &str, length: u64, chunk_size: u64) -> ObjectMeta {
    let validator = Validator::StrongEtag("\"v1\"".into());
    ObjectMeta {
        path: path.into(),
        length,
        chunk_size,
        version: ObjectMeta::compute_version("u", path, &validator, length, chunk_size),
        validator,
        etag: Some("\"v1\"".into()),
        last_modified: None,
        headers: vec![],
        whole_only: false,
        fetched_at: 0,
        initial_age: 0,
        fresh_until: u64::MAX,
        no_cache: false,
        stale_if_error: 0,
        must_revalidate: false,
        stale_while_revalidate: 0,
        selecting: vec![],
        status: 200,
        immutable: false,
        upstream_target: None,
        rendered: Default::default(),
    }
}

/// A connected loopback TCP pair: (client, server).
pub async fn connected_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}
