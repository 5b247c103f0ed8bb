//! Property/fuzz tests of the invoke path's header handling, from both
//! hostile sides: a caller's request headers (not utf-8, huge, repeated,
//! control characters, the admin key in any spelling) and a function's
//! response headers (anything its bootstrap sends). Also the bearer check
//! and `X-Flick-Deadline`.
//!
//! `FLICK_FUZZ_CASES` sets the number of cases per property. See RELIABILITY.md.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;

use super::{copy_function_headers, forwarded_headers, is_hop_by_hop, parse_deadline};
use crate::auth::AdminKey;
use crate::caller::Keys;

/// `default` cases per property unless `FLICK_FUZZ_CASES` says otherwise;
/// failures are kept under `crates/api/proptest-regressions/`.
fn config(default: u32) -> Config {
    let cases = std::env::var("FLICK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    Config { cases, ..Config::default() }
}

fn key() -> impl Strategy<Value = String> {
    // What `flick up` writes (hex), and short hand-written ones.
    prop_oneof!["[0-9a-f]{64}", "[A-Za-z0-9]{1,12}"]
}

/// Bytes a header value may hold on the wire: anything but CTLs other than
/// tab (obs-text, 0x80-0xff, included).
fn value_bytes(key: String) -> impl Strategy<Value = Vec<u8>> {
    let plain = prop_oneof![
        4 => proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40),
        1 => proptest::collection::vec(0x20u8..0x7f, 4096..16384),
    ];
    let spelled = select(vec!["Bearer ", "bearer ", "BEARER   ", "Token ", "", "x=", " Bearer\t"]);
    (plain.clone(), spelled, any::<bool>(), plain).prop_map(move |(a, scheme, with_key, b)| {
        if with_key {
            let mut v = scheme.as_bytes().to_vec();
            v.extend_from_slice(key.as_bytes());
            if !b.is_empty() && b.len() < 40 {
                v.extend_from_slice(&b);
            }
            v
        } else {
            a
        }
    })
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        select(vec!["authorization", "cookie", "x-flick-deadline", "content-type", "host", "x-a"])
            .prop_map(HeaderName::from_static),
        "[a-z0-9!#$%&'*+.^_`|~-]{1,30}".prop_map(|n| HeaderName::try_from(n).unwrap()),
    ]
}

fn request_headers() -> impl Strategy<Value = (String, Vec<(HeaderName, Vec<u8>)>)> {
    key().prop_flat_map(|key| {
        let entries = proptest::collection::vec((header_name(), value_bytes(key.clone())), 0..12);
        (Just(key), entries)
    })
}

