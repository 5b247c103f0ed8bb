//! The language bootstraps, compiled into the binary and written to disk at
//! start-up, so a flick binary needs nothing else installed but the
//! interpreters themselves.
//!
//! The Python bootstrap is also compiled to bytecode once, at start-up, by
//! the interpreter instances run, and instances run that `.pyc`: a script
//! given by path is compiled afresh on every start and never cached, which
//! for this one is ~17 ms of CPU per cold start (the `.py` stays beside it,
//! for tracebacks).

use std::path::{Path, PathBuf};
use std::process::Command;

use flick_core::RuntimeKind;

const PYTHON: &str = include_str!("../bootstrap/python.py");
const NODE: &str = include_str!("../bootstrap/node.js");

const PYTHON_SOURCE: &str = "python.py";
const PYTHON_BYTECODE: &str = "python.pyc";

/// The file an instance of `runtime` runs, under `dir`.
pub fn path(dir: &Path, runtime: RuntimeKind, compiled: bool) -> PathBuf {
    match runtime {
        RuntimeKind::Node => dir.join("node.js"),
        _ if compiled => dir.join(PYTHON_BYTECODE),
        _ => dir.join(PYTHON_SOURCE),
    }
}

/// Writes both bootstraps (via rename, so a running instance never sees a
/// half-written file), then compiles the Python one with `python`, naming
/// its source `seen_as` (the runtime dir as instances see it). Returns
/// whether the bytecode is there to run; when it is not (the interpreter
/// failed), instances run the source, only slower, and the reason is
/// logged.
pub fn install(dir: &Path, python: &Path, seen_as: &Path) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    for (runtime, text) in [(RuntimeKind::Python3, PYTHON), (RuntimeKind::Node, NODE)] {
        let dest = path(dir, runtime, false);
        if std::fs::read_to_string(&dest).is_ok_and(|t| t == text) {
            continue;
        }
        let tmp = dest.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &dest)?;
    }
    // Compiled on every start, not only when the text changed: the
    // interpreter may have changed, and bytecode of another version's
    // magic number would not run at all.
    let source = dir.join(PYTHON_SOURCE);
    let bytecode = dir.join(PYTHON_BYTECODE);
    let tmp = dir.join("python.pyc.tmp");
    let compiled = Command::new(python)
        .args(["-I", "-S", "-c"])
        .arg(
            "import py_compile, sys\n\
             py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True,\n\
             invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)",
        )
        .arg(&source)
        .arg(&tmp)
        .arg(seen_as.join(PYTHON_SOURCE))
        .output();
    match compiled {
        Ok(out) if out.status.success() => {
            std::fs::rename(&tmp, &bytecode)?;
            Ok(true)
        }
        failed => {
            let why = match failed {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(python = %python.display(), error = %why, "could not compile the python bootstrap; instances run its source (slower starts)");
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&bytecode);
            Ok(false)
        }
    }
}
