//! `invoke`: calls `/fn/{name}` like any HTTP client would.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cli::InvokeArgs;
use crate::client::Client;

pub async fn invoke(client: &Client, args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let body: Vec<u8> = match args.data.as_deref() {
        None => Vec::new(),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading stdin")?;
            buf
        }
        Some(d) if d.starts_with('@') => std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?,
        Some(d) => d.as_bytes().to_vec(),
    };
    let method = reqwest::Method::from_bytes(args.method.to_uppercase().as_bytes())
        .with_context(|| format!("`{}` is not an HTTP method", args.method))?;
    let sub = if args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) };
    let mut url = format!("/fn/{}{}", args.name, if sub == "/" { "" } else { &sub });
    if let Some(q) = &args.query {
        url = format!("{url}?{q}");
    }
    let mut rb = client.request(method, &url).body(body);
    if args.is_async {
        rb = rb.header("x-flick-async", "true");
    }
    if let Some(key) = &args.idempotency_key {
        rb = rb.header("idempotency-key", key.as_str());
    }
    if let Some(cb) = &args.callback_url {
        rb = rb.header("x-callback-url", cb.as_str());
    }
    for h in &args.header {
        let Some((k, v)) = h.split_once(':') else { bail!("header `{h}` must be `Name: value`") };
        rb = rb.header(k.trim(), v.trim());
    }
    let resp = client.send(rb).await?;
    let status = resp.status();
    let flick_status = resp.headers().get("x-flick-status").and_then(|v| v.to_str().ok()).map(str::to_string);
    if args.verbose {
        eprintln!("HTTP {}", status.as_u16());
        for (k, v) in resp.headers() {
            eprintln!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
    }
    let bytes = resp.bytes().await.context("reading the response")?;
    if args.is_async && status == reqwest::StatusCode::ACCEPTED {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let Some(id) = body.get("activation_id").and_then(|v| v.as_str()) else {
            bail!("flick accepted the call but sent no activation id");
        };
        let id = crate::out::escape(id, false);
        if body.get("existing").and_then(|v| v.as_bool()) == Some(true) {
            eprintln!("already accepted with this idempotency key: activation {id}");
        } else {
            eprintln!("queued: activation {id}  (see `flick activation {id}`)");
        }
        outln!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    match flick_status.as_deref() {
        // No flick status: the platform refused the call (401, 404, 413, 429).
        None => {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(crate::client::api_error(status, &body, true));
        }
        // The body byte for byte, like any HTTP client: it may be binary
        // or piped on; `flick activation ID` shows it escaped.
        Some(_) => {
            crate::out::bytes(&bytes)?;
            if !bytes.ends_with(b"\n") && !bytes.is_empty() {
                crate::out::bytes(b"\n")?;
            }
        }
    }
    Ok(if flick_status.as_deref() == Some("success") { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
