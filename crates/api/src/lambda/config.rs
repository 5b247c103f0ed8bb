//! How a Lambda function maps onto a flick package and back: runtime names,
//! the generated `flick.toml`, the settings flick has no manifest key for
//! (kept in the package as `.flick/lambda.json`), the handler check, and
//! Lambda's `FunctionConfiguration`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flick_core::{LambdaIdentity, Revision, RuntimeKind};
use flick_package::PackedFile;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What a custom runtime's zip must hold at its root.
const BOOTSTRAP: &str = "bootstrap";
/// Where the Lambda-only settings live inside the package.
pub(super) const META_FILE: &str = ".flick/lambda.json";
const MIB: u64 = 1 << 20;
/// Lambda's documented defaults and ranges.
pub(super) const DEFAULT_TIMEOUT: u64 = 3;
pub(super) const DEFAULT_MEMORY: u64 = 128;
const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=900;
const MEMORY_RANGE: std::ops::RangeInclusive<u64> = 128..=10_240;

/// What flick keeps of a Lambda function beyond its manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Meta {
    /// The runtime as the client named it (`python3.12`), echoed back.
    pub runtime: String,
    pub role: String,
    #[serde(default)]
    pub description: String,
    /// Base64 sha256 and size of the zip that was uploaded.
    pub code_sha256: String,
    pub code_size: u64,
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// A function's Lambda settings, from a request or read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Settings {
    pub name: String,
    pub kind: RuntimeKind,
    pub handler: String,
    pub timeout: u64,
    pub memory: u64,
    pub env: BTreeMap<String, String>,
    pub meta: Meta,
}

/// Lambda's runtime name → flick's runtime. `Err` is the message of the
/// InvalidParameterValueException.
pub(super) fn runtime_kind(runtime: &str) -> Result<RuntimeKind, String> {
    let python =
        runtime.strip_prefix("python3.").is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let node = runtime.strip_prefix("nodejs").is_some_and(|v| {
        v.is_empty() || v.strip_suffix(".x").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if python {
        Ok(RuntimeKind::Python3)
    } else if node {
        Ok(RuntimeKind::Node)
    } else if matches!(runtime, "provided" | "provided.al2" | "provided.al2023") {
        Ok(RuntimeKind::Provided)
    } else {
        Err(format!(
            "Value {runtime} at 'runtime' failed to satisfy constraint: flick runs python3.x, nodejs*, provided, \
             provided.al2 and provided.al2023"
        ))
    }
}

pub(super) fn check_ranges(timeout: u64, memory: u64) -> Result<(), String> {
    if !TIMEOUT_RANGE.contains(&timeout) {
        return Err(format!("Timeout {timeout} is out of range: it must be 1 to 900 seconds"));
    }
    if !MEMORY_RANGE.contains(&memory) {
        return Err(format!("MemorySize {memory} is out of range: it must be 128 to 10240 MB"));
    }
    Ok(())
}

/// Lambda's rule for environment variable names.
pub(super) fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for key in env.keys() {
        let ok = key.len() >= 2
            && key.starts_with(|c: char| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!("Environment variable name `{key}` must match [a-zA-Z][a-zA-Z0-9_]+"));
        }
    }
    Ok(())
}

/// Does the package hold the file the handler names? Lambda would accept
/// the function and fail every call with `Runtime.ImportModuleError`;
/// flick says so at once, naming the file it looked for.
pub(super) fn check_handler(kind: RuntimeKind, handler: &str, files: &[PackedFile]) -> Result<(), String> {
    if kind == RuntimeKind::Provided {
        // The handler is only what the bootstrap reads from `_HANDLER`.
        return match files.iter().find(|f| f.path.trim_start_matches("./") == BOOTSTRAP) {
            Some(f) if !f.symlink => Ok(()),
            Some(_) => Err("the zip's `bootstrap` is a symlink: a custom runtime needs the executable itself".into()),
            None => Err("a custom runtime (provided*) needs an executable `bootstrap` at the root of the zip".into()),
        };
    }
    let Some((module, function)) = handler.rsplit_once('.') else {
        return Err(format!("Handler `{handler}` must be `file.function` (e.g. `lambda_function.lambda_handler`)"));
    };
    if module.is_empty() || function.is_empty() {
        return Err(format!("Handler `{handler}` must be `file.function` (e.g. `lambda_function.lambda_handler`)"));
    }
    let present = |path: &str| files.iter().any(|f| f.path.trim_start_matches("./") == path);
    let (candidates, what): (Vec<String>, &str) = match kind {
        RuntimeKind::Python3 => {
            let base = module.replace('.', "/");
            (vec![format!("{base}.py"), format!("{base}/__init__.py"), format!("{base}.pyc")], "module")
        }
        _ => (vec![format!("{module}.js"), format!("{module}.mjs"), format!("{module}.cjs")], "file"),
    };
    if candidates.iter().any(|c| present(c)) {
        Ok(())
    } else {
        Err(format!("Handler `{handler}`: the zip has no {what} `{}` (looked for {})", module, candidates.join(", ")))
    }
}

