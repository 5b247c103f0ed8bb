//! Deploy-time dependency installs: `pip install -r requirements.txt` and
//! `npm install`, each run in a sandbox of its own.
//!
//! Installers run code from the package (`setup.py`, build backends,
//! `postinstall` scripts), so they get what an instance gets — own
//! namespaces and root, a cgroup, an unprivileged uid, seccomp, death with
//! flick — with three differences: the package is mounted read-write at
//! `/var/task` (handed to the sandbox uid for the install and taken back
//! after), the network is the host's (the package index must be reachable),
//! and the environment is only what the installer needs plus what the
//! operator configured for installs (`install_env`). Before anything runs,
//! `requirements.txt` and `package.json` are checked for local paths outside
//! the package (`-r /etc/passwd`, `file:../x`), which are refused with the
//! file and line.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flick_sandbox::{Identity, Limits, Network, ProcessSpec, Sandbox};
use tokio::io::AsyncReadExt;

use crate::PlatformError;

/// How much installer output a failed deploy reports: the end, where
/// installers put the reason.
pub const OUTPUT_TAIL: usize = 8 << 10;

/// Nested `-r` files followed at most this deep.
const MAX_NESTING: usize = 8;

/// How dependency installs run; from flick's config.
#[derive(Clone, Debug)]
pub struct InstallConfig {
    /// Interpreter that runs `pip` for `requirements.txt`.
    pub python: PathBuf,
    /// `npm`, for `package.json`.
    pub npm: PathBuf,
    /// `node`: its directory goes on the installers' `PATH` (npm and
    /// install scripts run `node`).
    pub node: PathBuf,
    /// Wall-clock limit of one installer run.
    pub timeout: Duration,
    /// Memory limit of the install's cgroup; also the size of its `/tmp`.
    pub memory: u64,
    /// Variables the operator set for installers (index URLs, proxies,
    /// CA bundles): the only ones besides `PATH`, `HOME`, `TMPDIR`, `LANG`.
    pub env: Vec<(String, String)>,
}

