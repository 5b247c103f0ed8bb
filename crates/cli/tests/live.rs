//! Live views against a real flick: log lines over server-sent events
//! (`GET /v1/logs`, `flick logs -f`), the statistics (`GET /v1/stats`,
//! `/v1/stats/series`, `flick top --once`) checked against known calls,
//! and the bounds a follower cannot get past (key, stream count, a client
//! that never reads).

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{BIN, Flick, manifest};
use serde_json::Value;

/// Prints its body on stdout and a note on stderr, then keeps running for
/// a while: its lines must arrive before it answers.
const TALKER: &str = "import sys, time\ndef handle(body):\n    \
                      print('said ' + body, flush=True)\n    print('note ' + body, file=sys.stderr, flush=True)\n    \
                      time.sleep(1.5)\n    return 'done'\n";
const EXEC_SCRIPT: &str = "echo \"exec says $(cat)\" >&2\necho out\n";

/// A python3 function in OpenFaaS's shape: `handle(body)` gets the body as text.
fn deploy_handle(flick: &Flick, name: &str, extra: &str, code: &str) {
    flick.deploy_files(name, &[("flick.toml", &manifest(name, "python3", "main.handle", extra)), ("main.py", code)]);
}

/// A raw HTTP/1.1 client on `/v1/logs`: what any SSE consumer would see.
struct Sse {
    stream: TcpStream,
    /// Read but not yet split into lines (chunked framing is left in: its
    /// size lines are not `event:`/`data:` lines, and an event never spans chunks).
    raw: String,
    /// The last `event:` name seen.
    event: Option<String>,
    /// Every event so far, in order: (name, data).
    events: Vec<(String, Value)>,
}

impl Sse {
    /// Connects and reads the head; returns the status and the client.
    fn open(flick: &Flick, query: &str, key: Option<&str>) -> (u16, Sse) {
        let addr = flick.base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        write!(stream, "GET /v1/logs{query} HTTP/1.1\r\nHost: {addr}\r\n{auth}Accept: text/event-stream\r\n\r\n")
            .unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).unwrap(),
                1,
                "closed before the head: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        if status == 200 {
            assert!(head.to_lowercase().contains("content-type: text/event-stream"), "{head}");
        }
        (status, Sse { stream, raw: String::new(), event: None, events: Vec::new() })
    }

    /// Waits until an event named `event` whose data satisfies `check` has
    /// arrived (at any time since the stream opened), or `timeout` passes.
    fn wait_for(&mut self, event: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, v)) = self.events.iter().find(|(e, v)| e == event && check(v)) {
                return Some(v.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
            let mut buf = [0u8; 64 << 10];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.raw.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the stream: {e}"),
            }
            while let Some(end) = self.raw.find('\n') {
                let line: String = self.raw.drain(..=end).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(name) = line.strip_prefix("event: ") {
                    self.event = Some(name.to_string());
                } else if let Some(data) = line.strip_prefix("data: ")
                    && let Some(name) = self.event.take()
                {
                    let value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
                    self.events.push((name, value));
                }
            }
        }
    }
}

/// Invokes on another thread: the caller's answer comes later.
fn invoke_in_background(flick: &Flick, name: &str, body: &str) -> mpsc::Receiver<(u16, String)> {
    let (base, key, name, body) = (flick.base.clone(), flick.key.clone(), name.to_string(), body.to_string());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
        let r = http.post(format!("{base}/fn/{name}")).bearer_auth(key).body(body).send().unwrap();
        let id = r.headers()["x-flick-activation-id"].to_str().unwrap().to_string();
        let _ = tx.send((r.status().as_u16(), id));
    });
    rx
}

