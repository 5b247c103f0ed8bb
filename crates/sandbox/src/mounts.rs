//! The filesystem an instance sees: a fresh root holding only what the
//! runtimes need from the host (read-only), the function's code read-only
//! at `/var/task`, the bootstraps at `/var/runtime`, a private size-capped
//! `/tmp`, its own `/proc`, and a minimal `/dev`. Nothing else of the host
//! — not the data dir, not other functions' code, not `/root`, not `/etc/shadow`.
//!
//! The plan is built in the parent (allocation is fine there); the child
//! only walks it with raw system calls between fork and exec.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const CODE: &str = "/var/task";
pub const RUNTIME: &str = "/var/runtime";

/// Host directories shared read-only (when they exist).
const HOST_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Host files and dirs under /etc that programs need to run, resolve names
/// and verify TLS; deliberately not the whole of /etc (shadow, ssh keys, …).
const HOST_ETC: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/os-release",
    "/etc/mime.types",
];
/// No terminal device (`/dev/tty`, `/dev/pts`, `/dev/ptmx`, `/dev/console`):
/// a terminal is a way to type commands into someone else's shell.
pub const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

#[derive(Debug)]
pub enum Op {
    Mkdir(CString),
    Touch(CString),
    Symlink { target: CString, link: CString },
    Bind { src: CString, dst: CString, readonly: bool, dev: bool },
    Tmpfs { dst: CString, options: CString },
    Proc { dst: CString },
}

/// Everything the child does to build its root, in order.
#[derive(Debug)]
pub struct Plan {
    /// An empty host directory; each instance mounts its own tmpfs there in
    /// its private mount namespace, so instances never see each other's.
    pub root: CString,
    pub ops: Vec<Op>,
}

fn c(path: impl AsRef<Path>) -> CString {
    // Paths come from the host or from validated config: no NUL bytes.
    CString::new(path.as_ref().as_os_str().as_bytes()).unwrap_or_default()
}

/// What to mount besides the fixed host set.
pub struct Inputs<'a> {
    pub root: &'a Path,
    /// `None`: an empty `/var/task`, for code attached later.
    pub code: Option<&'a Path>,
    /// Mount the code read-write: only for a deploy-time dependency
    /// install, whose sandbox builds the package in place.
    pub code_writable: bool,
    pub runtime: &'a Path,
    /// Extra host paths shared read-only at the same place (the Python
    /// interpreter's prefix, say, when it lives under /root or /opt).
    pub extra_ro: &'a [PathBuf],
    pub tmp_size: u64,
}

