//! Runs the language bootstraps' own protocol tests (Python's unittest,
//! driving both the Python and the Node bootstrap over a real socketpair),
//! so `cargo test` covers them too.

#[test]
fn bootstrap_protocol_suite_passes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/bootstrap");
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", dir, "-p", "test_*.py", "-v"])
        .output()
        .expect("python3 must be installed to run the bootstrap tests");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bootstrap tests failed:\n{stderr}");
    let ran: usize =
        stderr.lines().find_map(|l| l.strip_prefix("Ran ")?.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    assert!(ran >= 20, "expected the bootstrap suite to run its tests, it ran {ran}:\n{stderr}");
    assert!(stderr.contains("\nOK"), "unittest did not report OK:\n{stderr}");
}
