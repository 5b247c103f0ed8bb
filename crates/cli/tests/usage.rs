//! Measured usage per activation (CPU time, memory peak, from the
//! instance's cgroup) and its accounting per function and day.

mod common;

use common::{Flick, manifest};

const SLEEPS: &str = "import time\ndef handler(event, context):\n    time.sleep(0.2)\n    return 'slept'\n";
const ALLOCATES: &str = "def handler(event, context):\n    b = b'x' * (100 << 20)\n    return len(b)\n";
// Spins until it has used 200 ms of CPU itself (by its own clock, so a
// busy host makes it take longer, not use less), and says how much.
const SPINS: &str = "import time\ndef handler(event, context):\n    t = time.process_time()\n    \
                     while time.process_time() - t < 0.2:\n        pass\n    return (time.process_time() - t) * 1000\n";

fn f64_of(a: &serde_json::Value, key: &str) -> f64 {
    a[key].as_f64().unwrap_or_else(|| panic!("no {key}: {a}"))
}

#[test]
fn each_activation_carries_its_cpu_time_memory_peak_and_configured_memory() {
    let flick = Flick::start();
    flick.deploy_py("sleeps", "memory = \"256MiB\"\n", SLEEPS);
    flick.deploy_py("allocates", "memory = \"256MiB\"\n", ALLOCATES);
    flick.deploy_py("spins", "memory = \"128MiB\"\n", SPINS);

    for _ in 0..2 {
        let r = flick.invoke("allocates", "{}");
        assert_eq!(r.status, 200, "{}", r.text());
        let a = flick.activation(&r.activation_id());
        let peak = a["memory_peak_bytes"].as_u64().unwrap_or_else(|| panic!("no memory peak: {a}"));
        assert!(peak >= 100 << 20, "a 100 MiB allocation peaks at {peak} bytes: {a}");
        assert!(peak <= 256 << 20, "within the 256 MiB limit: {a}");
        assert_eq!(a["memory_mb"], 256);
    }

    // Warm calls (the second): no interpreter start-up in the figures.
    for _ in 0..2 {
        let r = flick.invoke("sleeps", "{}");
        assert_eq!(r.status, 200, "{}", r.text());
        let a = flick.activation(&r.activation_id());
        let (cpu, exec) = (f64_of(&a, "cpu_ms"), f64_of(&a, "exec_ms"));
        assert!(exec >= 200.0, "{a}");
        assert!(cpu < exec / 4.0, "a sleeping call uses next to no CPU ({cpu} ms of {exec} ms): {a}");
        let peak = a["memory_peak_bytes"].as_u64().unwrap();
        assert!(peak < 100 << 20, "the peak is the call's, not the other function's: {a}");
    }

    let r = flick.invoke("spins", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let a = flick.activation(&r.activation_id());
    let own: f64 = r.text().parse().unwrap();
    let (cpu, exec) = (f64_of(&a, "cpu_ms"), f64_of(&a, "exec_ms"));
    assert!(cpu >= own, "the cgroup saw at least the CPU the handler counted ({cpu} < {own} ms): {a}");
    // One core per instance: CPU time cannot exceed the call's duration
    // (plus one CFS period's slack).
    assert!(cpu <= exec + 100.0, "CPU time {cpu} ms within the call's {exec} ms: {a}");

    // Exec: one process per call, measured over its life.
    flick.deploy_files("counts", &[("flick.toml", &manifest("counts", "exec", "wc -c", ""))]);
    let r = flick.invoke("counts", "abc");
    assert_eq!(r.status, 200, "{}", r.text());
    let a = flick.activation(&r.activation_id());
    assert!(a["cpu_ms"].as_f64().is_some() && a["memory_peak_bytes"].as_u64().is_some_and(|b| b > 0), "{a}");

    // And the CLI shows it.
    let shown = flick.cli_ok(&["activation", &r.activation_id()]);
    assert!(shown.contains("usage:      cpu ") && shown.contains("memory peak"), "{shown}");
}

const FAILS: &str = "def handler(event, context):\n    raise ValueError('nope')\n";
const SERVER: &str = "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
class H(BaseHTTPRequestHandler):\n    def do_POST(self):\n        b = bytearray(40 << 20)\n        out = str(len(b)).encode()\n        \
self.send_response(200)\n        self.send_header('content-length', str(len(out)))\n        self.end_headers()\n        \
self.wfile.write(out)\n    def log_message(self, *args):\n        pass\n\
HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n";

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-9)
}

