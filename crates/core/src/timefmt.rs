//! Timestamps for people and wire formats: epoch milliseconds as UTC RFC
//! 3339 text, and back.

/// `2026-11-25T11:21:38.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2026-11-25T11:21:38.123456789Z`, `…+02:00`, `2026-11-25 11:21:38Z` (any
/// fraction, `Z` or an offset) to epoch milliseconds; `None` if it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b[at] == b'.' {
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let frac = &text[at + 1..at + 1 + digits.min(3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
        at += 1 + digits;
    }
    let offset_secs = match &text[at..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && o.as_bytes()[3] == b':' => {
            let secs = num(at + 1..at + 3)? * 3600 + num(at + 4..at + 6)? * 60;
            if o.starts_with('-') { -secs } else { secs }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(((days * 86_400 + h * 3600 + mi * 60 + s - offset_secs) * 1000) + millis)
}

/// `2026-11-25`: the UTC day of epoch milliseconds `ms`.
pub fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11-25` (a UTC day) to the epoch milliseconds of its midnight;
/// `None` if it is not a date that exists (`2026-02-30`).
pub fn parse_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &text[r];
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m as u32, d as u32);
    // The 31st of a 30-day month comes back as the 1st of the next.
    (civil_from_days(days) == (y, m as u32, d as u32)).then_some(days * 86_400_000)
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_795_605_698_123), "2026-11-25T11:21:38.123Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_what_it_writes_and_other_spellings() {
        use super::parse_rfc3339 as p;
        for ms in [0, 1_795_605_698_123, 951_782_400_000, -86_400_000] {
            assert_eq!(p(&super::rfc3339(ms)), Some(ms));
        }
        assert_eq!(p("2026-11-25T11:21:38Z"), Some(1_795_605_698_000));
        assert_eq!(p("2026-11-25T13:21:38.123456789+02:00"), Some(1_795_605_698_123));
        assert_eq!(p("2026-11-25T10:21:38.1-01:00"), Some(1_795_605_698_100));
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T11:21:38",
            "2026-13-25T11:21:38Z",
            "2026-11-25T11:21:38.Z",
            "x026-11-25T11:21:38Z",
            "2026-11-25T11:21:38+0200",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_round_trip_and_impossible_ones_are_refused() {
        use super::{date, parse_date};
        assert_eq!(date(1_795_605_698_123), "2026-11-25");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(parse_date("2026-11-25"), Some(1_795_564_800_000));
        assert_eq!(parse_date("2000-02-29").map(date).as_deref(), Some("2000-02-29"));
        for bad in [
            "",
            "2026-02-30",
            "2026-04-31",
            "2025-02-29",
            "2026-1-05",
            "2026-11-25T00:00:00Z",
            "20x6-01-01",
            "+026-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
