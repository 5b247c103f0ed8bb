//! How CLI commands reach a running flick, and the trust rules that decide
//! whether they may send it an API key (ARCHITECTURE.md, "The CLI's trust
//! rules"):
//!
//! - the server is the one named by `--url`/`FLICK_URL`, or the one the
//!   running flick recorded in `<data-dir>/flick.addr`; never a guessed one;
//! - plain `http://` goes only to a loopback address, unless `--insecure`;
//! - before sending anything to the address in `flick.addr`, and before
//!   sending the data dir's `admin.key` anywhere, the server must prove in a
//!   handshake that it holds the secret `flick up` wrote beside `flick.addr`;
//! - a key given explicitly (`--token`/`FLICK_TOKEN`) with an explicit URL
//!   goes to that URL: the user chose both (https is checked by TLS).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use flick_api::handshake::{self, HandshakeSecret};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::Global;
use crate::out::escape;

/// The file `flick up` writes with the address it listens on.
pub const ADDR_FILE: &str = "flick.addr";
/// The file `flick up` writes beside [`ADDR_FILE`]: the dashboard's address.
pub const UI_ADDR_FILE: &str = "flick.ui-addr";
/// The file `flick up` writes beside [`ADDR_FILE`]: its handshake secret (0600).
pub const SECRET_FILE: &str = "flick.secret";
const KEY_FILE: &str = "admin.key";

/// How long connecting and the handshake may take; deploys themselves
/// (dependency installs) may take minutes, so requests have no overall limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Where the server's address came from: it decides what must be proven.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    AddrFile,
    Url,
}

impl Client {
    /// Finds the server, checks the transport and, where the rules ask for
    /// it, the server's identity — all before any key is sent.
    pub async fn connect(g: &Global) -> anyhow::Result<Self> {
        let data = &g.data_dir;
        let (url, origin) = match &g.url {
            Some(text) => (parse_url(text)?, Origin::Url),
            None => (url_from_addr_file(data)?, Origin::AddrFile),
        };
        let (token, key_from_data_dir) = match &g.token {
            Some(t) => (Some(t.clone()), false),
            None => {
                let key = read_key(data)?;
                let found = key.is_some();
                (key, found)
            }
        };
        let target = resolve(&url, g.insecure).await?;

        let mut builder = reqwest::Client::builder().no_proxy().connect_timeout(CONNECT_TIMEOUT);
        if let Some(url::Host::Domain(domain)) = url.host() {
            // Connect exactly where the handshake says we did.
            builder = builder.resolve(domain, target);
        }
        if let Some(path) = &g.ca_cert {
            builder = builder.tls_certs_merge(read_ca_certs(path)?);
        }
        let http = builder.build().context("building the HTTP client")?;
        let client = Self { base: url.as_str().trim_end_matches('/').to_string(), token, http };
        if origin == Origin::AddrFile || key_from_data_dir {
            client.handshake(data, target, origin).await?;
        }
        Ok(client)
    }

    /// Proves the server at `target` holds the data dir's secret; no key
    /// is sent before this succeeds.
    async fn handshake(&self, data: &Path, target: SocketAddr, origin: Origin) -> anyhow::Result<()> {
        let secret_path = data.join(SECRET_FILE);
        let hint = match origin {
            Origin::AddrFile => format!(
                "{} may be left from a flick that is gone; start flick with `flick up`, or set FLICK_URL",
                data.join(ADDR_FILE).display()
            ),
            Origin::Url => "to use another flick, give its key with --token or FLICK_TOKEN".to_string(),
        };
        let secret = match std::fs::read_to_string(&secret_path) {
            Ok(text) => HandshakeSecret::from_hex(&text)
                .ok_or_else(|| anyhow!("{} is not a flick handshake secret", secret_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "flick is not running for data dir {} (no {SECRET_FILE} there), so nothing can prove that \
                 {} is its flick; the API key was not sent\n{hint}",
                data.display(),
                self.base
            ),
            Err(e) => bail!("reading {}: {e}", secret_path.display()),
        };
        let nonce = random_hex()?;
        let mut url = Url::parse(&format!("{}{}", self.base, handshake::PATH)).context("handshake URL")?;
        url.query_pairs_mut().append_pair("nonce", &nonce).append_pair("addr", &target.to_string());
        let resp = self.http.get(url).timeout(CONNECT_TIMEOUT).send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let proven =
            status.is_success() && body["proof"].as_str().is_some_and(|proof| secret.verify(&nonce, target, proof));
        if !proven {
            let why = match body["error"]["message"].as_str() {
                Some(m) => format!("it answered HTTP {}: {}", status.as_u16(), escape(m, false)),
                None if status.is_success() => "its proof is wrong".to_string(),
                None => format!("it answered HTTP {}", status.as_u16()),
            };
            bail!(
                "the server at {} is not the flick of data dir {} ({why}); the API key was not sent\n{hint}",
                self.base,
                data.display()
            );
        }
        Ok(())
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            rb = rb.bearer_auth(token);
        }
        rb
    }

