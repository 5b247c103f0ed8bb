//! The wire protocol between flick and a language bootstrap, over the Unix
//! socket the instance has as fd 3.
//!
//! A frame is one line of JSON (the header), then exactly `len` bytes of
//! body. JSON keeps the bootstraps dependency-free; the raw body after it
//! spares payloads an encoding round trip.
//!
//! ```text
//! bootstrap → flick  {"type":"ready"}  |  {"type":"init_error","error":{…}}
//! flick → bootstrap  {"type":"invoke","id":…,"deadline_ms":…,"method":…,"path":…,"query":…,"headers":[[k,v]…],"len":N} + N bytes
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
    pub query: &'a str,
    pub headers: &'a [(String, String)],
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
    #[error("instance response of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("protocol channel: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes an invoke frame.
pub fn encode_invoke(header: &InvokeHeader<'_>, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Reads one frame; bodies over `max_body` are refused before allocation.
pub async fn read_frame<R>(reader: &mut BufReader<R>, max_body: usize) -> Result<Frame, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut line = Vec::with_capacity(256);
    // A header is small; a line this long means the peer is not a bootstrap.
    let n = (&mut *reader).take(64 << 10).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(FrameError::Eof);
    }
    if line.last() != Some(&b'\n') {
        return Err(FrameError::Malformed("header line too long or cut short".into()));
    }
    let header: Header =
        serde_json::from_slice(&line).map_err(|e| FrameError::Malformed(format!("bad header: {e}")))?;
    if header.len > max_body {
        return Err(FrameError::TooLarge { len: header.len, max: max_body });
    }
    let mut body = vec![0u8; header.len];
    reader.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Eof,
        _ => FrameError::Io(e),
    })?;
    Ok(Frame { header, body: Bytes::from(body) })
}
