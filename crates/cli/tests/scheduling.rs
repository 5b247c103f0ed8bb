//! Scheduling under load: bounded queueing, deadlines, the host budget and
//! the timing breakdown, against a real `flick up`.

mod common;

use std::time::{Duration, Instant};

use common::{Flick, manifest};

const SLEEPY: &str = "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return {'slept': event.get('sleep', 0)}\n";

fn deploy_sleepy(flick: &Flick, name: &str, extra: &str) {
    flick.deploy_files(name, &[("flick.toml", &manifest(name, "python3", "main.handler", extra)), ("main.py", SLEEPY)]);
}

#[test]
fn at_max_instances_requests_wait_then_get_429_with_retry_after() {
    let flick = Flick::start_with(&[], Some("queue_timeout = \"500ms\"\n"));
    deploy_sleepy(&flick, "one", "max_instances = 1\ntimeout = \"10s\"\n");
    assert_eq!(flick.invoke("one", "{}").status, 200, "warm it up");
    std::thread::scope(|s| {
        let busy = s.spawn(|| flick.invoke("one", r#"{"sleep": 2}"#));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let rejected = flick.invoke("one", "{}");
        let waited = started.elapsed();
        assert_eq!(rejected.status, 429, "{}", rejected.text());
        assert_eq!(rejected.header("retry-after").as_deref(), Some("1"));
        assert!(rejected.text().contains("at capacity"), "{}", rejected.text());
        assert!(waited >= Duration::from_millis(400), "it waited in the queue first ({waited:?})");
        assert_eq!(busy.join().unwrap().status, 200, "the running call is unaffected");
    });
    assert_eq!(flick.invoke("one", "{}").status, 200, "free again");
}

#[test]
fn a_full_queue_rejects_at_once_and_queued_requests_are_served() {
    let flick = Flick::start_with(&[], Some("queue_timeout = \"5s\"\nmax_queue = 1\n"));
    deploy_sleepy(&flick, "narrow", "max_instances = 1\ntimeout = \"10s\"\n");
    assert_eq!(flick.invoke("narrow", "{}").status, 200);
    std::thread::scope(|s| {
        let first = s.spawn(|| flick.invoke("narrow", r#"{"sleep": 1}"#));
        std::thread::sleep(Duration::from_millis(200));
        let queued = s.spawn(|| flick.invoke("narrow", "{}"));
        assert!(
            flick.wait_until(Duration::from_secs(2), || flick.pool_stat("narrow", "waiting") == 1),
            "second request queued"
        );
        let started = Instant::now();
        let rejected = flick.invoke("narrow", "{}");
        assert_eq!(rejected.status, 429, "{}", rejected.text());
        assert!(started.elapsed() < Duration::from_millis(900), "rejected without waiting");
        assert_eq!(first.join().unwrap().status, 200);
        let q = queued.join().unwrap();
        assert_eq!(q.status, 200, "{}", q.text());
        let a = flick.activation(&q.activation_id());
        assert!(a["wait_ms"].as_f64().unwrap() > 100.0, "the queued request's wait is recorded: {a}");
    });
}

#[test]
fn the_callers_deadline_bounds_the_whole_request() {
    let flick = Flick::start();
    deploy_sleepy(&flick, "slow", "timeout = \"10s\"\n");
    assert_eq!(flick.invoke("slow", "{}").status, 200);
    let call = |deadline: &str, sleep: f64| {
        let url = format!("{}/fn/slow", flick.base);
        let resp = reqwest::blocking::Client::new()
            .post(url)
            .bearer_auth(&flick.key)
            .header("x-flick-deadline", deadline)
            .body(format!("{{\"sleep\": {sleep}}}"))
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let id = resp.headers().get("x-flick-activation-id").map(|v| v.to_str().unwrap().to_string());
        (status, id, resp.text().unwrap())
    };
    let started = Instant::now();
    let (status, id, body) = call("300", 2.0);
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_millis(1500), "the 300 ms budget ended it, not the 10 s timeout");
    // The call ran on to its end; its record, written then, says so.
    let path = format!("/v1/activations/{}", id.unwrap());
    assert!(flick.wait_until(Duration::from_secs(20), || flick.get(&path).status == 200));
    let a = flick.get(&path).json();
    assert_eq!((a["status"].as_str(), a["http_status"].as_u64()), (Some("success"), Some(504)), "{a}");
    assert!(a["caller_gave_up_ms"].as_f64().is_some(), "{a}");
    let (status, _, body) = call("5000", 0.0);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call("soon", 0.0);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("X-Flick-Deadline"), "{body}");
}

#[test]
fn responses_carry_server_timing_and_records_the_breakdown() {
    let flick = Flick::start();
    deploy_sleepy(&flick, "timed", "");
    let r = flick.invoke("timed", r#"{"sleep": 0.05}"#);
    assert_eq!(r.status, 200);
    let timing = r.header("server-timing").expect("a Server-Timing header");
    for metric in ["queue;dur=", "init;dur=", "exec;dur=", "total;dur="] {
        assert!(timing.contains(metric), "{timing}");
    }
    let a = flick.activation(&r.activation_id());
    let (init, exec, total) =
        (a["init_ms"].as_f64().unwrap(), a["exec_ms"].as_f64().unwrap(), a["duration_ms"].as_f64().unwrap());
    assert!(exec >= 50.0, "exec covers the handler's sleep: {a}");
    assert!(init > 0.0, "first call was a cold start: {a}");
    assert!(init + exec <= total + 0.01, "parts fit in the total: {a}");
}

#[test]
fn the_host_budget_evicts_idle_instances_to_make_room() {
    let flick = Flick::start_with(&[], Some("max_instances_total = 1\nqueue_timeout = \"5s\"\n"));
    deploy_sleepy(&flick, "first", "keep_alive = \"10m\"\n");
    deploy_sleepy(&flick, "second", "keep_alive = \"10m\"\n");
    assert_eq!(flick.invoke("first", "{}").status, 200);
    assert_eq!(flick.instances("first"), 1);
    // The budget is full with `first`'s idle instance: `second` waits until
    // the reaper evicts it, then starts.
    let r = flick.invoke("second", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(flick.instances("first"), 0, "the idle instance made way");
    assert_eq!(flick.instances("second"), 1);
    let budget = flick.get("/v1/instances").json()["budget"].clone();
    assert_eq!(budget["instances"], 1, "{budget}");
    assert_eq!(budget["max_instances"], 1);
}

#[test]
fn a_burst_on_a_cold_function_is_served_within_its_bounds() {
    let flick = Flick::start();
    deploy_sleepy(&flick, "bursty", "max_instances = 4\ntimeout = \"20s\"\n");
    let peak = std::sync::atomic::AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(flick.instances("bursty"), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let calls: Vec<_> = (0..20).map(|_| s.spawn(|| flick.invoke("bursty", r#"{"sleep": 0.2}"#).status)).collect();
        let statuses = calls.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        statuses
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let peak = peak.into_inner();
    assert!((1..=4).contains(&peak), "instances peaked at {peak}, bound is 4");
}

/// Default settings: a crowd that the function can serve within the queue
/// timeout is served, however many wait at once — time, not a small count,
/// is what turns requests away (`max_queue` is a memory bound in the
/// thousands).
#[test]
fn with_default_settings_a_crowd_of_200_waits_and_is_served() {
    let flick = Flick::start();
    deploy_sleepy(&flick, "crowd", "max_instances = 1\ntimeout = \"60s\"\n");
    assert_eq!(flick.invoke("crowd", "{}").status, 200, "warm it up");
    let peak = std::sync::atomic::AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        // The one instance is busy while the crowd arrives, so all of it queues.
        let busy = s.spawn(|| flick.invoke("crowd", r#"{"sleep": 3}"#).status);
        assert!(flick.wait_until(Duration::from_secs(10), || flick.pool_stat("crowd", "inflight") == 1));
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(flick.pool_stat("crowd", "waiting"), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let calls: Vec<_> = (0..200).map(|_| s.spawn(|| flick.invoke("crowd", "{}").status)).collect();
        let mut statuses: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        statuses.push(busy.join().unwrap());
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        statuses
    });
    let refused = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(refused, 0, "{refused} of 201 not served: {statuses:?}");
    let peak = peak.into_inner();
    assert!(peak > 100, "the crowd queued behind the busy instance (peak {peak} waiting)");
}
