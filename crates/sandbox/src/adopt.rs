//! Instances forked inside a running sandbox (a function's fork template):
//! handing the template the new instance's descriptors, finding the fork in
//! flick's pid namespace, and taking it into cgroups of its own.
//!
//! The fork shares its template's namespaces, root, `/tmp`, uid and seccomp
//! filter (one box per function revision); only its cgroup — memory limit,
//! pids, CPU weight, usage counters — is its own.

use std::io::{Error, ErrorKind, IoSlice, Result, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::cgroup::Cgroup;

/// Most descriptors one message carries (a fork needs three).
const MAX_FDS: usize = 4;

/// Sends `data` and `fds` (`SCM_RIGHTS`) in one message on a Unix socket.
/// The message is small and the socket idle, so it goes at once or fails
/// (a full socket means a template that stopped reading).
pub fn send_with_fds(socket: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    if fds.len() > MAX_FDS {
        return Err(Error::new(ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::other("descriptors do not fit the control buffer"));
    }
    let sent = rustix::net::sendmsg(socket, &[IoSlice::new(data)], &mut control, SendFlags::NOSIGNAL)?;
    if sent != data.len() {
        return Err(Error::other(format!("sent {sent} of {} bytes", data.len())));
    }
    Ok(())
}

/// A process forked by a template, now in flick's hands.
#[derive(Debug)]
pub struct Adopted {
    /// Its pid in flick's namespace.
    pub pid: u32,
    /// Refers to this process and no other, even once the pid is reused:
    /// readable when it exits, and what signals go through.
    pub pidfd: OwnedFd,
    /// Its own cgroup (isolated sandboxes).
    pub cgroup: Option<Cgroup>,
}

/// Finds the process that `template` (the pid a spawn returned: the outer
/// process when `isolated`, the program itself otherwise) forked and that
/// calls itself `ns_pid` in its own pid namespace: `(its parent, it)`.
pub(crate) fn find_fork(template: u32, ns_pid: u32, isolated: bool) -> Result<(u32, u32)> {
    let parent = if isolated { crate::attach::inner_pid(template)? } else { template };
    let gone = || Error::new(ErrorKind::NotFound, format!("the template has no child {ns_pid}"));
    for task in std::fs::read_dir(format!("/proc/{parent}/task"))?.flatten() {
        let task = task.file_name();
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{}/children", task.to_string_lossy()))
            .unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            if identity(child) == Some((parent, ns_pid)) {
                return Ok((parent, child));
            }
        }
    }
    Err(gone())
}

/// The parent of `pid` (in flick's namespace) and the pid it has in the
/// innermost pid namespace it belongs to.
fn identity(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::split_whitespace);
    let parent = field("PPid:")?.next()?.parse().ok()?;
    let innermost = field("NSpid:")?.last()?.parse().ok()?;
    Some((parent, innermost))
}

/// Takes the fork `pid` of a template into flick's hands: a pidfd first
/// (so the pid can no longer be mistaken for another process), a check that
/// it is still `parent`'s child `ns_pid` (the pid was not reused before the
/// pidfd pinned it), then `cgroup`, if any, which it joins whole (every thread).
pub(crate) fn adopt((parent, pid): (u32, u32), ns_pid: u32, cgroup: Option<(Cgroup, Vec<OwnedFd>)>) -> Result<Adopted> {
    let fail = |cgroup: Option<(Cgroup, Vec<OwnedFd>)>, e: Error| {
        if let Some((cg, _)) = cgroup {
            cg.destroy();
        }
        Err(e)
    };
    let raw = match Pid::from_raw(pid as i32) {
        Some(raw) => raw,
        None => return fail(cgroup, Error::other("pid 0")),
    };
    let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => return fail(cgroup, e.into()),
    };
    if identity(pid) != Some((parent, ns_pid)) {
        return fail(cgroup, Error::new(ErrorKind::NotFound, "the fork exited before it was adopted"));
    }
    let Some((cg, procs)) = cgroup else { return Ok(Adopted { pid, pidfd, cgroup: None }) };
    for fd in procs {
        let mut file = std::fs::File::from(fd);
        if let Err(e) = file.write_all(pid.to_string().as_bytes()) {
            kill(pidfd.as_fd());
            return fail(Some((cg, vec![])), e);
        }
    }
    Ok(Adopted { pid, pidfd, cgroup: Some(cg) })
}

/// Resolves once the process behind `pidfd` has exited (a pidfd turns
/// readable then).
pub async fn exited(pidfd: Arc<OwnedFd>) -> Result<()> {
    // SAFETY: the AsyncFd owns an Arc of the descriptor, so it stays open
    // and the same for the AsyncFd's whole life.
    let watch = unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(Error::from)?;
    watch.readable().await?.retain_ready();
    Ok(())
}

/// SIGKILLs the process behind `pidfd` (nothing if it is gone).
pub fn kill(pidfd: BorrowedFd<'_>) {
    let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_cross_a_socket_and_a_child_is_found_by_its_pid() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, w) = std::io::pipe().unwrap();
        send_with_fds(a.as_fd(), b"fork\n", &[w.as_fd()]).unwrap();
        drop(w);
        // What arrives is a working copy of the pipe's write end.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 16];
        let got = rustix::net::recvmsg(
            b.as_fd(),
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            rustix::net::RecvFlags::empty(),
        )
        .unwrap();
        assert_eq!(&buf[..got.bytes], b"fork\n");
        let mut fds: Vec<OwnedFd> = control
            .drain()
            .flat_map(|m| match m {
                rustix::net::RecvAncillaryMessage::ScmRights(fds) => fds.collect::<Vec<_>>(),
                _ => vec![],
            })
            .collect();
        assert_eq!(fds.len(), 1);
        std::fs::File::from(fds.pop().unwrap()).write_all(b"through").unwrap();
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through");

        // Unisolated, a template's fork is its child, known by its own pid.
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let me = std::process::id();
        assert_eq!(find_fork(me, child.id(), false).unwrap(), (me, child.id()));
        assert!(find_fork(me, u32::MAX - 1, false).is_err());
        // Not a child of that parent: refused.
        assert!(adopt((me + 1, child.id()), child.id(), None).is_err());
        let adopted = adopt((me, child.id()), child.id(), None).unwrap();
        kill(adopted.pidfd.as_fd());
        assert!(!child.wait().unwrap().success());
        // Gone (and reaped): no longer adoptable under that pid.
        assert!(adopt((me, child.id()), child.id(), None).is_err());
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fds = [a.as_fd(); MAX_FDS + 1];
        assert_eq!(send_with_fds(a.as_fd(), b"x", &fds).unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}
