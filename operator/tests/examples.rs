//! Every example renders through the real binary; every example the operator (not the
//! schema) must reject is refused, naming the field from its `# rejected-by:` header.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

fn render(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_casserole-operator"))
        .args(["render", "-f"])
        .arg(path)
        .args(["--peer-token", "render-test-token-0123"])
        .output()
        .expect("binary runs")
}

#[test]
fn every_example_renders_deterministically() {
    for path in examples("examples") {
        let first = render(&path);
        assert!(
            first.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&first.stderr)
        );
        let out = String::from_utf8(first.stdout).unwrap();
        assert!(out.contains("kind: StatefulSet") || out.contains("kind: DaemonSet"));
        assert!(out.contains("kind: Secret"));
        assert_eq!(out.as_bytes(), render(&path).stdout, "{}", path.display());
    }
}

#[test]
fn operator_rejected_examples_name_their_field() {
    let mut checked = 0;
    for path in examples("examples/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(field) = text
            .lines()
            .find_map(|l| l.strip_prefix("# rejected-by: operator "))
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        let out = render(&path);
        assert!(!out.status.success(), "{} rendered", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "{}: {stderr}", path.display());
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} operator-rejected examples");
}
