//! Property/fuzz tests of the manifest parser: arbitrary text, generated
//! manifests and one-value mutations of them must never panic, valid ones
//! must round-trip through `to_toml`, and every error must point at a line.
//!
//! `FLICK_FUZZ_CASES` sets the number of cases per property (CI's fuzz stage
//! raises it; `cargo test` runs a few hundred). See RELIABILITY.md.

use std::fmt::Write as _;

use flick_core::{Manifest, ManifestError};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, FileFailurePersistence};

/// `default` cases per property unless `FLICK_FUZZ_CASES` says otherwise;
/// failures are kept in `fuzz_manifest.proptest-regressions` next to this file
/// and replayed first on every run.
fn config(default: u32) -> Config {
    let cases = std::env::var("FLICK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let persistence = FileFailurePersistence::WithSource("proptest-regressions");
    Config { cases, failure_persistence: Some(Box::new(persistence)), ..Config::default() }
}

/// A TOML basic string holding exactly `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04X}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The line (1-based) an error points at, if any.
fn error_line(e: &ManifestError) -> Option<usize> {
    match e {
        ManifestError::Syntax { line, .. } | ManifestError::Invalid { line, .. } => *line,
    }
}

/// Checks what must hold for any input: no panic (the caller), a message
/// that renders, a line inside the text for every error, and a round trip
/// for anything accepted.
fn check_any(text: &str) -> Result<(), TestCaseError> {
    match Manifest::parse(text) {
        Ok(m) => {
            let again = Manifest::parse(&m.to_toml());
            prop_assert_eq!(again.as_ref(), Ok(&m), "to_toml does not round-trip:\n{}", m.to_toml());
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(message.starts_with("flick.toml"), "{}", message);
            let lines = text.lines().count().max(1);
            match error_line(&e) {
                Some(line) => prop_assert!((1..=lines + 1).contains(&line), "line {} of {}: {}", line, lines, message),
                // Only a key that is not there at all has no line to point at.
                None => prop_assert!(message.contains("missing"), "no line in: {}", message),
            }
        }
    }
    Ok(())
}

/// One `key = value` line of a valid manifest, with its table.
#[derive(Clone, Debug)]
struct Line {
    table: &'static str,
    key: String,
    value: String,
}

fn duration_text(min_ms: u64, max_ms: u64) -> impl Strategy<Value = String> {
    (min_ms..=max_ms, select(vec!["ms", "s", "m"])).prop_map(move |(ms, unit)| match unit {
        "ms" => format!("{ms}ms"),
        "s" => format!("{}s", (ms / 1000).max(min_ms.div_ceil(1000)).max(1)),
        _ => format!("{}m", (ms / 60_000).max(min_ms.div_ceil(60_000)).max(1)),
    })
}

fn size_text(min_mib: u64, max_mib: u64) -> impl Strategy<Value = String> {
    (min_mib..=max_mib, select(vec!["MiB", "M", "", "KiB"]))
        .prop_map(|(mib, unit)| if unit == "KiB" { format!("{}KiB", mib * 1024) } else { format!("{mib}{unit}") })
}

fn runtime_and_handler() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,8}(/[a-z0-9_-]{1,6}){0,2}\\.[a-z_][a-zA-Z0-9_]{0,8}".prop_map(|h| ("python3", h)),
        "[a-z_][a-z0-9_]{0,8}\\.[a-z_$][a-zA-Z0-9_$]{0,8}".prop_map(|h| ("node", h)),
        // Any command line without quotes, or with balanced ones.
        "[^'\"\\\\\\x00-\\x1f]{1,40}".prop_filter("blank", |h| !h.trim().is_empty()).prop_map(|h| ("exec", h)),
        "\\./[a-z]{1,8}( '[^']{0,10}')?".prop_map(|h| ("http", h)),
    ]
}

/// The tables of up to three `[[triggers]]` (each its own table here, so
/// `render` writes a header per trigger).
const TRIGGER_TABLES: [&str; 3] = ["triggers.0", "triggers.1", "triggers.2"];

