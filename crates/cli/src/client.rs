//! How CLI commands reach a running flick: its URL and API key, found from
//! flags, `FLICK_URL`/`FLICK_TOKEN`, or the local data dir.

use std::path::Path;

use anyhow::{Context, anyhow};
use serde_json::Value;

use crate::cli::Global;

/// The file `flick up` writes with the address it listens on.
pub const ADDR_FILE: &str = "flick.addr";

pub struct Client {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn from_global(g: &Global) -> anyhow::Result<Self> {
        let base = match &g.url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => match std::fs::read_to_string(g.data_dir.join(ADDR_FILE)) {
                Ok(addr) => format!("http://{}", addr.trim()),
                Err(_) => "http://127.0.0.1:8080".to_string(),
            },
        };
        let token = match &g.token {
            Some(t) => Some(t.clone()),
            None => read_key(&g.data_dir),
        };
        let http = reqwest::Client::builder().no_proxy().build().context("building the HTTP client")?;
        Ok(Self { base, token, http })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            rb = rb.bearer_auth(token);
        }
        rb
    }

    /// Sends `rb` and returns the JSON body, turning API errors into their message.
    pub async fn json(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(rb).await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(api_error(status, &body, self.token.is_some()));
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        rb.send().await.map_err(|e| {
            anyhow!("cannot reach flick at {}: {e}\n(is `flick up` running? set --url or FLICK_URL)", self.base)
        })
    }
}

fn read_key(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("admin.key")).ok().map(|k| k.trim().to_string())
}

/// The message of an API error body, with a hint for the common cases.
pub fn api_error(status: reqwest::StatusCode, body: &Value, had_token: bool) -> anyhow::Error {
    let message = body["error"]["message"].as_str().unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
    match status.as_u16() {
        401 if !had_token => {
            anyhow!("{message}: no API key found (set FLICK_TOKEN, --token, or --data-dir of the running flick)")
        }
        _ => anyhow!("{message} (HTTP {})", status.as_u16()),
    }
}
