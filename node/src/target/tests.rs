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
    "/a/%2e%2e/x",
    "/a/%2E%2E/x",
    "/a/.%2E/x",
    "/a/%2e./x",
    "/a/%2e/x",
    "/a/%2e%2e%5cx",
    "/a/%2e%2e%2fx",
    "/a/%252e%252e/x",
    "/a/%252f../x",
    "/a/%255c/x",
    "/a/%25252e%25252e/x",
    "/a/%2e%2e%2f/x",
    "/..",
    "/../x",
    "/a/../../x",
    "/a/%2e",
    "/a/x%2f..",
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
        assert_eq!(validate(t), Ok(t.into()), "{t}");
        assert!(is_valid(t), "{t}");
    }
}

#[test]
fn harmless_targets_of_real_clients_are_served() {
    for t in [
        // npm's scoped packages; apt's epoch file names, as apt encodes them once more.
        "/@types%2fnode",
        "/@types%2Fnode",
        "/pool/libllvm14_1%253a14.0.6-12_amd64.deb",
        "/a%25b",
    ] {
        assert_eq!(validate(t), Ok(t.into()), "{t}: kept as sent");
    }
}

#[test]
fn dot_segments_are_removed_as_rfc_3986_says() {
    for (sent, clean) in [
        ("/deb/./InRelease", "/deb/InRelease"),
        ("/deb/./Packages?x=./y", "/deb/Packages?x=./y"),
        ("/a/b/../c", "/a/c"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/..", "/"),
        ("/./a", "/a"),
        ("/a/b/../../c/./d", "/c/d"),
        // Escapes of unreserved characters are those characters (one key, one purge).
        ("/%73ecret.iso", "/secret.iso"),
        ("/a%2Db%7E%5F", "/a-b~_"),
        ("/x%2e.iso", "/x..iso"),
    ] {
        assert_eq!(validate(sent).as_deref(), Ok(clean), "{sent}");
        assert!(is_valid(clean), "{clean}");
        assert!(!is_valid(sent), "{sent}: peers name keys");
    }
}

#[test]
fn climbing_above_the_root_is_refused() {
    for t in ["/..", "/../a", "/a/../..", "/a/b/../../../c"] {
        assert_eq!(validate(t), Err(TargetError::AboveRoot), "{t}");
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

mod properties {
    use proptest::prelude::*;

    use super::super::*;
    use crate::test_support::proptest_config;

    /// Segment text that needs no normalisation: unreserved characters and sub-delims.
    const SAFE: &str = "[A-Za-z0-9_~!$&'()*+,=:@-][A-Za-z0-9._~!$&'()*+,=:@-]{0,11}";

    /// The many spellings of a dot segment an origin might resolve.
    fn dot_segment() -> impl Strategy<Value = String> {
        let dot = prop_oneof![Just("."), Just("%2e"), Just("%2E")];
        (
            proptest::collection::vec(dot, 1..=2),
            prop_oneof![Just(""), Just(";"), Just(";jsessionid=x"), Just("%20")],
        )
            .prop_map(|(dots, tail)| format!("{}{tail}", dots.concat()))
    }

    proptest! {
        #![proptest_config(proptest_config(512))]

        #[test]
        fn any_input_is_answered_without_panic(target in ".{0,64}", raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = validate(&target);
            let _ = validate(&String::from_utf8_lossy(&raw));
        }

        #[test]
        fn clean_paths_pass_unchanged(segments in proptest::collection::vec(SAFE, 0..6), query in "[a-z0-9=&%./]{0,16}") {
            let target = format!("/{}?{query}", segments.join("/"));
            prop_assert_eq!(validate(&target), Ok(target.as_str().into()));
        }

        #[test]
        fn an_injected_dot_segment_is_always_refused(
            segments in proptest::collection::vec(SAFE, 1..5),
            at in 0usize..5,
            dot in dot_segment(),
        ) {
            prop_assume!(dot != "." && dot != "..", "plain dot segments are normalised");
            let mut segments = segments;
            let at = at.min(segments.len());
            segments.insert(at, dot);
            let target = format!("/{}", segments.join("/"));
            prop_assert_eq!(validate(&target), Err(TargetError::DotSegment), "{}", target);
        }

        #[test]
        fn accepted_targets_never_carry_separators_in_disguise(target in "/[a-z%25cCfF2eE./\\\\;]{0,24}") {
            if let Ok(clean) = validate(&target) {
                let lower = clean.to_ascii_lowercase();
                prop_assert!(!lower.contains('\\') && !lower.contains("%5c"), "{}", target);
                for segment in lower.split('/').skip(1) {
                    for piece in segment.replace("%2e", ".").split("%2f") {
                        let name = piece.split(';').next().unwrap();
                        prop_assert!(name != "." && name != "..", "{} -> {}", target, clean);
                    }
                }
                let again = validate(&clean).map(|c| c.into_owned());
                prop_assert_eq!(again, Ok(clean.to_string()), "normalising is idempotent");
            }
        }
    }
}

#[test]
fn host_headers_follow_rfc_9112() {
    use http::{HeaderMap, Version};
    let with = |values: &[&str]| {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::HOST, v.parse().unwrap());
        }
        h
    };
    for ok in [
        "example.test",
        "example.test:8080",
        "127.0.0.1",
        "[::1]:80",
        "",
    ] {
        assert_eq!(check_host(Version::HTTP_11, &with(&[ok])), Ok(()), "{ok:?}");
    }
    assert!(check_host(Version::HTTP_11, &with(&[])).is_err());
    assert_eq!(check_host(Version::HTTP_10, &with(&[])), Ok(()));
    assert_eq!(check_host(Version::HTTP_2, &with(&[])), Ok(()));
    assert!(check_host(Version::HTTP_11, &with(&["a", "b"])).is_err());
    assert!(check_host(Version::HTTP_10, &with(&["a", "a"])).is_err());
    for bad in ["a b", "user@host", "host/path", "[::1", "host:port"] {
        assert!(
            check_host(Version::HTTP_11, &with(&[bad])).is_err(),
            "{bad:?}"
        );
    }
}