/// The lines of one valid trigger (without its table).
fn trigger_lines() -> impl Strategy<Value = Vec<(String, String)>> {
    let s = |k: &str, v: &str| (k.to_string(), toml_string(v));
    let zone = proptest::option::of(select(vec!["UTC", "Europe/Rome", "America/New_York", "Asia/Kolkata"]));
    prop_oneof![
        ("(\\*/[1-9]|[0-5]?[0-9]|\\*) (\\*|[0-5]?[0-9]) \\* \\* \\* \\*", zone).prop_map(move |(sched, zone)| {
            let mut l = vec![s("type", "cron"), s("schedule", &sched)];
            l.extend(zone.map(|z| s("timezone", z)));
            l
        }),
        ("[a-z0-9$]{1,5}(/([a-z0-9 ]{1,5}|\\+)){0,3}(/#)?", proptest::option::of(0u8..=1)).prop_map(
            move |(topic, qos)| {
                let mut l = vec![s("type", "mqtt"), s("url", "mqtt://127.0.0.1:1883"), s("topic", &topic)];
                l.extend(qos.map(|q| ("qos".to_string(), q.to_string())));
                l
            }
        ),
        ("[a-z0-9_-]{1,5}(\\.([a-z0-9_-]{1,5}|\\*)){0,3}(\\.>)?", proptest::option::of(("[A-Z_]{1,8}", "[a-z-]{1,8}")))
            .prop_map(move |(subject, js)| {
                let mut l = vec![s("type", "nats"), s("url", "nats://localhost"), s("subject", &subject)];
                if let Some((stream, consumer)) = js {
                    l.push(s("stream", &stream));
                    l.push(s("consumer", &consumer));
                }
                l
            }),
        proptest::collection::btree_map("[a-z0-9]{1,20}", ".{1,12}", 1..4)
            .prop_filter("payload", |m| !m.contains_key("data"))
            .prop_map(move |filter| {
                let pairs: Vec<String> = filter.iter().map(|(k, v)| format!("{k} = {}", toml_string(v))).collect();
                vec![s("type", "cloudevents"), ("filter".to_string(), format!("{{ {} }}", pairs.join(", ")))]
            }),
    ]
}

/// A valid manifest, as lines in a random order inside their tables.
fn valid_lines() -> impl Strategy<Value = Vec<Line>> {
    let top = (
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        runtime_and_handler(),
        proptest::option::of(duration_text(1, 900_000)),
        proptest::option::of(size_text(16, 4096)),
        proptest::option::of(1u32..=1000),
        proptest::option::of((0u32..=20, 20u32..=1000)),
        proptest::option::of(duration_text(100, 86_400_000)),
        proptest::option::of(any::<bool>()),
        proptest::option::of(select(vec!["none", "host"])),
        proptest::option::of(size_text(1, 1024)),
    );
    let env = proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,12}", any::<String>(), 0..4)
        .prop_filter("reserved", |m| m.keys().all(|k| !k.starts_with("FLICK_") && k != "PORT"));
    let scaling = proptest::option::of((1u32..=10, 11u32..=100));
    let triggers = proptest::collection::vec((trigger_lines(), any::<bool>()), 0..=TRIGGER_TABLES.len());
    (top, env, scaling, any::<prop::sample::Index>(), triggers).prop_map(
        |(
            (name, (runtime, handler), timeout, memory, concurrency, instances, keep, public, network, tmp),
            env,
            scaling,
            shuffle,
            triggers,
        )| {
            let mut top = vec![
                ("name", toml_string(&name)),
                ("runtime", toml_string(runtime)),
                ("handler", toml_string(&handler)),
            ];
            let mut push = |k, v: Option<String>| {
                if let Some(v) = v {
                    top.push((k, v))
                }
            };
            push("timeout", timeout.map(|t| toml_string(&t)));
            push("memory", memory.map(|t| toml_string(&t)));
            push("concurrency", concurrency.map(|c| c.to_string()));
            push("min_instances", instances.map(|(min, _)| min.to_string()));
            push("max_instances", instances.map(|(_, max)| max.to_string()));
            // keep_alive short enough would cap the scaling windows below; keep it long then.
            push("keep_alive", keep.map(|k| toml_string(&k)));
            push("public", public.map(|p| p.to_string()));
            push("network", network.map(toml_string));
            push("tmp_size", tmp.map(|t| toml_string(&t)));
            // Keys within a table can come in any order.
            let n = top.len();
            top.rotate_left(shuffle.index(n));
            let mut lines: Vec<Line> =
                top.into_iter().map(|(key, value)| Line { table: "", key: key.to_string(), value }).collect();
            if let Some((target, threshold)) = scaling {
                lines.push(Line {
                    table: "scaling",
                    key: "target_utilisation".into(),
                    value: format!("{:.1}", f64::from(target) / 10.0),
                });
                lines.push(Line {
                    table: "scaling",
                    key: "panic_threshold".into(),
                    value: format!("{:.1}", f64::from(threshold) / 10.0),
                });
            }
            for (k, v) in env {
                lines.push(Line { table: "env", key: k, value: toml_string(&v) });
            }
            for (i, (trigger, named)) in triggers.into_iter().enumerate() {
                let table = TRIGGER_TABLES[i];
                if named {
                    lines.push(Line { table, key: "name".into(), value: toml_string(&format!("t{i}")) });
                }
                lines.extend(trigger.into_iter().map(|(key, value)| Line { table, key, value }));
            }
            lines
        },
    )
}

