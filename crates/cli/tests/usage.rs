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
