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

/// The capability sets of the calling thread, one bit per capability
/// (`1 << CAP_SETUID` …), as the kernel reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub bounding: u64,
}

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
    /// Sets the inheritable set to `caps`, the other sets unchanged (the
    /// ambient set shrinks with it, as the kernel keeps it a subset).
    fn set_inheritable(&self, caps: u64) -> Result;
    fn clear_ambient(&self) -> Result;
    fn raise_ambient(&self, cap: u64) -> Result;
    fn set_securebits(&self, bits: libc::c_ulong) -> Result;
    /// What this thread holds now.
    fn held(&self) -> std::result::Result<Held, Error>;
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

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> std::result::Result<[CapData; 2], Error> {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: the header and two data blocks are what version 3 reads and writes.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } as libc::c_int)?;
    Ok(data)
}

fn joined(low: u32, high: u32) -> u64 {
    u64::from(high) << 32 | u64::from(low)
}

/// One prctl query per capability; `EINVAL` (beyond what this kernel
/// knows) reads as not set.
fn each_cap_set(query: impl Fn(u64) -> libc::c_int) -> std::result::Result<u64, Error> {
    let mut set = 0;
    for cap in 0..64 {
        match query(cap) {
            1 => set |= 1 << cap,
            0 => {}
            _ if Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => {}
            _ => return Err(Error::last_os_error()),
        }
    }
    Ok(set)
}

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

    fn set_inheritable(&self, caps: u64) -> Result {
        let mut data = capget()?;
        data[0].inheritable = caps as u32;
        data[1].inheritable = (caps >> 32) as u32;
        let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        // SAFETY: as in `capget`; the kernel only reads the data here.
        check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } as libc::c_int)
    }

    fn clear_ambient(&self) -> Result {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) })
    }

    fn raise_ambient(&self, cap: u64) -> Result {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) })
    }

    fn set_securebits(&self, bits: libc::c_ulong) -> Result {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) })
    }

    fn held(&self) -> std::result::Result<Held, Error> {
        let [low, high] = capget()?;
        // SAFETY (both closures): prctl queries with integer arguments.
        let bounding = each_cap_set(|cap| unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) })?;
        let ambient =
            each_cap_set(|cap| unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, cap, 0, 0) })?;
        Ok(Held {
            effective: joined(low.effective, high.effective),
            permitted: joined(low.permitted, high.permitted),
            inheritable: joined(low.inheritable, high.inheritable),
            ambient,
            bounding,
        })
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

/// Records calls instead of making them (tests only), and models the
/// capability sets the way the kernel changes them, starting as root.
#[cfg(test)]
pub struct Recorder {
    pub calls: std::cell::RefCell<Vec<String>>,
    pub held: std::cell::Cell<Held>,
    /// Pretend `SECBIT_NO_SETUID_FIXUP` is stuck on: leaving uid 0 keeps
    /// every capability (what the child must catch).
    pub setuid_keeps_caps: bool,
}

#[cfg(test)]
impl Default for Recorder {
    fn default() -> Self {
        let all = u64::MAX;
        let root = Held { effective: all, permitted: all, inheritable: 0, ambient: 0, bounding: all };
        Self { calls: Default::default(), held: std::cell::Cell::new(root), setuid_keeps_caps: false }
    }
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
        let mut h = self.held.get();
        h.bounding &= !(1 << cap);
        self.held.set(h);
        self.log(format!("capbset_drop {cap}"))
    }
    fn set_inheritable(&self, caps: u64) -> Result {
        let mut h = self.held.get();
        h.inheritable = caps;
        h.ambient &= h.permitted & caps;
        self.held.set(h);
        self.log(format!("inheritable {caps:#x}"))
    }
    fn clear_ambient(&self) -> Result {
        let mut h = self.held.get();
        h.ambient = 0;
        self.held.set(h);
        self.log("ambient clear".into())
    }
    fn raise_ambient(&self, cap: u64) -> Result {
        let mut h = self.held.get();
        h.ambient |= 1 << cap;
        self.held.set(h);
        self.log(format!("ambient raise {cap}"))
    }
    fn set_securebits(&self, bits: libc::c_ulong) -> Result {
        self.log(format!("securebits {bits:#x}"))
    }
    fn held(&self) -> std::result::Result<Held, Error> {
        Ok(self.held.get())
    }
    fn clear_groups(&self) -> Result {
        self.log("setgroups []".into())
    }
    fn setresgid(&self, gid: u32) -> Result {
        self.log(format!("setresgid {gid}"))
    }
    fn setresuid(&self, uid: u32) -> Result {
        if uid != 0 && !self.setuid_keeps_caps {
            let mut h = self.held.get();
            (h.effective, h.permitted, h.ambient) = (0, 0, 0);
            self.held.set(h);
        }
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
