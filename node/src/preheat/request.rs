//! A preheat request's body: a JSON list of node paths, `["/models/a.bin", "/_cdn/hf/b"]`,
//! bounded in count and size; each path is checked (and normalised) as a client's would be.

use regex::RegexSet;

/// Paths one preheat may name.
pub const MAX_PATHS: usize = 1000;
/// The largest request body read (1000 paths of about 250 bytes).
pub const MAX_BODY: usize = 256 * 1024;

/// The paths to preheat, normalised, duplicates dropped (first one kept), or a short reason
/// why the body is refused.
pub fn parse(body: &[u8], pass_through: &RegexSet) -> Result<Vec<String>, String> {
    let raw: Vec<String> = serde_json::from_slice(body)
        .map_err(|e| format!(r#"expected a JSON list of paths, ["/a/b.bin", ...]: {e}"#))?;
    if raw.is_empty() {
        return Err("the list of paths is empty".into());
    }
    if raw.len() > MAX_PATHS {
        return Err(format!(
            "{} paths; one preheat takes at most {MAX_PATHS}",
            raw.len()
        ));
    }
    let mut paths: Vec<String> = Vec::with_capacity(raw.len());
    for path in &raw {
        if !path.starts_with('/') {
            return Err(format!("{path:?}: a path starts with /"));
        }
        let clean = crate::target::validate(path).map_err(|e| format!("{path:?}: {e}"))?;
        if pass_through.is_match(&clean) {
            return Err(format!(
                "{path:?} passes through the cache (--pass-through): nothing to preheat"
            ));
        }
        if !paths.iter().any(|p| *p == clean) {
            paths.push(clean.into_owned());
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> RegexSet {
        RegexSet::empty()
    }

    #[test]
    fn a_list_of_paths_is_normalised_and_deduplicated() {
        let got = parse(br#"["/a/./b.bin", "/a/b.bin", "/c?x=1"]"#, &none()).unwrap();
        assert_eq!(got, ["/a/b.bin", "/c?x=1"]);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let refused = |body: &str| parse(body.as_bytes(), &none()).unwrap_err();
        assert!(refused("not json").contains("JSON list"));
        assert!(refused(r#"{"path": "/a"}"#).contains("JSON list"));
        assert!(refused("[1, 2]").contains("JSON list"));
        assert!(refused("[]").contains("empty"));
        assert!(refused(r#"["a/b"]"#).contains("starts with /"));
        assert!(refused(r#"["/a/../../etc/passwd"]"#).contains("/a/../../etc/passwd"));
        let many = serde_json::to_string(&vec!["/a"; MAX_PATHS + 1]).unwrap();
        assert!(refused(&many).contains("at most"));
    }

    #[test]
    fn paths_that_pass_through_are_refused() {
        let pass = RegexSet::new([r"^/api/"]).unwrap();
        let why = parse(br#"["/api/x"]"#, &pass).unwrap_err();
        assert!(why.contains("--pass-through"), "{why}");
    }
}
