//! HTTP dates as recipients read them: the three formats of RFC 9110 §5.6.7 and the slips
//! senders make in them, which Varnish and Squid read too (letter case, a missing comma, dashes
//! or periods for separators, a one-digit hour, a two-digit year, `UTC` for `GMT`, runs of
//! spaces, a day name that does not match the date).
//!
//! Written here because `httpdate` reads the three formats strictly and the lenient parsers of
//! date crates guess at free text (relative dates, locales); this reads one fixed set of fields —
//! day, month name, year, time, zone — in any order the formats put them in, and nothing else:
//! a value with any other token (`0`, `-1`, `yesterday`) is not a date, and an `Expires` that is
//! not a date means "already expired" (RFC 9111 §5.3).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The fields of a date, as found.
#[derive(Default)]
struct Fields {
    day: Option<u32>,
    month: Option<u32>,
    year: Option<i64>,
    time: Option<(u32, u32, u32)>,
    /// Seconds east of GMT.
    offset: i64,
}

/// The instant `text` names, or `None` when it is not a date.
pub fn parse_date(text: &str) -> Option<SystemTime> {
    let fields = read_fields(text.trim())?;
    let (hour, minute, second) = fields.time?;
    let (day, month) = (fields.day?, fields.month?);
    let year = full_year(fields.year?);
    if !(1..=days_in_month(year, month)).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - fields.offset;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn read_fields(text: &str) -> Option<Fields> {
    let mut f = Fields::default();
    let mut zoned = false;
    for token in text.split([' ', ',', '\t']).filter(|t| !t.is_empty()) {
        if let Some(time) = read_time(token) {
            if f.time.replace(time).is_some() {
                return None;
            }
            continue;
        }
        if let Some(offset) = numeric_zone(token) {
            (!std::mem::replace(&mut zoned, true)).then_some(())?;
            f.offset = offset;
            continue;
        }
        // Dashes join day, month and year in RFC 850 dates (and in slips of the others).
        for part in token.split('-').filter(|p| !p.is_empty()) {
            read_part(&mut f, part, &mut zoned)?;
        }
    }
    Some(f)
}

/// `+hhmm` or `-hhmm`: seconds east of GMT.
fn numeric_zone(token: &str) -> Option<i64> {
    let digits = token.strip_prefix(['+', '-'])?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    let sign = if token.starts_with('-') { -1 } else { 1 };
    Some(sign * (h * 3600 + m * 60))
}

/// One token that is not a time: a day or month name, a zone, a day of the month or a year.
fn read_part(f: &mut Fields, part: &str, zoned: &mut bool) -> Option<()> {
    if part.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = part.parse().ok()?;
        match part.len() {
            1 | 2 if f.day.is_none() => f.day = Some(n as u32),
            // A two-digit year is kept apart (as `-year - 1`) until `full_year` places it.
            2 if f.year.is_none() => f.year = Some(-n - 1),
            4 if f.year.is_none() => f.year = Some(n),
            _ => return None,
        }
        return Some(());
    }
    let lower = part.to_ascii_lowercase();
    if let Some(m) = MONTHS
        .iter()
        .position(|m| lower.starts_with(m) && lower.len() <= 9)
    {
        f.month.replace(m as u32 + 1).is_none().then_some(())?;
    } else if DAYS.iter().any(|d| lower.starts_with(d)) {
        // The day name is redundant: the date is what counts.
    } else if part.bytes().all(|b| b.is_ascii_alphabetic()) && part.len() <= 5 {
        (!std::mem::replace(zoned, true)).then_some(())?;
        f.offset = zone_offset(&lower);
    } else {
        return None;
    }
    Some(())
}

/// `02:01:18`, `2:01:18` or `02.01.18`.
fn read_time(token: &str) -> Option<(u32, u32, u32)> {
    let mut parts = token.split([':', '.']);
    let mut next = || -> Option<u32> {
        let p = parts.next()?;
        (1..=2).contains(&p.len()).then_some(())?;
        p.parse().ok()
    };
    let time = (next()?, next()?, next()?);
    parts.next().is_none().then_some(time)
}

/// Seconds east of GMT of a zone name. The formats only have `GMT`; the US zones of RFC 5322
/// are read as it defines them, and any other name (`UTC`, `Z`, `AEST`) as GMT: a zone's offset
/// is hours, against lifetimes that are usually far longer.
fn zone_offset(zone: &str) -> i64 {
    let hours = match zone {
        "edt" => -4,
        "est" | "cdt" => -5,
        "cst" | "mdt" => -6,
        "mst" | "pdt" => -7,
        "pst" => -8,
        _ => 0,
    };
    hours * 3600
}

/// A two-digit year (stored as `-year - 1`) as RFC 9110 §5.6.7 says: the year with those last
/// two digits that is not more than 50 years in the future.
fn full_year(year: i64) -> i64 {
    if year >= 0 {
        return year;
    }
    let two_digits = -year - 1;
    let this_year = 1970 + (crate::object::unix_now() / 31_556_952) as i64;
    let mut full = this_year - this_year % 100 + two_digits;
    if full > this_year + 50 {
        full -= 100;
    }
    full
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        httpdate::parse_http_date(text).unwrap()
    }

    #[test]
    fn the_three_formats_of_rfc_9110() {
        let want = at("Thu, 18 Aug 2050 02:01:18 GMT");
        assert_eq!(parse_date("Thu, 18 Aug 2050 02:01:18 GMT"), Some(want));
        assert_eq!(parse_date("Thursday, 18-Aug-50 02:01:18 GMT"), Some(want));
        assert_eq!(parse_date("Thu Aug 18 02:01:18 2050"), Some(want));
        assert_eq!(
            parse_date("Mon Aug  8 02:01:18 2050"),
            Some(at("Mon, 08 Aug 2050 02:01:18 GMT"))
        );
        assert_eq!(
            parse_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at("Sun, 06 Nov 1994 08:49:37 GMT"))
        );
    }

    #[test]
    fn the_slips_senders_make_are_read() {
        let want = at("Thu, 18 Aug 2050 02:01:18 GMT");
        for text in [
            "Mon, 18 Aug 2050 02:01:18 GMT",
            "THU, 18 AUG 2050 02:01:18 gMT",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 +0000",
        ] {
            assert_eq!(parse_date(text), Some(want), "{text}");
        }
        assert_eq!(
            parse_date("Thu, 18 Aug 2050 02:01:18 -0130"),
            Some(want + Duration::from_secs(5400))
        );
        assert_eq!(
            parse_date("Tue 19 Jan 2038 14:14:08 GMT"),
            Some(at("Tue, 19 Jan 2038 14:14:08 GMT"))
        );
        assert_eq!(
            parse_date("Sun 21 Nov 2286 04:46:39 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(9_999_999_999 + 11 * 3600))
        );
    }

    #[test]
    fn what_is_not_a_date_is_not_read_as_one() {
        for bad in [
            "0",
            "-1",
            "",
            "yesterday",
            "Thu, 18 Aug 2050",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 25:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT extra",
            "Thu, 18 Aug 2050 02:01 GMT",
            "18 Aug 2050 02:01:18 02:01:18",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn two_digit_years_are_at_most_fifty_years_ahead() {
        let this_year = 1970 + (crate::object::unix_now() / 31_556_952) as i64;
        assert_eq!(full_year(-(this_year % 100) - 1), this_year);
        let ahead = (this_year + 49) % 100;
        assert_eq!(full_year(-ahead - 1), this_year + 49);
        let behind = (this_year + 51) % 100;
        assert_eq!(full_year(-behind - 1), this_year - 49);
    }
}
