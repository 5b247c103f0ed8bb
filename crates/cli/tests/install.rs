//! Deploy-time dependency installs from the attacker's side — a hostile
//! `setup.py`/build backend and a hostile `postinstall` — and the files a
//! running flick leaves on disk.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Flick, manifest, write_function};

/// A name no other test (or earlier run) uses, for files and processes.
fn token(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("flick-{what}-{}-{nanos}", std::process::id())
}

/// A PEP 517 build backend that runs `probe` (Python source defining
/// `probe() -> dict`) while pip builds it, and ships the result as the
/// module `probe_report` (`REPORT`). pip runs this code exactly as it runs a
/// `setup.py`: it is what an install executes on the package's behalf.
fn probing_backend(probe: &str) -> String {
    format!(
        r#"
import base64, hashlib, json, os, zipfile
{probe}

def _line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f"{{name}},sha256={{digest}},{{len(data)}}"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    report = probe()
    name = "probe-1.0-py3-none-any.whl"
    files = {{
        "probe_report.py": ("import json\nREPORT = json.loads(%r)\n" % json.dumps(report)).encode(),
        "probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: probe\nVersion: 1.0\n",
        "probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: probe\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }}
    record = "\n".join(_line(n, d) for n, d in files.items()) + "\nprobe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr("probe-1.0.dist-info/RECORD", record)
    return name

def get_requires_for_build_wheel(config_settings=None):
    return []
"#
    )
}

const PYPROJECT: &str = "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"probe\"\nversion = \"1.0\"\n";

/// What the hostile install code tries: the data dir's key and database,
/// the host's /tmp, and what it runs as and with.
fn python_probe(data: &Path, tmp_name: &str) -> String {
    format!(
        r#"
DATA = {data:?}
TMP_NAME = {tmp_name:?}

def probe():
    report = {{}}
    for name in ["admin.key", "flick.db"]:
        try:
            with open(os.path.join(DATA, name), "rb") as f:
                report[name] = "read:" + f.read(64).decode("latin-1")
        except OSError as e:
            report[name] = "denied:" + type(e).__name__
    try:
        with open("/tmp/" + TMP_NAME, "w") as f:
            f.write("written by an install")
        report["tmp"] = "wrote"
    except OSError as e:
        report["tmp"] = "denied:" + type(e).__name__
    report["uid"] = os.getuid()
    report["env"] = dict(os.environ)
    return report
"#,
        data = data.display().to_string(),
    )
}

/// Checks what a hostile install saw: nothing of flick's data, its own
/// /tmp, an unprivileged uid, a clean environment with the configured
/// install variables.
fn assert_contained(report: &serde_json::Value, flick: &Flick, tmp_name: &str) {
    for file in ["admin.key", "flick.db"] {
        let seen = report[file].as_str().unwrap();
        assert!(seen.starts_with("denied:"), "the install read {file}: {report}");
    }
    assert!(!report.to_string().contains(&flick.key), "the admin key reached the package: {report}");
    assert!(!Path::new("/tmp").join(tmp_name).exists(), "the install wrote into the host's /tmp");
    assert_ne!(report["uid"], 0, "the install ran as root: {report}");
    let env = report["env"].as_object().unwrap();
    assert_eq!(env["INSTALL_PROBE_INDEX"], "configured", "install_env must reach installers: {report}");
    assert_eq!(env["HOME"], "/tmp", "{report}");
    for name in env.keys() {
        assert!(
            !name.starts_with("CARGO") && !name.starts_with("FLICK") && !name.starts_with("RUST"),
            "flick's own environment leaked into the install: {name}"
        );
    }
}

const INSTALL_CONFIG: &str = "install_timeout = \"120s\"\n\n[install_env]\nINSTALL_PROBE_INDEX = \"configured\"\n";

/// Every entry under `dir` (not following links) is flick's, with no
/// group/other write and no set-id bits: the install cannot change the code
/// after the deploy, and instances can read it.
fn assert_taken_back(dir: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        seen += 1;
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{} is not flick's after the install", path.display());
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(mode & 0o7022, 0, "{} has mode {mode:o}", path.display());
        assert_eq!(mode & 0o444, 0o444, "{} is not readable by instances ({mode:o})", path.display());
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 3, "nothing was installed into {}", dir.display());
}

/// The one code directory of the data dir that holds `file`.
fn code_dir_with(flick: &Flick, file: &str) -> PathBuf {
    std::fs::read_dir(flick.data_dir().join("code"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.join(file).exists())
        .unwrap_or_else(|| panic!("no code dir holds {file}"))
}

#[test]
fn a_hostile_build_backend_runs_boxed() {
    let flick = Flick::start_with(&[], Some(INSTALL_CONFIG));
    let tmp_name = token("pip-tmp");
    let probe = python_probe(flick.data_dir(), &tmp_name);
    flick.deploy_files(
        "pip-probe",
        &[
            ("flick.toml", &manifest("pip-probe", "python3", "main.handler", "")),
            ("requirements.txt", "./evil\n"),
            ("evil/pyproject.toml", PYPROJECT),
            ("evil/backend.py", &probing_backend(&probe)),
            ("main.py", "import probe_report\n\ndef handler(event, context):\n    return probe_report.REPORT\n"),
        ],
    );
    let r = flick.invoke("pip-probe", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_contained(&r.json(), &flick, &tmp_name);
    assert_taken_back(&code_dir_with(&flick, "evil/backend.py"));
}

#[test]
fn a_hostile_postinstall_runs_boxed() {
    let flick = Flick::start_with(&[], Some(INSTALL_CONFIG));
    let tmp_name = token("npm-tmp");
    let probe = format!(
        r#"const fs = require('fs'), path = require('path');
const DATA = {data:?}, TMP_NAME = {tmp_name:?};
const report = {{}};
for (const name of ['admin.key', 'flick.db']) {{
  try {{ report[name] = 'read:' + fs.readFileSync(path.join(DATA, name)).toString('latin1').slice(0, 64); }}
  catch (e) {{ report[name] = 'denied:' + e.code; }}
}}
try {{ fs.writeFileSync('/tmp/' + TMP_NAME, 'written by an install'); report.tmp = 'wrote'; }}
catch (e) {{ report.tmp = 'denied:' + e.code; }}
report.uid = process.getuid();
report.env = process.env;
fs.writeFileSync('report.json', JSON.stringify(report));
"#,
        data = flick.data_dir().display().to_string(),
    );
    flick.deploy_files(
        "npm-probe",
        &[
            ("flick.toml", &manifest("npm-probe", "node", "index.handler", "")),
            (
                "package.json",
                r#"{"name": "npm-probe", "version": "1.0.0", "scripts": {"postinstall": "node probe.js"}}"#,
            ),
            ("probe.js", &probe),
            ("index.js", "exports.handler = async () => require('./report.json');\n"),
        ],
    );
    let r = flick.invoke("npm-probe", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_contained(&r.json(), &flick, &tmp_name);
    assert_taken_back(&code_dir_with(&flick, "probe.js"));
}

#[test]
fn requirements_naming_host_files_are_refused_with_their_line() {
    let flick = Flick::start_with(&[], Some(INSTALL_CONFIG));
    let dir = write_function(
        flick.data_dir(),
        "greedy",
        &[
            ("flick.toml", &manifest("greedy", "python3", "main.handler", "")),
            ("requirements.txt", "# what we need\n-r /etc/passwd\n"),
            ("main.py", "def handler(event, context):\n    return {}\n"),
        ],
    );
    let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the deploy must fail");
    assert!(err.contains("requirements.txt line 2"), "the error must name the file and line: {err}");
    assert!(err.contains("/etc/passwd"), "{err}");
    assert!(!err.contains("root:x:0:0"), "the host's /etc/passwd was echoed: {err}");

    std::fs::write(
        dir.join("package.json"),
        "{\n  \"name\": \"greedy\",\n  \"dependencies\": {\n    \"keys\": \"file:../../..\"\n  }\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("requirements.txt"), "").unwrap();
    let archive = flick_package::pack_dir(&dir).unwrap();
    let r = flick.request("POST", "/v1/functions", archive, true);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "dependencies_refused");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("package.json line 4"), "{}", r.text());
    assert_eq!(flick.get("/v1/functions/greedy").status, 404, "nothing was deployed");
}

#[test]
fn a_killed_flick_takes_its_install_with_it() {
    let flick = Flick::start_with(&[], Some(INSTALL_CONFIG));
    let marker = token("install-proc");
    // The backend starts a long-lived helper named by `marker` (so the host
    // can find it), tells the test it runs, and never finishes the build.
    let probe = format!(
        r#"
import subprocess, sys, time
def probe():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", {marker:?}])
    # pip builds in the source dir (`slow/`), so `..` is the package root
    # in staging/, wherever the build runs.
    open("../install-started", "w").close()
    while True:
        with open("../still-running", "w") as f:
            f.write(str(time.time()))
        time.sleep(0.2)
"#
    );
    let dir = write_function(
        flick.data_dir(),
        "slow",
        &[
            ("flick.toml", &manifest("slow", "python3", "main.handler", "")),
            ("requirements.txt", "./slow\n"),
            ("slow/pyproject.toml", PYPROJECT),
            ("slow/backend.py", &probing_backend(&probe)),
            ("main.py", "def handler(event, context):\n    return {}\n"),
        ],
    );
    let archive = flick_package::pack_dir(&dir).unwrap();
    let (base, key) = (flick.base.clone(), flick.key.clone());
    // The deploy hangs until flick dies; its answer does not matter.
    std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .post(format!("{base}/v1/functions"))
            .bearer_auth(key)
            .body(archive)
            .timeout(Duration::from_secs(300))
            .send();
    });
    let staging = flick.data_dir().join("staging");
    let started = flick.wait_until(Duration::from_secs(120), || {
        std::fs::read_dir(&staging).unwrap().flatten().any(|e| e.path().join("install-started").exists())
    });
    assert!(started, "the install never started");
    // The backend wrote its marker file right after starting the helper; on
    // a loaded machine the helper may still be on its way to /proc.
    let visible = wait_for(Duration::from_secs(30), || !processes_named(&marker).is_empty());
    assert!(visible, "the install's helper is not visible from the host");

    let dir = flick.kill9();
    let gone = wait_for(Duration::from_secs(30), || processes_named(&marker).is_empty());
    assert!(gone, "install processes outlived flick: {:?}", processes_named(&marker));

    // A restart clears staging, and nothing writes there again.
    let flick = Flick::start_in(dir, &[]);
    let staging = flick.data_dir().join("staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    assert!(processes_named(&marker).is_empty());
}

/// Pids of host processes whose command line mentions `marker`.
fn processes_named(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

#[test]
fn files_flick_writes_are_owner_only() {
    let flick = Flick::start();
    flick.deploy_py("modes", "", "def handler(event, context):\n    return {'ok': True}\n");
    for _ in 0..3 {
        let r = flick.invoke("modes", "{}");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Reading records flushes the record writer: the database has been written.
    assert_eq!(flick.get("/v1/activations?function=modes").status, 200);

    let data = flick.data_dir();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(data), 0o700, "data dir");
    let mut files: Vec<PathBuf> =
        ["flick.db", "flick.db-wal", "flick.db-shm", "admin.key", "flick.addr"].iter().map(|f| data.join(f)).collect();
    let archives: Vec<PathBuf> = std::fs::read_dir(data.join("archives")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!archives.is_empty(), "the deploy stored no archive");
    files.extend(archives);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    for dir in ["archives", "code", "staging"] {
        assert_eq!(mode(&data.join(dir)), 0o700, "{dir}");
    }
    // Code stays readable for the instances' uid (they just ran it).
    let code = code_dir_with(&flick, "main.py");
    assert_eq!(mode(&code), 0o755);
    assert_eq!(mode(&code.join("main.py")), 0o644);
}

/// A python3 package is compiled to bytecode at deploy, in the installers'
/// sandbox, without running any of it: modules that shadow the standard
/// library modules the compile step imports are not imported, top-level code
/// does not run, a module with a syntax error does not fail the deploy, and
/// what the step wrote is flick's, like an install's.
#[test]
fn deploy_time_bytecode_is_compiled_without_running_the_package() {
    let flick = Flick::start_with(&[], Some(INSTALL_CONFIG));
    let mark = |name: &str| {
        format!("import os\nopen(os.path.join(os.path.dirname(os.path.abspath(__file__)), '{name}'), 'w').close()\n")
    };
    let (compileall, py_compile, re) = (mark("hijacked-compileall"), mark("hijacked-py_compile"), mark("hijacked-re"));
    let side_effect = mark("top-level-ran");
    flick.deploy_files(
        "compiled",
        &[
            ("flick.toml", &manifest("compiled", "python3", "main.handler", "")),
            ("main.py", "import helper\n\ndef handler(event, context):\n    return {'helper': helper.VALUE}\n"),
            ("helper.py", "VALUE = 42\n"),
            ("compileall.py", &compileall),
            ("py_compile.py", &py_compile),
            ("re.py", &re),
            ("lib/side_effect.py", &side_effect),
            ("broken.py", "def nope(:\n"),
        ],
    );
    let r = flick.invoke("compiled", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["helper"], 42);
    let dir = code_dir_with(&flick, "helper.py");
    let compiled = |rel: &str, stem: &str| {
        std::fs::read_dir(dir.join(rel).join("__pycache__"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .any(|f| f.starts_with(&format!("{stem}.cpython-")))
            })
            .unwrap_or(false)
    };
    for (rel, stem) in [("", "main"), ("", "helper"), ("lib", "side_effect")] {
        assert!(compiled(rel, stem), "{rel}/{stem}.py was not compiled at deploy");
    }
    assert!(!compiled("", "broken"), "a module with a syntax error has bytecode");
    for marker in ["hijacked-compileall", "hijacked-py_compile", "hijacked-re", "top-level-ran"] {
        assert!(
            !dir.join(marker).exists() && !dir.join("lib").join(marker).exists(),
            "{marker}: package code ran at deploy"
        );
    }
    assert_taken_back(&dir);
}
