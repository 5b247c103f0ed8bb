//! CloudEvents 1.0: the event, its attribute rules, and its HTTP content
//! modes (binary, structured JSON, batched JSON), as pure functions.
//!
//! Both `POST /events` (the API, parsing what callers send) and the
//! platform (parsing the reply event a function answers with, rendering an
//! event into the binary-mode request a function receives) use this module,
//! so it does no I/O and knows nothing of HTTP libraries: headers are
//! `(name, value)` pairs.
//!
//! Written with serde instead of the `cloudevents-sdk` crate: the SDK's HTTP
//! integrations pin old `http`/`reqwest`/`async-nats` versions, its bare
//! core would still need the binary-mode header rules written here, and its
//! errors do not name the attribute at fault, which a 400 must.
//!
//! Every attribute is kept as its canonical string (how binary mode carries
//! it, and what trigger filters compare against); `data` as the bytes a
//! binary-mode body would hold.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only `specversion` flick accepts.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of one event in structured mode (JSON format).
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";
/// Content type of a batch of events (JSON array of structured events).
pub const BATCH_JSON: &str = "application/cloudevents-batch+json";
/// flick's extension attribute counting how many reply hops produced an
/// event: an event posted to `/events` has 0 (or what its sender set), a
/// reply to it 1, and so on; routing stops at a limit, so two functions
/// answering each other cannot loop for ever.
pub const HOPS: &str = "flickhops";
/// Longest attribute name accepted. The spec recommends at most 20
/// characters (and SDKs may drop longer ones); flick accepts longer names
/// up to this bound rather than refuse a producer that exceeds a SHOULD.
pub const MAX_NAME_LEN: usize = 64;

const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];

/// One event: its context attributes and its data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Every attribute present (required, optional, extensions) by name, in
    /// canonical string form (booleans `true`/`false`, integers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// The data as a binary-mode body carries it: JSON text for JSON data,
    /// the decoded bytes of `data_base64`, the string itself otherwise.
    pub data: Option<Vec<u8>>,
}

/// A malformed event: which event of a batch, which attribute, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct EventError {
    /// Position in a batch (batched mode only).
    pub index: Option<usize>,
    /// The attribute at fault, when one is.
    pub attribute: Option<String>,
    pub message: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.index {
            write!(f, "event {i} of the batch: ")?;
        }
        if let Some(a) = &self.attribute {
            write!(f, "attribute `{a}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl EventError {
    fn attr(name: &str, message: impl Into<String>) -> Self {
        Self { index: None, attribute: Some(name.to_string()), message: message.into() }
    }

    fn other(message: impl Into<String>) -> Self {
        Self { index: None, attribute: None, message: message.into() }
    }

    fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}

/// How an HTTP message carries its event(s), from its `Content-Type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Attributes in `ce-*` headers, the body is the data.
    Binary,
    /// One event as a JSON object.
    Structured,
    /// A JSON array of structured events.
    Batch,
}

/// The content mode of a message with this `Content-Type` (the spec's
/// prefix rule: `application/cloudevents-batch` → batched,
/// `application/cloudevents` → structured, anything else → binary). Only
/// the JSON event format is supported; another one is an error.
pub fn mode(content_type: Option<&str>) -> Result<Mode, EventError> {
    let Some(ct) = content_type else { return Ok(Mode::Binary) };
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (mode, expected) = if media.starts_with("application/cloudevents-batch") {
        (Mode::Batch, BATCH_JSON)
    } else if media.starts_with("application/cloudevents") {
        (Mode::Structured, STRUCTURED_JSON)
    } else {
        return Ok(Mode::Binary);
    };
    if media != expected {
        return Err(EventError::other(format!(
            "content type `{media}` is an event format flick does not read; use `{expected}`"
        )));
    }
    Ok(mode)
}

/// The events of an HTTP message in any mode: one for binary and
/// structured mode, any number (perhaps none) for a batch.
pub fn from_http<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])> + Clone,
    body: &[u8],
) -> Result<Vec<CloudEvent>, EventError> {
    let content_type = header(headers.clone(), "content-type");
    match mode(content_type.as_deref())? {
        Mode::Binary => Ok(vec![from_binary(headers, body)?]),
        Mode::Structured => Ok(vec![from_structured(body)?]),
        Mode::Batch => from_batch(body),
    }
}