/// Renders lines as TOML; returns the text and the 1-based line of each entry.
fn render(lines: &[Line]) -> (String, Vec<usize>) {
    let mut text = String::new();
    let mut at = Vec::new();
    let mut table = "";
    let mut line_no = 0;
    for l in lines {
        if l.table != table {
            table = l.table;
            match table.split_once('.') {
                Some((array, _)) => text.push_str(&format!("\n[[{array}]]\n")),
                None => text.push_str(&format!("\n[{table}]\n")),
            }
            line_no += 2;
        }
        text.push_str(&format!("{} = {}\n", l.key, l.value));
        line_no += 1;
        at.push(line_no);
    }
    (text, at)
}

/// A value that the manifest refuses for `key` (of the right TOML type or not).
fn bad_value(key: &str) -> BoxedStrategy<String> {
    let wrong_type = prop_oneof![Just("[]".to_string()), Just("{ a = 1 }".to_string()), Just("1979-05-27".to_string())];
    let specific: BoxedStrategy<String> = match key {
        "name" => {
            "[A-Z_]{0,2}[ ./][A-Z_]{0,2}|[a-z]{65,70}|[a-z]{0,3}[%:é][a-z]{0,3}".prop_map(|s| toml_string(&s)).boxed()
        }
        "runtime" => "[a-z]{1,8}"
            .prop_filter("real", |s| !["python3", "node", "exec", "http"].contains(&s.as_str()))
            .prop_map(|s| toml_string(&s))
            .boxed(),
        "timeout" => prop_oneof![
            Just("\"0s\"".to_string()),
            Just("\"16m\"".to_string()),
            Just("\"soon\"".to_string()),
            Just("\"-1s\"".to_string()),
            Just("\"1e400s\"".to_string()),
            Just("\"99999999999999999999d\"".to_string())
        ]
        .boxed(),
        "keep_alive" => prop_oneof![Just("\"50ms\"".to_string()), Just("\"5 parsecs\"".to_string())].boxed(),
        "memory" | "tmp_size" => prop_oneof![
            Just("\"1B\"".to_string()),
            Just("\"100GiB\"".to_string()),
            Just("\"18446744073709551615GiB\"".to_string()),
            Just("\"lots\"".to_string())
        ]
        .boxed(),
        "concurrency" | "max_instances" => {
            prop_oneof![Just(0i64), 1001i64..i64::MAX, i64::MIN..0].prop_map(|n| n.to_string()).boxed()
        }
        "min_instances" => prop_oneof![1001i64..i64::MAX, i64::MIN..0].prop_map(|n| n.to_string()).boxed(),
        "network" => {
            "[a-z]{1,8}".prop_filter("real", |s| s != "none" && s != "host").prop_map(|s| toml_string(&s)).boxed()
        }
        "target_utilisation" => {
            prop_oneof![Just("0.0".to_string()), Just("1.5".to_string()), Just("nan".to_string())].boxed()
        }
        "panic_threshold" => {
            prop_oneof![Just("1.0".to_string()), Just("11.0".to_string()), Just("inf".to_string())].boxed()
        }
        "type" => "[a-z]{1,8}"
            .prop_filter("real", |s| !["cron", "mqtt", "nats", "cloudevents"].contains(&s.as_str()))
            .prop_map(|s| toml_string(&s))
            .boxed(),
        "schedule" => prop_oneof![Just("\"* * *\""), Just("\"61 * * * * *\""), Just("\"\""), Just("\"@often\"")]
            .prop_map(String::from)
            .boxed(),
        "timezone" => {
            prop_oneof![Just("\"Mars/Olympus\""), Just("\"utc \""), Just("\"\"")].prop_map(String::from).boxed()
        }
        "url" => prop_oneof![Just("\"http://x\""), Just("\"mqtts://x\""), Just("\"x\""), Just("\"nats://x/p\"")]
            .prop_map(String::from)
            .boxed(),
        "topic" => prop_oneof![Just("\"a/#/b\""), Just("\"a+\""), Just("\"\"")].prop_map(String::from).boxed(),
        "qos" => prop_oneof![Just("2"), Just("-1"), Just("99999999999")].prop_map(String::from).boxed(),
        "subject" => prop_oneof![Just("\"a b\""), Just("\"a..b\""), Just("\"a.>.b\""), Just("\"\"")]
            .prop_map(String::from)
            .boxed(),
        "stream" | "consumer" => {
            prop_oneof![Just("\"a.b\""), Just("\"a b\""), Just("\"\"")].prop_map(String::from).boxed()
        }
        "filter" => {
            prop_oneof![Just("{ Type = \"x\" }"), Just("{}"), Just("{ type = \"\" }"), Just("{ data = \"x\" }")]
                .prop_map(String::from)
                .boxed()
        }
        _ => return wrong_type.boxed(),
    };
    if key == "public" {
        return Just("\"yes\"".to_string()).boxed();
    }
    prop_oneof![3 => specific, 1 => wrong_type].boxed()
}

