//! The wire protocol between flick and a language bootstrap, over the Unix
//! socket the instance has as fd 3.
//!
//! A frame is one line of JSON (the header), then exactly `len` bytes of
//! body. JSON keeps the bootstraps dependency-free; the raw body after it
//! spares payloads an encoding round trip.
//!
//! ```text
//! bootstrap → flick  {"type":"ready"}  |  {"type":"init_error","error":{…}}
//! flick → bootstrap  {"type":"invoke","id":…,"deadline_ms":…,"method":…,"path":…,"raw_path":…,"query":…,"headers":[[k,v]…],
//!                     "presentation":"http"|"direct"[,"client_context":…][,"traceparent":…,"tracestate":…],"len":N} + N bytes
//! bootstrap → flick  {"type":"result","id":…,"status":200,"headers":[[k,v]…],"len":N} + N bytes
//!                  | {"type":"error","id":…,"error":{"type":…,"message":…,"trace":[…]}}
//! ```

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::FunctionError;

#[derive(Debug, Serialize)]
pub struct InvokeHeader<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub deadline_ms: i64,
    pub method: &'a str,
    pub path: &'a str,
    /// The path as the caller sent it, still percent-encoded (an API
    /// Gateway event's `rawPath`).
    pub raw_path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    /// `http`: the handler sees the request as HTTP; `direct`: the body is
    /// its event, the return value its answer verbatim.
    pub presentation: &'static str,
    /// A Lambda caller's `X-Amz-Client-Context` (base64 JSON), when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_context: Option<&'a str>,
    /// The call's W3C `traceparent` (flick's span as parent) and `tracestate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<&'a str>,
    pub len: usize,
}

#[derive(Debug, Deserialize)]
pub struct Header {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub len: usize,
    #[serde(default)]
    pub error: Option<FunctionError>,
    /// A fork template's `forked` reply: the new instance's pid in the
    /// template's pid namespace.
    #[serde(default)]
    pub pid: Option<u32>,
    /// A python3 `ready`: seconds the handler's import took.
    #[serde(default)]
    pub import_s: Option<f64>,
}

impl Header {
    /// An `error` frame's header, for an answer flick refused on the function's behalf.
    pub fn error(id: String, error: FunctionError) -> Self {
        Self {
            kind: "error".into(),
            id,
            status: None,
            headers: vec![],
            len: 0,
            error: Some(error),
            pid: None,
            import_s: None,
        }
    }
}

#[derive(Debug)]
pub struct Frame {
    pub header: Header,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("instance closed its protocol channel")]
    Eof,
    #[error("instance broke the protocol: {0}")]
    Malformed(String),
    /// One frame was too large and was skipped whole: the channel is still
    /// in step, and only the invocation `id` fails.
    #[error("{reason}")]
    Refused { id: String, reason: String },
    #[error("protocol channel: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest header line read whole; longer ones are skipped (see [`read_frame`]).
pub const MAX_HEADER: usize = 64 << 10;
/// What is kept of an over-long header line to find its `id` and `len`.
const KEEP_HEAD: usize = 4 << 10;
const KEEP_TAIL: usize = 256;

/// Encodes an invoke frame.
pub fn encode_invoke(header: &InvokeHeader<'_>, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Reads one frame. A frame too large to take (a header line over
/// [`MAX_HEADER`], a body over `max_body`) is read past without being kept,
/// and answered as [`FrameError::Refused`] for its invocation alone: one
/// oversized answer must not end the instance's other invocations.
pub async fn read_frame<R>(reader: &mut BufReader<R>, max_body: usize) -> Result<Frame, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut line = Vec::with_capacity(256);
    let n = (&mut *reader).take(MAX_HEADER as u64).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(FrameError::Eof);
    }
    if line.last() != Some(&b'\n') {
        if n < MAX_HEADER {
            // The stream ended mid-line: the process is going or gone.
            return Err(FrameError::Eof);
        }
        return skip_long_header(reader, line, max_body).await;
    }
    let header: Header =
        serde_json::from_slice(&line).map_err(|e| FrameError::Malformed(format!("bad header: {e}")))?;
    if header.len > max_body {
        skip(reader, header.len).await?;
        let reason = format!("the response of {} bytes is over the {max_body}-byte limit", header.len);
        return Err(FrameError::Refused { id: header.id, reason });
    }
    let mut body = vec![0u8; header.len];
    reader.read_exact(&mut body).await.map_err(eof)?;
    Ok(Frame { header, body: Bytes::from(body) })
}

