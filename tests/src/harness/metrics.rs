//! A small parser for the Prometheus text exposition format, enough to assert on counters.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Splits `name{a="b",c="d"}` into its name and labels; `None` if malformed.
fn parse_series(s: &str) -> Option<(String, BTreeMap<String, String>)> {
    let s = s.trim();
    let Some(open) = s.find('{') else {
        return Some((s.to_string(), BTreeMap::new()));
    };
    let name = s[..open].trim().to_string();
    let inner = s[open + 1..].strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
    Some((name, labels))
}

/// Every sample in an exposition; comments, blank and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the closing brace (label values may contain spaces), else at
        // the first space.
        let split = match line.rfind('}') {
            Some(i) => i + 1,
            None => line.find(char::is_whitespace).unwrap_or(line.len()),
        };
        let (series, rest) = line.split_at(split);
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if let Some((name, labels)) = parse_series(series) {
            out.push(Sample {
                name,
                labels,
                value,
            });
        }
    }
    out
}

/// Sum of the samples named like `query` whose labels include all of the query's labels:
/// `requests_total{tier="memory"}` adds up every status of that tier. `None` if none match.
pub fn lookup(samples: &[Sample], query: &str) -> Option<f64> {
    let (name, want) = parse_series(query)?;
    let mut found = None;
    for s in samples.iter().filter(|s| s.name == name) {
        if want.iter().all(|(k, v)| s.labels.get(k) == Some(v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP casserole_requests_total Requests.
# TYPE casserole_requests_total counter
casserole_requests_total{status="200",tier="memory"} 3
casserole_requests_total{status="206",tier="memory"} 2
casserole_requests_total{status="200",tier="disk"} 1
casserole_bytes 1.5e3
odd{path="/a b}c",x="q\"z"} 7 1700000000
"#;

    #[test]
    fn parses_and_sums() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 5);
        assert_eq!(lookup(&s, "casserole_requests_total"), Some(6.0));
        assert_eq!(
            lookup(&s, r#"casserole_requests_total{tier="memory"}"#),
            Some(5.0)
        );
        assert_eq!(
            lookup(
                &s,
                r#"casserole_requests_total{tier="memory",status="206"}"#
            ),
            Some(2.0)
        );
        assert_eq!(lookup(&s, r#"casserole_requests_total{tier="peer"}"#), None);
        assert_eq!(lookup(&s, "casserole_bytes"), Some(1500.0));
        assert_eq!(lookup(&s, r#"odd{path="/a b}c"}"#), Some(7.0));
        assert_eq!(s[4].labels["x"], "q\"z");
    }
}