#[test]
fn log_lines_stream_as_functions_write_them_with_activation_id_and_stream() {
    let flick = Flick::start();
    deploy_handle(&flick, "talker", "", TALKER);
    flick.deploy_files(
        "shout",
        &[("flick.toml", &manifest("shout", "exec", "sh ./shout.sh", "")), ("shout.sh", EXEC_SCRIPT)],
    );

    // Refused without the key, and for a function that does not exist.
    let (status, _) = Sse::open(&flick, "?function=talker", None);
    assert_eq!(status, 401);
    let (status, _) = Sse::open(&flick, "?function=talker", Some("wrong-key"));
    assert_eq!(status, 401);
    let (status, _) = Sse::open(&flick, "?function=nope", Some(&flick.key));
    assert_eq!(status, 404);

    let (status, mut only_talker) = Sse::open(&flick, "?function=talker", Some(&flick.key));
    assert_eq!(status, 200);
    let (_, mut everything) = Sse::open(&flick, "", Some(&flick.key));

    // python3: the line arrives while the call is still running (it sleeps
    // 1.5 s after printing), with this call's id and the stream it was on.
    let answer = invoke_in_background(&flick, "talker", "first");
    let line = only_talker
        .wait_for("log", Duration::from_secs(30), |v| v["text"] == "said first")
        .expect("the python line on the stream");
    assert!(answer.try_recv().is_err(), "the line came before the call answered");
    let (status, id) = answer.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(line["activation_id"], id.as_str(), "{line}");
    assert_eq!((line["function"].as_str(), line["stream"].as_str()), (Some("talker"), Some("stdout")), "{line}");
    assert!(line["ts_ms"].as_i64().unwrap() > 0);
    let note =
        only_talker.wait_for("log", Duration::from_secs(10), |v| v["text"] == "note first").expect("the stderr line");
    assert_eq!((note["stream"].as_str(), note["activation_id"].as_str()), (Some("stderr"), Some(id.as_str())));

    // exec: one process per call, its stderr streamed the same way.
    let r = flick.invoke("shout", "loud");
    assert_eq!(r.status, 200, "{}", r.text());
    let exec_line = everything
        .wait_for("log", Duration::from_secs(20), |v| v["text"] == "exec says loud")
        .expect("the exec line on the unfiltered stream");
    assert_eq!(exec_line["activation_id"], r.activation_id().as_str());
    assert_eq!((exec_line["function"].as_str(), exec_line["stream"].as_str()), (Some("shout"), Some("stderr")));
    // The unfiltered stream had the python lines too; the filtered one never gets shout's.
    assert!(everything.wait_for("log", Duration::ZERO, |v| v["text"] == "said first").is_some());
    assert!(only_talker.wait_for("log", Duration::from_secs(2), |v| v["function"] == "shout").is_none());

    // The record still has its logs, as before.
    let a = flick.activation(&id);
    assert!(a["logs"].as_array().unwrap().iter().any(|l| l["text"] == "said first"), "{a}");
}

#[test]
fn flick_logs_follow_prints_lines_live_and_survives_a_restart() {
    let flick = Flick::start();
    deploy_handle(&flick, "talker", "", TALKER);
    let r = flick.invoke("talker", "before");
    assert_eq!(r.status, 200);

    let mut follower = Command::new(BIN)
        .args(["logs", "talker", "-f"])
        .env("FLICK_DATA_DIR", flick.data_dir())
        .env_remove("FLICK_URL")
        .env_remove("FLICK_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Lines of both streams may come in either order: every line is kept.
    let history = std::cell::RefCell::new(Vec::<String>::new());
    let wait_line = |want: &str| -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = history.borrow().iter().find(|l| l.contains(want)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            history.borrow_mut().push(lines.recv_timeout(left).ok()?);
        }
    };
    // The recent record first (the stream is open by then), then live.
    let old = wait_line("said before").expect("the recent line");
    assert!(old.contains(&r.activation_id()) && old.contains(" stdout "), "{old}");
    let answer = invoke_in_background(&flick, "talker", "live");
    let line = wait_line("said live").expect("the live line from flick logs -f");
    let (_, id) = answer.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(line.contains(&id) && line.contains(" stdout "), "{line}");
    let note = wait_line("note live").expect("the stderr line");
    assert!(note.contains(&id) && note.contains(" stderr "), "{note}");

    // flick restarts (on another port): the follower finds it again.
    let dir = flick.into_dir();
    let flick = Flick::start_in(dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let r = flick.invoke("talker", "again");
        assert_eq!(r.status, 200);
        if let Some(l) = wait_line_quick(&lines, "said again", &history) {
            break (l, r.activation_id());
        }
        assert!(Instant::now() < deadline, "flick logs -f did not reconnect");
    };
    assert!(again.0.contains(&again.1), "{again:?}");
    follower.kill().unwrap();
    follower.wait().unwrap();
}

fn wait_line_quick(
    lines: &mpsc::Receiver<String>,
    want: &str,
    history: &std::cell::RefCell<Vec<String>>,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(l) = history.borrow().iter().find(|l| l.contains(want)) {
            return Some(l.clone());
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        history.borrow_mut().push(lines.recv_timeout(left).ok()?);
    }
}

