//! Reaching into a running sandbox: mounting a function's code into a stem
//! cell, and listening for an instance inside its network namespace
//! (connections to it are made by `netns.rs`).
//!
//! A stem cell is an instance started before flick knows its function: its
//! `/var/task` is an empty directory. To specialise it, the code directory
//! is cloned as a detached, read-only mount tree (`open_tree` +
//! `mount_setattr`) and moved onto that directory from inside the stem's
//! mount namespace (`setns` + `move_mount`). The namespace switch happens on
//! a short-lived thread that first unshares its filesystem context, so
//! flick's other threads never change namespace.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn fd_or_err(ret: libc::c_long) -> Result<OwnedFd> {
    if ret < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

fn open(path: &str, flags: libc::c_int) -> Result<OwnedFd> {
    let c = CString::new(path).map_err(Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    fd_or_err(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) } as libc::c_long)
}

/// The pid (in flick's namespace) of the stem's inner process: the only
/// child of the outer process that set up its pid namespace.
pub(crate) fn inner_pid(outer: u32) -> Result<u32> {
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))?;
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::other(format!("stem cell {outer} has no inner process")))
}

/// Mounts `code_dir` read-only at `/var/task` inside the sandbox of the
/// process `outer` (as returned by the spawn). Blocking; run it off the
/// async executor.
pub fn attach_code(outer: u32, code_dir: &Path) -> Result<()> {
    let inner = inner_pid(outer)?;
    let code = CString::new(code_dir.as_os_str().as_bytes()).map_err(Error::other)?;
    // SAFETY: plain system calls on a valid path; the returned fd is owned below.
    let tree = fd_or_err(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            code.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    })?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` outlives the call and its size is passed along.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(Error::last_os_error());
    }
    let ns = open(&format!("/proc/{inner}/ns/mnt"), libc::O_RDONLY)?;
    let root = open(&format!("/proc/{inner}/root"), libc::O_PATH | libc::O_DIRECTORY)?;
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: this thread owns its filesystem context after unshare, so
        // entering another mount namespace affects no other thread; it ends
        // right after.
        unsafe {
            if libc::unshare(libc::CLONE_FS) < 0
                || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) < 0
                || libc::fchdir(root.as_raw_fd()) < 0
            {
                return Err(Error::last_os_error());
            }
            let ret = libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                c"var/task".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            );
            if ret < 0 {
                return Err(Error::last_os_error());
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| Error::other("attach thread panicked"))?
}

/// Binds a TCP listener on `127.0.0.1:port` inside the network namespace of
/// the sandbox whose outer process is `outer` (see `netns.rs`): the
/// socket stays in that namespace, reachable only from inside it, while
/// flick accepts on it from any thread. Blocking; run it off the executor.
pub fn listen_inside(outer: u32, port: u16) -> Result<std::net::TcpListener> {
    let inner = inner_pid(outer)?;
    let ns = open(&format!("/proc/{inner}/ns/net"), libc::O_RDONLY)?;
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        // SAFETY: setns on this thread only; it ends right after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            return Err(Error::last_os_error());
        }
        std::net::TcpListener::bind(("127.0.0.1", port))
    })
    .join()
    .map_err(|_| Error::other("listen thread panicked"))?
}
