//! The CLI guards its key: it never guesses an address, sends the data
//! dir's key only to the flick that proves it owns that data dir, refuses
//! plain http off this host unless told, speaks https, and treats a
//! malformed answer as an error. Each test plays the listener that should
//! not get the key and checks the bytes it actually read.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{BIN, Flick, manifest, write_function};

const KEY: &str = "flk_0123456789abcdef0123456789abcdef0123456789abcdef";

/// A listener that is not flick: it records every byte it reads and
/// answers each request with `answer` (status line and body).
struct Impostor {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    connections: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Impostor {
    fn start(answer: &'static str) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), answer)
    }

    fn on(listener: TcpListener, answer: &'static str) -> Self {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, connections, stop) = (seen.clone(), connections.clone(), stop.clone());
            std::thread::spawn(move || {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            *connections.lock().unwrap() += 1;
                            serve_one(stream, answer, &seen);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            // Connections made before `finish` are served first.
                            if stop.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        Self { addr, seen, connections, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and returns (connections, everything read).
    fn finish(mut self) -> (usize, String) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        let bytes = self.seen.lock().unwrap().clone();
        let connections = *self.connections.lock().unwrap();
        (connections, String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Reads requests on one connection (keep-alive) and answers each.
fn serve_one(mut stream: TcpStream, answer: &str, seen: &Mutex<Vec<u8>>) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.lock().unwrap().extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        if buf.first() == Some(&0x16) {
            // A TLS ClientHello: answer in plain HTTP, as a plain server would.
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            return;
        }
        let Some(end) = find(&buf, b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if buf.len() < end + 4 + length {
            continue;
        }
        buf.drain(..end + 4 + length);
        let (status, body) = answer.split_once('\n').unwrap();
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A data dir as a stopped or killed flick leaves it: its key, and
/// optionally the address file and handshake secret of a past run.
fn data_dir(addr: Option<SocketAddr>, secret: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.key"), format!("{KEY}\n")).unwrap();
    if let Some(addr) = addr {
        std::fs::write(dir.path().join("flick.addr"), addr.to_string()).unwrap();
    }
    if secret {
        std::fs::write(dir.path().join("flick.secret"), format!("{}\n", "5a".repeat(32))).unwrap();
    }
    dir
}

fn flick(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("FLICK_DATA_DIR", data).env_remove("FLICK_URL").env_remove("FLICK_TOKEN");
    cmd.env_remove("FLICK_CA_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running the flick CLI")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_key(seen: &str) {
    assert!(!seen.to_ascii_lowercase().contains("authorization"), "the impostor got an Authorization header:\n{seen}");
    assert!(!seen.contains(KEY), "the impostor got the key:\n{seen}");
}

/// Answers that look like flick's, to tempt the CLI: a handshake proof
/// (wrong: the impostor has no secret) and an empty function list.
const TEMPTING: &str =
    "200 OK\n{\"proof\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"functions\":[]}";

#[test]
fn a_stale_flick_addr_leads_no_key_to_whoever_took_the_port() {
    let impostor = Impostor::start(TEMPTING);
    let data = data_dir(Some(impostor.addr), true);
    let out = flick(data.path(), &["list"], &[]);
    let (connections, seen) = impostor.finish();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "flick list trusted an impostor: {}", text(&out.stdout));
    assert!(err.contains("is not the flick of data dir") && err.contains("key was not sent"), "{err}");
    assert!(connections >= 1 && seen.contains("/v1/handshake"), "the CLI should have asked for a proof: {seen}");
    assert_no_key(&seen);
}

#[test]
fn a_flick_addr_without_its_secret_is_not_contacted() {
    let impostor = Impostor::start(TEMPTING);
    let data = data_dir(Some(impostor.addr), false);
    let out = flick(data.path(), &["deploy", "."], &[]);
    let (connections, seen) = impostor.finish();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("flick is not running for data dir"), "{}", text(&out.stderr));
    assert_eq!(connections, 0, "nothing should be sent to an unproven address: {seen}");
}

/// The way it happens: flick is killed (no clean-up), its address file
/// stays, and another local user binds the port it had.
#[test]
fn after_flick_is_killed_its_port_gets_no_key() {
    let flick_up = Flick::start();
    let addr: SocketAddr = flick_up.base.trim_start_matches("http://").parse().unwrap();
    let data = flick_up.kill9();
    assert!(data.path().join("flick.addr").exists() && data.path().join("flick.secret").exists());
    // The port is free once the dead flick's children (which may hold a
    // copy of the socket for a moment after a fork) are gone too.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("rebinding the dead flick's port {addr}: {e}"),
        }
    };
    let impostor = Impostor::on(listener, TEMPTING);
    let out = flick(data.path(), &["list"], &[]);
    let (connections, seen) = impostor.finish();
    assert!(!out.status.success(), "flick list trusted an impostor: {}", text(&out.stdout));
    assert!(connections >= 1, "sanity: the CLI went to the recorded address");
    assert_no_key(&seen);
}

#[test]
fn no_flick_addr_is_an_error_without_any_connection() {
    // The address the CLI once guessed; if another process holds it, the
    // error message still shows the CLI did not go there.
    let guessed = TcpListener::bind("127.0.0.1:8080").ok().map(|l| Impostor::on(l, TEMPTING));
    let data = data_dir(None, false);
    let out = flick(data.path(), &["list"], &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    let expected = format!(
        "flick is not running for data dir {}; start it with `flick up` or set FLICK_URL",
        data.path().display()
    );
    assert!(err.contains(&expected), "{err}");
    if let Some(impostor) = guessed {
        let (connections, seen) = impostor.finish();
        assert_eq!(connections, 0, "the CLI connected to 127.0.0.1:8080: {seen}");
    }
}

#[test]
fn flick_url_gets_the_data_dir_key_only_with_a_proof() {
    // A flick of this data dir runs elsewhere (its secret is there); the
    // URL points at a listener that cannot prove anything.
    let impostor = Impostor::start(TEMPTING);
    let data = data_dir(Some("127.0.0.1:9".parse().unwrap()), true);
    let out = flick(data.path(), &["list"], &[("FLICK_URL", &impostor.url())]);
    let (connections, seen) = impostor.finish();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("FLICK_TOKEN"), "the error should say how to give a key: {}", text(&out.stderr));
    assert!(connections >= 1);
    assert_no_key(&seen);

    // No flick runs for this data dir: nothing can be proven, nothing is sent.
    let impostor = Impostor::start(TEMPTING);
    let data = data_dir(None, false);
    let out = flick(data.path(), &["list"], &[("FLICK_URL", &impostor.url())]);
    let (connections, seen) = impostor.finish();
    assert!(!out.status.success());
    assert_eq!(connections, 0, "{seen}");

    // A key given explicitly with the URL is the user's choice: it is sent.
    let impostor = Impostor::start(TEMPTING);
    let out = flick(data.path(), &["list"], &[("FLICK_URL", &impostor.url()), ("FLICK_TOKEN", "explicit-7c1")]);
    let (_, seen) = impostor.finish();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(seen.to_ascii_lowercase().contains("authorization: bearer explicit-7c1"), "{seen}");
    assert!(!seen.contains(KEY), "{seen}");
}

/// A relay in front of the real flick passes the handshake through, but
/// the proof is bound to the address the CLI connected to: the relay's.
#[test]
fn a_relay_to_the_real_flick_cannot_borrow_its_proof() {
    let flick_up = Flick::start();
    let real: SocketAddr = flick_up.base.trim_start_matches("http://").parse().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let client = client.unwrap();
                let server = TcpStream::connect(real).unwrap();
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 8192];
                    while let Ok(n) = c_read.read(&mut chunk) {
                        // Noted before it is passed on: once the answer is
                        // back, the test reads what the relay saw.
                        seen.lock().unwrap().extend_from_slice(&chunk[..n]);
                        if n == 0 || s_write.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                    }
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                });
            }
        });
    }
    let out = flick(flick_up.data_dir(), &["list"], &[("FLICK_URL", &format!("http://{relay_addr}"))]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the relay passed: {}", text(&out.stdout));
    assert!(err.contains("does not listen on"), "the real flick should refuse to prove another address: {err}");
    let seen = text(&seen.lock().unwrap());
    assert!(seen.contains("/v1/handshake"), "sanity: the handshake went through the relay: {seen}");
    assert_no_key(&seen.replace(&flick_up.key, KEY));

    // The same flick by its own address, by URL or by name, passes.
    let out = flick(flick_up.data_dir(), &["list"], &[("FLICK_URL", &flick_up.base)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let by_name = format!("http://localhost:{}", real.port());
    let out = flick(flick_up.data_dir(), &["list"], &[("FLICK_URL", &by_name)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// This host's own non-loopback address (no packet is sent to find it).
fn own_non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn plain_http_off_loopback_is_refused_unless_insecure() {
    let data = data_dir(None, false);
    // A name: refused before it is even looked up.
    let out = flick(data.path(), &["list"], &[("FLICK_URL", "http://flick-test.invalid:9"), ("FLICK_TOKEN", "t")]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refusing") && err.contains("--insecure"), "{err}");

    // An address of this host that is not loopback: traffic stays here.
    let Some(ip) = own_non_loopback_ip() else {
        eprintln!("no non-loopback address on this host: only the name case ran");
        return;
    };
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let impostor = Impostor::on(listener, "200 OK\n{\"functions\":[]}");
    let url = format!("http://{}", impostor.addr);
    let out = flick(data.path(), &["list"], &[("FLICK_URL", &url), ("FLICK_TOKEN", "plain-3e9")]);
    let refused = text(&out.stderr);
    let out_insecure =
        flick(data.path(), &["list", "--insecure"], &[("FLICK_URL", &url), ("FLICK_TOKEN", "plain-3e9")]);
    let (connections, seen) = impostor.finish();
    assert!(!out.status.success());
    assert!(refused.contains("refusing") && refused.contains("--insecure"), "{refused}");
    assert!(out_insecure.status.success(), "--insecure should allow it: {}", text(&out_insecure.stderr));
    assert_eq!(connections, 1, "only the --insecure run may connect: {seen}");
    assert!(seen.contains("Bearer plain-3e9"), "{seen}");
}

#[test]
fn a_malformed_answer_is_an_error_not_null() {
    let dir = tempfile::tempdir().unwrap();
    let function = write_function(dir.path(), "hello", &[("flick.toml", &manifest("hello", "exec", "cat", ""))]);
    let cases: [(&'static str, &str); 3] = [
        ("201 Created\n{\"hello\":\"world\"}", "unexpected answer to the deploy"),
        ("201 Created\n<html>hello</html>", "not JSON"),
        ("201 Created\n{\"function\":\"hello\",\"revision\":null,\"hash\":null,\"unchanged\":false}", "revision"),
    ];
    for (answer, expected) in cases {
        let impostor = Impostor::start(answer);
        let out = flick(
            dir.path(),
            &["deploy", function.to_str().unwrap()],
            &[("FLICK_URL", &impostor.url()), ("FLICK_TOKEN", "t")],
        );
        impostor.finish();
        let (stdout, err) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "deploy accepted {answer:?}: {stdout}");
        assert!(!stdout.contains("null") && !stdout.contains("deployed"), "{stdout}");
        assert!(err.contains(expected), "{answer:?}: {err}");
    }
    let impostor = Impostor::start("200 OK\n{\"functions\":[{\"name\":\"x\"}]}");
    let out = flick(dir.path(), &["list"], &[("FLICK_URL", &impostor.url()), ("FLICK_TOKEN", "t")]);
    impostor.finish();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("unexpected answer to GET /v1/functions"), "{}", text(&out.stderr));
}

/// A TLS server with the test certificate for 127.0.0.1/localhost that
/// answers one request per connection; returns its port and what it read.
fn tls_server(answer: &'static str) -> (u16, Arc<Mutex<Vec<u8>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixtures.join("server.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(fixtures.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_server = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else { continue };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while find(&buf, b"\r\n\r\n").is_none() {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            seen_by_server.lock().unwrap().extend_from_slice(&buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            let _ = tls.write_all(reply.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (port, seen)
}

const ONE_FUNCTION: &str = "{\"functions\":[{\"name\":\"over-tls\",\"runtime\":\"python3\",\"current_revision\":4,\
                            \"public\":false,\"updated_ms\":0}]}";

#[test]
fn https_works_with_a_trusted_ca_and_fails_without() {
    let (port, seen) = tls_server(ONE_FUNCTION);
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem");
    let data = data_dir(None, false);
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{port}");
        let out = flick(
            data.path(),
            &["list"],
            &[("FLICK_URL", &url), ("FLICK_TOKEN", "tls-5d2"), ("FLICK_CA_CERT", ca.to_str().unwrap())],
        );
        assert!(out.status.success(), "{url}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("over-tls"), "{}", text(&out.stdout));
    }
    let read = text(&seen.lock().unwrap());
    assert!(read.contains("Bearer tls-5d2") && read.contains("GET /v1/functions"), "{read}");

    // Without the CA the certificate is not trusted, and nothing is sent.
    seen.lock().unwrap().clear();
    let url = format!("https://127.0.0.1:{port}");
    let out = flick(data.path(), &["list"], &[("FLICK_URL", &url), ("FLICK_TOKEN", "tls-5d2")]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
    assert!(seen.lock().unwrap().is_empty(), "a request got through an untrusted certificate");
}

#[test]
fn https_to_a_plain_listener_fails_in_the_tls_handshake() {
    let impostor = Impostor::start("200 OK\n{\"functions\":[]}");
    let data = data_dir(None, false);
    let url = format!("https://{}", impostor.addr);
    let out = flick(data.path(), &["list"], &[("FLICK_URL", &url), ("FLICK_TOKEN", "t")]);
    let (_, seen) = impostor.finish();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("scheme"), "https must be supported: {err}");
    assert!(seen.as_bytes().first() == Some(&0x16), "the CLI should open with a TLS ClientHello: {seen:?}");
    assert_no_key(&seen);
}
