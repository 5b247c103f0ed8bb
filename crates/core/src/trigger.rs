//! Triggers: the `[[triggers]]` of a manifest, the event sources that invoke
//! a function without a waiting caller (cron schedules, MQTT topics, NATS
//! subjects, CloudEvents posted to `/events`).
//!
//! This module only parses and validates them (at deploy, with the line of
//! the bad key); running them is `flick-triggers`' job, routing CloudEvents
//! the API's. Every rule a source would trip over later (a cron expression
//! that does not parse, a zone that does not exist, a `#` in the middle of
//! an MQTT filter, a space in a NATS subject) is checked here, so a deploy
//! that succeeds has triggers that can at least be started.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::name::FunctionName;

/// One trigger of a function: its name (unique within the function) and
/// what fires it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSpec {
    /// `[a-z0-9-]`, as function names; defaults to `<type>-<n>` (the n-th
    /// trigger of that type, counted from 1), so adding a trigger of another
    /// type never renames one.
    pub name: String,
    #[serde(flatten)]
    pub kind: TriggerKind,
}

/// What fires a trigger, by its manifest `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TriggerKind {
    /// A schedule with seconds (`*/10 * * * * *`) in a time zone.
    Cron {
        schedule: String,
        /// An IANA zone name (`Europe/Rome`); `UTC` by default.
        timezone: String,
    },
    /// An MQTT subscription (topic filter with `+`/`#` wildcards).
    Mqtt { url: String, topic: String, qos: u8 },
    /// A NATS subject; with `stream` and `consumer` a JetStream durable
    /// pull consumer on that stream, filtered by the subject.
    Nats {
        url: String,
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
    },
    /// CloudEvents posted to `/events` whose attributes equal every entry
    /// of the filter (exact match, as Knative's trigger filters).
    #[serde(rename = "cloudevents")]
    CloudEvents { filter: BTreeMap<String, String> },
}

impl TriggerKind {
    /// The manifest's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Cron { .. } => "cron",
            Self::Mqtt { .. } => "mqtt",
            Self::Nats { .. } => "nats",
            Self::CloudEvents { .. } => "cloudevents",
        }
    }
}

impl TriggerSpec {
    /// What the trigger listens to, in one line (for listings). Credentials
    /// in a broker URL are not shown.
    pub fn target(&self) -> String {
        match &self.kind {
            TriggerKind::Cron { schedule, timezone } => format!("{schedule} ({timezone})"),
            TriggerKind::Mqtt { url, topic, qos } => format!("{} {topic} qos{qos}", redact_url(url)),
            TriggerKind::Nats { url, subject, stream, consumer } => match (stream, consumer) {
                (Some(s), Some(c)) => format!("{} {subject} stream {s} consumer {c}", redact_url(url)),
                _ => format!("{} {subject}", redact_url(url)),
            },
            TriggerKind::CloudEvents { filter } => {
                filter.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            }
        }
    }
}

impl fmt::Display for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.kind.type_name())
    }
}

/// `url` without its user info (`mqtt://user:secret@host` → `mqtt://host`).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The highest MQTT QoS flick subscribes with: 1 (at least once, acked to
/// the broker after the invocation is durably queued).
pub const MAX_MQTT_QOS: u8 = 1;

/// Longest MQTT topic filter and NATS subject accepted (bytes).
const MAX_TOPIC: usize = 1024;

/// `[[triggers]]` as written. One flat table of every key any type takes;
/// which keys a type takes is checked after (with a message naming the type).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    qos: Option<Spanned<i64>>,
    subject: Option<Spanned<String>>,
    stream: Option<Spanned<String>>,
    consumer: Option<Spanned<String>>,
    filter: Option<Spanned<BTreeMap<String, String>>>,
}

/// A trigger error: the key, the byte offset of its value in the manifest
/// (for the line) and what is wrong.
#[derive(Debug)]
pub(crate) struct TriggerError {
    pub key: String,
    pub at: usize,
    pub message: String,
}

/// Checks every trigger and fills in default names and zones.
pub(crate) fn parse_triggers(raw: Vec<Spanned<RawTrigger>>) -> Result<Vec<TriggerSpec>, TriggerError> {
    let mut out: Vec<TriggerSpec> = Vec::with_capacity(raw.len());
    let mut per_type: BTreeMap<&'static str, usize> = BTreeMap::new();
    for spanned in raw {
        let table_at = spanned.span().start;
        let raw = spanned.into_inner();
        let (kind, name_at) = one(raw, table_at, &mut per_type)?;
        if out.iter().any(|t| t.name == kind.name) {
            return Err(TriggerError {
                key: "triggers.name".into(),
                at: name_at,
                message: format!("two triggers are named `{}`; give each its own `name`", kind.name),
            });
        }
        out.push(kind);
    }
    Ok(out)
}

