//! W3C Trace Context (`traceparent`, `tracestate`): the trace an invocation
//! belongs to, the span flick opens for it, and the caller's span it
//! continues.
//!
//! A caller's `traceparent` is validated as the W3C recommendation says
//! (<https://www.w3.org/TR/trace-context/>): version `00` is exactly
//! `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all zero; a higher
//! version (not `ff`) is read for those four fields and its tail ignored.
//! Anything else is ignored and flick starts a trace of its own: a bad
//! header never fails a call. flick sends on only what it produced itself
//! (hex it formats from numbers), so nothing a caller wrote travels in a
//! `traceparent`; `tracestate` travels only if it is well-formed.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest `tracestate` kept (the recommendation's 512-character bound).
pub const MAX_TRACESTATE: usize = 512;
/// Most `tracestate` list members (the recommendation's bound).
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The only flag of version 00 (bit 0, `sampled`); the others are zeroed
/// when sending, as the recommendation asks of flags a vendor does not know.
const SAMPLED: u8 = 0x01;

/// One invocation's place in a trace: flick's span for it (`span_id`) in
/// trace `trace_id`, child of the caller's span when the caller sent one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// flick's span for this invocation: the parent id the function and
    /// callbacks are sent.
    pub span_id: u64,
    /// The caller's span (from its `traceparent`), or the span of the
    /// activation that caused this one; `None` when flick started the trace.
    pub parent_span_id: Option<u64>,
    pub flags: u8,
}

/// A trace context with the caller's `tracestate`, as an invocation carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub context: TraceContext,
    pub tracestate: Option<String>,
}

impl Trace {
    /// A new trace: random trace and span ids, no parent, sampled (flick
    /// records every call).
    pub fn start() -> Self {
        Self {
            context: TraceContext {
                trace_id: random_nonzero(),
                span_id: random_nonzero(),
                parent_span_id: None,
                flags: SAMPLED,
            },
            tracestate: None,
        }
    }

    /// The trace a caller's headers ask for: a new span of their trace if
    /// `traceparent` is valid (exactly one value), else a new trace.
    /// `tracestate` is kept only with a valid `traceparent` and when
    /// well-formed (several values join with commas, as the spec allows).
    pub fn from_headers<'a>(
        traceparent: impl IntoIterator<Item = &'a [u8]>,
        tracestate: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        let mut parents = traceparent.into_iter();
        let (Some(first), None) = (parents.next(), parents.next()) else { return Self::start() };
        let Some(parent) = std::str::from_utf8(first).ok().and_then(parse_traceparent) else { return Self::start() };
        let states: Option<Vec<&str>> = tracestate.into_iter().map(|v| std::str::from_utf8(v).ok()).collect();
        let tracestate = states.map(|s| s.join(",")).and_then(|s| check_tracestate(&s));
        Self::continuing(parent, tracestate)
    }

    /// Like [`Trace::from_headers`] for a single optional value (a
    /// CloudEvent's `traceparent` attribute, …).
    pub fn from_values(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(parse_traceparent) {
            Some(p) => Self::continuing(p, tracestate.and_then(check_tracestate)),
            None => Self::start(),
        }
    }

    fn continuing(parent: Parent, tracestate: Option<String>) -> Self {
        Self {
            context: TraceContext {
                trace_id: parent.trace_id,
                span_id: random_nonzero(),
                parent_span_id: Some(parent.span_id),
                flags: parent.flags & SAMPLED,
            },
            tracestate,
        }
    }

    /// A span for a call this one causes (a sequence step, a routed reply
    /// event): same trace, a new span whose parent is this one's.
    pub fn child(&self) -> Self {
        let c = self.context;
        Self {
            context: TraceContext { span_id: random_nonzero(), parent_span_id: Some(c.span_id), ..c },
            tracestate: self.tracestate.clone(),
        }
    }

    /// Another span beside this one (same trace and parent): one event
    /// handed to several functions is one call each.
    pub fn sibling(&self) -> Self {
        Self {
            context: TraceContext { span_id: random_nonzero(), ..self.context },
            tracestate: self.tracestate.clone(),
        }
    }

    /// The `traceparent` to send downstream: flick's span as the parent.
    pub fn traceparent(&self) -> String {
        self.context.traceparent()
    }
}

