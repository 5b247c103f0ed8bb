//! An OpenWhisk action (`exec`, `parameters`, `annotations`, `limits`) as a
//! flick package: the user's code, a small generated entry module that
//! finds the action's `main` the way OpenWhisk's runtimes do, a generated
//! `flick.toml`, and `.openwhisk.json` (what the action was created with,
//! so `GET` can show it back). Deployed through `Platform::deploy`, the one
//! deploy path.

use std::collections::BTreeMap;

use flick_package::PackedFile;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::OwError;

/// The metadata file inside every package this surface makes.
pub(crate) const META_FILE: &str = ".openwhisk.json";
/// String code as sent, beside it (what `GET ?code=true` shows).
pub(crate) const CODE_FILE: &str = ".openwhisk.code";
/// Largest `.openwhisk.json` read back.
pub(crate) const MAX_META_BYTES: u64 = 1 << 20;
/// The generated entry modules (python, node): handler `<this>.main`.
const ENTRY: &str = "flick_openwhisk";
/// Files a zip may not bring, since the package's own are generated.
const GENERATED: [&str; 5] = ["flick.toml", META_FILE, CODE_FILE, "flick_openwhisk.py", "flick_openwhisk.js"];

/// OpenWhisk's defaults for `limits`.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub(crate) const DEFAULT_MEMORY_MB: u64 = 256;

/// The runtime an `exec.kind` maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Python,
    Node,
    Sequence,
}

/// `exec.kind` → flick runtime: `python:3`, `python:3.x`, `python:default`;
/// `nodejs:<n>`, `nodejs:default`; `sequence`. Anything else is refused
/// with the list of what works (`blackbox` needs a container image, which
/// flick does not run).
pub(crate) fn kind_of(kind: &str) -> Result<Kind, OwError> {
    let version_ok = |v: &str, major: bool| {
        v == "default"
            || (!v.is_empty()
                && v.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && (!major || v == "3" || v.starts_with("3.")))
    };
    if let Some(v) = kind.strip_prefix("python:")
        && version_ok(v, true)
    {
        return Ok(Kind::Python);
    }
    if let Some(v) = kind.strip_prefix("nodejs:")
        && version_ok(v, false)
    {
        return Ok(Kind::Node);
    }
    if kind == "sequence" {
        return Ok(Kind::Sequence);
    }
    let shown: String = kind.chars().take(64).flat_map(char::escape_default).collect();
    if kind == "blackbox" {
        return Err(OwError::BadRequest(
            "kind 'blackbox' runs a Docker image, and flick runs no containers: deploy the program as a flick \
             `exec` or `http` function (flick deploy) instead"
                .into(),
        ));
    }
    Err(OwError::BadRequest(format!(
        "kind '{shown}' is not supported; flick runs python:3, python:3.x, python:default, nodejs:<version>, \
         nodejs:default and sequence"
    )))
}

/// What an action was created with, kept in the package as `.openwhisk.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub kind: String,
    #[serde(default = "default_main")]
    pub main: String,
    #[serde(default)]
    pub binary: bool,
    /// A sequence's components, fully qualified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    #[serde(default)]
    pub annotations: Vec<KeyValue>,
    #[serde(default)]
    pub limits: Limits,
}

fn default_main() -> String {
    "main".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Limits {
    pub timeout: u64,
    pub memory: u64,
    pub logs: u64,
    pub concurrency: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { timeout: DEFAULT_TIMEOUT_MS, memory: DEFAULT_MEMORY_MB, logs: 10, concurrency: 1 }
    }
}

/// The action's code.
pub(crate) enum Code {
    Text(String),
    /// The files of a zip, already read with flick's safe zip reader.
    Files(Vec<PackedFile>),
    /// A sequence's steps (flick function names).
    Steps(Vec<String>),
}

/// Everything a deploy needs, checked.
pub(crate) struct Action {
    pub name: String,
    pub kind: Kind,
    pub meta: Meta,
    pub code: Code,
    pub params: BTreeMap<String, Value>,
    pub web: bool,
}