/// Installs the package's dependencies into it, in place.
pub async fn install_dependencies(sandbox: &Sandbox, config: &InstallConfig, dir: &Path) -> Result<(), PlatformError> {
    let has_requirements = dir.join("requirements.txt").is_file();
    let has_package_json = dir.join("package.json").is_file();
    if !has_requirements && !has_package_json {
        return Ok(());
    }
    // Refuse before anything runs.
    if has_requirements {
        check_requirements(dir)?;
    }
    if has_package_json {
        check_package_json(dir)?;
    }
    let task = sandbox.code_path(dir);
    if has_requirements {
        let mut args: Vec<OsString> = ["-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
            .iter()
            .chain(&["--no-cache-dir", "--quiet", "--target"])
            .map(OsString::from)
            .collect();
        args.push(task.join(".deps").join("python").into());
        args.extend(["-r", "requirements.txt"].map(OsString::from));
        run(sandbox, config, "pip", &config.python, args, dir).await?;
    }
    if has_package_json {
        let args = ["install", "--omit=dev", "--no-audit", "--no-fund", "--no-progress", "--no-update-notifier"]
            .map(OsString::from)
            .to_vec();
        run(sandbox, config, "npm", &config.npm, args, dir).await?;
    }
    Ok(())
}

/// Compiles a python3 package's modules to bytecode beside them
/// (`__pycache__`), so no cold start compiles them: the code is mounted
/// read-only into instances, where Python cannot write what it compiled,
/// and compiled it again on every start (~0.4 ms for a ten-line module,
/// tens of ms for a large one). Compiling parses the package's code without
/// running it, in the installers' sandbox all the same. Unchecked-hash
/// bytecode: the code directory never changes after deploy. `.deps` was
/// compiled by pip. `-I` keeps the package off `sys.path`: its own
/// `re.py` or `compileall.py` must not stand in for the standard library's.
/// A failure costs only the speed-up: it is logged and the
/// deploy goes on (a module with a syntax error is reported when the
/// function starts, as before).
pub async fn compile_python(sandbox: &Sandbox, config: &InstallConfig, dir: &Path) {
    const SCRIPT: &str = "import compileall, py_compile, re, sys\n\
        compileall.compile_dir(sys.argv[1], quiet=2, force=True, workers=1,\n\
        rx=re.compile(r'(^|/)(\\.deps|node_modules)(/|$)'),\n\
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n";
    let task = sandbox.code_path(dir);
    let args = vec!["-I".into(), "-S".into(), "-c".into(), SCRIPT.into(), task.into_os_string()];
    if let Err(e) = run(sandbox, config, "compileall", &config.python, args, dir).await {
        tracing::warn!(error = %e, "could not precompile the function's modules; its cold starts compile them");
    }
}

/// Runs one installer in its sandbox over `dir` and waits for it, its
/// output capped at [`OUTPUT_TAIL`].
async fn run(
    sandbox: &Sandbox,
    config: &InstallConfig,
    tool: &str,
    program: &Path,
    args: Vec<OsString>,
    dir: &Path,
) -> Result<(), PlatformError> {
    let failed = |status: String, output: String| PlatformError::Dependencies { tool: tool.into(), status, output };
    let internal = |e: std::io::Error| PlatformError::Internal(format!("preparing the {tool} install: {e}"));
    let ids = sandbox.ids();
    if let Some((uid, gid)) = ids {
        let dir = dir.to_path_buf();
        blocking(move || chown_tree(&dir, Some((uid, gid)))).await.map_err(internal)?;
    }
    let spec = ProcessSpec {
        program: program.to_path_buf(),
        args,
        env: environment(config),
        code_dir: Some(dir.to_path_buf()),
        protocol_fd: None,
        stdin: false,
        // The shared uid: the staging dir was chowned to `sandbox.ids()`.
        limits: Limits {
            memory: config.memory,
            tmp_size: config.memory,
            network: Network::Host,
            identity: Identity::Shared,
        },
        report_exit: false,
        wait_for_program: false,
    };
    let mut spawned =
        sandbox.spawn_install(spec).await.map_err(|e| failed(format!("could not start `{tool}`"), e.to_string()))?;
    let (mut stdout, mut stderr) = (spawned.child.stdout.take(), spawned.child.stderr.take());
    let (mut out, mut err) = (Tail::default(), Tail::default());
    let waited = tokio::time::timeout(config.timeout, async {
        let (_, _, status) = tokio::join!(out.read_all(stdout.as_mut()), err.read_all(stderr.as_mut()), async {
            spawned.child.wait().await
        });
        status
    })
    .await;
    let timed_out = waited.is_err();
    if timed_out {
        // The outer process first: the installer dies with it (parent-death
        // signal) and with it its whole pid namespace.
        let _ = spawned.child.start_kill();
        let _ = spawned.child.wait().await;
    }
    // Nothing of the install may still run when the package is taken back.
    let oom = match spawned.cgroup.take() {
        Some(cg) => blocking(move || {
            let oom = cg.oom_killed();
            cg.destroy();
            Ok(oom)
        })
        .await
        .unwrap_or(false),
        None => false,
    };
    let mut text = out.text();
    text.push_str(&err.text());
    let output = tail(&text, OUTPUT_TAIL);
    let status = match waited {
        Err(_) => return Err(failed(format!("timed out after {}s", config.timeout.as_secs()), output)),
        Ok(Err(e)) => return Err(failed(format!("could not wait for `{tool}`: {e}"), output)),
        Ok(Ok(status)) => status,
    };
    if !status.success() {
        let status = if oom {
            format!("{status}, out of memory (install_memory = {} MiB)", config.memory >> 20)
        } else {
            status.to_string()
        };
        return Err(failed(status, output));
    }
    if ids.is_some() {
        let dir = dir.to_path_buf();
        blocking(move || chown_tree(&dir, None)).await.map_err(internal)?;
    }
    Ok(())
}

/// The installer's whole environment (on top of the sandbox's base):
/// `PATH` with the runtimes' directories, and the operator's `install_env`.
fn environment(config: &InstallConfig) -> Vec<(String, String)> {
    let mut path: Vec<String> = Vec::new();
    for program in [&config.node, &config.npm, &config.python] {
        if let Some(dir) = program.parent().filter(|d| !d.as_os_str().is_empty())
            && let Some(dir) = dir.to_str()
            && !path.iter().any(|p| p == dir)
        {
            path.push(dir.to_string());
        }
    }
    path.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
    path.dedup();
    let mut env = vec![("PATH".to_string(), path.join(":"))];
    env.extend(config.env.iter().cloned());
    env
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

/// Hands `dir` and everything in it to `ids` (before an install), or takes
/// it back for flick (`None`, after: owned by flick's user, modes as the
/// unpacker sets them — 0755 dirs, 0755/0644 files — so no set-id bits or
/// group/other write survive and instances can read everything).
/// Never follows symbolic links; walks with an explicit stack (deep
/// `node_modules`).
fn chown_tree(dir: &Path, ids: Option<(u32, u32)>) -> std::io::Result<()> {
    let owner = match ids {
        Some(ids) => ids,
        None => {
            use std::os::unix::fs::MetadataExt;
            // The staging area flick created: flick's own uid and gid.
            let parent = std::fs::metadata(dir.parent().unwrap_or(dir))?;
            (parent.uid(), parent.gid())
        }
    };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        std::os::unix::fs::lchown(&path, Some(owner.0), Some(owner.1))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            continue;
        }
        if ids.is_none() {
            let mode = if kind.is_dir() || meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 };
            if kind.is_dir() || kind.is_file() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
        }
        if kind.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// The last bytes a stream produced, at most [`OUTPUT_TAIL`] kept.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    async fn read_all<R: tokio::io::AsyncRead + Unpin>(&mut self, reader: Option<&mut R>) {
        let Some(reader) = reader else { return };
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            self.0.extend_from_slice(&buf[..n]);
            if self.0.len() > 2 * OUTPUT_TAIL {
                self.0.drain(..self.0.len() - OUTPUT_TAIL);
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// The last `max` bytes of `text` (installers put the reason at the end).
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

// ---- what the package may refer to --------------------------------------

fn refused(file: &str, line: usize, reason: String) -> PlatformError {
    PlatformError::DependencyRefused { file: file.to_string(), line, reason }
}

/// Is `reference` (a path or URL from a dependency file in `base`, a
/// directory relative to the package root) something local outside the
/// package? Returns why, if so.
fn outside_package(reference: &str, base: &Path) -> Option<String> {
    if reference.contains("${") && !is_remote_url(reference) {
        return Some("environment variables are not allowed in local paths".into());
    }
    let path = match local_part(reference) {
        Local::Remote => return None,
        Local::Path(path) => path,
    };
    if path.starts_with('~') {
        return Some("home directories are outside the package".into());
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Some("absolute paths are outside the package; use a path relative to it".into());
    }
    // Lexically: the unpacker refuses links that leave the package, so
    // `..` is the only way out.
    let mut depth: usize = 0;
    for comp in base.join(path).components() {
        match comp {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                if depth == 0 {
                    return Some("it leads outside the package".into());
                }
                depth -= 1;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Some("absolute paths are outside the package".into()),
        }
    }
    None
}

enum Local<'a> {
    Remote,
    Path(&'a str),
}

fn is_remote_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    scheme(&lower).is_some_and(|scheme| !scheme.contains("file"))
}

/// `http:`, `git+https:`…: the scheme of a URL, if `s` is one (a Windows
/// drive letter is not).
fn scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once(':')?;
    let ok = scheme.len() > 1
        && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    ok.then_some(scheme)
}

