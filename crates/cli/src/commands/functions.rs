//! `deploy`, `list`, `show`, `revisions`, `rollback`, `delete`, `new`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::json;

use crate::client::Client;
use crate::out::escape;
use flick_core::timefmt::rfc3339;

/// `POST /v1/functions`'s answer.
#[derive(Deserialize)]
struct Deployed {
    function: String,
    revision: u64,
    hash: String,
    unchanged: bool,
}

pub async fn deploy(client: &Client, dir: &Path) -> anyhow::Result<ExitCode> {
    // Validate locally first: a manifest error is reported before any upload.
    let manifest_path = dir.join(flick_core::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "no {} in {}: is this a function directory? (`flick new NAME` makes one)",
            flick_core::MANIFEST_FILE,
            dir.display()
        )
    })?;
    let manifest = flick_core::Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let archive = flick_package::pack_dir(dir)?;
    let rb =
        client.request(reqwest::Method::POST, "/v1/functions").header("content-type", "application/gzip").body(archive);
    let out: Deployed =
        client.answer(rb, "the deploy").await.with_context(|| format!("deploying {}", manifest.name))?;
    let (name, rev) = (escape(&out.function, false), out.revision);
    let short = escape(out.hash.get(..19).unwrap_or(&out.hash), false);
    if out.unchanged {
        outln!("{name} is unchanged: revision {rev} ({short}) already has this code and config");
    } else {
        outln!("deployed {name} revision {rev} ({short})");
    }
    outln!("  url: {}/fn/{name}", client.base);
    Ok(ExitCode::SUCCESS)
}

/// One function in `GET /v1/functions`.
#[derive(Deserialize)]
struct FunctionRow {
    name: String,
    runtime: String,
    current_revision: u64,
    public: bool,
    updated_ms: i64,
}

#[derive(Deserialize)]
struct FunctionList {
    functions: Vec<FunctionRow>,
}

pub async fn list(client: &Client) -> anyhow::Result<ExitCode> {
    let out: FunctionList = client.get("/v1/functions").await?;
    if out.functions.is_empty() {
        outln!("no functions yet: `flick deploy DIR` deploys one");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<24} {:<8} {:>4} {:<8} UPDATED", "NAME", "RUNTIME", "REV", "ACCESS");
    for f in out.functions {
        outln!(
            "{:<24} {:<8} {:>4} {:<8} {}",
            escape(&f.name, false),
            escape(&f.runtime, false),
            f.current_revision,
            if f.public { "public" } else { "private" },
            rfc3339(f.updated_ms),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `GET /v1/functions/{name}`.
#[derive(Deserialize)]
struct FunctionDetail {
    name: String,
    url: String,
    current_revision: u64,
    latest_revision: u64,
    hash: String,
    updated_ms: i64,
    manifest: flick_core::Manifest,
    #[serde(default)]
    env_names: Vec<String>,
}

pub async fn show(client: &Client, name: &str, env_values: bool) -> anyhow::Result<ExitCode> {
    let query = if env_values { "?env=values" } else { "" };
    let f: FunctionDetail = client.get(&format!("/v1/functions/{name}{query}")).await?;
    outln!("function:  {}", escape(&f.name, false));
    outln!("url:       {}{}", client.base, escape(&f.url, false));
    outln!("revision:  {} of {} ({})", f.current_revision, f.latest_revision, escape(&f.hash, false));
    outln!("updated:   {}", rfc3339(f.updated_ms));
    outln!("\n{}", escape(f.manifest.to_toml().trim_end_matches('\n'), true));
    if !env_values && !f.env_names.is_empty() {
        outln!("\n[env]  # values hidden: `flick show {name} --env` prints them");
        for n in &f.env_names {
            outln!("# {} = …", escape(n, false));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Deserialize)]
struct RevisionRow {
    number: u64,
    hash: String,
    code_size: u64,
    created_ms: i64,
}

#[derive(Deserialize)]
struct RevisionList {
    current_revision: Option<u64>,
    revisions: Vec<RevisionRow>,
}

pub async fn revisions(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let out: RevisionList = client.get(&format!("/v1/functions/{name}/revisions")).await?;
    outln!("{:>4}  {:<24} {:<10} CREATED", "REV", "HASH", "SIZE");
    for r in out.revisions {
        let mark = if Some(r.number) == out.current_revision { "*" } else { " " };
        outln!(
            "{mark}{:>3}  {:<24} {:<10} {}",
            r.number,
            escape(r.hash.get(..23).unwrap_or(&r.hash), false),
            flick_core::units::format_size(r.code_size),
            rfc3339(r.created_ms),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Deserialize)]
struct RolledBack {
    revision: u64,
}

pub async fn rollback(client: &Client, name: &str, revision: Option<u32>) -> anyhow::Result<ExitCode> {
    let body = match revision {
        Some(n) => json!({ "revision": n }),
        None => json!({}),
    };
    let rb = client.request(reqwest::Method::POST, &format!("/v1/functions/{name}/rollback")).json(&body);
    let out: RolledBack = client.answer(rb, "the rollback").await?;
    outln!("{name} now serves revision {}", out.revision);
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    client.json(client.request(reqwest::Method::DELETE, &format!("/v1/functions/{name}"))).await?;
    outln!("deleted {name}");
    Ok(ExitCode::SUCCESS)
}

pub fn new(name: &str, runtime: &str, dir: &Path) -> anyhow::Result<ExitCode> {
    flick_core::FunctionName::new(name)?;
    let Some(example) = crate::templates::for_runtime(runtime) else {
        bail!("unknown runtime `{runtime}` (python3, node, exec, http or sequence)");
    };
    let path = crate::templates::write(example, name, dir)?;
    outln!("created {} ({runtime}); deploy it with:\n  flick deploy {}", path.display(), path.display());
    Ok(ExitCode::SUCCESS)
}
