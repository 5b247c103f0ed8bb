//! `http` functions on the host's network: refused unless the operator
//! allows it (their port is open without flick's auth), and when allowed, a
//! program that grabs the port first never receives the function's requests.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Flick, manifest};

const SERVER: &str = "import os, time\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
class H(BaseHTTPRequestHandler):\n    def do_POST(self):\n        \
self.rfile.read(int(self.headers['content-length'] or 0))\n        body = b'victim'\n        \
self.send_response(200)\n        self.send_header('content-length', str(len(body)))\n        self.end_headers()\n        \
self.wfile.write(body)\n\
time.sleep(float(os.environ.get('DELAY', '0')))\n\
HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n";

fn host_http(flick: &Flick, name: &str, extra: &str) -> Vec<u8> {
    let toml = manifest(name, "http", "python3 server.py", &format!("network = \"host\"\n{extra}"));
    let dir = common::write_function(flick.data_dir(), name, &[("flick.toml", &toml), ("server.py", SERVER)]);
    let out = std::process::Command::new("tar").args(["-czf", "-", "-C"]).arg(&dir).arg(".").output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn host_network_http_is_refused_unless_allowed() {
    let flick = Flick::start();
    let r = flick.request("POST", "/v1/functions", host_http(&flick, "open-web", ""), true);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("allow_host_network_http"), "the error names the setting: {}", r.text());
    assert_eq!(flick.get("/v1/functions/open-web").status, 404, "no revision was made");

    let flick = Flick::start_with(&[], Some("allow_host_network_http = true\n"));
    let r = flick.request("POST", "/v1/functions", host_http(&flick, "open-web", ""), true);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = flick.invoke("open-web", "{}");
    assert_eq!((r.status, r.text()), (200, "victim".to_string()));
}

/// The PORT an instance of `function` was given, read from its environment
/// (as any root process on the host could).
fn port_of(function: &str) -> Option<u16> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if vars.iter().any(|v| *v == format!("FLICK_FUNCTION_NAME={function}").as_bytes()) {
            let port = vars.iter().find_map(|v| v.strip_prefix(b"PORT="))?;
            return std::str::from_utf8(port).ok()?.parse().ok();
        }
    }
    None
}

/// Another program binds the port flick picked for a function before the
/// function's server does (the server waits 2 s first). flick must not take
/// that program for the function's server: the call fails, and the
/// squatter never sees the request (before, it answered it: "stolen").
#[test]
fn a_program_squatting_the_port_never_receives_the_functions_requests() {
    let flick = Flick::start_with(&[], Some("allow_host_network_http = true\n"));
    let r = flick.request("POST", "/v1/functions", host_http(&flick, "victim", "[env]\nDELAY = \"2\"\n"), true);
    assert_eq!(r.status, 201, "{}", r.text());
    let (got_request, call_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let (got, done) = (&got_request, &call_done);
    let (reply, squatted) = std::thread::scope(|s| {
        let call = s.spawn(|| flick.invoke("victim", "secret"));
        let mut port = None;
        assert!(flick.wait_until(Duration::from_secs(20), || {
            port = port_of("victim");
            port.is_some()
        }));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port.unwrap())).expect("bind the victim's port first");
        listener.set_nonblocking(true).unwrap();
        let squatter = s.spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline && !done.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let mut buf = [0u8; 1024];
                if let Ok(n) = conn.read(&mut buf)
                    && n > 0
                {
                    got.store(true, Ordering::SeqCst);
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstolen");
                }
            }
        });
        let reply = call.join().unwrap();
        done.store(true, Ordering::SeqCst);
        squatter.join().unwrap();
        (reply, got.load(Ordering::SeqCst))
    });
    assert!(!squatted, "the squatter received the function's request: {} {}", reply.status, reply.text());
    assert_ne!(reply.text(), "stolen");
    assert_eq!(reply.status, 502, "{}", reply.text());
    // The function itself is fine: the next call starts a new instance on a new port.
    let r = flick.invoke("victim", "again");
    assert_eq!((r.status, r.text()), (200, "victim".to_string()));
}
