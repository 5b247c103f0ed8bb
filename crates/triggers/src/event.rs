//! The JSON events sources hand to functions, and the invocations that
//! carry them. A message payload is put in as JSON when it parses as JSON,
//! else as base64 with `payload_base64: true` (payloads are bytes; a
//! function must never get text that was silently mangled).

use base64::Engine as _;
use flick_core::{Cause, Invocation};
use serde_json::{Map, Value};

/// A POST of `event` (JSON) to `function`, caused by `trigger`.
pub(crate) fn invocation(function: &str, cause: Cause, trigger: &str, event: Value) -> Invocation {
    let body = serde_json::to_vec(&event).unwrap_or_default();
    let mut inv = Invocation::post(function, cause, body);
    inv.trigger = Some(trigger.to_string());
    inv.headers.push(("x-flick-trigger".into(), trigger.to_string()));
    inv
}

/// Puts `payload` into `event` as `payload` (+ `payload_base64`).
pub(crate) fn put_payload(event: &mut Map<String, Value>, payload: &[u8]) {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => {
            event.insert("payload".into(), v);
            event.insert("payload_base64".into(), Value::Bool(false));
        }
        Err(_) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
            event.insert("payload".into(), Value::String(b64));
            event.insert("payload_base64".into(), Value::Bool(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_or_flagged_base64() {
        let mut m = Map::new();
        put_payload(&mut m, br#"{"t": 21.5}"#);
        assert_eq!(m["payload"]["t"], 21.5);
        assert_eq!(m["payload_base64"], false);
        for raw in [&b"hello"[..], b"", b"\xff\x00\x1b[2J", b"{\"unterminated"] {
            let mut m = Map::new();
            put_payload(&mut m, raw);
            assert_eq!(m["payload_base64"], true, "{raw:?}");
            let back = base64::engine::general_purpose::STANDARD.decode(m["payload"].as_str().unwrap()).unwrap();
            assert_eq!(back, raw);
        }
    }
}
