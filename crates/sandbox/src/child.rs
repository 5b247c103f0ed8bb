//! What runs in the child between `fork` and `exec`: the linear set-up of
//! one sandbox, in the order the kernel requires.
//!
//! Only async-signal-safe system calls are allowed here (the parent is
//! multi-threaded): everything was allocated beforehand, nothing here
//! allocates, locks or formats.
//!
//! ```text
//! setsid → join cgroups → rlimits → fd 3, every other fd close-on-exec → unshare(mnt, pid, ipc, uts[, net])
//!   → fork: the outer process waits and mirrors the inner's exit;
//!           the inner is pid 1 of the new pid namespace and goes on:
//!   → hostname → build root → pivot_root → lo up
//!   → drop capabilities → unprivileged uid/gid → no_new_privs → seccomp → exec
//! ```
#![allow(unsafe_code)]

use std::io::Error;
use std::os::fd::RawFd;

use crate::kernel::{Kernel, Linux};
use crate::mounts::{Op, Plan};

/// Everything the child needs, prepared by the parent.
pub struct Setup {
    /// flick's pid: if the child's parent is no longer it, flick died
    /// before PDEATHSIG was armed.
    pub parent_pid: libc::pid_t,
    pub cgroup_procs: Vec<RawFd>,
    pub protocol_fd: Option<RawFd>,
    pub nofile: u64,
    pub isolate: Option<Isolation>,
}

pub struct Isolation {
    pub plan: Plan,
    pub hostname: &'static [u8],
    pub new_net: bool,
    /// The uid/gid of [`crate::Identity::Shared`].
    pub shared_uid: u32,
    pub shared_gid: u32,
    /// For a waiting exec sandbox, replaced by the go message's.
    pub identity: crate::Identity,
    pub code_dir: std::ffi::CString,
    /// Compiled seccomp programs ([`crate::seccomp::Policy`]), installed in order.
    pub filters: std::sync::Arc<crate::seccomp::Policy>,
    /// Write end of a pipe: when set, pid 1 of the sandbox forks the
    /// program, writes its wait status here the moment it exits, and only
    /// then lets the namespaces go (their teardown takes milliseconds that
    /// the caller need not wait for).
    pub exit_fd: Option<RawFd>,
    /// Read end of a pipe: when set, the sandbox is set up and then waits
    /// here for the program to run (a prewarmed exec sandbox).
    pub go_fd: Option<RawFd>,
}

const CAP_SETGID: u64 = 6;
const CAP_SETUID: u64 = 7;

fn check(ret: libc::c_int) -> Result<(), Error> {
    if ret < 0 { Err(Error::last_os_error()) } else { Ok(()) }
}

