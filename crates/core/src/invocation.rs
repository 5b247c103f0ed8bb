//! An invocation as the platform runs it: the one request shape of every
//! call, whoever made it. A synchronous HTTP call, an accepted async call
//! (stored by the queue and run later, perhaps after a restart), a retry,
//! a trigger's event and a sequence step all become an [`Invocation`] and go
//! through the same invoke path.
//!
//! It is serialisable because the queue stores it; its activation id is
//! made by whoever accepted it (so a 202 can name the activation before it
//! runs, and a retry keeps the same id).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::ActivationId;
use crate::trace::Trace;

/// What caused an invocation (shown on its activation record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// A caller waiting on `/fn/{name}`.
    #[default]
    Http,
    /// A caller who asked for an async call (`X-Flick-Async: true`).
    Async,
    Cron,
    Mqtt,
    Nats,
    #[serde(rename = "cloudevent")]
    CloudEvent,
    /// A step of a `runtime = "sequence"` function.
    Sequence,
    /// A dead letter sent back to its function (`flick dlq redrive`).
    Redrive,
    /// A rule of a fired OpenWhisk-style trigger (`trigger` names it;
    /// `parent` is the trigger's activation).
    Trigger,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Self::Http,
        Self::Async,
        Self::Cron,
        Self::Mqtt,
        Self::Nats,
        Self::CloudEvent,
        Self::Sequence,
        Self::Redrive,
        Self::Trigger,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Async => "async",
            Self::Cron => "cron",
            Self::Mqtt => "mqtt",
            Self::Nats => "nats",
            Self::CloudEvent => "cloudevent",
            Self::Sequence => "sequence",
            Self::Redrive => "redrive",
            Self::Trigger => "trigger",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an invocation's request is presented to the function's handler.
///
/// The surface that accepted the call decides: an HTTP route hands the
/// function an HTTP request; an API whose payload *is* the event (Lambda's
/// Invoke, OpenWhisk's action invoke) hands it the event itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presentation {
    /// The request as an HTTP request (method, path, headers, body), shaped
    /// by the handler's shape (an API-Gateway event, OpenWhisk's `__ow_*`
    /// fields, …), its answer read as an HTTP response.
    #[default]
    Http,
    /// The body is the event itself: a lambda handler gets
    /// `handler(json(body), context)`, an openwhisk one `main(params)`, an
    /// openfaas one `handle(body)`; exec and http functions get the body as
    /// it is. The handler's return value is the answer verbatim (its JSON),
    /// never mapped to an HTTP response.
    Direct,
}

impl Presentation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Direct => "direct",
        }
    }
}

/// One call of a function: the HTTP-shaped request the runtime presents
/// to it, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// The activation this call records under; made by whoever accepted it.
    pub id: ActivationId,
    pub function: String,
    pub method: String,
    /// The sub-path after `/fn/{name}`, percent-decoded.
    pub path: String,
    /// The same sub-path as the caller sent it (still percent-encoded).
    pub raw_path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "body_base64")]
    pub body: Vec<u8>,
    /// The caller's own time budget in milliseconds (`X-Flick-Deadline`),
    /// when shorter than the function's `timeout`.
    #[serde(default)]
    pub budget_ms: Option<u64>,
    #[serde(default)]
    pub cause: Cause,
    /// The trigger that fired it (`cron`, `mqtt`, … causes), by name.
    #[serde(default)]
    pub trigger: Option<String>,
    /// 1 for the first attempt; retries count up.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The activation this one is part of (a sequence's steps).
    #[serde(default)]
    pub parent: Option<ActivationId>,
    /// Where the outcome of an async call is POSTed (`X-Callback-Url`).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// When it was accepted (ms since the epoch).
    #[serde(default)]
    pub accepted_ms: i64,
    /// How the handler is shown the request (default: as HTTP; queued
    /// items written before this field existed read as that).
    #[serde(default)]
    pub presentation: Presentation,
    /// A Lambda caller's client context (`X-Amz-Client-Context`: base64 of a
    /// JSON object), shown to lambda handlers as `context.client_context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_context: Option<String>,
    /// The W3C trace this call belongs to and flick's span for it (from the
    /// caller's `traceparent`, or started by flick). `None` only in queued
    /// items written before traces existed: they get a new trace when run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
}

fn first_attempt() -> u32 {
    1
}

impl Invocation {
    /// A `POST /` with `body`, as triggers and sequences make them.
    pub fn post(function: impl Into<String>, cause: Cause, body: Vec<u8>) -> Self {
        Self {
            id: ActivationId::generate(),
            function: function.into(),
            method: "POST".into(),
            path: "/".into(),
            raw_path: "/".into(),
            query: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            budget_ms: None,
            cause,
            trigger: None,
            attempt: 1,
            parent: None,
            callback_url: None,
            accepted_ms: crate::now_ms(),
            presentation: Presentation::Http,
            client_context: None,
            trace: Some(Trace::start()),
        }
    }
}

/// The body as standard base64 in JSON (bodies are bytes, not text).
/// Bytes as a base64 string in JSON (`#[serde(with = "…")]`).
pub mod body_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(|e| serde::de::Error::custom(format!("body is not valid base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocations_round_trip_through_json_with_any_body() {
        for body in [vec![], vec![0u8], vec![0, 255], vec![1, 2, 3], (0..=255u8).collect::<Vec<_>>()] {
            let mut inv = Invocation::post("f", Cause::Cron, body);
            inv.trigger = Some("every-10s".into());
            let json = serde_json::to_string(&inv).unwrap();
            assert_eq!(serde_json::from_str::<Invocation>(&json).unwrap(), inv);
        }
    }

    #[test]
    fn bad_base64_is_refused() {
        let inv = Invocation::post("f", Cause::Http, b"hi".to_vec());
        let mut v = serde_json::to_value(&inv).unwrap();
        v["body"] = "a$==".into();
        assert!(serde_json::from_value::<Invocation>(v).is_err());
    }

    #[test]
    fn invocations_queued_before_presentation_existed_read_as_http() {
        // An item as the queue stored it before `presentation` and
        // `client_context` were fields.
        let old = r#"{"id":"0123456789abcdef0123456789abcdef","function":"f","method":"POST","path":"/","raw_path":"/",
            "query":"","headers":[],"body":"aGk=","budget_ms":null,"cause":"async","trigger":null,"attempt":1,
            "parent":null,"callback_url":null,"accepted_ms":5}"#;
        let inv: Invocation = serde_json::from_str(old).unwrap();
        assert_eq!(inv.presentation, Presentation::Http);
        assert_eq!(inv.client_context, None);
        assert_eq!(inv.trace, None);
        assert_eq!(inv.body, b"hi");
    }

    #[test]
    fn presentation_and_client_context_round_trip() {
        let mut inv = Invocation::post("f", Cause::Async, b"{}".to_vec());
        inv.presentation = Presentation::Direct;
        inv.client_context = Some("eyJjdXN0b20iOnt9fQ==".into());
        let json = serde_json::to_value(&inv).unwrap();
        assert_eq!(json["presentation"], "direct");
        assert!(json["trace"]["traceparent"].as_str().unwrap().starts_with("00-"));
        assert_eq!(serde_json::from_value::<Invocation>(json).unwrap(), inv);
    }

    #[test]
    fn causes_parse_their_own_names() {
        for c in Cause::ALL {
            assert_eq!(Cause::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(Cause::parse("kafka"), None);
    }
}