/// The event a function answered with, if it answered with one: a
/// structured-mode body, or binary mode (a `ce-specversion` header). A
/// batch is not a reply. `Ok(None)` for an ordinary response.
pub fn reply_from_response<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])> + Clone,
    body: &[u8],
) -> Result<Option<CloudEvent>, EventError> {
    let content_type = header(headers.clone(), "content-type");
    match mode(content_type.as_deref())? {
        Mode::Structured => from_structured(body).map(Some),
        Mode::Batch => Err(EventError::other("a batch of events is not a reply; answer with one event")),
        Mode::Binary if header(headers.clone(), "ce-specversion").is_some() => from_binary(headers, body).map(Some),
        Mode::Binary => Ok(None),
    }
}

/// The value of header `name` (any case), lossily decoded.
fn header<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>, name: &str) -> Option<String> {
    headers
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Binary mode: attributes from `ce-*` headers (percent-decoded, optionally
/// quoted), `datacontenttype` from `Content-Type`, data = the body.
pub fn from_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> Result<CloudEvent, EventError> {
    let mut attributes = BTreeMap::new();
    let mut content_type = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(String::from_utf8_lossy(value).trim().to_string());
            continue;
        }
        let Some(attr) = name.get(..3).filter(|p| p.eq_ignore_ascii_case("ce-")).map(|_| &name[3..]) else {
            continue;
        };
        let attr = attr.to_ascii_lowercase();
        check_name(&attr)?;
        let text = std::str::from_utf8(value)
            .ok()
            .filter(|v| v.chars().all(|c| c == '\t' || (' '..='~').contains(&c)))
            .ok_or_else(|| {
                EventError::attr(&attr, format!("header `ce-{attr}` must be ASCII (percent-encode other characters)"))
            })?;
        let mut text = text.trim_matches([' ', '\t']);
        // The binding lets senders quote values.
        if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
            text = &text[1..text.len() - 1];
        }
        let decoded = percent_decode_str(text)
            .decode_utf8()
            .map_err(|_| EventError::attr(&attr, "percent-encoded value is not UTF-8"))?
            .into_owned();
        if attributes.insert(attr.clone(), decoded).is_some() {
            return Err(EventError::attr(&attr, format!("header `ce-{attr}` appears more than once")));
        }
    }
    if attributes.is_empty() {
        return Err(EventError::attr(
            "specversion",
            "missing: a binary-mode event needs `ce-specversion`, `ce-id`, `ce-source` and `ce-type` headers \
             (or send a structured event as `application/cloudevents+json`)",
        ));
    }
    // The spec says binary mode carries it as Content-Type only; a
    // `ce-datacontenttype` is tolerated, Content-Type wins.
    if let Some(ct) = content_type.filter(|c| !c.is_empty()) {
        attributes.insert("datacontenttype".into(), ct);
    }
    let event = CloudEvent { attributes, data: (!body.is_empty()).then(|| body.to_vec()) };
    event.validate()?;
    Ok(event)
}

/// Structured mode: one JSON object.
pub fn from_structured(body: &[u8]) -> Result<CloudEvent, EventError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EventError::other(format!("the body is not valid JSON: {e}")))?;
    from_json(value)
}

/// Batched mode: a JSON array of structured events (empty is allowed).
/// An error names the index of the first bad event.
pub fn from_batch(body: &[u8]) -> Result<Vec<CloudEvent>, EventError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EventError::other(format!("the body is not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(EventError::other(format!("a batch must be a JSON array of events, not {}", kind(&value))));
    };
    items.into_iter().enumerate().map(|(i, v)| from_json(v).map_err(|e| e.at(i))).collect()
}