/// # Safety
/// Must only be called in a freshly forked child before exec.
pub unsafe fn run(setup: &Setup) -> Result<(), Error> {
    // SAFETY (whole function): each call below is a plain system call on
    // memory the parent prepared and that outlives the child's use of it.
    unsafe {
        // A session of its own, so no instance has a controlling terminal:
        // flick's terminal (if it was started from one) is out of reach even
        // through /dev/tty. This also makes it a process group leader, which
        // is how flick kills an instance's whole tree.
        if libc::setsid() < 0 {
            return Err(Error::last_os_error());
        }
        // Die with flick, so a SIGKILLed flick leaves no instances behind.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        if libc::getppid() != setup.parent_pid {
            return Err(Error::other("parent exited"));
        }
        for fd in &setup.cgroup_procs {
            // "0" means the writing process; children inherit the cgroup.
            if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(Error::last_os_error());
            }
            libc::close(*fd);
        }
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
        let nofile = libc::rlimit { rlim_cur: setup.nofile, rlim_max: setup.nofile };
        check(libc::setrlimit(libc::RLIMIT_NOFILE, &nofile))?;
        if let Some(fd) = setup.protocol_fd {
            if fd == crate::PROTOCOL_FD {
                // dup2 onto itself is a no-op that keeps FD_CLOEXEC: clear it.
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            } else {
                // dup2 clears FD_CLOEXEC on the copy, so fd 3 survives exec.
                check(libc::dup2(fd, crate::PROTOCOL_FD))?;
            }
        }
        // Whatever flick inherited without close-on-exec (a shell's or a
        // supervisor's descriptors: a directory fd would undo pivot_root)
        // must not reach the program. Marked close-on-exec rather than
        // closed: the pipe on which the spawning side learns whether exec
        // worked is among them and must stay open until then.
        let first_free = if setup.protocol_fd.is_some() { crate::PROTOCOL_FD + 1 } else { 3 };
        cloexec_from(first_free)?;
        let Some(iso) = &setup.isolate else { return Ok(()) };

        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if iso.new_net {
            flags |= libc::CLONE_NEWNET;
        }
        check(libc::unshare(flags))?;
        // A new pid namespace applies to children only: fork once more.
        let pid = libc::fork();
        if pid < 0 {
            return Err(Error::last_os_error());
        }
        if pid > 0 {
            wait_and_mirror(pid, setup.parent_pid);
        }
        check(libc::sethostname(iso.hostname.as_ptr().cast(), iso.hostname.len()))?;
        build_root(&Linux, &iso.plan)?;
        check(libc::chdir(iso.code_dir.as_ptr()))?;
        if iso.new_net {
            loopback_up()?;
        }
        let mut message = [0u8; crate::MAX_GO_MESSAGE];
        let mut argv = [std::ptr::null::<libc::c_char>(); 256];
        let mut envp = [std::ptr::null::<libc::c_char>(); 512];
        let mut identity = iso.identity;
        if let Some(go) = iso.go_fd {
            // Close all but stdio and our two pipes before waiting: among the
            // rest is the pipe on which the spawning side waits for the exec,
            // and it must see this sandbox as started now.
            let keep = [go, iso.exit_fd.unwrap_or(go)];
            let (a, b) = (keep[0].min(keep[1]) as libc::c_uint, keep[0].max(keep[1]) as libc::c_uint);
            for (from, to) in [(3, a.saturating_sub(1)), (a + 1, b.saturating_sub(1)), (b + 1, u32::MAX)] {
                if from <= to && libc::syscall(libc::SYS_close_range, from, to, 0u32) < 0 {
                    return Err(Error::last_os_error());
                }
            }
            // Only now is the function, and so its uid, known: everything
            // from here to exec is a few system calls.
            identity = wait_for_program(go, &mut message, &mut argv, &mut envp)?;
            // The code was mounted after we entered /var/task: enter it again.
            check(libc::chdir(iso.code_dir.as_ptr()))?;
        }
        drop_privileges(&Linux, identity, iso.shared_uid, iso.shared_gid, &iso.filters.programs)?;
        if let Some(exit_fd) = iso.exit_fd {
            let pid = libc::fork();
            if pid < 0 {
                return Err(Error::last_os_error());
            }
            if pid > 0 {
                report_exit(pid, exit_fd);
            }
        }
        if iso.go_fd.is_some() {
            libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
            // 127, as a shell says for a program it cannot run.
            libc::_exit(127);
        }
        Ok(())
    }
}

/// Sets close-on-exec on every descriptor from `first` up.
unsafe fn cloexec_from(first: RawFd) -> Result<(), Error> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range and fcntl only change descriptor flags.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) == 0 {
            return Ok(());
        }
        // Kernels before 5.11: one descriptor at a time, up to the limit
        // flick itself ran with (descriptors above it cannot exist).
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
        let top = limit.rlim_max.min(1 << 20) as RawFd;
        for fd in first..top {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
        Ok(())
    }
}