fn one(
    raw: RawTrigger,
    table_at: usize,
    per_type: &mut BTreeMap<&'static str, usize>,
) -> Result<(TriggerSpec, usize), TriggerError> {
    let type_at = raw.kind.span().start;
    let type_name: &'static str = match raw.kind.get_ref().as_str() {
        "cron" => "cron",
        "mqtt" => "mqtt",
        "nats" => "nats",
        "cloudevents" => "cloudevents",
        other => {
            return Err(TriggerError {
                key: "triggers.type".into(),
                at: type_at,
                message: format!("`{other}` is not a trigger type (use cron, mqtt, nats or cloudevents)"),
            });
        }
    };
    let n = per_type.entry(type_name).or_default();
    *n += 1;
    let (name, name_at) = match &raw.name {
        Some(s) => {
            let at = s.span().start;
            let name = FunctionName::new(s.get_ref())
                .map_err(|e| TriggerError {
                    key: "triggers.name".into(),
                    at,
                    message: e.to_string().replace("function name", "trigger name"),
                })?
                .as_str()
                .to_string();
            (name, at)
        }
        None => (format!("{type_name}-{n}"), table_at),
    };
    let err = |field: &str, at: usize, message: String| TriggerError {
        key: format!("triggers.{field}"),
        at,
        message: format!("trigger `{name}`: {message}"),
    };

    // Keys of other types are mistakes (a `topic` on a cron trigger would
    // otherwise be silently ignored).
    let present: [(&str, Option<usize>); 9] = [
        ("schedule", raw.schedule.as_ref().map(|s| s.span().start)),
        ("timezone", raw.timezone.as_ref().map(|s| s.span().start)),
        ("url", raw.url.as_ref().map(|s| s.span().start)),
        ("topic", raw.topic.as_ref().map(|s| s.span().start)),
        ("qos", raw.qos.as_ref().map(|s| s.span().start)),
        ("subject", raw.subject.as_ref().map(|s| s.span().start)),
        ("stream", raw.stream.as_ref().map(|s| s.span().start)),
        ("consumer", raw.consumer.as_ref().map(|s| s.span().start)),
        ("filter", raw.filter.as_ref().map(|s| s.span().start)),
    ];
    let allowed: &[&str] = match type_name {
        "cron" => &["schedule", "timezone"],
        "mqtt" => &["url", "topic", "qos"],
        "nats" => &["url", "subject", "stream", "consumer"],
        _ => &["filter"],
    };
    for (key, at) in present {
        if let Some(at) = at
            && !allowed.contains(&key)
        {
            return Err(err(
                key,
                at,
                format!("`{key}` is not a key of a {type_name} trigger (it takes name, {})", allowed.join(", ")),
            ));
        }
    }
    let required = |field: &str, v: Option<Spanned<String>>| {
        v.map(|s| (s.span().start, s.into_inner()))
            .ok_or_else(|| err(field, table_at, format!("a {type_name} trigger needs `{field}`")))
    };

    let kind = match type_name {
        "cron" => {
            let (at, schedule) = required("schedule", raw.schedule)?;
            let schedule = schedule.trim().to_string();
            parse_schedule(&schedule).map_err(|e| err("schedule", at, e))?;
            let timezone = match raw.timezone {
                None => "UTC".to_string(),
                Some(tz) => {
                    let at = tz.span().start;
                    let tz = tz.into_inner();
                    tz.parse::<chrono_tz::Tz>().map_err(|_| {
                        err(
                            "timezone",
                            at,
                            format!("`{tz}` is not a time zone (use an IANA name like `Europe/Rome` or `UTC`)"),
                        )
                    })?;
                    tz
                }
            };
            TriggerKind::Cron { schedule, timezone }
        }
        "mqtt" => {
            let (at, url) = required("url", raw.url)?;
            check_broker_url(&url, "mqtt", 1883).map_err(|e| err("url", at, e))?;
            let (at, topic) = required("topic", raw.topic)?;
            check_mqtt_filter(&topic).map_err(|e| err("topic", at, e))?;
            let qos = match raw.qos {
                None => 1,
                Some(q) => {
                    let at = q.span().start;
                    let q = q.into_inner();
                    if !(0..=i64::from(MAX_MQTT_QOS)).contains(&q) {
                        return Err(err(
                            "qos",
                            at,
                            format!("{q} is not a supported QoS (use 0: at most once, or 1: at least once)"),
                        ));
                    }
                    q as u8
                }
            };
            TriggerKind::Mqtt { url, topic, qos }
        }
        "nats" => {
            let (at, url) = required("url", raw.url)?;
            check_broker_url(&url, "nats", 4222).map_err(|e| err("url", at, e))?;
            let (at, subject) = required("subject", raw.subject)?;
            check_nats_subject(&subject).map_err(|e| err("subject", at, e))?;
            let name_of = |field: &str, v: Option<Spanned<String>>| -> Result<Option<String>, TriggerError> {
                match v {
                    None => Ok(None),
                    Some(s) => {
                        let at = s.span().start;
                        let s = s.into_inner();
                        check_jetstream_name(&s).map_err(|e| err(field, at, e))?;
                        Ok(Some(s))
                    }
                }
            };
            let stream_at = raw.stream.as_ref().map(|s| s.span().start);
            let consumer_at = raw.consumer.as_ref().map(|s| s.span().start);
            let stream = name_of("stream", raw.stream)?;
            let consumer = name_of("consumer", raw.consumer)?;
            match (&stream, &consumer) {
                (Some(_), None) => {
                    return Err(err(
                        "stream",
                        stream_at.unwrap_or(table_at),
                        "a JetStream trigger needs `consumer` too (the durable consumer's name)".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(err(
                        "consumer",
                        consumer_at.unwrap_or(table_at),
                        "a JetStream trigger needs `stream` too (the stream the consumer reads)".into(),
                    ));
                }
                _ => {}
            }
            TriggerKind::Nats { url, subject, stream, consumer }
        }
        _ => {
            let Some(filter) = raw.filter else {
                return Err(err(
                    "filter",
                    table_at,
                    "a cloudevents trigger needs `filter`, e.g. filter = { type = \"com.example.created\" }".into(),
                ));
            };
            let at = filter.span().start;
            let filter = filter.into_inner();
            check_cloudevents_filter(&filter).map_err(|e| err("filter", at, e))?;
            TriggerKind::CloudEvents { filter }
        }
    };
    Ok((TriggerSpec { name, kind }, name_at))
}

/// Parses a cron schedule: five fields, or six with seconds first
/// (`*/10 * * * * *`); names of months and days work.
/// An IANA time zone name (`Europe/Rome`, `UTC`).
pub fn check_timezone(tz: &str) -> Result<(), String> {
    tz.parse::<chrono_tz::Tz>()
        .map(drop)
        .map_err(|_| format!("`{tz}` is not a time zone (use an IANA name like `Europe/Rome` or `UTC`)"))
}

pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    if schedule.is_empty() {
        return Err("the schedule is empty".into());
    }
    CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build().parse(schedule).map_err(|e| {
        format!(
            "`{schedule}` is not a cron schedule: {e} (use `sec min hour day month weekday`, e.g. `*/10 * * * * *`)"
        )
    })
}