/// Sleeps the milliseconds its body names, fails when it says `fail`.
const WORKER: &str = "import time\ndef handle(body):\n    \
                      if body == 'fail':\n        raise ValueError('asked to')\n    time.sleep(int(body) / 1000)\n    \
                      return 'ok'\n";

#[test]
fn stats_match_the_calls_that_ran() {
    let flick = Flick::start();
    deploy_handle(&flick, "work", "memory = \"128MiB\"\n", WORKER);
    deploy_handle(&flick, "idle", "", WORKER);
    let mut durations = Vec::new();
    for body in ["50", "10", "20", "30", "40", "fail", "60", "70", "fail", "80"] {
        let r = flick.invoke("work", body);
        assert_eq!(r.status, if body == "fail" { 500 } else { 200 }, "{}", r.text());
        durations.push(flick.activation(&r.activation_id())["duration_ms"].as_f64().unwrap());
    }
    let (min, max) = durations.iter().fold((f64::MAX, 0f64), |(lo, hi), d| (lo.min(*d), hi.max(*d)));

    let r = flick.get("/v1/stats?window=60s");
    assert_eq!(r.status, 200, "{}", r.text());
    let stats = r.json();
    assert_eq!(stats["window_s"], 60);
    let rows = stats["functions"].as_array().unwrap();
    let work = rows.iter().find(|f| f["function"] == "work").unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(work["invocations"], 10, "{work}");
    assert_eq!(work["errors"], 2, "{work}");
    assert_eq!(work["cold_starts"], 1, "one cold start, then warm: {work}");
    assert!((work["rate_per_s"].as_f64().unwrap() - 10.0 / 60.0).abs() < 0.01, "{work}");
    for q in ["p50_ms", "p99_ms"] {
        let v = work[q].as_f64().unwrap();
        assert!(v >= min && v <= max, "{q} {v} within the recorded durations {min}..{max}: {work}");
    }
    assert!(work["p99_ms"].as_f64() >= work["p50_ms"].as_f64());
    let inst = &work["instances"];
    assert!(inst["idle"].as_u64().unwrap() + inst["busy"].as_u64().unwrap() >= 1, "its warm instance: {work}");
    assert!(work["memory_bytes"].as_u64().unwrap() > 0, "measured peaks: {work}");
    assert!(work["gb_s"].as_f64().unwrap() > 0.0, "{work}");
    let idle = rows.iter().find(|f| f["function"] == "idle").unwrap();
    assert_eq!((idle["invocations"].as_u64(), idle["p50_ms"].as_f64()), (Some(0), None), "{idle}");
    assert!(stats["host"]["invocations"].as_u64().unwrap() >= 10);
    assert!(stats["host"]["stem_cells"].is_u64());

    // One function only; a bad window; an unknown function.
    let one = flick.get("/v1/stats?function=work&window=5m").json();
    assert_eq!(one["functions"].as_array().unwrap().len(), 1);
    assert_eq!(one["functions"][0]["invocations"], 10);
    assert_eq!(flick.get("/v1/stats?function=nope").status, 404);
    assert_eq!(flick.get("/v1/stats/series?function=nope").status, 404);
    for bad in ["/v1/stats?window=forever", "/v1/stats?window=0s", "/v1/stats?window=30d", "/v1/stats/series?step=7s"] {
        let r = flick.get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    for path in ["/v1/stats", "/v1/stats/series", "/v1/logs"] {
        assert_eq!(flick.get_anon(path).status, 401, "{path}");
    }

    // Series: every call in some point, minute and second steps.
    for query in ["since=1h&step=60s", "since=2m&step=5s"] {
        let s = flick.get(&format!("/v1/stats/series?function=work&{query}")).json();
        let points = s["points"].as_array().unwrap();
        let total: u64 = points.iter().map(|p| p["invocations"].as_u64().unwrap()).sum();
        let errors: u64 = points.iter().map(|p| p["errors"].as_u64().unwrap()).sum();
        assert_eq!((total, errors), (10, 2), "{query}: {s}");
    }
    let host = flick.get("/v1/stats/series?since=10m").json();
    assert_eq!(host["step_s"], 60);
    assert_eq!(host["points"].as_array().unwrap().len(), 10);

    // flick top --once: the same figures as a plain table (stdout is a pipe).
    let table = flick.cli_ok(&["top", "--once", "--sort", "errors"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("FUNCTION") && lines[0].contains("P99") && lines[0].contains("COLD"), "{table}");
    assert!(lines[1].starts_with("work "), "sorted by errors, work first: {table}");
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!((cols[2], cols[5], cols[6]), ("10", "2", "1"), "calls, errors, cold: {table}");
    assert!(lines.iter().any(|l| l.starts_with("(host)")), "{table}");
    let piped = flick.cli_ok(&["top"]);
    assert!(piped.starts_with("FUNCTION"), "not a terminal: one table, no screen: {piped}");
    let out = flick.cli(&["top", "--window", "forever"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("window"), "{}", String::from_utf8_lossy(&out.stderr));
    let help = flick.cli_ok(&["top", "--help"]);
    assert!(help.contains("Examples") && help.contains("q, Esc or Ctrl-C"), "{help}");

    // Full screen under a pseudo-terminal (util-linux `script`): it draws
    // the table, a key re-sorts, and `q` or Ctrl-C quits and gives the
    // terminal back (leaves the alternate screen).
    for quit in ["q", "\u{3}"] {
        let shown = top_in_a_terminal(&flick, quit);
        assert!(shown.contains("\x1b[?1049h") && shown.contains("\x1b[?1049l"), "alternate screen left: {shown:?}");
        assert!(shown.contains("work") && shown.contains("FUNCTION"), "{shown:?}");
        assert!(shown.contains("[rate]") && shown.contains("errors]"), "`e` sorts by errors: {shown:?}");
    }
}

/// Runs `flick top` on a pseudo-terminal, presses `e`, then `quit`;
/// returns what it wrote. Fails if it does not exit cleanly and soon.
fn top_in_a_terminal(flick: &Flick, quit: &str) -> String {
    let script = common::which("script").expect("util-linux `script` (for a pseudo-terminal)");
    let command = format!("stty cols 140 rows 30; exec {BIN} top --interval 200ms");
    let mut child = Command::new(script)
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("FLICK_DATA_DIR", flick.data_dir())
        .env("TERM", "xterm")
        .env_remove("FLICK_URL")
        .env_remove("FLICK_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(b"e").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    stdin.write_all(quit.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("flick top did not quit on {quit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let shown = reader.join().unwrap();
    assert!(status.success(), "flick top exited with {status}: {shown:?}");
    shown
}

/// Writes many short lines fast (what flick keeps of them is bounded by
/// its log budget, far more than a stuck reader's socket buffers hold).
const FLOOD: &str = "import sys\ndef handle(body):\n    for i in range(20000):\n        \
                     print('flood %d' % i, flush=True)\n    return 'flooded'\n";

#[test]
fn log_streams_are_bounded_given_back_and_a_stuck_reader_blocks_nothing() {
    let flick = Flick::start_with(&[], Some("[live]\nmax_streams = 4\nbuffer = 64\n"));
    deploy_handle(&flick, "flood", "", FLOOD);
    let streams = || flick.get("/v1/stats").json()["host"]["log_streams"].as_u64().unwrap();

    // Connect and disconnect many times: the count comes back to zero.
    for _ in 0..5 {
        let open: Vec<Sse> = (0..4)
            .map(|_| {
                let (status, s) = Sse::open(&flick, "", Some(&flick.key));
                assert_eq!(status, 200);
                s
            })
            .collect();
        let (status, _) = Sse::open(&flick, "", Some(&flick.key));
        assert_eq!(status, 503, "one stream over max_streams");
        assert_eq!(streams(), 4);
        drop(open);
        assert!(flick.wait_until(Duration::from_secs(20), || streams() == 0), "streams given back: {}", streams());
    }

    // A client that never reads: calls go on at full speed, and when it
    // reads at last it is told what it missed.
    let (_, mut stuck) = Sse::open(&flick, "", Some(&flick.key));
    let started = Instant::now();
    for _ in 0..5 {
        let r = flick.invoke("flood", "");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(started.elapsed() < Duration::from_secs(60), "calls took {:?}", started.elapsed());
    let lagged = stuck.wait_for("lagged", Duration::from_secs(30), |v| v["skipped"].as_u64() > Some(0));
    assert!(lagged.is_some(), "a reader that fell behind is told how many lines it lost");
    // A fresh follower still gets the next call's lines.
    let (_, mut fresh) = Sse::open(&flick, "?function=flood", Some(&flick.key));
    let r = flick.invoke("flood", "");
    assert_eq!(r.status, 200);
    let id = r.activation_id();
    assert!(fresh.wait_for("log", Duration::from_secs(20), |v| v["activation_id"] == id.as_str()).is_some());
}
