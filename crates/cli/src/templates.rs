//! Functions shipped inside the binary: the examples `flick up --examples`
//! deploys, which are also what `flick new` scaffolds (renamed).

use std::path::Path;

use anyhow::{Context, bail};

/// (example name, runtime, files)
type Example = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

pub const EXAMPLES: &[Example] = &[
    (
        "hello-python",
        "python3",
        &[
            ("flick.toml", include_str!("../../../examples/hello-python/flick.toml")),
            ("main.py", include_str!("../../../examples/hello-python/main.py")),
        ],
    ),
    (
        "hello-node",
        "node",
        &[
            ("flick.toml", include_str!("../../../examples/hello-node/flick.toml")),
            ("index.js", include_str!("../../../examples/hello-node/index.js")),
        ],
    ),
    ("sha512", "exec", &[("flick.toml", include_str!("../../../examples/sha512/flick.toml"))]),
    (
        "echo-http",
        "http",
        &[
            ("flick.toml", include_str!("../../../examples/echo-http/flick.toml")),
            ("server.py", include_str!("../../../examples/echo-http/server.py")),
        ],
    ),
    // Last: its steps are the examples above (a sequence finds its steps
    // when it is called, so the order only matters for reading).
    ("hello-sequence", "sequence", &[("flick.toml", include_str!("../../../examples/hello-sequence/flick.toml"))]),
];

/// Writes an example's files into `dir/<name>`, renamed to `name`.
pub fn write(example: &Example, name: &str, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let target = dir.join(name);
    if target.exists() {
        bail!("{} already exists; choose another name or directory", target.display());
    }
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    for (file, text) in example.2 {
        let text = if *file == "flick.toml" { rename(text, name) } else { text.to_string() };
        std::fs::write(target.join(file), text).with_context(|| format!("writing {file}"))?;
    }
    Ok(target)
}

pub fn for_runtime(runtime: &str) -> Option<&'static Example> {
    EXAMPLES.iter().find(|e| e.1 == runtime)
}

fn rename(manifest: &str, name: &str) -> String {
    manifest
        .lines()
        .map(|l| if l.starts_with("name = ") { format!("name = \"{name}\"") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_has_a_valid_manifest_named_after_it() {
        for (name, runtime, files) in EXAMPLES {
            let text = files.iter().find(|f| f.0 == "flick.toml").unwrap().1;
            let m = flick_core::Manifest::parse(text).unwrap();
            assert_eq!(m.name.as_str(), *name);
            assert_eq!(m.runtime.as_str(), *runtime);
            let renamed = flick_core::Manifest::parse(&rename(text, "other")).unwrap();
            assert_eq!(renamed.name.as_str(), "other");
        }
    }
}
