//! What the CLI prints: stdout writes that end a command quietly when the
//! reader went away (`flick activations | head -1`), and escaping for text a
//! function produced, so that it cannot drive the operator's terminal
//! (set its title, write the clipboard with OSC 52, forge lines).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Write;

/// Stdout was closed by its reader. Not a failure of the command: `main`
/// ends quietly with [`CLOSED_EXIT`].
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// The exit status when stdout closed early: what a shell reports for a
/// program ended by SIGPIPE (128 + 13), as `head` users expect.
pub const CLOSED_EXIT: u8 = 141;

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Writes one line to stdout (use [`outln!`]).
pub fn line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n")).map_err(stdout_error)
}

/// Writes bytes to stdout as they are.
pub fn bytes(data: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(data).and_then(|()| out.flush()).map_err(stdout_error)
}

/// A line for a person watching `flick up`: if nobody reads stdout any
/// more, the server carries on rather than failing.
pub fn status(args: fmt::Arguments<'_>) {
    let _ = line(args);
}

/// `println!` for commands: a closed stdout ends the command (`?`).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))?
    };
}

/// `println!` for `flick up`: write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::status(format_args!($($arg)*))
    };
}

/// Characters a terminal may act on rather than show: C0 controls (but
/// tab, and newline where `multiline`), DEL, C1 controls (U+0080–U+009F,
/// which some terminals take as CSI/OSC), bidirectional overrides and
/// line/paragraph separators (which reorder or break a line on screen).
fn dangerous(c: char, multiline: bool) -> bool {
    match c {
        '\t' => false,
        '\n' => !multiline,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        '\u{2028}' | '\u{2029}' => true,
        _ => false,
    }
}

/// `text` with every dangerous character written as a visible escape
/// (`\x1b`, `\r`, `\u{202e}`); `multiline` keeps newlines as they are.
pub fn escape(text: &str, multiline: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| dangerous(c, multiline)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !dangerous(c, multiline) {
            out.push(c);
            continue;
        }
        let _ = match c {
            '\r' => out.write_str("\\r"),
            '\n' => out.write_str("\\n"),
            c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
            c => write!(out, "\\u{{{:x}}}", c as u32),
        };
    }
    Cow::Owned(out)
}

/// JSON text (as serde_json writes it, C0 controls already escaped) with
/// the other dangerous characters as `\uXXXX` escapes: still valid JSON
/// meaning the same, but inert on a terminal.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| dangerous(c, true)) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if dangerous(c, true) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_become_visible_escapes() {
        let title = "a\u{1b}]0;owned\u{7}b";
        assert_eq!(escape(title, false), "a\\x1b]0;owned\\x07b");
        let clipboard = "\u{1b}]52;c;ZWNobyBoaQ==\u{1b}\\";
        assert_eq!(escape(clipboard, true), "\\x1b]52;c;ZWNobyBoaQ==\\x1b\\");
        assert_eq!(escape("fake\rline", true), "fake\\rline");
        assert_eq!(escape("csi\u{9b}31m", true), "csi\\u{9b}31m");
        assert_eq!(escape("rtl\u{202e}txt", true), "rtl\\u{202e}txt");
        assert_eq!(escape("del\u{7f}", true), "del\\x7f");
    }

    #[test]
    fn newlines_are_kept_only_in_multiline_text_and_tabs_always() {
        assert_eq!(escape("a\nb\tc", true), "a\nb\tc");
        assert_eq!(escape("a\nb\tc", false), "a\\nb\tc");
        assert!(matches!(escape("plain text, ünïcode ✓", false), Cow::Borrowed(_)));
    }

    #[test]
    fn json_stays_json_with_the_same_meaning() {
        let value = serde_json::json!({ "text": "x\u{1b}]0;t\u{7}\u{9b}\u{202e}\u{7f}y" });
        let raw = serde_json::to_string(&value).unwrap();
        let safe = escape_json(&raw);
        assert!(!safe.chars().any(|c| dangerous(c, true)), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }
}
