//! The CRD's CEL rules (`x-kubernetes-validations`), compiled and evaluated client-side with
//! kube-cel (the apiserver's CEL libraries, `quantity()` included): every example passes, and
//! every example whose header says CEL rejects it is rejected with the rule's message.

use std::path::{Path, PathBuf};

use casserole_operator::crd::CasseroleCache;
use kube::core::cel::validate_cel;

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Parsing through serde applies the same defaults the schema declares (a unit test checks
/// they agree), as the apiserver does before it evaluates CEL.
fn load(path: &Path) -> CasseroleCache {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn examples_pass_the_cel_rules() {
    let examples = yaml_files("examples");
    assert!(examples.len() >= 3);
    for path in examples {
        if let Err(e) = validate_cel(&load(&path)) {
            panic!("{}: {e:?}", path.display());
        }
    }
}

#[test]
fn cel_rejected_examples_fail_the_cel_rules() {
    let mut checked = 0;
    for path in yaml_files("examples/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(expected) = text
            .lines()
            .find_map(|l| l.strip_prefix("# rejected-by: schema (CEL: "))
            .map(|m| m.trim_end_matches(')').to_string())
        else {
            continue;
        };
        let errors = validate_cel(&load(&path))
            .err()
            .unwrap_or_else(|| panic!("{}: CEL accepted it", path.display()));
        let errors = format!("{errors:?}");
        assert!(errors.contains(&expected), "{}: {errors}", path.display());
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} CEL-rejected examples");
}
