//! Helpers shared by unit tests.

use http::{header::HeaderName, HeaderMap};

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