    /// Sends `rb` and returns the JSON body, turning API errors into their
    /// message; a success that is not JSON is an error too.
    pub async fn json(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(rb).await?;
        self.json_of(resp).await
    }

    /// The JSON body of `resp`, or the API's error it carries.
    pub async fn json_of(&self, resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| anyhow!("reading the answer of flick at {}: {e}", self.base))?;
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, &body, self.token.is_some()));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            let preview = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            anyhow!(
                "flick at {} answered with something that is not JSON ({e}): {}",
                self.base,
                escape(&preview, false)
            )
        })
    }

    /// Like [`Client::json`], read as `T`: an answer missing what the
    /// command needs is an error naming `what`, never printed as `null`.
    pub async fn answer<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder, what: &str) -> anyhow::Result<T> {
        let value = self.json(rb).await?;
        T::deserialize(&value).map_err(|e| {
            // serde names a missing field but not a mistyped one: show the answer.
            let mut shown = value.to_string();
            if shown.len() > 300 {
                let cut = (0..=300).rev().find(|&i| shown.is_char_boundary(i)).unwrap_or(0);
                shown.truncate(cut);
                shown.push('…');
            }
            anyhow!("flick at {} sent an unexpected answer to {what} ({e}): {}", self.base, escape(&shown, false))
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.answer(self.request(reqwest::Method::GET, path), &format!("GET {path}")).await
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        rb.send().await.map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        // The source chain says why (refused, TLS certificate, timeout).
        let mut why = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            why.push_str(&format!(": {s}"));
            source = s.source();
        }
        anyhow!("cannot reach flick at {}: {why}\n(is `flick up` running? check --url or FLICK_URL)", self.base)
    }
}

/// `--url`/`FLICK_URL`, checked: http or https, a host, nothing else.
fn parse_url(text: &str) -> anyhow::Result<Url> {
    let url = Url::parse(text.trim()).map_err(|e| anyhow!("FLICK_URL/--url `{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("FLICK_URL/--url `{text}`: the scheme must be http or https, not {}", url.scheme());
    }
    if url.host().is_none() {
        bail!("FLICK_URL/--url `{text}` names no host");
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        bail!("FLICK_URL/--url `{text}`: give only scheme, host, port and path prefix");
    }
    Ok(url)
}

/// The URL of the flick running on `data`, from its `flick.addr`.
fn url_from_addr_file(data: &Path) -> anyhow::Result<Url> {
    let path = data.join(ADDR_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("flick is not running for data dir {}; start it with `flick up` or set FLICK_URL", data.display())
        }
        Err(e) => bail!("reading {}: {e}", path.display()),
    };
    let mut addr: SocketAddr =
        text.trim().parse().map_err(|_| anyhow!("{} does not hold an address: `{}`", path.display(), text.trim()))?;
    // A flick listening on every interface is reached on loopback.
    if addr.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    } else if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        addr.set_ip(Ipv6Addr::LOCALHOST.into());
    }
    Url::parse(&format!("http://{addr}")).with_context(|| format!("{} holds `{addr}`", path.display()))
}

/// The one socket address every request of this command goes to. Plain
/// http is refused before any lookup or connection unless it stays on
/// this host (or `insecure`).
async fn resolve(url: &Url, insecure: bool) -> anyhow::Result<SocketAddr> {
    let port = url.port_or_known_default().context("the URL has no port")?;
    let plain = url.scheme() == "http";
    let refuse = || {
        anyhow!(
            "refusing to use {url} over plain http: it is not a loopback address, so the API key and \
             everything sent would cross the network unencrypted; use https://, or pass --insecure if \
             the network is trusted"
        )
    };
    let addr = match url.host() {
        Some(url::Host::Ipv4(ip)) => SocketAddr::new(ip.into(), port),
        Some(url::Host::Ipv6(ip)) => SocketAddr::new(ip.into(), port),
        Some(url::Host::Domain(domain)) => {
            let local_name = domain.eq_ignore_ascii_case("localhost") || domain.ends_with(".localhost");
            if plain && !insecure && !local_name {
                return Err(refuse());
            }
            tokio::net::lookup_host((domain, port))
                .await
                .map_err(|e| anyhow!("cannot resolve {domain}: {e}"))?
                .next()
                .ok_or_else(|| anyhow!("{domain} resolves to no address"))?
        }
        None => bail!("{url} names no host"),
    };
    if plain && !insecure && !addr.ip().to_canonical().is_loopback() {
        return Err(refuse());
    }
    Ok(addr)
}

fn read_key(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("reading {}: {e}", path.display()),
    }
}

fn read_ca_certs(path: &PathBuf) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| anyhow!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("operating system random source: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The message of an API error body, with a hint for the common cases.
pub fn api_error(status: reqwest::StatusCode, body: &Value, had_token: bool) -> anyhow::Error {
    let message = body["error"]["message"].as_str().unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
    let message = escape(message, true);
    match status.as_u16() {
        401 if !had_token => {
            anyhow!("{message}: no API key found (set FLICK_TOKEN, --token, or --data-dir of the running flick)")
        }
        _ => anyhow!("{message} (HTTP {})", status.as_u16()),
    }
}
