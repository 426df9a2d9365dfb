//! Sizes in bytes, spelled as Kubernetes quantities.
//!
//! Hand-written rather than a general quantity library: the point is one small, exact grammar
//! that the node, the operator and the CRD's `pattern` share, a subset of what Kubernetes'
//! `quantity()` reads (so CEL rules can compare these fields). Signs, exponents and milli-units
//! are not sizes and are refused everywhere.

use std::sync::LazyLock;

use regex::Regex;

/// The grammar of a size: a decimal number and an optional binary (`Ki`…`Ei`) or decimal
/// (`k`…`E`) suffix. Also the CRD's `pattern` for every size field.
pub const QUANTITY_PATTERN: &str = r"^([0-9]+)(?:\.([0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

static GRAMMAR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(QUANTITY_PATTERN).expect("the size grammar compiles"));

const HINT: &str = "use a whole number of bytes such as 2097152, 100M, 512Mi, 1.5Gi";

/// Parses a size into bytes. A fraction must come out as a whole number of bytes (`1.5Ki` is
/// 1536, `1.5` is refused), so the value the node uses is exactly the one the schema compared.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let caps = GRAMMAR
        .captures(s)
        .ok_or_else(|| format!("invalid size {s:?} ({HINT})"))?;
    let whole = &caps[1];
    let fraction = caps.get(2).map_or("", |m| m.as_str());
    let multiplier: u128 = match caps.get(3).map_or("", |m| m.as_str()) {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => unreachable!("the grammar lists every suffix"),
    };
    let too_large = || format!("size {s:?} is too large");
    // Exact arithmetic: value = digits * multiplier / 10^len(fraction).
    let digits: u128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| too_large())?;
    let scale = 10u128
        .checked_pow(fraction.len() as u32)
        .ok_or_else(too_large)?;
    let scaled = digits.checked_mul(multiplier).ok_or_else(too_large)?;
    if scaled % scale != 0 {
        return Err(format!(
            "size {s:?} is not a whole number of bytes ({HINT})"
        ));
    }
    // Kubernetes (and CEL's `quantity().isInteger()`) counts in signed 64 bits.
    u64::try_from(scaled / scale)
        .ok()
        .filter(|&bytes| bytes <= i64::MAX as u64)
        .ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(parse_size("2097152"), Ok(2 << 20));
        assert_eq!(parse_size("100M"), Ok(100_000_000));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1.5Gi"), Ok(1536 << 20));
        assert_eq!(parse_size("1k"), Ok(1000));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("7Ei"), Ok(7 << 60));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for bad in [
            "",
            "+1k",
            "-1",
            "1e3",
            "1E3",
            "100m",
            "1.5",
            "0.0001k",
            "1Mii",
            "1GiB",
            "1 Gi",
            " 1Gi",
            ".5Gi",
            "5.Gi",
            "1K",
            "16Ei",
            "99999999999999999999999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }
}
