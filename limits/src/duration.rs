//! Durations as the node's flags spell them: `500ms`, `30s`, `5m`, `1h`, or plain seconds.

use std::time::Duration;

/// The grammar of a duration (for schema patterns).
pub const DURATION_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$";

/// Parses a duration; a number without unit is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let hint = "use e.g. 500ms, 30s, 5m, 1h";
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let well_formed = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    if !well_formed {
        return Err(format!("invalid duration {s:?} ({hint})"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?} ({hint})"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} ({hint})")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_plain_seconds() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn refuses_signs_spaces_and_unknown_units() {
        for bad in [
            "", "soon", "-1s", "+1s", "1d", " 1s", "1s ", ".5s", "1.s", "1..2s", "1e3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn pattern_matches_exactly_what_parses() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for s in [
            "60s", "500ms", "2m", "1h", "7", "1.5s", "-1s", "1d", ".5s", "1.s",
        ] {
            assert_eq!(re.is_match(s), parse_duration(s).is_ok(), "{s:?}");
        }
    }
}