/// One event in the JSON format.
pub fn from_json(value: Value) -> Result<CloudEvent, EventError> {
    let Value::Object(map) = value else {
        return Err(EventError::other(format!("an event must be a JSON object, not {}", kind(&value))));
    };
    let mut attributes = BTreeMap::new();
    let (mut data, mut data_base64) = (None, None);
    for (name, value) in map {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => {
                check_name(&name)?;
                let text = match value {
                    // A null attribute is an absent one (JSON format §2.4).
                    Value::Null => continue,
                    Value::String(s) => s,
                    Value::Bool(b) if !is_string_typed(&name) => b.to_string(),
                    Value::Number(n) if !is_string_typed(&name) => match n.as_i64() {
                        Some(i) if i32::try_from(i).is_ok() => i.to_string(),
                        _ => {
                            return Err(EventError::attr(
                                &name,
                                format!("{n} is not a CloudEvents Integer (a whole number within 32 bits)"),
                            ));
                        }
                    },
                    other => {
                        let allowed = if is_string_typed(&name) { "a string" } else { "a string, integer or boolean" };
                        return Err(EventError::attr(&name, format!("must be {allowed}, not {}", kind(&other))));
                    }
                };
                attributes.insert(name, text);
            }
        }
    }
    let data = match (data.filter(|d| !d.is_null()), data_base64.filter(|d| !d.is_null())) {
        (Some(_), Some(_)) => {
            return Err(EventError::attr("data_base64", "an event has `data` or `data_base64`, not both"));
        }
        (None, Some(Value::String(b64))) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| EventError::attr("data_base64", format!("not valid base64: {e}")))?,
        ),
        (None, Some(other)) => {
            return Err(EventError::attr("data_base64", format!("must be a base64 string, not {}", kind(&other))));
        }
        (Some(data), None) => {
            let ct = attributes.get("datacontenttype").cloned();
            match (data, ct) {
                // Text data of a non-JSON content type travels as the string itself.
                (Value::String(s), Some(ct)) if !is_json(&ct) => Some(s.into_bytes()),
                (data, ct) => {
                    // No content type: the JSON format says the data is JSON.
                    if ct.is_none() {
                        attributes.insert("datacontenttype".into(), "application/json".into());
                    }
                    Some(serde_json::to_vec(&data).unwrap_or_default())
                }
            }
        }
        (None, None) => None,
    };
    let event = CloudEvent { attributes, data };
    event.validate()?;
    Ok(event)
}

/// Is this media type JSON (`application/json`, `*/json`, `*+json`)?
pub fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media.ends_with("/json") || media.ends_with("+json")
}