/// The `flick.toml` of a Lambda function. Strings are written as JSON
/// strings, which are valid TOML basic strings.
pub(super) fn manifest_toml(s: &Settings) -> String {
    let q = |text: &str| serde_json::to_string(text).expect("strings serialise");
    let mut out = format!(
        "# Written by flick's Lambda API from CreateFunction/UpdateFunction*.\nname = {}\nruntime = {}\ntimeout = \
         \"{}s\"\nmemory = \"{}MiB\"\n",
        q(&s.name),
        q(s.kind.as_str()),
        s.timeout,
        s.memory,
    );
    // A custom runtime may have no handler at all.
    if !s.handler.is_empty() || s.kind != RuntimeKind::Provided {
        out.push_str(&format!("handler = {}\n", q(&s.handler)));
    }
    // A Lambda handler is a Lambda handler whatever its arity or name: the
    // bootstraps must not guess another platform's contract for it, and a
    // native `/fn` call gets the API Gateway event.
    if matches!(s.kind, RuntimeKind::Python3 | RuntimeKind::Node) {
        out.push_str("shape = \"lambda\"\n");
    }
    if !s.env.is_empty() {
        out.push_str("\n[env]\n");
        for (k, v) in &s.env {
            out.push_str(&format!("{} = {}\n", q(k), q(v)));
        }
    }
    out
}

/// The package of a Lambda function: its code, the generated manifest and
/// the Lambda-only settings. A `flick.toml` or `.flick/` in the zip is not
/// the user's to give: it is replaced.
pub(super) fn package_files(settings: &Settings, mut code: Vec<PackedFile>) -> Vec<PackedFile> {
    code.retain(|f| {
        let path = f.path.trim_start_matches("./");
        path != flick_core::MANIFEST_FILE && path != ".flick" && !path.starts_with(".flick/")
    });
    if settings.kind == RuntimeKind::Provided {
        // Lambda runs `bootstrap` whatever mode the zip gave it (a zip made
        // on Windows has none).
        for file in code.iter_mut().filter(|f| f.path.trim_start_matches("./") == BOOTSTRAP && !f.symlink) {
            file.exec = true;
        }
    }
    code.push(PackedFile::file(flick_core::MANIFEST_FILE, manifest_toml(settings)));
    let meta = serde_json::to_vec_pretty(&settings.meta).expect("meta serialises");
    code.push(PackedFile::file(META_FILE, meta));
    code
}

