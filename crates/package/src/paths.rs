//! Path rules shared by packing and unpacking, so that what `pack_dir`
//! produces is exactly what `unpack` accepts.

/// Splits an archive entry path into its components.
///
/// `.` and empty components are dropped because tools spell the same path
/// differently (`./a`, `a`, `a//b`); the result is empty for the root
/// itself (`./`). The error is a reason for the user.
pub(crate) fn entry_components(path: &str) -> Result<Vec<&str>, &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.starts_with('/') {
        return Err("the path is absolute; entries must be relative to the package root");
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("the path has a `..` component"),
            name => components.push(name),
        }
    }
    Ok(components)
}

/// Checks the target of a symlink living in directory `link_dir` (components
/// from the package root) and returns it in normal form (`./a//b` → `a/b`,
/// so the content hash does not depend on the spelling).
///
/// The target must resolve, lexically, to a place inside the package. On top
/// of that, `..` may only lead the target: in `d/..`, if `d` is itself a
/// symlink the kernel resolves `..` from wherever `d` points, which lexical
/// resolution cannot see (`sub/d -> ..` plus `sub/e -> d/..` escapes).
/// With `..` only in front, every step up goes through a real directory.
pub(crate) fn symlink_target(link_dir: &[&str], target: &str) -> Result<String, String> {
    if target.is_empty() {
        return Err("the symlink has an empty target".to_string());
    }
    if target.starts_with('/') {
        return Err(format!("the symlink target `{target}` is absolute; use a path relative to the link"));
    }

    let mut depth = link_dir.len();
    let mut ups = 0usize;
    let mut names = Vec::new();
    let mut escapes = false;
    let mut climbs_after_name = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if depth == 0 {
                    escapes = true;
                } else {
                    depth -= 1;
                }
                if names.is_empty() {
                    ups += 1;
                } else {
                    climbs_after_name = true;
                }
            }
            name => {
                depth += 1;
                names.push(name);
            }
        }
    }
    if escapes {
        return Err(format!("the symlink target `{target}` points outside the package"));
    }
    if climbs_after_name {
        return Err(format!(
            "the symlink target `{target}` has `..` after a name, which can climb out through \
             another symlink; write it with `..` only in front, like `../dir/file`"
        ));
    }

    let mut normal: Vec<&str> = std::iter::repeat_n("..", ups).collect();
    normal.extend(names);
    if normal.is_empty() {
        return Ok(".".to_string());
    }
    Ok(normal.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        assert_eq!(entry_components("a/b").unwrap(), ["a", "b"]);
        assert_eq!(entry_components("./a//b/").unwrap(), ["a", "b"]);
        assert!(entry_components("./").unwrap().is_empty());
        assert!(entry_components("").is_err());
        assert!(entry_components("/etc/passwd").is_err());
        assert!(entry_components("../x").is_err());
        assert!(entry_components("a/../../x").is_err());
        assert!(entry_components("a/..").is_err());
        // `...` is an ordinary name.
        assert_eq!(entry_components("...").unwrap(), ["..."]);
    }

    #[test]
    fn symlink_targets() {
        assert_eq!(symlink_target(&[], "a/b").unwrap(), "a/b");
        assert_eq!(symlink_target(&[], "./a//b/").unwrap(), "a/b");
        assert_eq!(symlink_target(&[], ".").unwrap(), ".");
        assert_eq!(symlink_target(&["d"], "..").unwrap(), "..");
        assert_eq!(symlink_target(&["d", "e"], "../../x").unwrap(), "../../x");
        assert_eq!(symlink_target(&["d"], "./../x").unwrap(), "../x");

        assert!(symlink_target(&[], "").is_err());
        assert!(symlink_target(&[], "/etc/passwd").unwrap_err().contains("absolute"));
        assert!(symlink_target(&[], "../x").unwrap_err().contains("outside"));
        assert!(symlink_target(&["d"], "../../x").unwrap_err().contains("outside"));
        assert!(symlink_target(&[], "a/../../x").unwrap_err().contains("outside"));
        assert!(symlink_target(&["sub"], "d/..").unwrap_err().contains("after a name"));
    }
}
