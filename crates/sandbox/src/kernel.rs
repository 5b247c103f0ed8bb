//! The kernel calls the child set-up makes to build a root and to drop
//! privileges, behind a small trait (as youki's `Syscall`): the child uses
//! [`Linux`], and unit tests use a recorder to check the order and the
//! arguments of every call without root, namespaces or a fork.
//!
//! Every method of [`Linux`] is one async-signal-safe system call on
//! memory the caller owns, and allocates nothing.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io::Error;

pub type Result = std::result::Result<(), Error>;

pub trait Kernel {
    fn mount(
        &self,
        src: Option<&CStr>,
        dst: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result;
    /// `EEXIST` is success.
    fn mkdir(&self, path: &CStr) -> Result;
    /// Creates an empty file (a mount point for a file).
    fn touch(&self, path: &CStr) -> Result;
    fn symlink(&self, target: &CStr, link: &CStr) -> Result;
    fn chdir(&self, path: &CStr) -> Result;
    /// `pivot_root(".", ".")` then detach the old root, from the new root.
    fn pivot_here(&self) -> Result;
    /// `EINVAL` (a capability this kernel does not know) is success.
    fn drop_bounding_cap(&self, cap: u64) -> Result;
    fn clear_groups(&self) -> Result;
    fn setresgid(&self, gid: u32) -> Result;
    fn setresuid(&self, uid: u32) -> Result;
    fn parent_death_signal(&self, signal: libc::c_int) -> Result;
    fn no_new_privs(&self) -> Result;
    fn seccomp(&self, program: &[libc::sock_filter]) -> Result;
}

fn check(ret: libc::c_int) -> Result {
    if ret < 0 { Err(Error::last_os_error()) } else { Ok(()) }
}

fn ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// The real kernel.
pub struct Linux;

impl Kernel for Linux {
    fn mount(
        &self,
        src: Option<&CStr>,
        dst: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result {
        // SAFETY: NUL-terminated strings or NULL, valid for the call.
        check(unsafe { libc::mount(ptr(src), dst.as_ptr(), ptr(fstype), flags, ptr(data).cast()) })
    }

    fn mkdir(&self, path: &CStr) -> Result {
        // SAFETY: as above.
        if unsafe { libc::mkdir(path.as_ptr(), 0o755) } < 0
            && Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
        {
            return Err(Error::last_os_error());
        }
        Ok(())
    }

    fn touch(&self, path: &CStr) -> Result {
        // SAFETY: as above; the descriptor is closed at once.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
            if fd < 0 {
                return Err(Error::last_os_error());
            }
            libc::close(fd);
        }
        Ok(())
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> Result {
        // SAFETY: as above.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }

    fn chdir(&self, path: &CStr) -> Result {
        // SAFETY: as above.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn pivot_here(&self) -> Result {
        // SAFETY: static strings; plain system calls.
        unsafe {
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))
        }
    }

    fn drop_bounding_cap(&self, cap: u64) -> Result {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0
            && Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(Error::last_os_error());
        }
        Ok(())
    }

    fn clear_groups(&self) -> Result {
        // SAFETY: an empty list.
        check(unsafe { libc::setgroups(0, std::ptr::null()) })
    }

    fn setresgid(&self, gid: u32) -> Result {
        // SAFETY: integer arguments.
        check(unsafe { libc::setresgid(gid, gid, gid) })
    }

    fn setresuid(&self, uid: u32) -> Result {
        // SAFETY: integer arguments.
        check(unsafe { libc::setresuid(uid, uid, uid) })
    }

    fn parent_death_signal(&self, signal: libc::c_int) -> Result {
        // SAFETY: integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal) })
    }

    fn no_new_privs(&self) -> Result {
        // SAFETY: integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }

    fn seccomp(&self, program: &[libc::sock_filter]) -> Result {
        let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut _ };
        // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
        check(unsafe {
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _ as libc::c_ulong)
        })
    }
}

/// Records calls instead of making them (tests only).
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub calls: std::cell::RefCell<Vec<String>>,
}

#[cfg(test)]
impl Recorder {
    fn log(&self, call: String) -> Result {
        self.calls.borrow_mut().push(call);
        Ok(())
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

#[cfg(test)]
impl Kernel for Recorder {
    fn mount(
        &self,
        src: Option<&CStr>,
        dst: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result {
        let s = |c: Option<&CStr>| c.map_or("-".to_string(), |c| c.to_string_lossy().into_owned());
        self.log(format!("mount {} {} {} {flags:#x} {}", s(src), dst.to_string_lossy(), s(fstype), s(data)))
    }
    fn mkdir(&self, path: &CStr) -> Result {
        self.log(format!("mkdir {}", path.to_string_lossy()))
    }
    fn touch(&self, path: &CStr) -> Result {
        self.log(format!("touch {}", path.to_string_lossy()))
    }
    fn symlink(&self, target: &CStr, link: &CStr) -> Result {
        self.log(format!("symlink {} {}", target.to_string_lossy(), link.to_string_lossy()))
    }
    fn chdir(&self, path: &CStr) -> Result {
        self.log(format!("chdir {}", path.to_string_lossy()))
    }
    fn pivot_here(&self) -> Result {
        self.log("pivot_root".into())
    }
    fn drop_bounding_cap(&self, cap: u64) -> Result {
        self.log(format!("capbset_drop {cap}"))
    }
    fn clear_groups(&self) -> Result {
        self.log("setgroups []".into())
    }
    fn setresgid(&self, gid: u32) -> Result {
        self.log(format!("setresgid {gid}"))
    }
    fn setresuid(&self, uid: u32) -> Result {
        self.log(format!("setresuid {uid}"))
    }
    fn parent_death_signal(&self, signal: libc::c_int) -> Result {
        self.log(format!("pdeathsig {signal}"))
    }
    fn no_new_privs(&self) -> Result {
        self.log("no_new_privs".into())
    }
    fn seccomp(&self, program: &[libc::sock_filter]) -> Result {
        self.log(format!("seccomp {}", program.len()))
    }
}