/// A broker URL: `scheme://host[:port]`, nothing after the authority.
fn check_broker_url(text: &str, scheme: &str, default_port: u16) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if url.scheme() != scheme {
        let tls = if url.scheme() == format!("{scheme}s") || url.scheme() == "tls" {
            " (TLS is not supported yet)"
        } else {
            ""
        };
        return Err(format!("`{text}`: the scheme must be {scheme}://{tls}"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` names no host (e.g. {scheme}://127.0.0.1:{default_port})"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}`: a broker URL has no path, query or fragment"));
    }
    if url.port() == Some(0) {
        return Err(format!("`{text}`: port 0 is not a port"));
    }
    Ok(())
}

/// MQTT topic filter rules (MQTT 3.1.1 §4.7): non-empty UTF-8 without NUL;
/// `+` is a whole level; `#` is a whole level and the last one.
pub fn check_mqtt_filter(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.len() > MAX_TOPIC {
        return Err(format!("the topic is {} bytes; at most {MAX_TOPIC}", topic.len()));
    }
    if topic.contains('\0') {
        return Err("the topic contains a NUL character".into());
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`{topic}`: `#` must be a whole level and the last one (e.g. `sensors/#`)"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{topic}`: `+` must be a whole level (e.g. `sensors/+/temperature`)"));
        }
    }
    Ok(())
}

