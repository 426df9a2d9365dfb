//! Kubernetes quantity strings ("512Mi", "1.5G", "1e3") as byte counts.
//!
//! The operator needs numbers only to compare disk watermarks and to derive defaults from the
//! volume size; the node re-parses the strings itself, so this stays deliberately small.

/// Parses a non-negative quantity into a whole number of units (bytes). Fractions are
/// truncated, milli-units and negative numbers are rejected: none makes sense for a size.
pub fn parse_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return None;
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    // Keep the value as a fraction `mantissa / 10^scale` to stay exact.
    let digits = format!("{int_part}{frac_part}");
    let mantissa: u128 = if digits.is_empty() {
        return None;
    } else {
        digits.parse().ok()?
    };
    let scale = frac_part.len() as u32;

    let (mul, exp10): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        s if s.starts_with(['e', 'E']) => (1, s[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let exp = exp10 - scale as i32;
    let value = mantissa.checked_mul(mul)?;
    if exp >= 0 {
        value.checked_mul(10u128.checked_pow(exp as u32)?)
    } else {
        Some(value / 10u128.checked_pow((-exp) as u32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn parses_binary_decimal_and_exponent_suffixes() {
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("2Mi"), Some(2 * 1024 * 1024));
        assert_eq!(parse_bytes("100M"), Some(100_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Some(1536 * 1024 * 1024));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("8Gi"), Some(8 << 30));
        assert_eq!(parse_bytes("+1k"), Some(1000));
    }

    #[test]
    fn rejects_garbage_and_milli_units() {
        for bad in ["", "Mi", "1.2.3", "12x", "100m", "-1", "1Mii", "."] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }
}
