//! Cheap moves into cgroups: the kernel's `favordynmods` cgroup2 option.
//!
//! Every instance starts by moving itself into its own cgroups. Moving a
//! process takes a system-wide lock (`cgroup_threadgroup_rwsem`) for
//! writing; by default that lock is tuned for forks and exits, and each
//! writer waits out an RCU grace period: 10–25 ms per move on this kind of
//! host, paid once per controller directory on cgroup v1, and serialised
//! across every start. With `favordynmods` the lock stays in its slow-read
//! mode instead: a move costs ~0.25 ms, and forks and exits host-wide pay a
//! little more (a shared counter instead of a per-CPU one). A FaaS host
//! starts processes into cgroups all day, so flick asks for it by default
//! (`cgroup_favordynmods = false` leaves the host as it is).
//!
//! The option belongs to the cgroup2 hierarchy but the lock is global, so
//! it helps v1 hosts too: where cgroup2 is mounted it is remounted with its
//! own options plus `favordynmods`; where it is not, it is mounted once on a
//! private directory with the option (which sets it) and unmounted. The
//! setting outlives flick: the kernel keeps it until the next remount or
//! reboot (kernels since 6.0; older ones refuse the option, and flick runs
//! on without it).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// What [`favor`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Favored {
    /// The cgroup2 mount already carried the option.
    Already,
    /// The cgroup2 mount at this path was remounted with it.
    Remounted(PathBuf),
    /// No cgroup2 mount: one was mounted with the option and removed.
    Set,
}

/// What to do, decided from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Already,
    /// Remount `target` with these comma-separated super-block options
    /// (and read-only if it was).
    Remount {
        target: PathBuf,
        options: String,
        read_only: bool,
    },
    /// No cgroup2 mount at all.
    MountPrivate,
}

/// Makes moves into cgroups cheap host-wide (see the module's comment).
/// `scratch` is a directory flick owns, for the private mount when cgroup2
/// is not mounted.
pub fn favor(scratch: &Path) -> Result<Favored, String> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    match plan(&mountinfo) {
        Plan::Already => Ok(Favored::Already),
        Plan::Remount { target, options, read_only } => {
            let flags = if read_only { libc::MS_REMOUNT | libc::MS_RDONLY } else { libc::MS_REMOUNT };
            mount(&target, flags, &options)
                .map_err(|e| format!("remounting {} with {options}: {e}", target.display()))?;
            Ok(Favored::Remounted(target))
        }
        Plan::MountPrivate => {
            let dir = scratch.join("cgroup2-favordynmods");
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let mounted = mount(&dir, 0, "favordynmods");
            if mounted.is_ok() {
                let path = c_path(&dir)?;
                // SAFETY: a NUL-terminated path valid for the call.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_dir(&dir);
            mounted.map_err(|e| format!("mounting cgroup2 with favordynmods on {}: {e}", dir.display()))?;
            Ok(Favored::Set)
        }
    }
}

fn plan(mountinfo: &str) -> Plan {
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional…] - fstype source super-options`
        let Some((before, after)) = line.split_once(" - ") else { continue };
        let mut after = after.split(' ');
        if after.next() != Some("cgroup2") {
            continue;
        }
        let (_source, supers) = (after.next(), after.next().unwrap_or(""));
        let Some(target) = before.split(' ').nth(4) else { continue };
        let read_only = supers.split(',').any(|o| o == "ro");
        let mut options: Vec<&str> = supers.split(',').filter(|o| !o.is_empty() && *o != "rw" && *o != "ro").collect();
        if options.contains(&"favordynmods") {
            return Plan::Already;
        }
        options.push("favordynmods");
        return Plan::Remount { target: PathBuf::from(unescape(target)), options: options.join(","), read_only };
    }
    Plan::MountPrivate
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn c_path(path: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL byte", path.display()))
}

/// A cgroup2 mount on `target`, through the same call the child set-up uses.
fn mount(target: &Path, flags: libc::c_ulong, options: &str) -> std::io::Result<()> {
    use crate::kernel::{Kernel, Linux};
    let target = c_path(target).map_err(std::io::Error::other)?;
    let options = CString::new(options).map_err(std::io::Error::other)?;
    Linux.mount(Some(c"cgroup2"), &target, Some(c"cgroup2"), flags, Some(&options))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";

    #[test]
    fn a_mounted_cgroup2_is_remounted_with_its_own_options_kept() {
        let systemd = format!(
            "{V1_HOST}40 30 0:35 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
        );
        assert_eq!(
            plan(&systemd),
            Plan::Remount {
                target: "/sys/fs/cgroup/unified".into(),
                options: "nsdelegate,memory_recursiveprot,favordynmods".into(),
                read_only: false,
            }
        );
    }

    #[test]
    fn nothing_is_done_twice_and_a_host_without_cgroup2_gets_a_private_mount() {
        let on = format!("{V1_HOST}40 30 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,favordynmods\n");
        assert_eq!(plan(&on), Plan::Already);
        assert_eq!(plan(V1_HOST), Plan::MountPrivate);
    }

    #[test]
    fn escaped_mount_points_are_read_back() {
        let odd = "40 30 0:35 / /mnt/with\\040space ro - cgroup2 none ro\n";
        assert_eq!(
            plan(odd),
            Plan::Remount { target: "/mnt/with space".into(), options: "favordynmods".into(), read_only: true }
        );
    }
}