/// Reads a go message (see `crate::go_message`) into `buf` and points
/// `argv` and `envp` (NULL-terminated) at its strings. No allocation.
unsafe fn wait_for_program(
    go: RawFd,
    buf: &mut [u8],
    argv: &mut [*const libc::c_char],
    envp: &mut [*const libc::c_char],
) -> Result<crate::Identity, Error> {
    // SAFETY: reads into memory we own; pointers stored point into `buf`,
    // which outlives their use (until exec).
    unsafe {
        let mut len_bytes = [0u8; 4];
        read_exact(go, &mut len_bytes)?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > buf.len() {
            return Err(Error::other("program message too large"));
        }
        read_exact(go, &mut buf[..len])?;
        libc::close(go);
        if len < 4 {
            return Err(Error::other("malformed program message"));
        }
        let identity = crate::Identity::decode(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
        let mut at = 4;
        for list in [&mut *argv, &mut *envp] {
            let mut n = 0;
            loop {
                let Some(end) = buf[at..len].iter().position(|b| *b == 0) else {
                    return Err(Error::other("malformed program message"));
                };
                if end == 0 {
                    at += 1;
                    break;
                }
                if n + 1 >= list.len() {
                    return Err(Error::other("too many arguments or variables"));
                }
                list[n] = buf[at..].as_ptr().cast();
                n += 1;
                at += end + 1;
            }
            list[n] = std::ptr::null();
        }
        if argv[0].is_null() {
            return Err(Error::other("no program to run"));
        }
        Ok(identity)
    }
}

unsafe fn read_exact(fd: RawFd, mut buf: &mut [u8]) -> Result<(), Error> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::last_os_error());
        }
        if n == 0 {
            return Err(Error::other("no program arrived"));
        }
        buf = &mut buf[n as usize..];
    }
    Ok(())
}

/// pid 1 of a sandbox whose program reports its exit: holds nothing open
/// but the report pipe, waits for the program, reports, exits.
unsafe fn report_exit(pid: libc::pid_t, exit_fd: RawFd) -> ! {
    // SAFETY: plain system calls; this process never returns to Rust code.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"flick-init".as_ptr());
        // Like the outer process, it never execs: close everything but the
        // report pipe, or it would hold the program's stdin open (a program
        // reading to EOF would never finish) and flick's other files too.
        let exit_fd = exit_fd as libc::c_uint;
        let low = exit_fd.checked_sub(1).map(|top| libc::syscall(libc::SYS_close_range, 0u32, top, 0u32));
        let high = libc::syscall(libc::SYS_close_range, exit_fd + 1, u32::MAX, 0u32);
        if low.is_some_and(|r| r < 0) || high < 0 {
            for fd in 0..65_536 {
                if fd != exit_fd {
                    libc::close(fd as libc::c_int);
                }
            }
        }
        let exit_fd = exit_fd as RawFd;
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(127);
            }
        }
        let bytes = status.to_ne_bytes();
        libc::write(exit_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(0)
    }
}

/// The inner process's pid, for [`kill_inner_and_exit`]. Set once, in the
/// outer process only (after fork), before the handler is installed: a
/// signal handler has no other way to get it.
static INNER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn kill_inner_and_exit(_: libc::c_int) {
    // SAFETY: kill and _exit are async-signal-safe.
    unsafe {
        libc::kill(INNER.load(std::sync::atomic::Ordering::SeqCst), libc::SIGKILL);
        libc::_exit(128 + libc::SIGKILL);
    }
}

/// The outer process: holds nothing open, waits for the inner one, exits
/// the way it exited (so an OOM kill still reads as SIGKILL to flick).
unsafe fn wait_and_mirror(pid: libc::pid_t, parent_pid: libc::pid_t) -> ! {
    // SAFETY: plain system calls; this process never returns to Rust code.
    unsafe {
        // Shows in `ps` as what it is, not as a second `flick up`.
        libc::prctl(libc::PR_SET_NAME, c"flick-sandbox".as_ptr());
        // The inner process's own parent-death signal goes when its
        // credentials change (a stem cell's bootstrap changes them when it
        // is specialised), so this process takes the inner one along when
        // flick dies: a catchable parent-death signal whose handler kills it.
        INNER.store(pid, std::sync::atomic::Ordering::SeqCst);
        let handler: extern "C" fn(libc::c_int) = kill_inner_and_exit;
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != parent_pid {
            kill_inner_and_exit(libc::SIGTERM);
        }
        // It never execs, so close-on-exec never fires here: close every
        // descriptor by hand, or it would hold the instance's pipes (and
        // flick's other files) open and the instance would never see EOF.
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) < 0 {
            for fd in 0..65_536 {
                libc::close(fd);
            }
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
        }
        libc::_exit(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 127 })
    }
}