/// The local path a reference names, or `Remote`. `file:` URLs (also
/// `git+file:`) and npm's `file:`/`link:` specs are local.
fn local_part(reference: &str) -> Local<'_> {
    let lower = reference.to_ascii_lowercase();
    match scheme(&lower) {
        Some(s) if s.contains("file") || s == "link" => {
            let rest = &reference[s.len() + 1..];
            // file://host/path: only the path matters; file:///x is absolute.
            let rest = match rest.strip_prefix("//") {
                Some(after) => after.find('/').map_or("/", |i| &after[i..]),
                None => rest,
            };
            Local::Path(rest)
        }
        Some(_) => Local::Remote,
        None => Local::Path(reference),
    }
}

/// Checks `requirements.txt` (and the files it includes with `-r`/`-c`)
/// for local paths outside the package.
fn check_requirements(root: &Path) -> Result<(), PlatformError> {
    let mut seen = HashSet::new();
    check_requirements_file(root, Path::new("requirements.txt"), 0, &mut seen)
}

fn check_requirements_file(
    root: &Path,
    file: &Path,
    nesting: usize,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), PlatformError> {
    let name = file.display().to_string();
    if !seen.insert(normalise(file)) {
        return Ok(());
    }
    let text = match std::fs::read(root.join(file)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        // pip reports a missing file itself; it is inside the package.
        Err(_) => return Ok(()),
    };
    let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
    for (number, line) in logical_lines(&text) {
        let tokens = shell_words(strip_comment(&line));
        let mut i = 0;
        while i < tokens.len() {
            let token = &tokens[i];
            i += 1;
            let (option, attached) = match split_option(token) {
                Some(split) => split,
                None => {
                    // A requirement: only its first word can be a location
                    // (`./pkg`, `file:…`, `name @ url`); markers come later.
                    if i == 1 {
                        let location = requirement_location(&tokens);
                        if let Some(location) = location
                            && let Some(why) = outside_package(location, &base)
                        {
                            return Err(refused(&name, number, format!("`{location}`: {why}")));
                        }
                    }
                    continue;
                }
            };
            if !TAKES_LOCATION.contains(&option) {
                continue;
            }
            let value = match attached {
                Some(v) => v.to_string(),
                None => {
                    let Some(v) = tokens.get(i) else { continue };
                    i += 1;
                    v.clone()
                }
            };
            if let Some(why) = outside_package(&value, &base) {
                return Err(refused(&name, number, format!("`{option} {value}`: {why}")));
            }
            let nested = matches!(option, "-r" | "--requirement" | "-c" | "--constraint");
            if nested && matches!(local_part(&value), Local::Path(_)) && !value.contains("://") {
                if nesting >= MAX_NESTING {
                    return Err(refused(&name, number, format!("`{option} {value}`: nested too deeply")));
                }
                let path = match local_part(&value) {
                    Local::Path(p) => base.join(p),
                    Local::Remote => continue,
                };
                check_requirements_file(root, &normalise(&path), nesting + 1, seen)?;
            }
        }
    }
    Ok(())
}

