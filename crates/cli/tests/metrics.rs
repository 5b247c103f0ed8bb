//! `GET /metrics` end to end (issue 11 §1): a mixed workload on a real
//! `flick up`, then a live scrape that `promtool check metrics` accepts and
//! whose counters match the activation records flick kept; who may scrape
//! (metrics token, admin key, nobody else), what a scrape never shows, the
//! separate metrics listener and metrics switched off.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Flick, Reply, manifest};

const TOKEN: &str = "scrape-token-0123456789abcdef";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// `GET {base}/metrics` with an optional `Authorization` value and `Accept`.
fn scrape_at(base: &str, authorization: Option<&str>, accept: Option<&str>) -> Reply {
    let mut rb = http().get(format!("{base}/metrics"));
    if let Some(a) = authorization {
        rb = rb.header("authorization", a);
    }
    if let Some(a) = accept {
        rb = rb.header("accept", a);
    }
    let resp = rb.send().unwrap();
    Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.bytes().unwrap().to_vec() }
}

fn scrape(flick: &Flick) -> String {
    let r = scrape_at(&flick.base, Some(&format!("Bearer {TOKEN}")), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// Runs `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(text: &str) {
    let promtool = common::which("promtool").expect(
        "promtool is not installed (Debian: apt-get install prometheus); .ci/run installs it in its tools stage",
    );
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- the scrape:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The samples of one metric: label set (as `k=v,…` in the order written) → value.
fn samples(text: &str, metric: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else { continue };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let (labels, value) = rest.split_once("} ").unwrap();
            (labels.replace('"', ""), value)
        } else if let Some(value) = rest.strip_prefix(' ') {
            (String::new(), value)
        } else {
            continue; // another metric with this one's name as a prefix
        };
        out.insert(labels, value.parse().unwrap_or_else(|e| panic!("{line}: {e}")));
    }
    out
}

fn value(text: &str, metric: &str, labels: &str) -> f64 {
    samples(text, metric).get(labels).copied().unwrap_or_else(|| panic!("no {metric}{{{labels}}} in:\n{text}"))
}

fn send_async(flick: &Flick, name: &str) -> String {
    let r = http()
        .post(format!("{}/fn/{name}", flick.base))
        .bearer_auth(&flick.key)
        .header("x-flick-async", "true")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    r.headers()["x-flick-activation-id"].to_str().unwrap().to_string()
}

