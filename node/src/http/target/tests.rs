use super::*;

/// Targets an origin or URL library could resolve outside the base path, or that smuggle bytes.
pub(crate) const HOSTILE: &[&str] = &[
    "/x\\..\\..\\private/obj8m",
    "/x/%5c..%5c../private",
    "/x/%5C..%5C../private",
    "/..;/x",
    "/x/..;jsessionid=1/y",
    "/.;/x",
    "//other-host/x",
    "/a/../x",
    "/a/./x",
    "/a/%2e%2e/x",
    "/a/%2E%2E/x",
    "/a/.%2E/x",
    "/a/%2e./x",
    "/a/%2e/x",
    "/a/..",
    "/a/%2e%2e%5cx",
    "/a/%2e%2e%2fx",
    "/a%2fb",
    "/a%2Fb",
    "/a/%252e%252e/x",
    "/a/%00/x",
    "/a/%0d%0aX-Injected:%201",
    "/a/%c0%ae%c0%ae/x",
    "/a/%ef%bc%8e%ef%bc%8e/x",
    "/a/.../x",
    "/a/..%20/x",
    "/a/%zz",
    "/a/%2",
    "x/y",
    "*",
    "/a#frag",
];

#[test]
fn hostile_targets_are_refused() {
    for t in HOSTILE {
        let err = validate(t).expect_err(t);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{t}: {err}");
    }
}

#[test]
fn raw_control_and_non_ascii_bytes_are_refused() {
    for t in ["/a\0b", "/a\tb", "/a b", "/a\u{7f}", "/caf\u{e9}"] {
        assert_eq!(validate(t), Err(TargetError::ControlByte), "{t:?}");
    }
}

#[test]
fn clean_targets_pass_unchanged() {
    for t in [
        "/",
        "/obj",
        "/a/b/c.tar.gz",
        "/a/.hidden/b",
        "/a/..b/c",
        "/a/b..",
        "/a//b",
        "/caf%C3%A9/%20x",
        "/a%25b",
        "/a;v=1/b",
        "/x?q=../../etc&y=%2f%5c",
        "/x?",
    ] {
        assert_eq!(validate(t), Ok(t), "{t}");
    }
}

#[test]
fn long_targets_are_414() {
    let long = format!("/{}", "a".repeat(MAX_TARGET_LEN));
    let err = validate(&long).unwrap_err();
    assert_eq!(err.status(), StatusCode::URI_TOO_LONG);
    let fits = format!("/{}", "a".repeat(MAX_TARGET_LEN - 1));
    assert!(validate(&fits).is_ok());
}