/// pip's options whose value is a file, directory or URL.
const TAKES_LOCATION: &[&str] = &[
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
    "-f",
    "--find-links",
    "-i",
    "--index-url",
    "--extra-index-url",
    "--src",
];

/// `-rfile` → (`-r`, `file`); `--requirement=file` → (`--requirement`,
/// `file`); `-r` → (`-r`, none). `None` if `token` is not an option.
fn split_option(token: &str) -> Option<(&str, Option<&str>)> {
    if token.starts_with("--") {
        return Some(match token.split_once('=') {
            Some((option, value)) => (option, Some(value)),
            None => (token, None),
        });
    }
    if token.starts_with('-') && token.len() >= 2 {
        let (option, rest) = token.split_at(2);
        let rest = rest.strip_prefix('=').unwrap_or(rest);
        return Some((option, (!rest.is_empty()).then_some(rest)));
    }
    None
}

/// Where a requirement line points, if it names a location rather than a
/// project: `./pkg`, `pkg.tar.gz`, `file:///x`, the URL of `name @ url`.
fn requirement_location(tokens: &[String]) -> Option<&str> {
    let first = tokens.first()?.as_str();
    // `name @ url`, `name@url`, `name[extra] @ url`.
    let at = tokens.iter().position(|t| t == "@");
    if let Some(at) = at {
        return tokens.get(at + 1).map(String::as_str);
    }
    if let Some((name, url)) = first.split_once('@')
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.[],".contains(c))
    {
        return Some(url.trim());
    }
    let first = first.split(';').next().unwrap_or(first);
    let local_looking = first.starts_with('.')
        || first.starts_with('/')
        || first.starts_with('~')
        || first.starts_with('$')
        || first.contains('/')
        || first.contains('\\')
        || scheme(&first.to_ascii_lowercase()).is_some();
    local_looking.then_some(first)
}

