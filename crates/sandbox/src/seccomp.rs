//! The seccomp filter every instance runs under: a deny list of system
//! calls a function never needs and that widen what a compromised process
//! can do (mounts, namespaces, tracing, kernel modules, keyrings, …).
//!
//! Written as classic BPF by hand rather than with a crate: it is a few
//! dozen instructions, and every one of them is visible here.

use libc::sock_filter;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// x32 system calls share the x86_64 arch value; their numbers have this
/// bit set. Denying them all closes the classic "same call, other number" bypass.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;

/// Namespace flags a function may not pass to `clone`.
const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u32;

/// Denied with EPERM.
#[cfg(target_arch = "x86_64")]
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("settimeofday", libc::SYS_settimeofday),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("vhangup", libc::SYS_vhangup),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", 442),
];

/// Whether this build can install the filter.
pub fn supported() -> bool {
    cfg!(target_arch = "x86_64")
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The filter program. Layout: check arch → load nr → deny x32 → deny
/// `clone3` (ENOSYS, so libc falls back to `clone`, whose flags we can see)
/// → deny namespace flags on `clone` → deny the list → allow.
#[cfg(target_arch = "x86_64")]
pub fn program() -> Vec<sock_filter> {
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        // x32: to the final EPERM, patched below.
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 0),
        jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, enosys),
        jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 3),
        stmt(BPF_LD_W_ABS, OFF_ARG0_LOW),
        jump(BPF_JSET_K, CLONE_NS_FLAGS, 0, 0), // → EPERM, patched below
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    let x32_at = 4;
    let clone_flags_at = 9;
    let mut deny_jumps = Vec::new();
    for (_, nr) in DENIED {
        deny_jumps.push(p.len());
        p.push(jump(BPF_JEQ_K, *nr as u32, 0, 0));
    }
    p.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    let deny_at = p.len();
    p.push(stmt(BPF_RET_K, eperm));
    for at in deny_jumps.into_iter().chain([x32_at, clone_flags_at]) {
        p[at].jt = (deny_at - at - 1) as u8;
    }
    p
}

#[cfg(not(target_arch = "x86_64"))]
pub const DENIED: &[(&str, libc::c_long)] = &[];

#[cfg(not(target_arch = "x86_64"))]
pub fn program() -> Vec<sock_filter> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn jumps_land_on_the_deny_return() {
        let p = program();
        assert!(p.len() < 255, "jump offsets must fit in a byte");
        let deny = p.len() - 1;
        assert_eq!(p[deny].k, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
        assert_eq!(p[deny - 1].k, libc::SECCOMP_RET_ALLOW);
        let jeqs: Vec<_> = p.iter().enumerate().filter(|(_, f)| f.code == BPF_JEQ_K && f.jt > 0).collect();
        for (i, f) in jeqs {
            if DENIED.iter().any(|(_, nr)| *nr as u32 == f.k) {
                assert_eq!(i + 1 + f.jt as usize, deny, "instruction {i}");
            }
        }
        assert!(DENIED.iter().any(|(n, _)| *n == "mount"));
    }
}