/// The spec's attributes whose type is String, URI, URI-reference or
/// Timestamp: a JSON number or boolean is not one of them.
fn is_string_typed(name: &str) -> bool {
    matches!(name, "specversion" | "id" | "source" | "type" | "datacontenttype" | "dataschema" | "subject" | "time")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Attribute names: lowercase ASCII letters and digits only (spec §3.1.1).
fn check_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::attr(name, "attribute names must not be empty"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
        return Err(EventError::attr(
            name,
            format!("attribute names use only lowercase letters a-z and digits 0-9, not {c:?}"),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(EventError::attr(name, format!("attribute names are at most {MAX_NAME_LEN} characters")));
    }
    Ok(())
}

impl CloudEvent {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    pub fn id(&self) -> &str {
        self.get("id").unwrap_or("")
    }

    pub fn source(&self) -> &str {
        self.get("source").unwrap_or("")
    }

    pub fn ty(&self) -> &str {
        self.get("type").unwrap_or("")
    }

    /// The event's reply-hop count ([`HOPS`]); 0 when absent.
    pub fn hops(&self) -> u32 {
        self.get(HOPS).and_then(|h| h.parse().ok()).unwrap_or(0)
    }

    pub fn set_hops(&mut self, hops: u32) {
        self.attributes.insert(HOPS.into(), hops.to_string());
    }

    /// Checks the spec's rules for every attribute; the error names the
    /// first attribute that breaks one.
    pub fn validate(&self) -> Result<(), EventError> {
        for name in REQUIRED {
            match self.get(name) {
                None => return Err(EventError::attr(name, "missing (a required attribute)")),
                Some("") => return Err(EventError::attr(name, "must not be empty")),
                Some(_) => {}
            }
        }
        let version = self.get("specversion").unwrap_or("");
        if version != SPEC_VERSION {
            return Err(EventError::attr(
                "specversion",
                format!("is `{version}`; flick accepts CloudEvents {SPEC_VERSION} only"),
            ));
        }
        for (name, value) in &self.attributes {
            check_name(name)?;
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(EventError::attr(name, format!("contains the control character {c:?}")));
            }
            match name.as_str() {
                "source" => check_uri_reference(value).map_err(|m| EventError::attr(name, m))?,
                "dataschema" => check_uri(value).map_err(|m| EventError::attr(name, m))?,
                "time" => {
                    chrono::DateTime::parse_from_rfc3339(value)
                        .map_err(|e| EventError::attr(name, format!("`{value}` is not an RFC 3339 timestamp ({e})")))?;
                }
                "datacontenttype" | "subject" if value.is_empty() => {
                    return Err(EventError::attr(name, "must not be empty when present"));
                }
                HOPS if value.parse::<u32>().is_err() => {
                    return Err(EventError::attr(name, "flick's hop count must be a non-negative integer"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Does every attribute of `filter` equal this event's (exact match,
    /// as Knative Eventing trigger filters)? An empty filter matches all.
    pub fn matches(&self, filter: &BTreeMap<String, String>) -> bool {
        filter.iter().all(|(k, v)| self.get(k) == Some(v.as_str()))
    }

    /// The event as a binary-mode message: `ce-*` headers (values
    /// percent-encoded as the HTTP binding requires), `Content-Type` from
    /// `datacontenttype`, and the data as the body.
    pub fn to_binary(&self) -> (Vec<(String, String)>, Vec<u8>) {
        let mut headers = Vec::with_capacity(self.attributes.len());
        for (name, value) in &self.attributes {
            if name == "datacontenttype" {
                headers.push(("content-type".to_string(), value.clone()));
            } else {
                headers.push((format!("ce-{name}"), utf8_percent_encode(value, HEADER_ESCAPES).to_string()));
            }
        }
        (headers, self.data.clone().unwrap_or_default())
    }

    /// The event in the JSON format (structured mode): JSON data inline,
    /// text data as a string, anything else as `data_base64`.
    pub fn to_json(&self) -> Value {
        let mut map: serde_json::Map<String, Value> =
            self.attributes.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        if let Some(data) = &self.data {
            let ct = self.get("datacontenttype");
            let json = ct.is_none_or(is_json).then(|| serde_json::from_slice::<Value>(data).ok()).flatten();
            match (json, std::str::from_utf8(data)) {
                (Some(v), _) => map.insert("data".into(), v),
                (None, Ok(text)) if ct.is_some_and(|c| c.starts_with("text/")) => {
                    map.insert("data".into(), Value::String(text.into()))
                }
                _ => map.insert(
                    "data_base64".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
                ),
            };
        }
        Value::Object(map)
    }
}

/// What binary mode percent-encodes in header values: controls, space,
/// `"`, `%` and (always, by `utf8_percent_encode`) everything non-ASCII.
const HEADER_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The characters RFC 3986 allows in a URI (reserved, unreserved, `%`).
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// An RFC 3986 URI-reference: only URI characters, `%` only before two hex
/// digits, at most one `#`.
fn check_uri_reference(s: &str) -> Result<(), String> {
    if let Some(c) = s.chars().find(|c| !is_uri_char(*c)) {
        return Err(format!("`{s}` is not a URI-reference: {c:?} must be percent-encoded"));
    }
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' && !(i + 2 < bytes.len() && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit())
        {
            return Err(format!("`{s}` is not a URI-reference: `%` must start a %XX escape"));
        }
    }
    if s.matches('#').count() > 1 {
        return Err(format!("`{s}` is not a URI-reference: more than one `#`"));
    }
    Ok(())
}

/// An absolute RFC 3986 URI: a URI-reference with a scheme.
fn check_uri(s: &str) -> Result<(), String> {
    check_uri_reference(s)?;
    let scheme = s.split(':').next().unwrap_or("");
    let scheme_ok = s.contains(':')
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(format!("`{s}` is not an absolute URI (it needs a scheme, e.g. `https:`)"));
    }
    Ok(())
}

/// The targets whose filter the event matches, in the given order: the
/// routing rule of `POST /events` and of reply events.
pub fn route<'a, T: Clone + 'a>(
    event: &CloudEvent,
    targets: impl IntoIterator<Item = &'a (T, BTreeMap<String, String>)>,
) -> Vec<T> {
    targets.into_iter().filter(|(_, filter)| event.matches(filter)).map(|(t, _)| t.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    const BASIC: [(&str, &str); 4] =
        [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/orders"), ("ce-type", "order.created")];

    #[test]
    fn binary_mode_reads_headers_and_body() {
        let mut pairs = BASIC.to_vec();
        pairs.extend([("Content-Type", "application/json"), ("CE-Region", "%22eu%20west%22"), ("host", "x")]);
        let ev = from_binary(h(&pairs), b"{\"n\":1}").unwrap();
        assert_eq!(ev.get("region"), Some("\"eu west\""));
        assert_eq!(ev.get("datacontenttype"), Some("application/json"));
        assert_eq!(ev.data.as_deref(), Some(&b"{\"n\":1}"[..]));
        assert_eq!((ev.id(), ev.source(), ev.ty()), ("1", "/orders", "order.created"));
        assert_eq!(ev.get("host"), None);
        // Quoted values are accepted, lowercase hex too.
        let mut pairs = BASIC.to_vec();
        pairs.push(("ce-subject", "\"a%c3%a9\""));
        assert_eq!(from_binary(h(&pairs), b"").unwrap().get("subject"), Some("aé"));
    }

    #[test]
    fn binary_round_trips_through_rendering() {
        let mut pairs = BASIC.to_vec();
        pairs.extend([("ce-subject", "a b\"c%d é"), ("content-type", "text/plain")]);
        let encoded: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| {
                let v = if n.starts_with("ce-") {
                    utf8_percent_encode(v, HEADER_ESCAPES).to_string()
                } else {
                    v.to_string()
                };
                (n.to_string(), v)
            })
            .collect();
        let ev = from_binary(encoded.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), b"hi").unwrap();
        assert_eq!(ev.get("subject"), Some("a b\"c%d é"));
        let (headers, body) = ev.to_binary();
        assert!(headers.iter().all(|(_, v)| v.chars().all(|c| ('!'..='~').contains(&c) || c == ' ')));
        let again = from_binary(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), &body).unwrap();
        assert_eq!(again, ev);
    }

    #[test]
    fn missing_and_bad_attributes_are_named() {
        for (drop, attr) in
            [("ce-id", "id"), ("ce-source", "source"), ("ce-type", "type"), ("ce-specversion", "specversion")]
        {
            let pairs: Vec<_> = BASIC.iter().copied().filter(|(n, _)| *n != drop).collect();
            let err = from_binary(h(&pairs), b"").unwrap_err();
            assert_eq!(err.attribute.as_deref(), Some(attr), "{err}");
        }
        let cases = [
            ("ce-specversion", "0.3", "specversion"),
            ("ce-id", "", "id"),
            ("ce-time", "yesterday", "time"),
            ("ce-time", "2024-13-01T00:00:00Z", "time"),
            ("ce-source", "has space%20ok but not", "source"),
            ("ce-dataschema", "/relative", "dataschema"),
            ("ce-flickhops", "-1", "flickhops"),
            ("ce-Bad_Name", "x", "bad_name"),
            ("ce-subject", "%0a", "subject"),
        ];
        for (name, value, attr) in cases {
            let mut pairs: Vec<_> = BASIC.iter().copied().filter(|(n, _)| *n != name).collect();
            pairs.push((name, value));
            let err = from_binary(h(&pairs), b"").unwrap_err();
            assert_eq!(err.attribute.as_deref(), Some(attr), "{name}={value}: {err}");
        }
        let mut pairs = BASIC.to_vec();
        pairs.push(("ce-time", "2024-05-01T10:00:00.123+02:00"));
        assert!(from_binary(h(&pairs), b"").is_ok());
        assert!(
            from_binary(h(&[("content-type", "text/plain")]), b"x").unwrap_err().to_string().contains("specversion")
        );
    }

    #[test]
    fn structured_mode_reads_json_data_and_base64() {
        let ev = from_structured(
            br#"{"specversion":"1.0","id":"a","source":"urn:x","type":"t","data":{"n":1},"count":3,"ok":true,"gone":null}"#,
        )
        .unwrap();
        assert_eq!(ev.get("datacontenttype"), Some("application/json"), "JSON by default");
        assert_eq!(serde_json::from_slice::<Value>(ev.data.as_ref().unwrap()).unwrap(), serde_json::json!({"n":1}));
        assert_eq!((ev.get("count"), ev.get("ok"), ev.get("gone")), (Some("3"), Some("true"), None));
        let ev = from_structured(
            br#"{"specversion":"1.0","id":"a","source":"s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
        )
        .unwrap();
        assert_eq!(ev.data.as_deref(), Some(&b"hi"[..]));
        let ev =
            from_structured(br#"{"specversion":"1.0","id":"a","source":"s","type":"t","data_base64":"AAH/"}"#).unwrap();
        assert_eq!(ev.data.as_deref(), Some(&[0u8, 1, 255][..]));
        assert_eq!(from_json(ev.to_json()).unwrap(), ev);
    }

    #[test]
    fn structured_mode_errors_name_the_attribute() {
        let base = serde_json::json!({"specversion":"1.0","id":"a","source":"s","type":"t"});
        let cases = [
            ("id", serde_json::json!(7), "id"),
            ("specversion", serde_json::json!("2.0"), "specversion"),
            ("time", serde_json::json!("2024-01-01 10:00"), "time"),
            ("ext", serde_json::json!({"a":1}), "ext"),
            ("ext", serde_json::json!(1.5), "ext"),
            ("ext", serde_json::json!(1i64 << 40), "ext"),
            ("Ext", serde_json::json!("x"), "Ext"),
            ("data_base64", serde_json::json!("***"), "data_base64"),
        ];
        for (key, value, attr) in cases {
            let mut v = base.clone();
            v[key] = value;
            let err = from_json(v).unwrap_err();
            assert_eq!(err.attribute.as_deref(), Some(attr), "{key}: {err}");
        }
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove("source");
        assert_eq!(from_json(v).unwrap_err().attribute.as_deref(), Some("source"));
        assert!(from_structured(b"{not json").unwrap_err().to_string().contains("not valid JSON"));
        assert!(from_structured(b"[]").unwrap_err().to_string().contains("JSON object"));
    }

    #[test]
    fn batches_name_the_index() {
        let ok = r#"{"specversion":"1.0","id":"a","source":"s","type":"t"}"#;
        assert_eq!(from_batch(format!("[{ok},{ok}]").as_bytes()).unwrap().len(), 2);
        assert!(from_batch(b"[]").unwrap().is_empty());
        let err = from_batch(format!("[{ok}, 5]").as_bytes()).unwrap_err();
        assert_eq!(err.index, Some(1), "{err}");
        assert!(err.to_string().starts_with("event 1 of the batch"), "{err}");
        let err = from_batch(format!("[{ok}, {{\"specversion\":\"1.0\",\"id\":\"b\",\"type\":\"t\"}}]").as_bytes())
            .unwrap_err();
        assert_eq!((err.index, err.attribute.as_deref()), (Some(1), Some("source")));
        assert!(from_batch(ok.as_bytes()).is_err(), "an object is not a batch");
    }

    #[test]
    fn modes_follow_the_content_type() {
        assert_eq!(mode(None).unwrap(), Mode::Binary);
        assert_eq!(mode(Some("application/json")).unwrap(), Mode::Binary);
        assert_eq!(mode(Some("Application/CloudEvents+JSON; charset=UTF-8")).unwrap(), Mode::Structured);
        assert_eq!(mode(Some("application/cloudevents-batch+json")).unwrap(), Mode::Batch);
        assert!(mode(Some("application/cloudevents+xml")).is_err());
    }

    #[test]
    fn replies_are_recognised_in_both_modes_only_when_present() {
        assert_eq!(reply_from_response(h(&[("content-type", "application/json")]), b"{}").unwrap(), None);
        let mut pairs = BASIC.to_vec();
        pairs.push(("content-type", "application/json"));
        let ev = reply_from_response(h(&pairs), b"{}").unwrap().unwrap();
        assert_eq!(ev.ty(), "order.created");
        let body = br#"{"specversion":"1.0","id":"r","source":"s","type":"reply"}"#;
        let ev = reply_from_response(h(&[("content-type", STRUCTURED_JSON)]), body).unwrap().unwrap();
        assert_eq!(ev.id(), "r");
        assert!(reply_from_response(h(&[("content-type", STRUCTURED_JSON)]), b"{}").is_err());
    }

    #[test]
    fn filters_match_exactly_and_route_in_order() {
        let ev = from_binary(h(&BASIC), b"").unwrap();
        let f = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let targets = vec![
            ("all", f(&[])),
            ("by-type", f(&[("type", "order.created")])),
            ("by-both", f(&[("type", "order.created"), ("source", "/orders")])),
            ("other-type", f(&[("type", "order.deleted")])),
            ("prefix-is-not-a-match", f(&[("type", "order")])),
            ("missing-ext", f(&[("region", "eu")])),
        ];
        assert_eq!(route(&ev, &targets), vec!["all", "by-type", "by-both"]);
        let mut ev = ev;
        ev.attributes.insert("region".into(), "eu".into());
        assert!(route(&ev, &targets).contains(&"missing-ext"));
        ev.set_hops(3);
        assert_eq!(ev.hops(), 3);
    }
}