/// Lines joined where they end in a backslash, with the number of the
/// physical line each starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let (start, mut acc) = current.take().unwrap_or((index + 1, String::new()));
        match raw.strip_suffix('\\') {
            Some(part) => {
                acc.push_str(part);
                current = Some((start, acc));
            }
            None => {
                acc.push_str(raw);
                lines.push((start, acc));
            }
        }
    }
    if let Some(last) = current {
        lines.push(last);
    }
    lines
}

/// pip's comments: a `#` at the start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Splits like a shell (pip uses `shlex` for options): whitespace, quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `a/./b/../c` → `a/c`, lexically (the path is already known to stay
/// inside the package).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// Checks `package.json` for dependencies and workspaces that are local
/// paths outside the package (`file:../x`, `link:/x`, `../x`).
fn check_package_json(root: &Path) -> Result<(), PlatformError> {
    const FILE: &str = "package.json";
    let text = std::fs::read_to_string(root.join(FILE))
        .map_err(|e| refused(FILE, 1, format!("cannot be read as UTF-8 text: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| refused(FILE, e.line(), format!("not valid JSON: {e}")))?;
    let line_of = |needle: &str| {
        let quoted = serde_json::to_string(needle).unwrap_or_default();
        text.lines().position(|l| l.contains(&quoted)).map_or(1, |i| i + 1)
    };
    let mut specs: Vec<(String, String)> = Vec::new();
    for section in ["dependencies", "devDependencies", "optionalDependencies", "peerDependencies"] {
        if let Some(deps) = json.get(section).and_then(|v| v.as_object()) {
            for (name, spec) in deps {
                if let Some(spec) = spec.as_str() {
                    specs.push((format!("{section}.{name}"), spec.to_string()));
                }
            }
        }
    }
    // overrides nest: { "a": { "b": "file:../x" } } or { "a": "1.0" }.
    let mut pending: Vec<(String, &serde_json::Value)> =
        json.get("overrides").map(|v| vec![("overrides".to_string(), v)]).unwrap_or_default();
    while let Some((at, value)) = pending.pop() {
        match value {
            serde_json::Value::String(spec) => specs.push((at, spec.clone())),
            serde_json::Value::Object(map) => {
                pending.extend(map.iter().map(|(k, v)| (format!("{at}.{k}"), v)));
            }
            _ => {}
        }
    }
    for (at, spec) in &specs {
        if is_npm_local(spec)
            && let Some(why) = outside_package(spec, Path::new(""))
        {
            return Err(refused(FILE, line_of(spec), format!("{at} = `{spec}`: {why}")));
        }
    }
    let workspaces = match json.get("workspaces") {
        Some(serde_json::Value::Array(list)) => list.iter().collect(),
        Some(serde_json::Value::Object(map)) => {
            map.get("packages").and_then(|p| p.as_array()).map(|l| l.iter().collect()).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    for path in workspaces.into_iter().filter_map(|w| w.as_str()) {
        if let Some(why) = outside_package(path, Path::new("")) {
            return Err(refused(FILE, line_of(path), format!("workspace `{path}`: {why}")));
        }
    }
    Ok(())
}

/// Is an npm dependency spec a local path (npm-package-arg's rules, plus
/// `link:` as yarn and pnpm write it)?
fn is_npm_local(spec: &str) -> bool {
    let lower = spec.to_ascii_lowercase();
    lower.starts_with("file:")
        || lower.starts_with("link:")
        || lower.starts_with("git+file:")
        || spec.starts_with('.')
        || spec.starts_with('/')
        || spec.starts_with('\\')
        || spec.starts_with('~')
        || spec.contains("${")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn requirements(text: &str) -> Result<(), PlatformError> {
        let dir = package(&[("requirements.txt", text), ("sub/more.txt", "../vendor/ok\n")]);
        check_requirements(dir.path())
    }

    fn refused_at(result: Result<(), PlatformError>) -> (String, usize, String) {
        match result {
            Err(PlatformError::DependencyRefused { file, line, reason }) => (file, line, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn requirements_inside_the_package_and_remote_ones_pass() {
        for ok in [
            "requests==2.31\n",
            "requests>=2; python_version >= \"3.8\"  # a comment\n",
            "./vendor/pkg\n",
            "vendor/pkg\n",
            "-e ./vendor/pkg\n",
            "-r sub/more.txt\n",
            "-i https://pypi.example/simple\n--extra-index-url=https://${TOKEN}@x.example/simple\n",
            "pkg @ https://example.com/pkg-1.0.tar.gz\n",
            "git+https://github.com/x/y.git#egg=y\n",
            "-f ./wheels\n",
            "file:vendor/pkg\n",
            "# -r /etc/passwd\n",
            "pkg --hash=sha256:abc\n",
        ] {
            requirements(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
    }

    #[test]
    fn local_paths_outside_the_package_are_refused_with_their_line() {
        for (text, line) in [
            ("-r /etc/passwd\n", 1),
            ("requests\n\n-r/etc/passwd\n", 3),
            ("--requirement=/etc/passwd\n", 1),
            ("-c ../constraints.txt\n", 1),
            ("-e /x\n", 1),
            ("--editable=../x\n", 1),
            ("file:///etc/passwd\n", 1),
            ("pkg @ file:///root/x\n", 1),
            ("pkg@file://localhost/etc/x\n", 1),
            ("../outside\n", 1),
            ("./a/../../outside\n", 1),
            ("/abs/pkg\n", 1),
            ("~/pkg\n", 1),
            ("-f /opt/wheels\n", 1),
            ("-i file:///srv/index\n", 1),
            ("-r ${HOME}/x.txt\n", 1),
            ("requests \\\n  -r /etc/passwd\n", 1),
            ("git+file:///srv/repo#egg=x\n", 1),
        ] {
            let (file, at, reason) = refused_at(requirements(text));
            assert_eq!((file.as_str(), at), ("requirements.txt", line), "{text:?}: {reason}");
        }
    }

    #[test]
    fn nested_requirement_files_are_checked_too() {
        let dir = package(&[("requirements.txt", "ok\n-r sub/more.txt\n"), ("sub/more.txt", "\n-r ../../x\n")]);
        let (file, line, reason) = refused_at(check_requirements(dir.path()));
        assert_eq!((file.as_str(), line), ("sub/more.txt", 2), "{reason}");
        // A cycle is fine (pip reports it), and is not followed forever.
        let dir = package(&[("requirements.txt", "-r requirements.txt\n")]);
        check_requirements(dir.path()).unwrap();
    }

    #[test]
    fn package_json_local_dependencies_outside_are_refused_with_their_line() {
        let ok = r#"{"dependencies": {"a": "^1.0", "b": "file:./vendor/b", "c": "npm:d@2", "e": "https://x/e.tgz"}}"#;
        check_package_json(package(&[("package.json", ok)]).path()).unwrap();
        for (text, line) in [
            ("{\n  \"dependencies\": {\n    \"evil\": \"file:../../x\"\n  }\n}\n", 3),
            ("{\n  \"devDependencies\": {\"evil\": \"/etc\"}\n}\n", 2),
            ("{\"optionalDependencies\": {\"evil\": \"link:../x\"}}", 1),
            ("{\"dependencies\": {\"evil\": \"file:///root/x\"}}", 1),
            ("{\"dependencies\": {\"evil\": \"~/x\"}}", 1),
            ("{\"dependencies\": {\"evil\": \"git+file:///srv/repo\"}}", 1),
            ("{\n\"overrides\": {\"a\": {\n\"b\": \"file:../x\"}}}", 3),
            ("{\"workspaces\": [\"../other\"]}", 1),
            ("{\n\n\"dependencies\": \"oops\",", 3),
        ] {
            let (file, at, reason) = refused_at(check_package_json(package(&[("package.json", text)]).path()));
            assert_eq!((file.as_str(), at), ("package.json", line), "{text:?}: {reason}");
        }
    }

    #[test]
    fn output_is_capped_to_its_end() {
        let long = format!("{}THE REASON", "x".repeat(3 * OUTPUT_TAIL));
        let t = tail(&long, OUTPUT_TAIL);
        assert!(t.ends_with("THE REASON"));
        assert!(t.len() <= OUTPUT_TAIL + "…".len());
    }
}