#[test]
fn a_scrape_after_a_mixed_workload_passes_promtool_and_matches_the_records() {
    let flick = Flick::start_with(&[], Some(&format!("[metrics]\ntoken = \"{TOKEN}\"\n")));
    flick.deploy_py(
        "ok",
        "[env]\nSECRET_VALUE = \"env-secret-4f1d9c\"\n",
        "def handler(event, context):\n    return {\"ok\": True}\n",
    );
    flick.deploy_py("boom", "retries = 0\n", "def handler(event, context):\n    raise ValueError('boom')\n");
    flick.deploy_files(
        "slow",
        &[
            ("flick.toml", &manifest("slow", "exec", "sh run.sh", "timeout = \"1s\"\nretries = 0\n")),
            ("run.sh", "sleep 10\n"),
        ],
    );

    // Success (a cold start, then warm ones), an error, a timeout, an async call.
    for _ in 0..4 {
        assert_eq!(flick.invoke("ok", "{}").status, 200);
    }
    assert_eq!(flick.invoke("boom", "{}").status, 500);
    assert_eq!(flick.invoke("slow", "").status, 504);
    let id = send_async(&flick, "ok");
    let done = flick.wait_until(Duration::from_secs(30), || {
        let r = flick.get(&format!("/v1/activations/{id}"));
        r.status == 200 && r.json()["status"] == "success"
    });
    assert!(done, "the async call did not finish");
    // Two refused scrapes, counted under the metrics surface.
    assert_eq!(scrape_at(&flick.base, None, None).status, 401);
    assert_eq!(scrape_at(&flick.base, Some("Bearer nope"), None).status, 401);

    let text = scrape(&flick);
    promtool_check(&text);

    // Every activation record, counted the way the metric labels them.
    let records = flick.get("/v1/activations?limit=1000").json();
    let records = records["activations"].as_array().unwrap();
    assert_eq!(records.len(), 7, "4 ok + boom + slow + async: {records:?}");
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    let (mut cold, mut timeouts) = (BTreeMap::<String, f64>::new(), 0.0);
    for a in records {
        let start = match (a["cold"].as_bool().unwrap(), a["prewarmed"].as_bool().unwrap_or(false)) {
            (true, true) => "prewarmed",
            (true, false) => "cold",
            (false, _) => "warm",
        };
        let function = a["function"].as_str().unwrap();
        let key = format!(
            "function={function},status={},cause={},start={start}",
            a["status"].as_str().unwrap(),
            a["cause"].as_str().unwrap()
        );
        *want.entry(key).or_default() += 1.0;
        if a["cold"] == true {
            *cold.entry(function.to_string()).or_default() += 1.0;
        }
        if a["status"] == "timeout" {
            timeouts += 1.0;
        }
    }
    assert_eq!(samples(&text, "flick_invocations_total"), want, "the counters are the records");
    for (function, n) in [("ok", 5.0), ("boom", 1.0), ("slow", 1.0)] {
        assert_eq!(value(&text, "flick_invocation_duration_seconds_count", &format!("function={function}")), n);
        assert_eq!(value(&text, "flick_invocation_queue_seconds_count", &format!("function={function}")), n);
        let cold_starts = cold.get(function).copied().unwrap_or(0.0);
        let init = samples(&text, "flick_invocation_init_seconds_count");
        assert_eq!(init.get(&format!("function={function}")).copied().unwrap_or(0.0), cold_starts, "{function}");
    }
    assert!(want.keys().any(|k| k.contains("status=error")) && timeouts == 1.0, "{want:?}");
    assert_eq!(value(&text, "flick_sandbox_kills_total", "reason=timeout"), timeouts);
    assert_eq!(value(&text, "flick_sandbox_kills_total", "reason=oom"), 0.0);

    // Responses by surface and code: the 4 sync calls of `ok` (and the
    // async accept's 202), the error, the timeout, the refused scrapes.
    let http = samples(&text, "flick_http_responses_total");
    assert!(http["surface=native,code=200"] >= 4.0, "{http:?}");
    assert_eq!(http["surface=native,code=202"], 1.0, "{http:?}");
    assert_eq!(http["surface=native,code=500"], 1.0, "{http:?}");
    assert_eq!(http["surface=native,code=504"], 1.0, "{http:?}");
    assert_eq!(http["surface=metrics,code=401"], 2.0, "{http:?}");

    // Gauges read from the scheduler and the queue at this scrape.
    let idle = value(&text, "flick_instances", "function=ok,state=idle");
    let busy = value(&text, "flick_instances", "function=ok,state=busy");
    assert_eq!(idle + busy, flick.instances("ok") as f64, "instances of ok: {text}");
    assert_eq!(busy, 0.0);
    assert!(samples(&text, "flick_instances").contains_key("function=,state=stem_cell"));
    for state in ["ready", "leased", "dead"] {
        assert_eq!(value(&text, "flick_async_queue_items", &format!("function=ok,state={state}")), 0.0);
    }
    assert_eq!(value(&text, "flick_async_queue_lag_seconds", "function=ok"), 0.0);
    assert_eq!(value(&text, "flick_build_info", &format!("version={}", env!("CARGO_PKG_VERSION"))), 1.0);

    // Nothing secret in a scrape: no environment value, no key, no token.
    for secret in ["env-secret-4f1d9c", flick.key.as_str(), TOKEN] {
        assert!(!text.contains(secret), "the scrape shows `{secret}`");
    }

    // Prometheus asks for OpenMetrics and gets it; the series are the same.
    let om =
        scrape_at(&flick.base, Some(&format!("Bearer {TOKEN}")), Some("application/openmetrics-text; version=1.0.0"));
    assert_eq!(om.status, 200);
    assert!(om.header("content-type").unwrap().starts_with("application/openmetrics-text"), "{:?}", om.headers);
    assert!(om.text().ends_with("# EOF\n"));
    assert_eq!(samples(&om.text(), "flick_invocations_total"), want);
}

