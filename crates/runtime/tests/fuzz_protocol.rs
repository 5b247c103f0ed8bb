//! Property/fuzz tests of the bootstrap frame decoder (`protocol::read_frame`),
//! from the hostile function's side: whatever bytes an instance writes to its
//! protocol socket, in whatever pieces, flick must not panic, must not
//! allocate a body over the limit, and must read well-formed frames exactly.
//!
//! `FLICK_FUZZ_CASES` sets the number of cases per property. See RELIABILITY.md.

use std::pin::Pin;
use std::task::{Context, Poll};

use flick_runtime::protocol::{FrameError, InvokeHeader, encode_invoke, read_frame};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// `default` cases per property unless `FLICK_FUZZ_CASES` says otherwise;
/// failures are kept in `fuzz_protocol.proptest-regressions` next to this file.
fn config(default: u32) -> Config {
    let cases = std::env::var("FLICK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let persistence = FileFailurePersistence::WithSource("proptest-regressions");
    Config { cases, failure_persistence: Some(Box::new(persistence)), ..Config::default() }
}

/// A socket that hands its bytes over in the pieces the test chose, as a
/// Unix socket may.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl Pieces {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> Self {
        Self { data, at: 0, sizes: if sizes.is_empty() { vec![usize::MAX] } else { sizes }, turn: 0 }
    }
}

impl AsyncRead for Pieces {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// Reads frames until the first error; checks what holds for every frame.
fn read_all(data: Vec<u8>, sizes: Vec<usize>, max_body: usize) -> Result<Vec<(String, Vec<u8>)>, TestCaseError> {
    let total = data.len();
    let mut reader = BufReader::new(Pieces::new(data, sizes));
    let mut frames = Vec::new();
    let mut refused = Vec::new();
    block_on(async {
        loop {
            match read_frame(&mut reader, max_body).await {
                Ok(frame) => {
                    prop_assert_eq!(frame.body.len(), frame.header.len);
                    prop_assert!(frame.body.len() <= max_body);
                    frames.push((frame.header.id, frame.body.to_vec()));
                    // Each frame takes at least its header line: the loop ends.
                    prop_assert!(frames.len() <= total);
                }
                // One frame refused whole (over max_body, or a header line
                // over the limit): the stream is still in step, read on.
                Err(FrameError::Refused { id, reason }) => {
                    prop_assert!(!reason.is_empty());
                    refused.push(id);
                    prop_assert!(frames.len() + refused.len() <= total);
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    return Ok(frames);
                }
            }
        }
    })
}

fn header_list() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((any::<String>(), any::<String>()), 0..4)
}

/// JSON header fields a hostile bootstrap might send, good and bad.
fn hostile_header_line() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        Just("0".to_string()),
        (0usize..64).prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("1e3".to_string()),
        Just("\"5\"".to_string()),
        Just("null".to_string()),
    ];
    let kind = select_str(&["result", "error", "ready", "init_error", "", "invoke"]);
    let status = select_str(&["200", "0", "65535", "65536", "-1", "null", "\"200\"", "599"]);
    let headers = select_str(&[
        "[]",
        "[[\"a\",\"b\"]]",
        "[[\"a\"]]",
        "[[1,2]]",
        "{}",
        "[[\"x\",\"\\u0000\\r\\n\"]]",
        "[[\"\\ud800\",\"y\"]]",
    ]);
    let error = select_str(&[
        "null",
        "{}",
        "{\"type\":\"E\",\"message\":\"m\",\"trace\":[\"t\"]}",
        "{\"trace\":\"not a list\"}",
        "\"text\"",
    ]);
    (kind, any::<String>(), status, headers, len, error, proptest::collection::vec(any::<u8>(), 0..80)).prop_map(
        |(kind, id, status, headers, len, error, body)| {
            let id = serde_json::to_string(&id).unwrap();
            let mut line = format!(
                "{{\"type\":\"{kind}\",\"id\":{id},\"status\":{status},\"headers\":{headers},\"len\":{len},\"error\":{error}}}\n"
            )
            .into_bytes();
            line.extend(body);
            line
        },
    )
}

fn select_str(options: &[&'static str]) -> impl Strategy<Value = String> + use<> {
    proptest::sample::select(options.to_vec()).prop_map(str::to_string)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn fuzz_frame_random_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..512),
        sizes in proptest::collection::vec(1usize..64, 0..4),
        max_body in 0usize..256,
    ) {
        read_all(data, sizes, max_body)?;
    }

    #[test]
    fn fuzz_frame_hostile_headers(
        lines in proptest::collection::vec(hostile_header_line(), 1..4),
        sizes in proptest::collection::vec(1usize..64, 0..4),
        max_body in 0usize..128,
    ) {
        read_all(lines.concat(), sizes, max_body)?;
    }

    #[test]
    fn fuzz_frame_round_trip_in_any_pieces(
        frames in proptest::collection::vec((any::<String>(), any::<String>(), header_list(), proptest::collection::vec(any::<u8>(), 0..300)), 1..4),
        sizes in proptest::collection::vec(1usize..600, 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut stream = Vec::new();
        for (id, path, headers, body) in &frames {
            let header = InvokeHeader {
                kind: "invoke",
                id,
                deadline_ms: i64::MAX,
                method: "POST",
                path,
                raw_path: path,
                query: "",
                headers,
                presentation: "http",
                client_context: Some(path),
                traceparent: Some(path),
                tracestate: None,
                len: body.len(),
            };
            stream.extend(encode_invoke(&header, body));
        }
        let whole = stream.len();
        let cut_at = cut.map(|c| c.index(whole));
        if let Some(at) = cut_at {
            stream.truncate(at);
        }
        let read = read_all(stream, sizes, 1 << 20)?;
        let expected: Vec<(String, Vec<u8>)> = frames.iter().map(|(id, _, _, body)| (id.clone(), body.clone())).collect();
        match cut_at {
            // Everything comes back, in order.
            None => prop_assert_eq!(read, expected),
            // A cut stream yields only whole frames, each exactly as sent.
            Some(_) => {
                prop_assert!(read.len() <= expected.len());
                prop_assert_eq!(&read[..], &expected[..read.len()]);
            }
        }
    }
}

#[test]
fn fuzz_frame_huge_declared_length_is_refused_before_allocating() {
    // Declared, never sent: the reader skips what comes (nothing) without
    // allocating for it, and meets the end of the stream.
    for len in ["18446744073709551615", "9223372036854775807"] {
        let data = format!("{{\"type\":\"result\",\"id\":\"x\",\"len\":{len}}}\n").into_bytes();
        let mut reader = BufReader::new(Pieces::new(data, vec![]));
        let err = block_on(read_frame(&mut reader, 1 << 20)).unwrap_err();
        assert!(matches!(err, FrameError::Eof), "{len}: {err}");
    }
    // Declared and sent: that frame is refused, the next one is read.
    let mut data = b"{\"type\":\"result\",\"id\":\"x\",\"len\":1048577}\n".to_vec();
    data.extend(vec![b'z'; 1048577]);
    data.extend(b"{\"type\":\"result\",\"id\":\"y\",\"len\":2}\nok");
    let mut reader = BufReader::new(Pieces::new(data, vec![]));
    let err = block_on(read_frame(&mut reader, 1 << 20)).unwrap_err();
    assert!(matches!(&err, FrameError::Refused { id, .. } if id == "x"), "{err}");
    let next = block_on(read_frame(&mut reader, 1 << 20)).unwrap();
    assert_eq!((next.header.id.as_str(), &next.body[..]), ("y", &b"ok"[..]));
}