/// Mounts the plan's root and makes it the root (see `mounts.rs`).
fn build_root(k: &impl Kernel, plan: &Plan) -> Result<(), Error> {
    // Nothing we mount may propagate back to the host.
    k.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    k.mount(Some(c"tmpfs"), &plan.root, Some(c"tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(c"size=1m,mode=755"))?;
    for op in &plan.ops {
        match op {
            Op::Mkdir(p) => k.mkdir(p)?,
            Op::Touch(p) => k.touch(p)?,
            Op::Symlink { target, link } => k.symlink(target, link)?,
            Op::Bind { src, dst, readonly, dev } => {
                k.mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
                // A bind mount takes its flags only from a remount.
                let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                if *readonly {
                    flags |= libc::MS_RDONLY;
                }
                if !*dev {
                    flags |= libc::MS_NODEV;
                }
                k.mount(None, dst, None, flags, None)?;
            }
            Op::Tmpfs { dst, options } => {
                k.mount(Some(c"tmpfs"), dst, Some(c"tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(options))?
            }
            Op::Proc { dst } => {
                k.mount(Some(c"proc"), dst, Some(c"proc"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None)?
            }
        }
    }
    // Make the new root the root, then let go of the old one entirely.
    k.chdir(&plan.root)?;
    k.pivot_here()?;
    k.chdir(c"/")?;
    // The skeleton itself is read-only; only /tmp and /dev/shm are writable.
    k.mount(
        None,
        c"/",
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
}

/// The securebits every instance runs under, locked so nothing in it can
/// change them: uid 0 gains no capabilities at exec (a stem's two come from
/// its ambient set instead), leaving uid 0 always clears the capability
/// sets (`NO_SETUID_FIXUP` and `KEEP_CAPS` off, whatever flick inherited),
/// and no capability can be raised into the ambient set after the stem's.
const SECUREBITS: libc::c_ulong = {
    const NOROOT: libc::c_ulong = 1 << 0;
    const NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    NOROOT
        | NOROOT_LOCKED
        | NO_SETUID_FIXUP_LOCKED
        | KEEP_CAPS_LOCKED
        | NO_CAP_AMBIENT_RAISE
        | NO_CAP_AMBIENT_RAISE_LOCKED
};

/// From root in the sandbox to the instance's identity, unprivileged and
/// filtered, in the order the kernel requires.
///
/// A stem cell (`Deferred`) stays uid 0 and carries CAP_SETUID and
/// CAP_SETGID through exec in its ambient (and so inheritable) set, with an
/// empty bounding set: its bootstrap's setresuid clears the ambient,
/// permitted and effective sets, and nothing at all is left that a later
/// exec could grow from (the bounding set is empty; the inheritable set
/// only meets file capabilities, which no_new_privs and the nosuid mounts
/// ignore, and python's bootstrap empties it too).
fn drop_privileges(
    k: &impl Kernel,
    identity: crate::Identity,
    shared_uid: u32,
    shared_gid: u32,
    filters: &[Vec<libc::sock_filter>],
) -> Result<(), Error> {
    let (uid, gid, keep) = match identity {
        crate::Identity::Shared => (shared_uid, shared_gid, 0u64),
        crate::Identity::Function(uid) => (uid, uid, 0),
        crate::Identity::Deferred => (0, 0, 1 << CAP_SETUID | 1 << CAP_SETGID),
    };
    // Nothing of flick's own ambient or inheritable sets passes on; a stem's
    // two go in (the inheritable set first: the ambient set must be within it,
    // and it may only grow while the bounding set still has them).
    k.clear_ambient()?;
    k.set_inheritable(keep)?;
    for cap in (0..64u64).filter(|cap| keep & (1 << cap) != 0) {
        k.raise_ambient(cap)?;
    }
    // CAP_SETPCAP is still effective: lock the rules, then empty the
    // bounding set while we still may.
    k.set_securebits(SECUREBITS)?;
    for cap in 0..64u64 {
        k.drop_bounding_cap(cap)?;
    }
    k.clear_groups()?;
    if uid != 0 {
        k.setresgid(gid)?;
        // Leaving uid 0 clears the permitted, effective and ambient sets.
        k.setresuid(uid)?;
    }
    // Check what the kernel did rather than trust the rules above: after
    // exec this process holds `keep` and nothing else (uid 0 under NOROOT
    // gets only its ambient set; any other uid must hold nothing already).
    let held = k.held()?;
    let left = if uid == 0 { 0 } else { held.effective | held.permitted };
    if held.bounding != 0 || held.inheritable != keep || held.ambient != keep || left != 0 {
        return Err(Error::other("capabilities survived the privilege drop"));
    }
    // Changing credentials clears the parent-death signal: arm it now, so
    // this process dies with the outer one (and that one with flick).
    k.parent_death_signal(libc::SIGKILL)?;
    k.no_new_privs()?;
    for program in filters {
        k.seccomp(program)?;
    }
    Ok(())
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A new network namespace has only `lo`, and it is down: bring it up so
/// functions can still talk to themselves over 127.0.0.1.
pub(crate) unsafe fn loopback_up() -> Result<(), Error> {
    const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
    const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
    // SAFETY: the ioctls read and write an ifreq we own.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(Error::last_os_error());
        }
        let mut req = IfReqFlags { name: [0; 16], flags: 0, _pad: [0; 22] };
        req.name[..2].copy_from_slice(b"lo");
        let ok = libc::ioctl(sock, SIOCGIFFLAGS, &mut req) >= 0 && {
            req.flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, SIOCSIFFLAGS, &req) >= 0
        };
        let err = Error::last_os_error();
        libc::close(sock);
        if ok { Ok(()) } else { Err(err) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::kernel::Recorder;

    fn filters() -> Vec<Vec<libc::sock_filter>> {
        crate::seccomp::Policy::compile().unwrap().programs
    }

    #[test]
    fn a_function_drops_every_capability_then_its_uid_then_filters() {
        let k = Recorder::default();
        drop_privileges(&k, Identity::Function(201_234), 65534, 65534, &filters()).unwrap();
        let calls = k.calls();
        let at = |c: &str| calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("no {c}: {calls:?}"));
        assert_eq!(calls.iter().filter(|c| c.starts_with("capbset_drop")).count(), 64, "{calls:?}");
        assert!(at("capbset_drop 63") < at("setresuid 201234"), "the bounding set goes while we are root");
        assert!(at("setgroups []") < at("setresgid 201234"));
        assert!(at("setresgid 201234") < at("setresuid 201234"), "gid first: after the uid it is not allowed");
        assert!(at("setresuid 201234") < at("pdeathsig 9"), "a credential change clears the parent-death signal");
        assert!(at("no_new_privs") < calls.iter().position(|c| c.starts_with("seccomp")).unwrap());
        assert_eq!(calls.iter().filter(|c| c.starts_with("seccomp")).count(), filters().len());
        assert!(calls.last().unwrap().starts_with("seccomp"), "the filter is the last thing before exec");
    }

    #[test]
    fn no_function_means_the_shared_uid() {
        let k = Recorder::default();
        drop_privileges(&k, Identity::Shared, 65534, 65533, &filters()).unwrap();
        let calls = k.calls();
        assert!(calls.contains(&"setresuid 65534".to_string()) && calls.contains(&"setresgid 65533".to_string()));
    }

    #[test]
    fn a_stem_keeps_only_setuid_and_setgid_in_its_ambient_set_and_stays_uid_0() {
        let k = Recorder::default();
        drop_privileges(&k, Identity::Deferred, 65534, 65534, &filters()).unwrap();
        let calls = k.calls();
        let at = |c: &str| calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("no {c}: {calls:?}"));
        assert_eq!(calls.iter().filter(|c| c.starts_with("capbset_drop")).count(), 64, "an empty bounding set");
        assert!(at("inheritable 0xc0") < at("ambient raise 6"), "ambient needs them inheritable first");
        assert!(at("ambient raise 7") < at(&format!("securebits {SECUREBITS:#x}")), "no raise after the lock");
        assert!(at("inheritable 0xc0") < at("capbset_drop 6"), "inheritable may only grow within the bounding set");
        assert!(!calls.iter().any(|c| c.starts_with("setresuid") || c.starts_with("setresgid")), "{calls:?}");
        assert!(calls.contains(&"no_new_privs".to_string()));
        assert!(calls.iter().any(|c| c.starts_with("seccomp")), "a stem is filtered like any instance");
        let held = k.held.get();
        assert_eq!((held.ambient, held.inheritable, held.bounding), (0xc0, 0xc0, 0));
    }

    #[test]
    fn securebits_make_root_powerless_at_exec_and_leaving_it_always_clears() {
        const NOROOT: libc::c_ulong = 1;
        const NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
        const KEEP_CAPS: libc::c_ulong = 1 << 4;
        assert_eq!(SECUREBITS & (NOROOT | NO_SETUID_FIXUP | KEEP_CAPS), NOROOT);
        // Every bit this sets or leaves off is locked.
        for bit in [0, 2, 4, 6] {
            assert_ne!(SECUREBITS & (1 << (bit + 1)), 0, "bit {bit} is not locked");
        }
    }

    #[test]
    fn capabilities_that_survive_the_uid_change_fail_the_start() {
        for identity in [Identity::Function(201_234), Identity::Shared] {
            let k = Recorder { setuid_keeps_caps: true, ..Recorder::default() };
            let err = drop_privileges(&k, identity, 65534, 65534, &filters()).unwrap_err();
            assert!(err.to_string().contains("capabilities survived"), "{err}");
            assert!(!k.calls().iter().any(|c| c.starts_with("seccomp")), "it never gets as far as exec");
        }
    }

    #[test]
    fn nothing_inheritable_or_ambient_passes_from_flick_to_a_function() {
        let k = Recorder::default();
        let mut h = k.held.get();
        (h.inheritable, h.ambient) = (u64::MAX, u64::MAX);
        k.held.set(h);
        drop_privileges(&k, Identity::Function(201_234), 65534, 65534, &filters()).unwrap();
        assert_eq!(k.held.get(), crate::kernel::Held::default(), "nothing left in any set");
    }

    #[test]
    fn a_go_message_cannot_ask_for_root_or_a_stem() {
        for raw in [0, u32::MAX] {
            assert_eq!(Identity::decode(raw), Identity::Shared);
        }
        assert_eq!(Identity::decode(Identity::Function(200_001).encode()), Identity::Function(200_001));
        assert_eq!(Identity::decode(Identity::Deferred.encode()), Identity::Shared);
    }

    #[test]
    fn the_root_is_private_bound_read_only_and_pivoted() {
        let plan = crate::mounts::plan(&crate::mounts::Inputs {
            root: std::path::Path::new("/srv/rootfs"),
            code: Some(std::path::Path::new("/data/code/abc")),
            runtime: std::path::Path::new("/data/runtime"),
            extra_ro: &[],
            tmp_size: 1 << 20,
            code_writable: false,
        });
        let k = Recorder::default();
        build_root(&k, &plan).unwrap();
        let calls = k.calls();
        let private = format!("mount - / - {:#x} -", libc::MS_REC | libc::MS_PRIVATE);
        assert_eq!(calls[0], private, "propagation off before anything is mounted");
        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_RDONLY | libc::MS_NODEV;
        let code_bind = calls.iter().position(|c| c.starts_with("mount /data/code/abc /srv/rootfs/var/task")).unwrap();
        assert_eq!(
            calls[code_bind + 1],
            format!("mount - /srv/rootfs/var/task - {ro:#x} -"),
            "code is remounted read-only"
        );
        let pivot = calls.iter().position(|c| c == "pivot_root").unwrap();
        assert_eq!(calls[pivot - 1], "chdir /srv/rootfs");
        assert!(calls.iter().take(pivot).all(|c| !c.contains("/dev/tty")), "no terminal device");
        let last = calls.last().unwrap();
        assert!(
            last.starts_with("mount - / - ")
                && last.ends_with(&format!(
                    "{:#x} -",
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV
                )),
            "{last}"
        );
    }
}