impl TraceContext {
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id_hex(), span_hex(self.span_id), self.flags)
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        span_hex(self.span_id)
    }

    pub fn parent_span_id_hex(&self) -> Option<String> {
        self.parent_span_id.map(span_hex)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

fn span_hex(id: u64) -> String {
    format!("{id:016x}")
}

fn random_nonzero<T: FromBytes>() -> T {
    loop {
        let v = T::random();
        if !v.is_zero() {
            return v;
        }
    }
}

trait FromBytes: Sized {
    fn random() -> Self;
    fn is_zero(&self) -> bool;
}

impl FromBytes for u128 {
    fn random() -> Self {
        let mut b = [0u8; 16];
        // A failing OS RNG is not recoverable and not worth an error path.
        getrandom::fill(&mut b).expect("operating system random source");
        u128::from_be_bytes(b)
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

impl FromBytes for u64 {
    fn random() -> Self {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("operating system random source");
        u64::from_be_bytes(b)
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

/// The fields of a valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// Lowercase hex of exactly `n` digits.
fn hex_field(s: &str, n: usize) -> Option<u128> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
}

/// Parses a `traceparent` as the W3C recommendation (level 1, §3.2) says;
/// `None` for anything it says to ignore.
fn parse_traceparent(value: &str) -> Option<Parent> {
    // Optional whitespace around a header value is HTTP's, not the field's.
    let v = value.trim_matches([' ', '\t']);
    let version = hex_field(v.get(..2)?, 2)?;
    if version == 0xff || v.as_bytes().get(2) != Some(&b'-') {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version at least that,
    // with anything past them introduced by `-`.
    if (version == 0 && v.len() != 55) || v.len() < 55 || (v.len() > 55 && v.as_bytes()[55] != b'-') {
        return None;
    }
    let b = v.as_bytes();
    if b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = hex_field(&v[3..35], 32)?;
    let span_id = hex_field(&v[36..52], 16)? as u64;
    let flags = hex_field(&v[53..55], 2)? as u8;
    (trace_id != 0 && span_id != 0).then_some(Parent { trace_id, span_id, flags })
}

/// A `tracestate` worth passing on: printable ASCII, within the size and
/// member bounds, each member `key=value` (§3.3); `None` otherwise or empty.
fn check_tracestate(value: &str) -> Option<String> {
    if value.len() > MAX_TRACESTATE {
        return None;
    }
    let mut members = 0;
    for member in value.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty()) {
        members += 1;
        let (key, val) = member.split_once('=')?;
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/@".contains(&c));
        // value: printable ASCII except `,` and `=`, not ending in a space.
        let val_ok = !val.is_empty()
            && val.len() <= 256
            && val.bytes().all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
            && !val.ends_with(' ');
        if !key_ok || !val_ok {
            return None;
        }
    }
    (members > 0 && members <= MAX_TRACESTATE_MEMBERS).then(|| value.trim_matches([' ', '\t']).to_string())
}

/// How a trace is stored with an invocation (the queue's JSON): the
/// `traceparent` flick sends on, the caller's span, and `tracestate`.
#[derive(Serialize, Deserialize)]
struct Stored {
    traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
}

impl Serialize for Trace {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            traceparent: self.traceparent(),
            parent_span_id: self.context.parent_span_id_hex(),
            tracestate: self.tracestate.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Trace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let stored = Stored::deserialize(d)?;
        let p = parse_traceparent(&stored.traceparent).ok_or_else(|| D::Error::custom("malformed traceparent"))?;
        let parent_span_id = match stored.parent_span_id {
            None => None,
            Some(h) => Some(hex_field(&h, 16).ok_or_else(|| D::Error::custom("malformed parent_span_id"))? as u64),
        };
        Ok(Self {
            context: TraceContext { trace_id: p.trace_id, span_id: p.span_id, parent_span_id, flags: p.flags },
            tracestate: stored.tracestate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn from(tp: &str) -> Trace {
        Trace::from_headers([tp.as_bytes()], [])
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let t = from(VALID);
        assert_eq!(t.context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.context.parent_span_id_hex().as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.context.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(t.context.flags, 1);
        let sent = t.traceparent();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert!(sent.ends_with("-01"));
        assert_eq!(parse_traceparent(&sent).unwrap().span_id, t.context.span_id);
        // Unsampled stays unsampled; unknown flags are not sent on.
        assert_eq!(from(&VALID.replace("-01", "-00")).context.flags, 0);
        assert_eq!(from(&VALID.replace("-01", "-ff")).context.flags, 1);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        let bad = [
            "",
            "00",
            &VALID[..54],
            &format!("{VALID}0"),
            &format!("{VALID}-extra"), // version 00 has no tail
            &VALID.to_uppercase(),
            &VALID.replace("4bf92f", "4BF92F"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            &VALID.replacen("00-", "ff-", 1),
            &VALID.replace('-', "_"),
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &"0".repeat(100_000),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-injected: 1",
        ];
        for tp in bad {
            let t = from(tp);
            assert_eq!(t.context.parent_span_id, None, "{tp:?} was accepted");
            assert_ne!(t.context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "{tp:?}");
            assert_ne!(t.context.trace_id, 0);
        }
        // Two traceparent headers: which is meant is unknown.
        let t = Trace::from_headers([VALID.as_bytes(), VALID.as_bytes()], []);
        assert_eq!(t.context.parent_span_id, None);
        // Not utf-8.
        assert_eq!(Trace::from_headers([&b"00-\xff"[..]], []).context.parent_span_id, None);
    }

    #[test]
    fn a_later_version_is_read_for_its_known_fields() {
        let v1 = VALID.replacen("00-", "01-", 1);
        assert!(from(&v1).context.parent_span_id.is_some());
        assert!(from(&format!("{v1}-what-comes-next")).context.parent_span_id.is_some());
        assert!(from(&format!("{v1}x")).context.parent_span_id.is_none());
        // What is sent on is version 00, whatever came in.
        assert!(from(&v1).traceparent().starts_with("00-"));
    }

    #[test]
    fn tracestate_is_kept_only_when_well_formed_and_with_a_valid_parent() {
        let t = Trace::from_headers([VALID.as_bytes()], [&b"congo=t61rcWkgMzE"[..], b"rojo=00f067aa0ba902b7"]);
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        for bad in ["novalue", "=x", "Upper=1", "k=v\r\nx: y", "k=a=b", &format!("k={}", "v".repeat(600))] {
            let t = Trace::from_headers([VALID.as_bytes()], [bad.as_bytes()]);
            assert_eq!(t.tracestate, None, "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(Trace::from_values(Some(VALID), Some(&many.join(","))).tracestate, None);
        assert_eq!(Trace::from_headers([&b"bad"[..]], [&b"k=v"[..]]).tracestate, None);
    }

    #[test]
    fn children_share_the_trace_with_a_new_span() {
        let root = Trace::start();
        assert_eq!(root.context.parent_span_id, None);
        let child = root.child();
        assert_eq!(child.context.trace_id, root.context.trace_id);
        assert_eq!(child.context.parent_span_id, Some(root.context.span_id));
        assert_ne!(child.context.span_id, root.context.span_id);
        assert_ne!(Trace::start().context.trace_id, root.context.trace_id);
        let sib = child.sibling();
        assert_eq!(
            (sib.context.trace_id, sib.context.parent_span_id),
            (child.context.trace_id, child.context.parent_span_id)
        );
        assert_ne!(sib.context.span_id, child.context.span_id);
    }

    #[test]
    fn traces_round_trip_through_json() {
        let t = Trace::from_headers([VALID.as_bytes()], [&b"a=b"[..]]);
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["parent_span_id"], "00f067aa0ba902b7");
        assert_eq!(serde_json::from_value::<Trace>(json).unwrap(), t);
        let root = Trace::start();
        assert_eq!(serde_json::from_str::<Trace>(&serde_json::to_string(&root).unwrap()).unwrap(), root);
        assert!(serde_json::from_str::<Trace>(r#"{"traceparent":"junk"}"#).is_err());
    }
}
