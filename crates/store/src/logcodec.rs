//! How an activation's log lines are stored: raw bytes with a small binary
//! frame per line, not JSON.
//!
//! JSON escapes every control character as `\uXXXX`, so a function printing
//! them made its record six times the size of what it printed. Here a line
//! costs its bytes plus 13: `ts_ms` (i64 LE), stream (0 stdout, 1 stderr),
//! length (u32 LE), text. The blob starts with a version byte; records
//! written before this format hold a JSON array, which starts with `[`, so
//! both read back.

use flick_core::{LogLine, LogStream};

const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 4;

pub(crate) fn encode(lines: &[LogLine]) -> Vec<u8> {
    if lines.is_empty() {
        return Vec::new();
    }
    let size = 1 + lines.iter().map(|l| HEADER + l.text.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(VERSION);
    for line in lines {
        out.extend_from_slice(&line.ts_ms.to_le_bytes());
        out.push(match line.stream {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        });
        // Lines are capped far below 4 GiB by the runtime; saturate rather
        // than wrap if that ever changed.
        let len = u32::try_from(line.text.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&line.text.as_bytes()[..len as usize]);
    }
    out
}

/// Reads what [`encode`] wrote, or a legacy JSON array. The error says what
/// is wrong, for a `Corrupt` store error.
pub(crate) fn decode(blob: &[u8]) -> Result<Vec<LogLine>, String> {
    match blob.first() {
        None => Ok(Vec::new()),
        Some(b'[') => serde_json::from_slice(blob).map_err(|e| format!("legacy JSON logs: {e}")),
        Some(&VERSION) => decode_v1(&blob[1..]),
        Some(other) => Err(format!("unknown log format {other}")),
    }
}

fn decode_v1(mut rest: &[u8]) -> Result<Vec<LogLine>, String> {
    let mut lines = Vec::new();
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return Err(format!("log line {} is cut short", lines.len() + 1));
        }
        let (head, tail) = rest.split_at(HEADER);
        let ts_ms = i64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let stream = match head[8] {
            0 => LogStream::Stdout,
            1 => LogStream::Stderr,
            s => return Err(format!("log line {} has unknown stream {s}", lines.len() + 1)),
        };
        let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        if tail.len() < len {
            return Err(format!("log line {} is cut short", lines.len() + 1));
        }
        let (text, next) = tail.split_at(len);
        let text =
            String::from_utf8(text.to_vec()).map_err(|e| format!("log line {} is not UTF-8: {e}", lines.len() + 1))?;
        lines.push(LogLine { ts_ms, stream, text });
        rest = next;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts_ms: i64, stream: LogStream, text: &str) -> LogLine {
        LogLine { ts_ms, stream, text: text.into() }
    }

    #[test]
    fn round_trip_keeps_bytes_and_costs_no_escaping() {
        let control: String = (0u8..32).map(char::from).collect::<String>().repeat(100);
        let lines = vec![
            line(1, LogStream::Stdout, "plain"),
            line(-5, LogStream::Stderr, "ünïcode \"quoted\"\n"),
            line(i64::MAX, LogStream::Stdout, ""),
            line(7, LogStream::Stderr, &control),
        ];
        let blob = encode(&lines);
        assert_eq!(decode(&blob).unwrap(), lines);
        let text: usize = lines.iter().map(|l| l.text.len()).sum();
        assert_eq!(blob.len(), 1 + text + lines.len() * HEADER);
        let json = serde_json::to_vec(&lines).unwrap();
        assert!(json.len() > 5 * text, "JSON would have cost {} bytes for {text}", json.len());
        assert_eq!(encode(&[]), Vec::<u8>::new());
        assert_eq!(decode(&[]).unwrap(), vec![]);
    }

    #[test]
    fn legacy_json_still_reads() {
        let lines = vec![line(3, LogStream::Stderr, "old \u{1}")];
        assert_eq!(decode(&serde_json::to_vec(&lines).unwrap()).unwrap(), lines);
        assert_eq!(decode(b"[]").unwrap(), vec![]);
    }

    #[test]
    fn damage_is_named_not_panicked_on() {
        let blob = encode(&[line(1, LogStream::Stdout, "hello"), line(2, LogStream::Stdout, "world")]);
        // Every cut but the one between the two lines leaves half a line.
        for cut in (2..blob.len()).filter(|&c| c != 1 + HEADER + 5) {
            let err = decode(&blob[..cut]).unwrap_err();
            assert!(err.contains("cut short"), "{cut}: {err}");
        }
        let mut bad = blob.clone();
        bad[9] = 7;
        assert!(decode(&bad).unwrap_err().contains("unknown stream 7"));
        let mut bad = blob;
        bad[14] = 0xff;
        assert!(decode(&bad).unwrap_err().contains("not UTF-8"));
        assert!(decode(&[9]).unwrap_err().contains("unknown log format 9"));
    }
}