/// `exec.main` is written into generated code: only an identifier.
pub(crate) fn check_main(main: &str) -> Result<(), OwError> {
    let ok = !main.is_empty()
        && main.len() <= 128
        && !main.starts_with(|c: char| c.is_ascii_digit())
        && main.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ok {
        Ok(())
    } else {
        let shown: String = main.chars().take(64).flat_map(char::escape_default).collect();
        Err(OwError::BadRequest(format!("exec.main '{shown}' must be an identifier (letters, digits, _ or $)")))
    }
}

impl Action {
    /// The package's files: path, contents, executable.
    pub(crate) fn files(&self) -> Result<Vec<PackedFile>, OwError> {
        let meta = serde_json::to_vec_pretty(&self.meta).map_err(|e| OwError::BadRequest(e.to_string()))?;
        let mut files = vec![file("flick.toml", self.manifest()?.into_bytes()), file(META_FILE, meta)];
        if let Code::Text(code) = &self.code {
            // As sent, so GET shows it back (a zip's code is not kept twice).
            files.push(file(CODE_FILE, code.clone().into_bytes()));
        }
        let main = &self.meta.main;
        // A JSON string is a valid string literal in Python and JavaScript.
        let main_lit = serde_json::to_string(main).unwrap_or_default();
        match (&self.code, self.kind) {
            (Code::Steps(_), _) => {}
            (Code::Text(code), Kind::Python) => {
                files.push(file("__main__.py", code.clone().into_bytes()));
                files.push(file(&format!("{ENTRY}.py"), python_entry(&main_lit).into_bytes()));
            }
            (Code::Text(code), _) => {
                // OpenWhisk evaluates string code and finds `main` by name,
                // exported or not; a CommonJS module must export it.
                let js = format!(
                    "{code}\n;/* flick: OpenWhisk finds the entry point by name */ \
                     if (typeof {main} === 'function') module.exports.main = {main}; \
                     else if (module.exports && typeof module.exports[{main_lit}] === 'function') \
                     module.exports.main = module.exports[{main_lit}];\n"
                );
                files.push(file("action.js", js.into_bytes()));
            }
            (Code::Files(zip), kind) => {
                let has = |p: &str| zip.iter().any(|f| f.path == p && !f.symlink);
                match kind {
                    Kind::Python if !has("__main__.py") => {
                        return Err(OwError::BadRequest(
                            "a python zip action needs __main__.py at the root of the zip".into(),
                        ));
                    }
                    Kind::Python => files.push(file(&format!("{ENTRY}.py"), python_entry(&main_lit).into_bytes())),
                    _ if !has("package.json") && !has("index.js") => {
                        return Err(OwError::BadRequest(
                            "a nodejs zip action needs package.json (with \"main\") or index.js at the root of the zip"
                                .into(),
                        ));
                    }
                    _ => files.push(file(&format!("{ENTRY}.js"), node_entry(&main_lit).into_bytes())),
                }
                files.extend(zip.iter().filter(|f| !GENERATED.contains(&f.path.as_str())).cloned());
            }
        }
        Ok(files)
    }

    fn handler(&self) -> String {
        match (&self.code, self.kind) {
            (Code::Text(_), Kind::Node) => "action.main".into(),
            _ => format!("{ENTRY}.main"),
        }
    }

    /// The generated `flick.toml`.
    pub(crate) fn manifest(&self) -> Result<String, OwError> {
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out =
            format!("# Generated by flick's OpenWhisk API from an action PUT.\nname = {}\n", quote(&self.name));
        let l = &self.meta.limits;
        match &self.code {
            Code::Steps(steps) => {
                let steps: Vec<String> = steps.iter().map(|s| quote(s)).collect();
                out.push_str(&format!("runtime = \"sequence\"\nsteps = [{}]\n", steps.join(", ")));
            }
            _ => {
                let runtime = if self.kind == Kind::Python { "python3" } else { "node" };
                // OpenWhisk's contract whatever main's arity: main(params) in, a dict out.
                out.push_str(&format!(
                    "runtime = \"{runtime}\"\nshape = \"openwhisk\"\nhandler = {}\nmemory = \"{}MiB\"\nconcurrency = {}\n",
                    quote(&self.handler()),
                    l.memory,
                    l.concurrency
                ));
            }
        }
        out.push_str(&format!("timeout = \"{}ms\"\n", l.timeout));
        // One activation per invoke, as OpenWhisk runs them: a queued call
        // that fails is not tried again.
        out.push_str("retries = 0\n");
        if self.web {
            out.push_str("web = true\n");
        }
        out.push_str(&flick_core::manifest::params_toml(&self.params).map_err(OwError::BadRequest)?);
        Ok(out)
    }
}