/// The rest of a header line over [`MAX_HEADER`]: read to its end keeping
/// only its start and its end, where the bootstraps put `id` (second key)
/// and `len` (last key), then the body it announces. A line that names no
/// invocation is not a bootstrap's: the channel is broken.
async fn skip_long_header<R>(reader: &mut BufReader<R>, mut head: Vec<u8>, max_body: usize) -> Result<Frame, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut tail: Vec<u8> = head.split_off(head.len().saturating_sub(KEEP_TAIL));
    head.truncate(KEEP_HEAD);
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(FrameError::Eof);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        tail.extend_from_slice(chunk);
        let excess = tail.len().saturating_sub(KEEP_TAIL);
        tail.drain(..excess);
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            break;
        }
    }
    let id = string_field(&head, "id")
        .ok_or_else(|| FrameError::Malformed("a header line over 64 KiB naming no invocation".into()))?;
    let len = number_field(&tail, "len").unwrap_or(0);
    skip(reader, len).await?;
    let reason = if len > max_body {
        format!("the response of {len} bytes is over the {max_body}-byte limit")
    } else {
        format!("the function's answer has a header over {} KiB (its headers or error are too large)", MAX_HEADER >> 10)
    };
    Err(FrameError::Refused { id, reason })
}

/// Reads and drops `len` bytes.
async fn skip<R>(reader: &mut BufReader<R>, len: usize) -> Result<(), FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let copied = tokio::io::copy(&mut (&mut *reader).take(len as u64), &mut tokio::io::sink()).await?;
    if copied < len as u64 { Err(FrameError::Eof) } else { Ok(()) }
}

fn eof(e: std::io::Error) -> FrameError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Eof,
        _ => FrameError::Io(e),
    }
}

/// `"key":"value"` in a fragment of JSON (ids are plain ASCII, unescaped).
fn string_field(text: &[u8], key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":\"");
    let at = find(text, pattern.as_bytes())? + pattern.len();
    let end = text[at..].iter().position(|&b| b == b'"')?;
    let value = std::str::from_utf8(&text[at..at + end]).ok()?;
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| value.to_string())
}

/// The last `"key":N` in a fragment of JSON.
fn number_field(text: &[u8], key: &str) -> Option<usize> {
    let pattern = format!("\"{key}\":");
    let at = text.windows(pattern.len()).rposition(|w| w == pattern.as_bytes())? + pattern.len();
    let digits: Vec<u8> =
        text[at..].iter().copied().skip_while(|b| *b == b' ').take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: Vec<u8>, max_body: usize) -> Vec<Result<(String, Vec<u8>), String>> {
        let mut reader = BufReader::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        loop {
            match read_frame(&mut reader, max_body).await {
                Ok(f) => out.push(Ok((f.header.id, f.body.to_vec()))),
                Err(FrameError::Refused { id, .. }) => out.push(Err(id)),
                Err(FrameError::Eof) => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_frame_fails_alone_and_the_next_one_is_read() {
        let mut input = Vec::new();
        // An error whose message makes the header line 100 KiB long.
        let huge = "x".repeat(100 << 10);
        input.extend(format!("{{\"type\":\"error\",\"id\":\"a1\",\"error\":{{\"message\":\"{huge}\"}}}}\n").bytes());
        // A result with headers over the limit and a body after them.
        input.extend(
            format!("{{\"type\":\"result\",\"id\":\"a2\",\"headers\":[[\"x\",\"{huge}\"]],\"len\":5}}\nhello").bytes(),
        );
        // A body over `max_body`.
        input.extend(b"{\"type\":\"result\",\"id\":\"a3\",\"len\":20}\n01234567890123456789");
        // And an ordinary one, still in step.
        input.extend(b"{\"type\":\"result\",\"id\":\"a4\",\"len\":2}\nok");
        let got = frames(input, 10).await;
        assert_eq!(got, vec![Err("a1".into()), Err("a2".into()), Err("a3".into()), Ok(("a4".into(), b"ok".to_vec()))]);
    }

    #[tokio::test]
    async fn a_long_line_naming_no_invocation_breaks_the_channel() {
        let input = format!("{}\n", "y".repeat(100 << 10)).into_bytes();
        let mut reader = BufReader::new(std::io::Cursor::new(input));
        assert!(matches!(read_frame(&mut reader, 10).await, Err(FrameError::Malformed(_))));
    }
}
