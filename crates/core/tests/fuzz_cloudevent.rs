//! Property/fuzz tests of the CloudEvents parser (`core/src/cloudevent.rs`),
//! which reads what any caller posts to `/events` and what any function
//! answers: arbitrary headers and bodies in every mode never panic, every
//! refusal is an error with a message, and valid events survive rendering to
//! binary mode (what a function receives) and to JSON (structured mode)
//! unchanged.
//!
//! `FLICK_FUZZ_CASES` sets the number of cases per property (CI's fuzz stage
//! raises it). See RELIABILITY.md.

use std::collections::BTreeMap;

use flick_core::cloudevent::{self, CloudEvent};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn config(default: u32) -> Config {
    let cases = std::env::var("FLICK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let persistence = FileFailurePersistence::WithSource("proptest-regressions");
    Config { cases, failure_persistence: Some(Box::new(persistence)), ..Config::default() }
}

/// A valid event: required attributes, extensions with any printable text
/// (spaces, quotes, `%`, non-ASCII), and optional data.
fn event() -> impl Strategy<Value = CloudEvent> {
    let text = "[ -~é€\u{1F600}]{1,24}";
    (
        "[a-zA-Z0-9._-]{1,16}",
        "/[a-z0-9/%20]{0,16}",
        "[a-z.]{1,16}",
        proptest::collection::btree_map("[a-z][a-z0-9]{0,9}", text, 0..4),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(|(id, source, ty, ext, data)| {
            let mut attributes: BTreeMap<String, String> = ext
                .into_iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "id" | "source"
                            | "type"
                            | "specversion"
                            | "time"
                            | "dataschema"
                            | "datacontenttype"
                            | "subject"
                            | "flickhops"
                    )
                })
                .collect();
            // `%` only as a valid escape in a URI-reference.
            let source = source.replace('%', "%25");
            attributes.extend([
                ("specversion".to_string(), "1.0".to_string()),
                ("id".to_string(), id),
                ("source".to_string(), source),
                ("type".to_string(), ty),
            ]);
            if data.is_some() {
                attributes.insert("datacontenttype".into(), "application/octet-stream".into());
            }
            CloudEvent { attributes, data: data.filter(|d| !d.is_empty()) }
        })
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn valid_events_survive_binary_mode(ev in event()) {
        prop_assert!(ev.validate().is_ok(), "{:?}", ev.validate());
        let (headers, body) = ev.to_binary();
        for (_, v) in &headers {
            prop_assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)), "header value {v:?} is not plain ASCII");
        }
        let back = cloudevent::from_binary(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), &body).unwrap();
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn valid_events_survive_structured_mode(ev in event()) {
        let json = serde_json::to_vec(&ev.to_json()).unwrap();
        let back = cloudevent::from_structured(&json).unwrap();
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn arbitrary_messages_never_panic(
        headers in proptest::collection::vec(
            (proptest::sample::select(vec!["ce-id", "ce-source", "ce-type", "ce-specversion", "ce-time",
                "ce-X", "ce-", "content-type", "ce-dataschema", "ce-flickhops"]),
             proptest::collection::vec(any::<u8>(), 0..24)),
            0..8),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        for result in [
            cloudevent::from_http(pairs.iter().copied(), &body).map(|_| ()),
            cloudevent::reply_from_response(pairs.iter().copied(), &body).map(|_| ()),
            cloudevent::from_structured(&body).map(|_| ()),
            cloudevent::from_batch(&body).map(|_| ()),
        ] {
            if let Err(e) = result {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_json_events_never_panic(value in json()) {
        let _ = cloudevent::from_json(value.clone());
        let _ = cloudevent::from_batch(serde_json::to_vec(&serde_json::Value::Array(vec![value])).unwrap().as_slice());
    }
}

/// JSON objects shaped like events: known attribute names with values of
/// every JSON type.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::json!("1.0")),
        Just(serde_json::json!("2026-12-02T06:00:00Z")),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    proptest::collection::btree_map(
        proptest::sample::select(vec![
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "data",
            "data_base64",
            "datacontenttype",
            "dataschema",
            "subject",
            "ext",
            "Bad",
            "flickhops",
        ]),
        value,
        0..10,
    )
    .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}