fn python_entry(main_lit: &str) -> String {
    format!(
        r#"# Generated by flick's OpenWhisk API: loads the action's __main__.py (a
# name Python cannot import as a module) and exposes its entry point as main.
import glob as _glob
import importlib.util as _util
import os as _os
import sys as _sys

_here = _os.path.dirname(_os.path.abspath(__file__))
# OpenWhisk's convention: a zip's virtualenv/ holds its dependencies.
for _site in sorted(_glob.glob(_os.path.join(_here, "virtualenv", "lib", "python3*", "site-packages"))):
    _sys.path.insert(0, _site)
_spec = _util.spec_from_file_location("__openwhisk_action__", _os.path.join(_here, "__main__.py"))
_action = _util.module_from_spec(_spec)
_sys.modules["__openwhisk_action__"] = _action
_spec.loader.exec_module(_action)
main = getattr(_action, {main_lit})
"#
    )
}

fn node_entry(main_lit: &str) -> String {
    format!(
        "// Generated by flick's OpenWhisk API: the zip's module (package.json \"main\" or\n\
         // index.js) and its entry point as main.\n\
         const action = require('./');\n\
         module.exports.main = typeof action[{main_lit}] === 'function' ? action[{main_lit}] : action;\n"
    )
}

fn file(path: &str, contents: Vec<u8>) -> PackedFile {
    PackedFile { path: path.into(), contents, exec: false, symlink: false }
}

/// A deploy archive from the package's files.
pub(crate) fn pack(files: &[PackedFile]) -> Result<Vec<u8>, OwError> {
    flick_package::pack_files(files).map_err(|e| OwError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_or_are_refused_by_name() {
        for k in ["python:3", "python:3.11", "python:default"] {
            assert_eq!(kind_of(k).unwrap(), Kind::Python, "{k}");
        }
        for k in ["nodejs:20", "nodejs:18", "nodejs:default"] {
            assert_eq!(kind_of(k).unwrap(), Kind::Node, "{k}");
        }
        for k in ["python:2", "python:", "go:1.20", "java:8", "nodejs:", "nodejs:x", "swift:5", "blackbox"] {
            match kind_of(k) {
                Err(OwError::BadRequest(m)) => assert!(m.contains(k.split(':').next().unwrap()), "{k}: {m}"),
                other => panic!("{k}: {other:?}"),
            }
        }
    }

    #[test]
    fn main_must_be_an_identifier() {
        assert!(check_main("main").is_ok() && check_main("handler_2").is_ok());
        for bad in ["", "1x", "a.b", "x;process.exit()", "a b", "\"x"] {
            assert!(check_main(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_manifests_parse() {
        let mut params = BTreeMap::new();
        params.insert("greeting".to_string(), serde_json::json!({"text": "hi", "n": [1, 2.5]}));
        for (kind, code) in [(Kind::Python, "def main(a): return a"), (Kind::Node, "function main(a) { return a }")] {
            let action = Action {
                name: "hello".into(),
                kind,
                meta: Meta { kind: "x".into(), main: "main".into(), ..Meta::default() },
                code: Code::Text(code.into()),
                params: params.clone(),
                web: true,
            };
            let m = flick_core::Manifest::parse(&action.manifest().unwrap()).unwrap();
            assert_eq!((m.timeout.as_millis(), m.memory, m.web, m.retries), (60_000, 256 << 20, true, 0));
            assert_eq!(m.shape, flick_core::Shape::Openwhisk);
            assert_eq!(m.params, params);
            assert!(action.files().unwrap().iter().any(|f| f.path == META_FILE));
        }
    }
}
