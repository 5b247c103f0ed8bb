//! Human units in manifests and config: durations ("30s", "10m") and sizes ("256MiB").

use std::time::Duration;

/// Parses `500ms`, `30s`, `10m`, `1h`, `1d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("`{text}` is not a duration (try \"30s\", \"500ms\", \"10m\")"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!("`{text}` has unknown duration unit `{other}` (use ms, s, m, h or d)"));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{text}` is out of range"));
    }
    // Whole milliseconds: what `format_duration` can write back, so a
    // manifest shown by flick parses to the same values.
    Ok(Duration::from_millis((secs * 1000.0).round() as u64))
}

/// Parses `256MiB`, `1GiB`, `512MB`, `64KiB`, `1024B` or a bare number of MiB
/// (the unit Lambda's `MemorySize` uses).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num.parse().map_err(|_| format!("`{text}` is not a size (try \"256MiB\" or \"1GiB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "MiB" | "Mi" | "M" | "MB" => 1 << 20,
        "B" => 1,
        "KiB" | "Ki" | "K" | "KB" | "k" => 1 << 10,
        "GiB" | "Gi" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!("`{text}` has unknown size unit `{other}` (use KiB, MiB or GiB)"));
        }
    };
    value.checked_mul(mult).ok_or_else(|| format!("`{text}` is out of range"))
}

/// Formats a duration the way manifests write it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Formats a byte count the way manifests write it.
pub fn format_size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) && bytes > 0 {
        format!("{}GiB", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else if bytes.is_multiple_of(1 << 10) {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").unwrap_err().contains("not a duration"));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unknown duration unit"));
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        // Sub-millisecond parts are rounded off (found by tests/fuzz_manifest.rs).
        assert_eq!(parse_duration("1.4ms").unwrap(), Duration::from_millis(1));
        assert_eq!(parse_duration("0.0001s").unwrap(), Duration::ZERO);
        let d = parse_duration("0.0225s").unwrap();
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("128").unwrap(), 128 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5XB").unwrap_err().contains("unknown size unit"));
        assert_eq!(format_size(256 << 20), "256MiB");
    }
}
