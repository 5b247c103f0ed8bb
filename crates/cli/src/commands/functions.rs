//! `deploy`, `list`, `show`, `revisions`, `rollback`, `delete`, `new`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::Client;
use crate::timefmt::rfc3339;

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
    let out = client.json(rb).await.with_context(|| format!("deploying {}", manifest.name))?;
    let (name, rev, hash) = (&out["function"], &out["revision"], out["hash"].as_str().unwrap_or(""));
    let short = &hash[..hash.len().min(19)];
    if out["unchanged"].as_bool() == Some(true) {
        println!("{} is unchanged: revision {rev} ({short}) already has this code and config", s(name));
    } else {
        println!("deployed {} revision {rev} ({short})", s(name));
    }
    println!("  url: {}/fn/{}", client.base, s(name));
    Ok(ExitCode::SUCCESS)
}

pub async fn list(client: &Client) -> anyhow::Result<ExitCode> {
    let out = client.get("/v1/functions").await?;
    let functions = out["functions"].as_array().cloned().unwrap_or_default();
    if functions.is_empty() {
        println!("no functions yet: `flick deploy DIR` deploys one");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:<8} {:>4} {:<8} UPDATED", "NAME", "RUNTIME", "REV", "ACCESS");
    for f in functions {
        println!(
            "{:<24} {:<8} {:>4} {:<8} {}",
            s(&f["name"]),
            s(&f["runtime"]),
            f["current_revision"].to_string(),
            if f["public"].as_bool() == Some(true) { "public" } else { "private" },
            rfc3339(f["updated_ms"].as_i64().unwrap_or(0)),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(client: &Client, name: &str, env_values: bool) -> anyhow::Result<ExitCode> {
    let query = if env_values { "?env=values" } else { "" };
    let f = client.get(&format!("/v1/functions/{name}{query}")).await?;
    println!("function:  {}", s(&f["name"]));
    println!("url:       {}{}", client.base, s(&f["url"]));
    println!("revision:  {} of {} ({})", f["current_revision"], f["latest_revision"], s(&f["hash"]));
    println!("updated:   {}", rfc3339(f["updated_ms"].as_i64().unwrap_or(0)));
    let manifest: flick_core::Manifest =
        serde_json::from_value(f["manifest"].clone()).context("the server sent an unreadable manifest")?;
    print!("\n{}", manifest.to_toml());
    let names: Vec<&str> = f["env_names"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
    if !env_values && !names.is_empty() {
        println!("\n[env]  # values hidden: `flick show {name} --env` prints them");
        for n in names {
            println!("# {n} = …");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn revisions(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let out = client.get(&format!("/v1/functions/{name}/revisions")).await?;
    let current = out["current_revision"].as_u64();
    println!("{:>4}  {:<24} {:<10} CREATED", "REV", "HASH", "SIZE");
    for r in out["revisions"].as_array().cloned().unwrap_or_default() {
        let hash = s(&r["hash"]);
        let mark = if r["number"].as_u64() == current { "*" } else { " " };
        println!(
            "{mark}{:>3}  {:<24} {:<10} {}",
            r["number"].to_string(),
            &hash[..hash.len().min(23)],
            flick_core::units::format_size(r["code_size"].as_u64().unwrap_or(0)),
            rfc3339(r["created_ms"].as_i64().unwrap_or(0)),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(client: &Client, name: &str, revision: Option<u32>) -> anyhow::Result<ExitCode> {
    let body = match revision {
        Some(n) => json!({ "revision": n }),
        None => json!({}),
    };
    let rb = client.request(reqwest::Method::POST, &format!("/v1/functions/{name}/rollback")).json(&body);
    let out = client.json(rb).await?;
    println!("{name} now serves revision {}", out["revision"]);
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    client.json(client.request(reqwest::Method::DELETE, &format!("/v1/functions/{name}"))).await?;
    println!("deleted {name}");
    Ok(ExitCode::SUCCESS)
}

pub fn new(name: &str, runtime: &str, dir: &Path) -> anyhow::Result<ExitCode> {
    flick_core::FunctionName::new(name)?;
    let Some(example) = crate::templates::for_runtime(runtime) else {
        bail!("unknown runtime `{runtime}` (python3, node, exec or http)");
    };
    let path = crate::templates::write(example, name, dir)?;
    println!("created {} ({runtime}); deploy it with:\n  flick deploy {}", path.display(), path.display());
    Ok(ExitCode::SUCCESS)
}

/// A JSON string value without quotes.
pub fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}
