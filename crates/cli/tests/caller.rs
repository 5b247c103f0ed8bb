//! Who is calling, from the attacker's side: flick's keys are proved with
//! `Bearer <key>` or `Basic base64(<id>:<key>)` (curl's `-u`, as faas-cli
//! and the OpenWhisk clients send it), nothing else proves them, and no
//! header carrying a key (as text or base64-encoded) reaches a function.

mod common;

use std::process::Command;

use base64::Engine as _;
use common::Flick;

/// `curl` against flick: the HTTP status and the body.
fn curl(flick: &Flick, path: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("{}{path}", flick.base))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_string())
}

#[test]
fn basic_auth_with_the_admin_id_proves_the_key_and_nothing_else_does() {
    let flick = Flick::start();
    let key = flick.key.clone();
    let (status, body) = curl(&flick, "/v1/functions", &["-u", &format!("admin:{key}")]);
    assert_eq!(status, 200, "{body}");
    let (status, _) = curl(&flick, "/v1/functions", &["-H", &format!("Authorization: Bearer {key}")]);
    assert_eq!(status, 200);

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let refused = [
        vec!["-u".to_string(), "admin:wrong".to_string()],
        vec!["-u".to_string(), format!("root:{key}")],
        vec!["-u".to_string(), format!("Admin:{key}")],
        vec!["-u".to_string(), format!(":{key}")],
        vec!["-H".to_string(), "Authorization: Basic !!!not-base64".to_string()],
        vec!["-H".to_string(), format!("Authorization: Basic admin:{key}")],
        vec!["-H".to_string(), format!("Authorization: Basic {}", b64(&format!("admin{key}")))],
        vec!["-H".to_string(), format!("Authorization: Token {key}")],
        vec!["-H".to_string(), format!("X-Api-Key: {key}")],
        vec!["-H".to_string(), format!("Proxy-Authorization: Bearer {key}")],
    ];
    for args in refused {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, body) = curl(&flick, "/v1/functions", &args);
        assert_eq!(status, 401, "{args:?} must not prove the key: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized", "{body}");
    }
}

#[test]
fn no_header_carrying_a_key_reaches_a_function() {
    let flick = Flick::start();
    let key = flick.key.clone();
    flick.deploy_py(
        "peek",
        "public = true\n",
        "import json\ndef handler(event, context):\n    return {'statusCode': 200, 'body': json.dumps(context.http['headers'])}\n",
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let url_safe = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let smuggled = [
        format!("X-Basic: Basic {}", b64(&format!("admin:{key}"))),
        format!("X-Other-Id: Basic {}", b64(&format!("someone:{key}"))),
        format!("X-Url-Safe: {}", url_safe(&format!("id:{key}"))),
        format!("Cookie: session={}", b64(&key)),
        format!("X-Plain: token {key}"),
    ];
    for (who, auth) in [("admin", format!("admin:{key}")), ("a wrong id", format!("mallory:{key}"))] {
        let mut args: Vec<String> = vec!["-u".into(), auth.clone(), "-H".into(), "X-Kept: visible".into()];
        for h in &smuggled {
            args.extend(["-H".to_string(), h.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, body) = curl(&flick, "/fn/peek", &args);
        assert_eq!(status, 200, "{who}: {body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        let seen = seen.as_object().unwrap();
        // The call arrived (the harmless header did), and nothing holding the key did.
        assert_eq!(seen.get("x-kept").and_then(|v| v.as_str()), Some("visible"), "{who}: {body}");
        for name in ["authorization", "x-basic", "x-other-id", "x-url-safe", "cookie", "x-plain"] {
            assert!(!seen.contains_key(name), "{who}: `{name}` reached the function: {body}");
        }
        assert!(!body.contains(&key) && !body.contains(&b64(&format!("admin:{key}"))), "{who}: {body}");
    }
}
