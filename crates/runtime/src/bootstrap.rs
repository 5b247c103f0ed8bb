//! The language bootstraps, compiled into the binary and written to disk at
//! start-up, so a flick binary needs nothing else installed but the
//! interpreters themselves.

use std::path::{Path, PathBuf};

use flick_core::RuntimeKind;

const PYTHON: &str = include_str!("../bootstrap/python.py");
const NODE: &str = include_str!("../bootstrap/node.js");

pub fn path(dir: &Path, runtime: RuntimeKind) -> PathBuf {
    match runtime {
        RuntimeKind::Node => dir.join("node.js"),
        _ => dir.join("python.py"),
    }
}

/// Writes both bootstraps (via rename, so a running instance never sees a
/// half-written file).
pub fn install(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (runtime, text) in [(RuntimeKind::Python3, PYTHON), (RuntimeKind::Node, NODE)] {
        let dest = path(dir, runtime);
        if std::fs::read_to_string(&dest).is_ok_and(|t| t == text) {
            continue;
        }
        let tmp = dest.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(())
}