pub(super) fn read_meta(code_dir: &Path) -> Option<Meta> {
    let text = fs::read(code_dir.join(META_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The settings a revision runs with; `None` for a function deployed
/// another way (no Lambda settings to update from).
pub(super) fn settings_of(revision: &Revision, meta: Option<Meta>) -> Option<Settings> {
    let m = &revision.manifest;
    Some(Settings {
        name: revision.function.clone(),
        kind: m.runtime,
        handler: m.handler.clone(),
        timeout: m.timeout.as_secs().max(1),
        memory: m.memory.div_ceil(MIB),
        env: m.env.clone(),
        meta: meta?,
    })
}

/// The code of a deployed Lambda function read back from its code dir (for
/// a configuration update, which deploys the same code with new settings):
/// everything but the manifest, `.flick/`, and what installs added.
pub(super) fn read_code(dir: &Path) -> io::Result<Vec<PackedFile>> {
    let mut files = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(rel_dir) = pending.pop() {
        for entry in fs::read_dir(dir.join(&rel_dir))? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            if rel_dir.is_empty() && matches!(name.as_str(), "flick.toml" | ".flick" | ".deps") {
                continue;
            }
            if name == "__pycache__" {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(rel);
            } else if kind.is_symlink() {
                let target = fs::read_link(entry.path())?;
                files.push(PackedFile::symlink(rel, target.to_string_lossy().into_owned()));
            } else if kind.is_file() {
                let exec = entry.metadata()?.permissions().mode() & 0o100 != 0;
                let contents = fs::read(entry.path())?;
                files.push(PackedFile { path: rel, contents, exec, symlink: false });
            }
        }
    }
    Ok(files)
}

/// Base64 sha256, as Lambda's `CodeSha256`.
pub(super) fn code_sha256(zip: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(zip))
}

/// Lambda's `RevisionId` (a UUID) for a flick revision: stable for the
/// revision, different for every other.
pub(super) fn revision_id(revision: &Revision) -> String {
    let digest = Sha256::digest(format!("{}:{}", revision.id, revision.hash));
    let h = hex::encode(&digest[..16]);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `2024-01-31T12:00:00.000+0000`, Lambda's `LastModified`.
pub(super) fn timestamp(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = super::sigv4::civil_from_days(days);
    let secs = rem / 1000;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+0000", secs / 3600, secs % 3600 / 60, secs % 60, rem % 1000)
}

/// Lambda's `FunctionConfiguration` of `revision` as `version`.
pub(super) fn configuration(
    identity: &LambdaIdentity,
    revision: &Revision,
    meta: Option<&Meta>,
    version: &str,
) -> Value {
    let m = &revision.manifest;
    let mut arn = identity.function_arn(&revision.function);
    if version != "$LATEST" {
        arn = format!("{arn}:{version}");
    }
    let fallback = Meta {
        runtime: m.runtime.as_str().to_string(),
        role: format!("arn:aws:iam::{}:role/flick", identity.account),
        description: String::new(),
        code_sha256: String::new(),
        code_size: revision.code_size,
        architectures: Vec::new(),
    };
    let meta = meta.unwrap_or(&fallback);
    let sha = if meta.code_sha256.is_empty() {
        // A function deployed another way: its content hash, in base64.
        let hex = revision.hash.trim_start_matches("sha256:");
        let bytes = hex::decode(hex).unwrap_or_default();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    } else {
        meta.code_sha256.clone()
    };
    let architectures =
        if meta.architectures.is_empty() { vec!["x86_64".to_string()] } else { meta.architectures.clone() };
    let mut config = json!({
        "FunctionName": revision.function,
        "FunctionArn": arn,
        "Runtime": meta.runtime,
        "Role": meta.role,
        "Handler": m.handler,
        "CodeSize": meta.code_size,
        "Description": meta.description,
        "Timeout": m.timeout.as_secs().max(1),
        "MemorySize": m.memory.div_ceil(MIB),
        "LastModified": timestamp(revision.created_ms),
        "CodeSha256": sha,
        "Version": version,
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": revision_id(revision),
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": architectures,
        "EphemeralStorage": {"Size": m.tmp_size.div_ceil(MIB).max(512)},
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": flick_core::aws::log_group(&revision.function)},
    });
    if !m.env.is_empty() {
        config["Environment"] = json!({ "Variables": m.env });
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_map_or_name_themselves() {
        assert_eq!(runtime_kind("python3.12"), Ok(RuntimeKind::Python3));
        assert_eq!(runtime_kind("python3.9"), Ok(RuntimeKind::Python3));
        assert_eq!(runtime_kind("nodejs20.x"), Ok(RuntimeKind::Node));
        assert_eq!(runtime_kind("nodejs"), Ok(RuntimeKind::Node));
        for bad in ["python2.7", "python3.", "java21", "nodejs20", "ruby3.3", ""] {
            let err = runtime_kind(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        for provided in ["provided", "provided.al2", "provided.al2023"] {
            assert_eq!(runtime_kind(provided), Ok(RuntimeKind::Provided));
        }
    }

    #[test]
    fn handler_files_are_looked_for() {
        let files = [
            PackedFile::file("lambda_function.py", ""),
            PackedFile::file("pkg/mod.py", ""),
            PackedFile::file("index.mjs", ""),
        ];
        check_handler(RuntimeKind::Python3, "lambda_function.lambda_handler", &files).unwrap();
        check_handler(RuntimeKind::Python3, "pkg.mod.handler", &files).unwrap();
        check_handler(RuntimeKind::Node, "index.handler", &files).unwrap();
        let err = check_handler(RuntimeKind::Python3, "app.handler", &files).unwrap_err();
        assert!(err.contains("app.py"), "{err}");
        assert!(check_handler(RuntimeKind::Python3, "nodot", &files).unwrap_err().contains("file.function"));
        assert!(check_handler(RuntimeKind::Provided, "", &files).unwrap_err().contains("bootstrap"));
        check_handler(RuntimeKind::Provided, "", &[PackedFile::file("bootstrap", "#!/bin/sh")]).unwrap();
    }

    #[test]
    fn the_manifest_quotes_what_it_is_given() {
        let settings = Settings {
            name: "f".into(),
            kind: RuntimeKind::Python3,
            handler: "a.b".into(),
            timeout: 3,
            memory: 128,
            env: BTreeMap::from([("K".into(), "line\n\"q\" \\ é".into())]),
            meta: Meta::default(),
        };
        let text = manifest_toml(&settings);
        let m = flick_core::Manifest::parse(&text).unwrap();
        assert_eq!(m.env["K"], "line\n\"q\" \\ é");
        assert_eq!((m.timeout.as_secs(), m.memory), (3, 128 * MIB));
        assert_eq!(m.shape, flick_core::Shape::Lambda, "a Lambda handler is never guessed as another platform's");
    }

    #[test]
    fn timestamps_are_lambdas() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000+0000");
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123+0000");
    }
}