/// NATS subject rules: dot-separated non-empty tokens without whitespace;
/// `*` is a whole token, `>` a whole token and the last one.
pub fn check_nats_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".into());
    }
    if subject.len() > MAX_TOPIC {
        return Err(format!("the subject is {} bytes; at most {MAX_TOPIC}", subject.len()));
    }
    if let Some(c) = subject.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{subject}` contains {c:?}; subjects have no spaces or control characters"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("`{subject}` has an empty token (two dots, or a dot at an end)"));
        }
        if token.contains('>') && (*token != ">" || i + 1 != tokens.len()) {
            return Err(format!("`{subject}`: `>` must be a whole token and the last one (e.g. `orders.>`)"));
        }
        if token.contains('*') && *token != "*" {
            return Err(format!("`{subject}`: `*` must be a whole token (e.g. `orders.*.created`)"));
        }
    }
    Ok(())
}

/// JetStream stream and consumer names: no whitespace, `.`, `*`, `>`,
/// path separators; at most 255 bytes.
fn check_jetstream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 255 {
        return Err("the name is longer than 255 bytes".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(*c)) {
        return Err(format!("`{name}` contains {c:?}; JetStream names have no spaces, `.`, `*`, `>`, `/` or `\\`"));
    }
    Ok(())
}

/// CloudEvents attribute names (spec 1.0: lowercase `a-z` and `0-9`; at
/// most 20 characters is the spec's advice, which flick enforces) with
/// non-empty values. `data` is the payload, not an attribute.
pub fn check_cloudevents_filter(filter: &BTreeMap<String, String>) -> Result<(), String> {
    if filter.is_empty() {
        return Err("the filter is empty; name at least one attribute, e.g. { type = \"com.example.created\" }".into());
    }
    for (name, value) in filter {
        check_cloudevents_attribute(name)?;
        if matches!(name.as_str(), "data" | "data_base64") {
            return Err(format!("`{name}` is the event's payload, not an attribute to filter on"));
        }
        if value.is_empty() {
            return Err(format!("`{name}` filters on an empty value"));
        }
    }
    Ok(())
}

/// One CloudEvents attribute name: `[a-z0-9]{1,20}`.
pub fn check_cloudevents_attribute(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 20 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(format!(
            "`{name}` is not a CloudEvents attribute name (1–20 lowercase letters a-z and digits 0-9)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_filters() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+/#", "/", "a//b", "$SYS/#", "$share/g/a/+"] {
            assert!(check_mqtt_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a/b#", "a+/b", "a/+b", "#/a", "a\0b"] {
            assert!(check_mqtt_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nats_subjects() {
        for ok in ["a", "a.b", "a.*", "*", ">", "a.>", "a.*.c", "orders-1.x_y"] {
            assert!(check_nats_subject(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a..b", ".a", "a.", "a.>.b", "a*", "a.b>", "a\tb", "a.*b"] {
            assert!(check_nats_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules() {
        for ok in ["*/10 * * * * *", "0 */5 * * *", "0 0 12 * * MON-FRI", "* * * * * *"] {
            assert!(parse_schedule(ok).is_ok(), "{ok}");
        }
        for bad in ["", "* * *", "61 * * * * *", "every minute", "* * * * * * * *", "*/0 * * * * *"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn broker_urls() {
        assert!(check_broker_url("mqtt://127.0.0.1:1883", "mqtt", 1883).is_ok());
        assert!(check_broker_url("mqtt://user:pw@broker", "mqtt", 1883).is_ok());
        for bad in ["http://x", "mqtts://x", "mqtt://", "mqtt://x/path", "mqtt://x?q", "nats://x", "x", "mqtt://x:0"] {
            assert!(check_broker_url(bad, "mqtt", 1883).is_err(), "{bad}");
        }
        assert_eq!(redact_url("mqtt://user:pw@broker:1883"), "mqtt://broker:1883");
    }

    #[test]
    fn cloudevents_filters() {
        let f = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(check_cloudevents_filter(&f(&[("type", "x"), ("source", "/s"), ("myext1", "v")])).is_ok());
        for bad in [
            vec![],
            vec![("Type", "x")],
            vec![("my-ext", "x")],
            vec![("type", "")],
            vec![("data", "x")],
            vec![("averyveryverylongname1", "x")],
        ] {
            assert!(check_cloudevents_filter(&f(&bad)).is_err(), "{bad:?}");
        }
    }
}
