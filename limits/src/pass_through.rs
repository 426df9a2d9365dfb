//! Pass-through patterns: regexes on a request's path and query that bypass the cache.

use regex::RegexSet;

/// Separator of several patterns in one environment variable (`CASSEROLE_PASS_THROUGH`). Not a
/// comma: regexes contain commas (`a{1,3}`). On the command line, repeat the flag instead.
pub const PASS_THROUGH_ENV_SEPARATOR: char = '\n';

/// A pattern that does not compile, with its position in the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassThroughError {
    pub index: usize,
    pub message: String,
}

impl std::fmt::Display for PassThroughError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pattern {}: {}", self.index, self.message)
    }
}

/// Compiles the patterns the way the node matches them (one `RegexSet`, the `regex` crate's
/// syntax and size limits), naming the first that fails.
pub fn compile_pass_through<S: AsRef<str>>(patterns: &[S]) -> Result<RegexSet, PassThroughError> {
    for (index, pattern) in patterns.iter().enumerate() {
        regex::Regex::new(pattern.as_ref()).map_err(|e| PassThroughError {
            index,
            // The last line of regex's error says what is wrong; the others draw the pattern.
            message: format!(
                "invalid regex {:?}: {}",
                pattern.as_ref(),
                e.to_string().lines().last().unwrap_or_default()
            ),
        })?;
    }
    RegexSet::new(patterns.iter().map(AsRef::as_ref)).map_err(|e| PassThroughError {
        index: 0,
        message: format!("the patterns together are too large: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_are_part_of_a_pattern() {
        let set = compile_pass_through(&["^/a{1,3}$", "\\.sig$"]).unwrap();
        assert!(set.is_match("/aaa"));
        assert!(set.is_match("/x.sig"));
        assert!(!set.is_match("/aaaa"));
    }

    #[test]
    fn names_the_broken_pattern() {
        let err = compile_pass_through(&["^/ok", "(unclosed"]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.message.contains("(unclosed"), "{}", err.message);
    }
}