/// What the records of `calls` add up to, computed here from each record
/// as the issue defines it: (invocations, errors, cold starts, billed GB-s,
/// measured GB-s, CPU-s).
fn expected(records: &[serde_json::Value]) -> (u64, u64, u64, f64, f64, f64) {
    let mut e = (0, 0, 0, 0.0, 0.0, 0.0);
    for a in records {
        let billed_ms = (f64_of(a, "init_ms") + f64_of(a, "exec_ms")).ceil();
        e.0 += 1;
        e.1 += u64::from(a["status"] != "success");
        e.2 += u64::from(a["cold"] == true);
        e.3 += a["memory_mb"].as_f64().unwrap() / 1024.0 * billed_ms / 1000.0;
        e.4 += a["memory_peak_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64 * billed_ms / 1000.0;
        e.5 += a["cpu_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    }
    e
}

fn assert_sums(row: &serde_json::Value, records: &[serde_json::Value], prices: (f64, f64)) {
    let (n, errors, cold, billed, measured, cpu) = expected(records);
    assert_eq!((row["invocations"].as_u64(), row["errors"].as_u64()), (Some(n), Some(errors)), "{row}");
    assert_eq!(row["cold_starts"].as_u64(), Some(cold), "{row}");
    assert!(close(f64_of(row, "billed_gb_s"), billed), "billed {billed}: {row}");
    assert!(close(f64_of(row, "measured_gb_s"), measured), "measured {measured}: {row}");
    assert!(close(f64_of(row, "cpu_s"), cpu), "cpu {cpu}: {row}");
    let cost = billed * prices.0 + n as f64 * prices.1 / 1e6;
    assert!(close(f64_of(row, "cost"), cost), "cost {cost}: {row}");
}

fn calls(flick: &Flick, name: &str, n: usize, want: u16) -> Vec<serde_json::Value> {
    (0..n)
        .map(|_| {
            let r = flick.invoke(name, "{}");
            assert_eq!(r.status, want, "{}", r.text());
            flick.activation(&r.activation_id())
        })
        .collect()
}

#[test]
fn usage_per_function_and_day_is_the_sum_of_its_calls_priced_as_configured() {
    let flick = Flick::start_with(
        &[],
        Some("[pricing]\ngb_second = 0.00002\nper_million_requests = 0.4\ncurrency = \"EUR\"\n"),
    );
    let prices = (0.00002, 0.4);
    flick.deploy_py("sleeps", "memory = \"256MiB\"\n", SLEEPS);
    flick.deploy_py("allocates", "memory = \"256MiB\"\n", ALLOCATES);
    flick.deploy_py("fails", "memory = \"128MiB\"\n", FAILS);

    let sleeps = calls(&flick, "sleeps", 4, 200);
    let allocates = calls(&flick, "allocates", 2, 200);
    let fails = calls(&flick, "fails", 2, 500);
    // The figure: 256 MiB for 200 ms is 0.05 GB-s. A warm call
    // sleeps 200 ms and a little more (rounded up to the ms).
    for a in &sleeps[1..] {
        let (_, _, _, billed, _, _) = expected(std::slice::from_ref(a));
        assert!((0.05..0.0625).contains(&billed), "a warm 200 ms call of 256 MiB bills {billed} GB-s: {a}");
        assert_eq!(a["cold"], false, "{a}");
    }
    for a in &allocates {
        let (_, _, _, billed, measured, _) = expected(std::slice::from_ref(a));
        assert!(measured >= billed * 100.0 / 256.0, "a 100 MiB peak is measured ({measured} of {billed} GB-s): {a}");
    }

    let today = flick_day(&sleeps[0]);
    let v = flick.get("/v1/usage?since=1d").json();
    assert_eq!(v["currency"], "EUR", "{v}");
    assert_eq!(v["prices"], serde_json::json!({ "gb_second": 0.00002, "per_million_requests": 0.4 }), "{v}");
    let days = v["days"].as_array().unwrap();
    let names: Vec<_> = days.iter().map(|d| (d["function"].as_str().unwrap(), d["day"].as_str().unwrap())).collect();
    assert_eq!(names, [("allocates", &*today), ("fails", &*today), ("sleeps", &*today)], "{v}");
    assert_sums(&days[0], &allocates, prices);
    assert_sums(&days[1], &fails, prices);
    assert_sums(&days[2], &sleeps, prices);
    assert_eq!(v["days"][1]["errors"], 2, "both failed calls are errors");
    assert!(v["days"][2]["cold_starts"].as_u64() >= Some(1), "the first call started an instance: {v}");
    let functions = v["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 3, "{v}");
    assert_eq!(functions[2]["function"], "sleeps");
    assert_sums(&functions[2], &sleeps, prices);
    let all: Vec<_> = [&sleeps[..], &allocates, &fails].concat();
    assert_sums(&v["total"], &all, prices);

    // One function; `since` as a date; a day with nothing yet.
    let one = flick.get(&format!("/v1/usage?function=sleeps&since={today}")).json();
    assert_eq!(one["since"], today.as_str());
    assert_eq!(one["days"].as_array().unwrap().len(), 1, "{one}");
    assert_sums(&one["total"], &sleeps, prices);
    let future = flick.get("/v1/usage?since=2999-01-01").json();
    assert_eq!((future["days"].as_array().unwrap().len(), &future["total"]["invocations"]), (0, &0.into()), "{future}");
    assert_eq!(future["since"], "2999-01-01");
    let default = flick.get("/v1/usage").json();
    assert_eq!(default["total"], v["total"], "30 days by default");

    // The CLI: a table with every row and the totals, and the JSON.
    let table = flick.cli_ok(&["usage"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("EUR") && lines[0].contains("0.00002"), "{table}");
    for col in ["DAY", "FUNCTION", "INVOCATIONS", "ERRORS", "COLD", "BILLED GB-S", "MEASURED GB-S", "CPU-S", "COST"] {
        assert!(lines[1].contains(col), "{col}: {table}");
    }
    let row = lines.iter().find(|l| l.starts_with(&today) && l.contains("sleeps")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], "4", "{row}");
    let billed: f64 = cells[5].parse().unwrap();
    assert!((billed - f64_of(&v["days"][2], "billed_gb_s")).abs() < 0.00006, "{row}");
    let total = lines.last().unwrap();
    assert!(total.starts_with("total") && total.split_whitespace().nth(1) == Some("8"), "{table}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("total")).count(), 4, "one per function and the overall: {table}");
    let only = flick.cli_ok(&["usage", "fails", "--since", "7d"]);
    assert!(!only.contains("sleeps") && only.lines().any(|l| l.contains("fails")), "{only}");
    let json: serde_json::Value = serde_json::from_str(&flick.cli_ok(&["usage", "--json", "--since", "1d"])).unwrap();
    assert_eq!((&json["days"], &json["total"], &json["prices"]), (&v["days"], &v["total"], &v["prices"]));
}

/// The UTC day (`YYYY-MM-DD`) an activation started.
fn flick_day(a: &serde_json::Value) -> String {
    let ms = a["start_ms"].as_i64().unwrap();
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's civil_from_days, as flick computes it.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[test]
fn usage_refuses_bad_input_and_callers_without_the_key() {
    let flick = Flick::start();
    flick.deploy_py("sleeps", "", SLEEPS);
    for since in ["garbage", "-7d", "2026-02-30", "7y", "99999999999d", "%1b%5B2J"] {
        let r = flick.get(&format!("/v1/usage?since={since}"));
        assert_eq!(r.status, 400, "since={since}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("`since`"), "{message}");
        assert!(!message.contains('\u{1b}'), "{message}");
    }
    let r = flick.get("/v1/usage?function=nosuch");
    assert_eq!(r.status, 404, "a name that never ran and is not deployed is a typo: {}", r.text());
    assert!(r.text().contains("nosuch"), "{}", r.text());
    let r = flick.get("/v1/usage?function=..%2Fetc");
    assert_eq!(r.status, 400, "{}", r.text());
    // Deployed but not called yet: nothing to bill, not an error.
    let v = flick.get("/v1/usage?function=sleeps").json();
    assert_eq!((v["days"].as_array().unwrap().len(), &v["total"]["invocations"]), (0, &0.into()), "{v}");

    let r = flick.get_anon("/v1/usage");
    assert_eq!(r.status, 401, "{}", r.text());
    let wrong = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/v1/usage", flick.base))
        .bearer_auth("flk_not-the-key")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let out = flick.cli(&["usage", "--since", "garbage"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`since`"), "{out:?}");
    let out = flick.cli(&["usage", "nosuch"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nosuch"), "{out:?}");
}

/// `flick up` with `config` as its config.toml (and `args`) must stop by
/// itself, non-zero, before listening. Returns its stderr.
fn up_refuses(config: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env_remove("FLICK_PRICE_GB_SECOND")
        .env_remove("FLICK_PRICE_PER_MILLION_REQUESTS")
        .env_remove("FLICK_CURRENCY")
        .env_remove("FLICK_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "flick up ran with {config} {args:?}");
    assert!(!dir.path().join("flick.addr").exists(), "flick up listened despite a bad config");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_prices_stop_flick_up_with_the_key_named() {
    let err = up_refuses("[pricing]\ngb_second = -0.00001\n", &[]);
    assert!(err.contains("gb_second") && err.contains("at least 0"), "{err}");
    let err = up_refuses("[pricing]\nper_million_requests = -1\n", &[]);
    assert!(err.contains("per_million_requests"), "{err}");
    let err = up_refuses("[pricing]\ncurrency = \"dollars\"\n", &[]);
    assert!(err.contains("currency"), "{err}");
    let err = up_refuses("[pricing]\nper_gb_second = 1\n", &[]);
    assert!(err.contains("per_gb_second"), "{err}");
    let err = up_refuses("", &["--price-gb-second=-1"]);
    assert!(err.contains("gb_second"), "{err}");
}

#[test]
fn http_instances_are_measured_too() {
    let flick = Flick::start();
    flick.deploy_files(
        "web",
        &[
            ("flick.toml", &manifest("web", "http", "python3 server.py", "memory = \"128MiB\"\n")),
            ("server.py", SERVER),
        ],
    );
    for _ in 0..2 {
        let r = flick.invoke("web", "");
        assert_eq!(r.status, 200, "{}", r.text());
        let a = flick.activation(&r.activation_id());
        assert!(a["cpu_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{a}");
        let peak = a["memory_peak_bytes"].as_u64().unwrap_or_else(|| panic!("not measured: {a}"));
        assert!(peak >= 40 << 20, "a 40 MiB buffer shows in the peak ({peak}): {a}");
        assert_eq!(a["memory_mb"], 128, "{a}");
    }
}

/// `usage_daily` is a ledger: pruning records and deleting the function
/// leave it as it was.
#[test]
fn the_bill_outlives_pruned_records_and_deleted_functions() {
    let flick = Flick::start_with(&[], Some("activations_per_function = 2\n"));
    flick.deploy_py("sleeps", "memory = \"256MiB\"\n", SLEEPS);
    let records = calls(&flick, "sleeps", 5, 200);
    let kept = flick.get("/v1/activations?function=sleeps").json();
    assert!(kept["activations"].as_array().unwrap().len() <= 2, "records were pruned: {kept}");
    let before = flick.get("/v1/usage?function=sleeps").json();
    assert_sums(&before["total"], &records, (0.0000166667, 0.2));

    flick.cli_ok(&["delete", "sleeps"]);
    let after = flick.get("/v1/usage?function=sleeps").json();
    assert_eq!(after["days"], before["days"], "a deleted function's history stays");
    assert_eq!(flick.get("/v1/usage").json()["total"], before["total"]);
    assert!(flick.cli_ok(&["usage", "sleeps"]).lines().any(|l| l.contains("sleeps")));
}

/// Each attempt of a retried async call ran and is billed (as Lambda bills
/// retries), though only the last one leaves a record.
#[test]
fn every_attempt_of_a_retried_async_call_is_counted() {
    let flick = Flick::start_with(&[], Some("retry_base = \"50ms\"\nretry_cap = \"100ms\"\n"));
    flick.deploy_py(
        "flaky",
        "memory = \"256MiB\"\nretries = 2\n",
        "import time\ndef handler(event, context):\n    time.sleep(0.2)\n    raise RuntimeError('not yet')\n",
    );
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/fn/flaky", flick.base))
        .bearer_auth(&flick.key)
        .header("x-flick-async", "true")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-flick-activation-id"].to_str().unwrap().to_string();
    let mut last = serde_json::Value::Null;
    let done = flick.wait_until(std::time::Duration::from_secs(60), || {
        last = flick.get(&format!("/v1/activations/{id}")).json();
        !matches!(last["status"].as_str(), Some("queued" | "running"))
    });
    assert!(done && last["attempt"] == 3, "three attempts: {last}");
    assert_eq!(flick.get("/v1/activations?function=flaky").json()["activations"].as_array().unwrap().len(), 1);
    let v = flick.get("/v1/usage?function=flaky").json();
    let total = &v["total"];
    assert_eq!((total["invocations"].as_u64(), total["errors"].as_u64()), (Some(3), Some(3)), "{v}");
    assert!(f64_of(total, "billed_gb_s") >= 3.0 * 0.05, "three 200 ms attempts of 256 MiB: {v}");
}
