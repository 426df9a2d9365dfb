//! `crds/casserolecaches.casserole.io.yaml` is generated; this fails when it is stale.
//! Regenerate with: `cargo run -p casserole-operator -- crd > crds/casserolecaches.casserole.io.yaml`

use std::path::Path;

#[test]
fn committed_crd_matches_generated() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/casserolecaches.casserole.io.yaml");
    let committed =
        std::fs::read_to_string(&path).expect("crds/casserolecaches.casserole.io.yaml exists");
    assert!(
        committed == casserole_operator::crd_yaml(),
        "{} is stale: run `cargo run -p casserole-operator -- crd > crds/casserolecaches.casserole.io.yaml`",
        path.display()
    );
}

#[test]
fn crd_binary_prints_the_same_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casserole-operator"))
        .arg("crd")
        .output()
        .expect("binary runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        casserole_operator::crd_yaml()
    );
}
