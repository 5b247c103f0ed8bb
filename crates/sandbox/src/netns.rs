//! Sockets for instances' own network namespaces, made on one long-lived
//! thread.
//!
//! A socket belongs to the network namespace it was created in, not to the
//! thread that later connects it. So one thread ([`SocketMaker`]) enters an
//! instance's namespace (`setns`, only when it differs from the one it is
//! in), creates a non-blocking socket there and hands its descriptor back;
//! the connect, and everything after it, happens on flick's async runtime
//! like any other connection. flick's other threads never change
//! namespace. Before this, every upstream connection of an http function
//! looked the instance up in /proc and spawned a thread to enter its
//! namespace: ~0.4 ms per connection, paid on every request to a server
//! that closes its connections.
#![allow(unsafe_code)]

use std::io::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;

/// An instance's network namespace, held open by a descriptor: it stays
/// the same namespace (never a recycled pid's) for as long as this lives.
#[derive(Clone, Debug)]
pub struct Netns(Arc<OwnedFd>);

impl Netns {
    /// The network namespace of process `pid`.
    pub(crate) fn of(pid: u32) -> Result<Self> {
        let path = std::ffi::CString::new(format!("/proc/{pid}/ns/net")).map_err(Error::other)?;
        // SAFETY: a valid NUL-terminated path; the descriptor is owned below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; nobody else owns it.
        Ok(Self(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }
}

struct Job {
    ns: Netns,
    reply: tokio::sync::oneshot::Sender<Result<OwnedFd>>,
}

/// The thread that makes sockets inside namespaces. Dropping the last
/// handle ends it.
#[derive(Debug)]
pub(crate) struct SocketMaker {
    jobs: mpsc::Sender<Job>,
}

impl SocketMaker {
    pub(crate) fn start() -> Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("flick-netns".into()).spawn(move || {
            // The namespace this thread is in, held so that its descriptor
            // (compared by pointer) cannot be recycled for another one.
            let mut current: Option<Netns> = None;
            for job in inbox {
                let socket = make_in(&job.ns, &mut current);
                let _ = job.reply.send(socket);
            }
        })?;
        Ok(Self { jobs })
    }

    /// A new non-blocking IPv4 TCP socket, not yet connected, inside `ns`.
    pub(crate) async fn tcp_socket(&self, ns: &Netns) -> Result<tokio::net::TcpSocket> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job { ns: ns.clone(), reply })
            .map_err(|_| Error::other("the namespace socket thread has stopped"))?;
        let fd = answer.await.map_err(|_| Error::other("the namespace socket thread has stopped"))??;
        Ok(tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
    }
}

fn make_in(ns: &Netns, current: &mut Option<Netns>) -> Result<OwnedFd> {
    if !current.as_ref().is_some_and(|c| Arc::ptr_eq(&c.0, &ns.0)) {
        // SAFETY: changes this thread's network namespace only; it serves
        // nothing else.
        if unsafe { libc::setns(ns.0.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            // Where this thread now is, is unknown: enter the next one afresh.
            *current = None;
            return Err(Error::last_os_error());
        }
        *current = Some(ns.clone());
    }
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket is made in the namespace asked for: a listener there gets
    /// its connections, and its port is not reachable from flick's own.
    #[tokio::test]
    async fn sockets_are_made_in_the_namespace_asked_for() {
        let made = std::thread::spawn(|| -> Result<(Netns, std::net::TcpListener)> {
            // SAFETY: this thread only builds the namespace and its listener.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNET) < 0 {
                    return Err(Error::last_os_error());
                }
                crate::child::loopback_up().map_err(Error::other)?;
            }
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
            Ok((Netns::of(tid)?, std::net::TcpListener::bind(("127.0.0.1", 0))?))
        })
        .join()
        .unwrap();
        let (ns, listener) = match made {
            Ok(made) => made,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipped: cannot make a network namespace here ({e})");
                return;
            }
            Err(e) => panic!("a network namespace for the test: {e}"),
        };
        let port = listener.local_addr().unwrap().port();
        let maker = SocketMaker::start().unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            let socket = maker.tcp_socket(&ns).await.unwrap();
            held.push(socket.connect(([127, 0, 0, 1], port).into()).await.expect("connects inside the namespace"));
        }
        for _ in 0..3 {
            listener.accept().expect("the namespace's listener got the connection");
        }
        // The thread left the host's namespace; flick's own threads did not.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is reachable from the host");
    }
}