pub fn plan(i: &Inputs<'_>) -> Plan {
    let inside = |p: &str| i.root.join(p.trim_start_matches('/'));
    let mut ops = Vec::new();
    let mut made: Vec<PathBuf> = Vec::new();
    let mut mkdir_all = |ops: &mut Vec<Op>, dir: &Path| {
        let mut cur = i.root.to_path_buf();
        for comp in dir.strip_prefix(i.root).unwrap_or(dir).components() {
            cur.push(comp);
            if !made.contains(&cur) {
                made.push(cur.clone());
                ops.push(Op::Mkdir(c(&cur)));
            }
        }
    };
    let mut share = |ops: &mut Vec<Op>, host: &Path, dev: bool| {
        let dst = inside(&host.to_string_lossy());
        match std::fs::symlink_metadata(host) {
            Err(_) => {}
            Ok(m) if m.file_type().is_symlink() => {
                // Merged-/usr hosts have /bin → usr/bin: keep it a link.
                if let Ok(target) = std::fs::read_link(host) {
                    mkdir_all(ops, dst.parent().unwrap_or(i.root));
                    ops.push(Op::Symlink { target: c(target), link: c(&dst) });
                }
            }
            Ok(m) => {
                if m.is_dir() {
                    mkdir_all(ops, &dst);
                } else {
                    mkdir_all(ops, dst.parent().unwrap_or(i.root));
                    ops.push(Op::Touch(c(&dst)));
                }
                ops.push(Op::Bind { src: c(host), dst: c(&dst), readonly: true, dev });
            }
        }
    };
    for dir in HOST_DIRS.iter().chain(HOST_ETC) {
        share(&mut ops, Path::new(dir), false);
    }
    for extra in i.extra_ro {
        share(&mut ops, extra, false);
    }

    let code = inside(CODE);
    mkdir_all(&mut ops, &code);
    if let Some(host_code) = i.code {
        ops.push(Op::Bind { src: c(host_code), dst: c(&code), readonly: !i.code_writable, dev: false });
    }
    let runtime = inside(RUNTIME);
    mkdir_all(&mut ops, &runtime);
    ops.push(Op::Bind { src: c(i.runtime), dst: c(&runtime), readonly: true, dev: false });

    let tmp = inside("/tmp");
    mkdir_all(&mut ops, &tmp);
    ops.push(Op::Tmpfs { dst: c(&tmp), options: c(format!("size={},mode=1777", i.tmp_size.max(4096))) });

    let dev = inside("/dev");
    mkdir_all(&mut ops, &dev);
    ops.push(Op::Tmpfs { dst: c(&dev), options: c("size=64k,mode=755") });
    for d in DEVICES {
        if Path::new(d).exists() {
            ops.push(Op::Touch(c(inside(d))));
            ops.push(Op::Bind { src: c(d), dst: c(inside(d)), readonly: false, dev: true });
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(Op::Symlink { target: c(target), link: c(dev.join(name)) });
    }
    let shm = inside("/dev/shm");
    ops.push(Op::Mkdir(c(&shm)));
    ops.push(Op::Tmpfs { dst: c(&shm), options: c("size=16m,mode=1777") });

    let proc_dir = inside("/proc");
    mkdir_all(&mut ops, &proc_dir);
    ops.push(Op::Proc { dst: c(&proc_dir) });
    // Sysctls are writable by uid 0 even without capabilities, and a stem
    // cell is uid 0 until it is specialised: /proc/sys is read-only.
    let sys = proc_dir.join("sys");
    ops.push(Op::Bind { src: c(&sys), dst: c(&sys), readonly: true, dev: false });

    Plan { root: c(i.root), ops }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(extra: &[PathBuf]) -> Plan {
        plan_with(extra, false)
    }

    fn plan_with(extra: &[PathBuf], code_writable: bool) -> Plan {
        plan(&Inputs {
            root: Path::new("/srv/rootfs"),
            code: Some(Path::new("/data/code/abc")),
            runtime: Path::new("/data/runtime"),
            extra_ro: extra,
            tmp_size: 1 << 20,
            code_writable,
        })
    }

    #[test]
    fn only_an_install_gets_its_code_writable() {
        let b = binds(&plan_with(&[], true));
        assert!(b.contains(&("/data/code/abc".into(), "/srv/rootfs/var/task".into(), false)));
        // Everything else stays read-only.
        for (src, _, readonly) in &b {
            assert!(*readonly || src == "/data/code/abc" || src.starts_with("/dev/"), "{src}");
        }
    }

    fn binds(p: &Plan) -> Vec<(String, String, bool)> {
        p.ops
            .iter()
            .filter_map(|op| match op {
                Op::Bind { src, dst, readonly, .. } => {
                    Some((src.to_string_lossy().into_owned(), dst.to_string_lossy().into_owned(), *readonly))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn no_terminal_device_is_mounted() {
        let p = plan_for(&[]);
        for (src, dst, _) in binds(&p) {
            for tty in ["/dev/tty", "/dev/pts", "/dev/ptmx", "/dev/console"] {
                assert!(!src.starts_with(tty) && !dst.ends_with(tty), "{src} → {dst}");
            }
        }
        // The control: the ordinary devices are there.
        assert!(binds(&p).iter().any(|(src, _, _)| src == "/dev/null"));
    }

    #[test]
    fn an_extra_file_is_shared_alone_and_read_only() {
        let node = std::env::current_exe().unwrap();
        let p = plan_for(std::slice::from_ref(&node));
        let host = node.display().to_string();
        let shared: Vec<_> = binds(&p).into_iter().filter(|(src, _, _)| host.starts_with(src.as_str())).collect();
        assert_eq!(shared, vec![(host.clone(), format!("/srv/rootfs{host}"), true)]);
    }

    #[test]
    fn code_is_read_only_and_proc_sys_too() {
        let p = plan_for(&[]);
        let b = binds(&p);
        assert!(b.contains(&("/data/code/abc".into(), "/srv/rootfs/var/task".into(), true)));
        let proc_at = p.ops.iter().position(|op| matches!(op, Op::Proc { .. })).unwrap();
        let sys_at = p
            .ops
            .iter()
            .position(
                |op| matches!(op, Op::Bind { dst, readonly: true, .. } if dst.to_bytes() == b"/srv/rootfs/proc/sys"),
            )
            .expect("/proc/sys bound read-only");
        assert!(sys_at > proc_at, "/proc/sys must be made read-only after /proc is mounted");
        // Nothing of the data dir but the code and the bootstraps.
        for (src, _, _) in &b {
            assert!(!src.starts_with("/data") || src == "/data/code/abc" || src == "/data/runtime", "{src}");
        }
    }
}
