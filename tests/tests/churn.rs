//! The cluster stays correct while its membership keeps changing (the CI-sized churn scenario,
//! ~30 s; the benchmark harness runs the same scenario longer with release binaries).

use casserole_tests::churn::{run, ChurnConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_stays_correct_under_churn() {
    let report = run(ChurnConfig::ci()).await;
    println!("{}", report.table());
    if let Some(e) = &report.first_error {
        println!("first error: {e}");
    }
    assert!(report.requests >= 20, "clients made progress");
    assert!(report.kills >= 1 && report.joins >= 1 && report.leaves >= 1);
    assert_eq!(report.wrong_bodies, 0, "{:?}", report.first_error);
    assert_eq!(report.client_errors, 0, "{:?}", report.first_error);
    assert!(
        report.upstream_bytes <= report.bound_bytes,
        "amplification {:.2}× over the bound {:.2}×",
        report.amplification(),
        report.bound()
    );
}