#[test]
fn only_the_metrics_token_or_the_admin_key_may_scrape() {
    let flick = Flick::start_with(&["--metrics-token", TOKEN], None);
    let base = flick.base.as_str();
    for (authorization, why) in [
        (None, "no credentials"),
        (Some("Bearer wrong-token-0123456789abcdef".to_string()), "a wrong token"),
        (Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])), "a prefix of the token"),
        (Some(format!("Bearer {TOKEN}x")), "the token and more"),
        (Some(format!("Basic {}", base64_of(&format!("admin:{TOKEN}")))), "the token as a Basic password"),
        (Some(TOKEN.to_string()), "the token without a scheme"),
    ] {
        let r = scrape_at(base, authorization.as_deref(), None);
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{why}: {:?}", r.headers);
        assert!(!r.text().contains("flick_"), "{why}: a refusal shows no metric");
    }
    assert_eq!(scrape_at(base, Some(&format!("Bearer {TOKEN}")), None).status, 200);
    assert_eq!(scrape_at(base, Some(&format!("Bearer {}", flick.key)), None).status, 200, "the admin key may");
    let basic = format!("Basic {}", base64_of(&format!("admin:{}", flick.key)));
    assert_eq!(scrape_at(base, Some(&basic), None).status, 200, "the admin key may, as Basic too");

    // The token opens /metrics and nothing else.
    flick.deploy_py("private", "", "def handler(event, context):\n    return 'hi'\n");
    for (method, path) in [("GET", "/v1/functions"), ("GET", "/v1/activations"), ("POST", "/fn/private")] {
        let r = http().request(method.parse().unwrap(), format!("{base}{path}")).bearer_auth(TOKEN).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{method} {path} with the metrics token");
    }
    // Only GET.
    let r = http().post(format!("{base}/metrics")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

#[test]
fn a_short_or_blank_metrics_token_is_refused_at_start() {
    for (token, why) in [("short", "too short"), ("has a space but is long enough", "a space")] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(common::BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("FLICK_METRICS_TOKEN", token)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{why}: flick started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("metrics") && err.contains("token"), "{why}: {err}");
        assert!(!err.contains(token), "{why}: the error repeats the token: {err}");
        assert!(!dir.path().join("flick.addr").exists(), "{why}: nothing was served");
    }
}

#[test]
fn a_separate_metrics_listener_serves_only_metrics() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let flick = Flick::start_with(&["--metrics-listen", &listen, "--metrics-token", TOKEN], None);
    let metrics_base = format!("http://{listen}");
    let r = scrape_at(&metrics_base, Some(&format!("Bearer {TOKEN}")), None);
    assert_eq!(r.status, 200, "{}", r.text());
    promtool_check(&r.text());
    assert_eq!(scrape_at(&metrics_base, None, None).status, 401, "still behind the token");
    // Nothing else there: not the API, not functions.
    for path in ["/healthz", "/v1/functions", "/fn/x"] {
        let r = http().get(format!("{metrics_base}{path}")).bearer_auth(&flick.key).send().unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path} on the metrics listener");
    }
    // And /metrics is not on the main listener.
    assert_eq!(scrape_at(&flick.base, Some(&format!("Bearer {}", flick.key)), None).status, 404);
    // Its own responses are counted too.
    let text = scrape_at(&metrics_base, Some(&format!("Bearer {TOKEN}")), None).text();
    assert!(value(&text, "flick_http_responses_total", "surface=metrics,code=401") >= 1.0, "{text}");
}

#[test]
fn metrics_switched_off_count_nothing_and_serve_nothing() {
    let flick = Flick::start_with(&[], Some("[metrics]\nenabled = false\n"));
    flick.deploy_py("ok", "", "def handler(event, context):\n    return 1\n");
    assert_eq!(flick.invoke("ok", "{}").status, 200);
    let r = scrape_at(&flick.base, Some(&format!("Bearer {}", flick.key)), None);
    assert_eq!(r.status, 404, "{}", r.text());
    drop(flick);
    let flick = Flick::start_with(&["--no-metrics"], None);
    assert_eq!(scrape_at(&flick.base, Some(&format!("Bearer {}", flick.key)), None).status, 404);
}

#[test]
fn trigger_deliveries_are_the_triggers_own_counts() {
    let flick = Flick::start_with(&["--metrics-token", TOKEN], None);
    let extra = "[[triggers]]\ntype = \"cron\"\nname = \"tick\"\nschedule = \"* * * * * *\"\n";
    flick.deploy_py("ticker", extra, "def handler(event, context):\n    return 1\n");
    let fired = || -> u64 {
        let t = flick.get("/v1/triggers/ticker").json();
        t["triggers"][0]["fired"].as_u64().unwrap()
    };
    assert!(flick.wait_until(Duration::from_secs(15), || fired() >= 2), "the cron trigger never fired");
    let before = fired();
    let text = scrape(&flick);
    let after = fired();
    let delivered = value(&text, "flick_trigger_deliveries_total", "function=ticker,trigger=tick,type=cron");
    assert!((before as f64..=after as f64).contains(&delivered), "{before} <= {delivered} <= {after}");
    assert_eq!(value(&text, "flick_trigger_failures_total", "function=ticker,trigger=tick,type=cron"), 0.0);
    promtool_check(&text);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