/// Response headers as a function's bootstrap may send them: any strings,
/// with framing and hop-by-hop names in any case.
fn function_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        3 => select(vec![
            "Content-Length", "content-length", "Transfer-Encoding", "Connection", "keep-alive", "TE", "Trailer",
            "Upgrade", "Proxy-Authenticate", "set-cookie", "content-type", "x-flick-status", "server-timing",
            "x-flick-activation-id", "x-custom",
        ]).prop_map(str::to_string),
        2 => "[A-Za-z0-9-]{1,20}",
        1 => any::<String>(),
    ];
    let value = prop_oneof![
        3 => "[ -~]{0,30}",
        1 => select(vec!["chunked", "close", "x-custom, content-type", "0", "99999999999"]).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    proptest::collection::vec((name, value), 0..10)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn fuzz_request_headers_never_carry_the_key((key, entries) in request_headers()) {
        let admin = AdminKey::new(key.clone());
        let keys = Keys::new(&admin);
        let mut headers = HeaderMap::new();
        for (name, value) in &entries {
            headers.append(name.clone(), HeaderValue::from_bytes(value).unwrap());
        }
        let forwarded = forwarded_headers(&headers, &keys);
        // Nothing that holds the key gets through, in any header.
        for (name, value) in &forwarded {
            prop_assert!(!value.contains(&key), "{}: {:?} carries the key", name, value);
        }
        // Everything else does, in order, with its name and (lossy) value.
        let expected: Vec<(String, String)> = entries
            .iter()
            .filter(|(_, v)| !v.windows(key.len()).any(|w| w == key.as_bytes()))
            // A short key may also hide in a random token that happens to be base64.
            .filter(|(_, v)| !keys.appears_in(v))
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        // HeaderMap groups repeats of a name; compare per name.
        for name in entries.iter().map(|(n, _)| n.as_str()) {
            let got: Vec<_> = forwarded.iter().filter(|(n, _)| n == name).collect();
            let want: Vec<_> = expected.iter().filter(|(n, _)| n == name).collect();
            prop_assert_eq!(got, want);
        }
        prop_assert_eq!(forwarded.len(), expected.len());
        // The bearer check agrees with the filter: a value it accepts is never forwarded.
        for value in headers.get_all(axum::http::header::AUTHORIZATION) {
            if value.to_str().is_ok_and(|v| admin.matches_header(v)) {
                prop_assert!(keys.appears_in(value.as_bytes()));
            }
        }
    }

    #[test]
    fn fuzz_bearer_check_never_panics(key in key(), value in any::<String>(), scheme in "[Bb][Ee][Aa][Rr][Ee][Rr][ \t]{1,3}") {
        let admin = AdminKey::new(key.clone());
        let _ = admin.matches_header(&value);
        let good = format!("{scheme}{key}");
        let longer = format!("{good}x");
        prop_assert!(admin.matches_header(&good));
        prop_assert!(!admin.matches_header(&longer));
        prop_assert!(!admin.matches_header(&key));
    }

    #[test]
    fn fuzz_function_headers_cannot_set_framing(headers in function_headers()) {
        let mut map = HeaderMap::new();
        map.insert("content-type", HeaderValue::from_static("application/octet-stream"));
        copy_function_headers(&mut map, &headers);
        for name in map.keys() {
            prop_assert!(!is_hop_by_hop(name.as_str()), "{} got through", name);
        }
        // Every valid, end-to-end header gets through with all its values, in order.
        let listed: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        for (name, _) in &headers {
            let Ok(n) = HeaderName::try_from(name.as_str()) else { continue };
            if is_hop_by_hop(name) || listed.contains(&n.as_str().to_string()) {
                continue;
            }
            let want: Vec<&[u8]> = headers
                .iter()
                .filter(|(m, v)| m.eq_ignore_ascii_case(name) && HeaderValue::try_from(v.as_str()).is_ok())
                .map(|(_, v)| v.as_bytes())
                .collect();
            if want.is_empty() {
                continue;
            }
            let got: Vec<&[u8]> = map.get_all(&n).iter().map(HeaderValue::as_bytes).collect();
            prop_assert_eq!(got, want, "{}", name);
        }
    }

    #[test]
    fn fuzz_deadline_header(value in prop_oneof!["[ 0-9]{0,25}", any::<String>()]) {
        match parse_deadline(&value) {
            Ok(d) => prop_assert_eq!(Some(d.as_millis() as u64), value.trim().parse::<u64>().ok().filter(|&ms| ms > 0)),
            Err(e) => prop_assert!(e.to_string().contains("X-Flick-Deadline")),
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// `Basic base64(id:key)`, with any id, any scheme spelling and any
    /// padding, never reaches a function, though the key is not in it as text.
    #[test]
    fn fuzz_basic_encoded_keys_never_reach_a_function(
        key in key(),
        id in "[ -~]{0,20}",
        scheme in select(vec!["Basic ", "basic  ", "BASIC\t", "Token ", ""]),
        header in header_name(),
        pad in any::<bool>(),
    ) {
        use base64::Engine as _;
        let keys = Keys::new(&AdminKey::new(key.clone()));
        let mut encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}"));
        if !pad {
            encoded = encoded.trim_end_matches('=').to_string();
        }
        let mut headers = HeaderMap::new();
        headers.insert(header.clone(), HeaderValue::try_from(format!("{scheme}{encoded}")).unwrap());
        let forwarded = forwarded_headers(&headers, &keys);
        prop_assert!(forwarded.is_empty(), "{:?}", forwarded);
    }
}