/// A valid manifest with one entry's value replaced by a bad one; returns the
/// text, the bad key and the line it is on.
fn one_bad_value() -> impl Strategy<Value = (String, String, usize, usize)> {
    (valid_lines(), any::<prop::sample::Index>()).prop_flat_map(|(lines, pick)| {
        // env values are free text, so only their keys can be wrong.
        let i = pick.index(lines.len());
        let key = lines[i].key.clone();
        let table_line = {
            let (_, at) = render(&lines);
            if lines[i].table.is_empty() {
                at[i]
            } else {
                at[lines.iter().position(|l| l.table == lines[i].table).unwrap()] - 1
            }
        };
        let bad = if lines[i].table == "env" {
            "[0-9][A-Z]{0,3}|[A-Z]{0,2}[ .!-][A-Z]{0,2}|FLICK_[A-Z]{1,4}|PORT".prop_map(|k| format!("\"{k}\"")).boxed()
        } else {
            bad_value(&key)
        };
        (Just(lines), Just(i), bad, Just(table_line)).prop_map(|(mut lines, i, bad, table_line)| {
            if lines[i].table == "env" {
                lines[i].key = bad;
            } else {
                lines[i].value = bad;
            }
            let key = lines[i].key.clone();
            let (text, at) = render(&lines);
            (text, key, at[i], table_line)
        })
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn fuzz_manifest_arbitrary_text_never_panics(text in any::<String>()) {
        check_any(&text)?;
    }

    #[test]
    fn fuzz_manifest_tomlish_text_never_panics(
        lines in proptest::collection::vec(
            prop_oneof![
                "[a-z_]{1,14} = (\"[^\"\\n]{0,20}\"|-?[0-9]{1,22}|[0-9.e+-]{1,10}|true|false|\\[\\]|\\{\\})",
                "\\[(env|scaling|[a-z]{1,6})\\]",
                "\\[\\[(triggers|[a-z]{1,6})\\]\\]",
                "(type|schedule|timezone|url|topic|qos|subject|stream|consumer|filter) = .{0,24}",
                "(name|runtime|handler|timeout|memory|concurrency|min_instances|max_instances|keep_alive|public|network|tmp_size) = .{0,20}",
                "#.{0,20}",
                ".{0,30}",
            ],
            0..16,
        )
    ) {
        check_any(&lines.join("\n"))?;
    }

    #[test]
    fn fuzz_manifest_valid_ones_parse_and_round_trip(lines in valid_lines()) {
        let (text, _) = render(&lines);
        let m = Manifest::parse(&text);
        prop_assert!(m.is_ok(), "{}\n{:?}", text, m);
        check_any(&text)?;
        let m = m.unwrap();
        let json = serde_json::to_string(&m).unwrap();
        prop_assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }

    #[test]
    fn fuzz_manifest_one_bad_value_is_reported_at_its_line((text, key, line, table_line) in one_bad_value()) {
        let err = Manifest::parse(&text);
        prop_assert!(err.is_err(), "accepted:\n{}", text);
        let err = err.unwrap_err();
        let at = error_line(&err);
        // A key inside [env] or [scaling] may be reported at its table's header.
        prop_assert!(at == Some(line) || at == Some(table_line), "`{}` is on line {}, error says {:?}: {}\n{}", key, line, at, err, text);
    }

    #[test]
    fn fuzz_manifest_byte_mutations_never_panic(
        lines in valid_lines(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..6),
    ) {
        let (text, _) = render(&lines);
        let mut chars: Vec<char> = text.chars().collect();
        for (at, op, c) in edits {
            let i = at.index(chars.len() + 1);
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => { chars.remove(i); }
                _ if i < chars.len() => chars[i] = c,
                _ => chars.push(c),
            }
        }
        check_any(&chars.into_iter().collect::<String>())?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn fuzz_units_never_panic_and_round_trip(text in "[0-9. ]{0,25}[a-zA-Z]{0,4}|.{0,20}", ms in 0u64..=1_000_000_000_000, bytes in any::<u64>()) {
        use flick_core::units::{format_duration, format_size, parse_duration, parse_size};
        if let Ok(d) = parse_duration(&text) {
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{}", text);
        }
        if let Ok(b) = parse_size(&text) {
            prop_assert_eq!(parse_size(&format_size(b)), Ok(b), "{}", text);
        }
        let d = std::time::Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
    }
}
