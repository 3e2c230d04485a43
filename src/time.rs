//! Parsing and printing of event times, durations and UTC offsets.

use crate::event::Time;
use chrono::{DateTime, NaiveDateTime};

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Parses an event time: RFC 3339 (`2024-01-01T10:00:00+01:00`), `YYYY-MM-DD HH:MM:SS` taken as
/// UTC, or unix seconds (an integer, or a decimal whose fraction is dropped).
///
/// ```
/// use behave::time::parse_time;
/// assert_eq!(parse_time("1970-01-02 00:00:00"), Some(86_400));
/// assert_eq!(parse_time("1970-01-02T01:00:00+01:00"), Some(86_400));
/// assert_eq!(parse_time("86400"), Some(86_400));
/// assert_eq!(parse_time("874965758.0"), Some(874_965_758));
/// assert_eq!(parse_time("yesterday"), None);
/// ```
pub fn parse_time(text: &str) -> Option<Time> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Some(secs) = parse_unix(text) {
        return Some(secs);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp());
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

fn parse_unix(text: &str) -> Option<Time> {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let secs: i64 = whole.parse().ok()?;
    // A negative time with a fraction rounds towards minus infinity, like every other time.
    match frac {
        Some(f) if secs < 0 && f.bytes().any(|b| b != b'0') => secs.checked_sub(1),
        _ => Some(secs),
    }
}

/// Formats a time as RFC 3339 in UTC, e.g. `2024-01-01T10:00:00Z`.
///
/// ```
/// assert_eq!(behave::time::format_time(86_400), "1970-01-02T00:00:00Z");
/// ```
pub fn format_time(t: Time) -> String {
    match DateTime::from_timestamp(t, 0) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => t.to_string(),
    }
}

/// Formats the day of a time (in the given UTC offset, seconds east) as `YYYY-MM-DD`.
pub fn format_day(t: Time, offset: i64) -> String {
    match DateTime::from_timestamp(t + offset, 0) {
        Some(dt) => dt.format("%Y-%m-%d").to_string(),
        None => t.to_string(),
    }
}

/// Parses a duration: an integer number of seconds or a number with a unit
/// `s`, `m`, `h`, `d` or `w`.
///
/// ```
/// use behave::time::parse_duration;
/// assert_eq!(parse_duration("30m"), Some(1_800));
/// assert_eq!(parse_duration("14d"), Some(14 * 86_400));
/// assert_eq!(parse_duration("8w"), Some(8 * 7 * 86_400));
/// assert_eq!(parse_duration("90"), Some(90));
/// assert_eq!(parse_duration("3x"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => DAY,
        "w" => 7 * DAY,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Formats a duration in the largest unit that divides it (`90m` is `"90m"`, `7200` is `"2h"`).
pub fn format_duration(secs: i64) -> String {
    for (unit, scale) in [("w", 7 * DAY), ("d", DAY), ("h", 3_600), ("m", 60)] {
        if secs != 0 && secs % scale == 0 {
            return format!("{}{}", secs / scale, unit);
        }
    }
    format!("{secs}s")
}

/// Parses a UTC offset `+HH:MM`, `-HH:MM` or `Z` into seconds east of UTC.
///
/// ```
/// use behave::time::parse_offset;
/// assert_eq!(parse_offset("+05:30"), Some(19_800));
/// assert_eq!(parse_offset("-01:00"), Some(-3_600));
/// assert_eq!(parse_offset("Z"), Some(0));
/// ```
pub fn parse_offset(text: &str) -> Option<i64> {
    if text == "Z" || text == "UTC" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i64 = h.parse().ok()?;
    let m: i64 = m.parse().ok()?;
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 3_600 + m * 60))
}

/// The day number (days since 1970-01-01) of a time, in the given UTC offset.
pub fn day_of(t: Time, offset: i64) -> i64 {
    (t + offset).div_euclid(DAY)
}
