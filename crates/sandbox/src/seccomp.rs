//! The seccomp policy every instance runs under: a deny list of system
//! calls a function never needs and that widen what a compromised process
//! can do (mounts, namespaces, tracing, kernel modules, keyrings, io_uring,
//! terminal injection, …).
//!
//! The rules are data ([`RULES`]); `seccompiler` (Firecracker's compiler)
//! turns them into classic BPF once, at start-up ([`Policy::compile`]), and
//! the child only hands the finished programs to the kernel.
//!
//! Why a deny list and not an allow list per runtime: python3 and node
//! instances load arbitrary native extensions and `exec`/`http` functions
//! run arbitrary binaries, so an allow list would either be as wide as the
//! syscall table or break functions in ways that only show at run time.
//! What is denied here is what no function needs.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// x32 system calls share the x86_64 arch value; their numbers have this
/// bit set. Denying them all closes the classic "same call, other number" bypass.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Namespace flags a function may not pass to `clone`.
pub const CLONE_NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// `ioctl` requests that push input into a terminal or drive the console.
#[allow(clippy::unnecessary_cast)] // the request type is `c_int` on musl
pub const TERMINAL_IOCTLS: [u64; 2] = [libc::TIOCSTI as u64, libc::TIOCLINUX as u64];

/// When a rule applies to its system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// `ioctl` with one of these requests. The kernel reads the request as
    /// a 32-bit `unsigned int`, so only the low 32 bits are compared: a
    /// request with junk in the high bits is the same request.
    IoctlRequest(&'static [u64]),
    /// `clone` with any of these flags set in its first argument.
    AnyFlag(&'static [u64]),
}

/// One denied system call.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub name: &'static str,
    pub nr: libc::c_long,
    pub when: When,
    /// What the call returns instead of running.
    pub errno: i32,
}

const fn deny(name: &'static str, nr: libc::c_long) -> Rule {
    Rule { name, nr, when: When::Always, errno: libc::EPERM }
}

/// The policy, as data. Everything here returns EPERM except `clone3`,
/// which returns ENOSYS so libc falls back to `clone`, whose flags a
/// filter can see (`clone3` passes them in memory).
#[cfg(target_arch = "x86_64")]
pub const RULES: &[Rule] = &[
    deny("mount", libc::SYS_mount),
    deny("umount2", libc::SYS_umount2),
    deny("pivot_root", libc::SYS_pivot_root),
    deny("chroot", libc::SYS_chroot),
    deny("ptrace", libc::SYS_ptrace),
    deny("process_vm_readv", libc::SYS_process_vm_readv),
    deny("process_vm_writev", libc::SYS_process_vm_writev),
    deny("kexec_load", libc::SYS_kexec_load),
    deny("kexec_file_load", libc::SYS_kexec_file_load),
    deny("bpf", libc::SYS_bpf),
    deny("init_module", libc::SYS_init_module),
    deny("finit_module", libc::SYS_finit_module),
    deny("delete_module", libc::SYS_delete_module),
    deny("reboot", libc::SYS_reboot),
    deny("keyctl", libc::SYS_keyctl),
    deny("add_key", libc::SYS_add_key),
    deny("request_key", libc::SYS_request_key),
    deny("unshare", libc::SYS_unshare),
    deny("setns", libc::SYS_setns),
    deny("swapon", libc::SYS_swapon),
    deny("swapoff", libc::SYS_swapoff),
    deny("acct", libc::SYS_acct),
    deny("perf_event_open", libc::SYS_perf_event_open),
    deny("userfaultfd", libc::SYS_userfaultfd),
    deny("open_by_handle_at", libc::SYS_open_by_handle_at),
    deny("name_to_handle_at", libc::SYS_name_to_handle_at),
    deny("io_uring_setup", libc::SYS_io_uring_setup),
    deny("io_uring_enter", libc::SYS_io_uring_enter),
    deny("io_uring_register", libc::SYS_io_uring_register),
    deny("clock_settime", libc::SYS_clock_settime),
    deny("clock_adjtime", libc::SYS_clock_adjtime),
    deny("settimeofday", libc::SYS_settimeofday),
    deny("adjtimex", libc::SYS_adjtimex),
    deny("syslog", libc::SYS_syslog),
    deny("quotactl", libc::SYS_quotactl),
    deny("lookup_dcookie", libc::SYS_lookup_dcookie),
    deny("iopl", libc::SYS_iopl),
    deny("ioperm", libc::SYS_ioperm),
    deny("vhangup", libc::SYS_vhangup),
    deny("sethostname", libc::SYS_sethostname),
    deny("setdomainname", libc::SYS_setdomainname),
    deny("open_tree", libc::SYS_open_tree),
    deny("move_mount", libc::SYS_move_mount),
    deny("fsopen", libc::SYS_fsopen),
    deny("fsconfig", libc::SYS_fsconfig),
    deny("fsmount", libc::SYS_fsmount),
    deny("fspick", libc::SYS_fspick),
    deny("mount_setattr", libc::SYS_mount_setattr),
    Rule { name: "ioctl", nr: libc::SYS_ioctl, when: When::IoctlRequest(&TERMINAL_IOCTLS), errno: libc::EPERM },
    Rule { name: "clone", nr: libc::SYS_clone, when: When::AnyFlag(&CLONE_NS_FLAGS), errno: libc::EPERM },
    Rule { name: "clone3", nr: libc::SYS_clone3, when: When::Always, errno: libc::ENOSYS },
];

#[cfg(not(target_arch = "x86_64"))]
pub const RULES: &[Rule] = &[];

/// Whether this build can install the filter.
pub fn supported() -> bool {
    cfg!(target_arch = "x86_64")
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("seccomp rule for `{name}`: {source}")]
    Rule { name: &'static str, source: seccompiler::BackendError },
    #[error("compiling the seccomp filter: {0}")]
    Compile(seccompiler::BackendError),
    #[error("seccomp filter layout changed (seccompiler upgrade?): {0}")]
    Layout(&'static str),
    #[error("no seccomp filter for this CPU architecture")]
    Unsupported,
}

/// The compiled policy: BPF programs to install, in order (one per
/// distinct errno; the kernel runs them all and the strictest answer wins,
/// and no two of them match the same call).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub programs: Vec<Vec<libc::sock_filter>>,
}

impl Policy {
    /// Compiles [`RULES`] once.
    pub fn compile() -> Result<Self, PolicyError> {
        if !supported() {
            return Err(PolicyError::Unsupported);
        }
        Self::compile_rules(RULES)
    }

    fn compile_rules(rules: &[Rule]) -> Result<Self, PolicyError> {
        let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for rule in rules {
            let cond = |op, value| {
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, op, value)
                    .and_then(|c| SeccompRule::new(vec![c]))
                    .map_err(|source| PolicyError::Rule { name: rule.name, source })
            };
            let chain = match rule.when {
                // An empty chain matches the call unconditionally.
                When::Always => vec![],
                When::IoctlRequest(requests) => {
                    requests.iter().map(|r| cond(SeccompCmpOp::Eq, *r)).collect::<Result<_, _>>()?
                }
                When::AnyFlag(flags) => flags
                    .iter()
                    .map(|f| {
                        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(*f), *f)
                            .and_then(|c| SeccompRule::new(vec![c]))
                            .map_err(|source| PolicyError::Rule { name: rule.name, source })
                    })
                    .collect::<Result<_, _>>()?,
            };
            by_errno.entry(rule.errno).or_default().insert(rule.nr, chain);
        }
        let mut programs = Vec::new();
        for (i, (errno, map)) in by_errno.into_iter().enumerate() {
            let filter =
                SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(errno as u32), TargetArch::x86_64)
                    .map_err(PolicyError::Compile)?;
            let compiled: seccompiler::BpfProgram = filter.try_into().map_err(PolicyError::Compile)?;
            let mut program: Vec<libc::sock_filter> =
                compiled.into_iter().map(|f| libc::sock_filter { code: f.code, jt: f.jt, jf: f.jf, k: f.k }).collect();
            if i == 0 {
                deny_x32(&mut program)?;
            }
            programs.push(program);
        }
        Ok(Self { programs })
    }

    /// Rules in the policy, for `flick doctor`.
    pub fn describe() -> String {
        let names: Vec<String> = RULES
            .iter()
            .map(|r| match r.when {
                When::Always if r.errno == libc::EPERM => r.name.to_string(),
                When::Always => format!("{} (ENOSYS)", r.name),
                When::IoctlRequest(_) => "ioctl TIOCSTI/TIOCLINUX".into(),
                When::AnyFlag(_) => "clone with namespace flags".into(),
            })
            .collect();
        format!("{} rules, x32 ABI denied, wrong architecture kills: {}", RULES.len(), names.join(", "))
    }
}

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// seccompiler knows syscalls by number only, so it cannot deny the x32
/// range. Three instructions go right after its architecture check (which
/// jumps over its own `kill` to what follows it, so nothing jumps across
/// the insertion): load the number, and return EPERM if the x32 bit is set.
fn deny_x32(program: &mut Vec<libc::sock_filter>) -> Result<(), PolicyError> {
    let arch_check = [
        (BPF_LD_W_ABS, 0, 0, 4),
        (BPF_JEQ_K, 1, 0, seccompiler_audit_arch()),
        (BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    let prefix_ok = program.len() > 3
        && arch_check
            .iter()
            .zip(program.iter())
            .all(|((code, jt, jf, k), f)| f.code == *code && f.jt == *jt && f.jf == *jf && f.k == *k);
    if !prefix_ok {
        return Err(PolicyError::Layout("the program does not start with the architecture check"));
    }
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let guard = [
        libc::sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: BPF_JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        libc::sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: eperm },
    ];
    program.splice(3..3, guard);
    Ok(())
}

const fn seccompiler_audit_arch() -> u32 {
    // AUDIT_ARCH_X86_64: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
    62 | 0x8000_0000 | 0x4000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel does with the programs for one call: a small
    /// classic-BPF interpreter over `struct seccomp_data`, covering the
    /// instructions seccompiler and `deny_x32` emit. Unknown ones panic.
    fn run(programs: &[Vec<libc::sock_filter>], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let mut verdict = libc::SECCOMP_RET_ALLOW;
        for p in programs {
            let (mut pc, mut acc) = (0usize, 0u32);
            let ret = loop {
                let f = p[pc];
                pc += 1;
                match f.code {
                    BPF_LD_W_ABS => {
                        let k = f.k as usize;
                        acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                    }
                    c if c == (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16 => acc &= f.k,
                    c if c == (libc::BPF_JMP | libc::BPF_JA) as u16 => pc += f.k as usize,
                    BPF_JEQ_K | BPF_JGE_K => {
                        let hit = if f.code == BPF_JEQ_K { acc == f.k } else { acc >= f.k };
                        pc += if hit { f.jt } else { f.jf } as usize;
                    }
                    c if c == (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16 => {
                        pc += if acc > f.k { f.jt } else { f.jf } as usize;
                    }
                    BPF_RET_K => break f.k,
                    other => panic!("instruction {other:#x} not modelled"),
                }
            };
            // The strictest action wins (kill < errno < allow, as signed).
            if ((ret & libc::SECCOMP_RET_ACTION_FULL) as i32) < ((verdict & libc::SECCOMP_RET_ACTION_FULL) as i32) {
                verdict = ret;
            }
        }
        verdict
    }

    const X86_64: u32 = seccompiler_audit_arch();
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }

    /// What issue 7 requires, by name: the test fails if a rule is dropped.
    const REQUIRED: &[&str] = &[
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kexec_load",
        "kexec_file_load",
        "bpf",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "keyctl",
        "add_key",
        "request_key",
        "unshare",
        "setns",
        "swapon",
        "swapoff",
        "acct",
        "perf_event_open",
        "userfaultfd",
        "open_by_handle_at",
        "name_to_handle_at",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "clock_settime",
        "settimeofday",
        "sethostname",
        "open_tree",
        "move_mount",
        "fsopen",
        "fsmount",
        "mount_setattr",
        "ioctl",
        "clone",
        "clone3",
    ];

    #[test]
    fn every_required_call_has_a_rule() {
        for name in REQUIRED {
            assert!(RULES.iter().any(|r| r.name == *name), "no rule for {name}");
        }
        let mut nrs: Vec<_> = RULES.iter().map(|r| r.nr).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), RULES.len(), "two rules for one system call");
    }

    #[test]
    fn every_rule_denies_and_nothing_falls_through_to_allow() {
        let p = Policy::compile().unwrap();
        for rule in RULES {
            let args = match rule.when {
                When::Always => [0; 6],
                When::IoctlRequest(r) => [0, r[0], 0, 0, 0, 0],
                When::AnyFlag(f) => [f[0], 0, 0, 0, 0, 0],
            };
            assert_eq!(run(&p.programs, X86_64, rule.nr as u32, args), errno(rule.errno), "{}", rule.name);
        }
    }

    #[test]
    fn terminal_ioctls_are_denied_whatever_the_high_bits_say() {
        let p = Policy::compile().unwrap();
        let ioctl = libc::SYS_ioctl as u32;
        for req in TERMINAL_IOCTLS {
            for fd in [0, 1, 2, 7] {
                assert_eq!(run(&p.programs, X86_64, ioctl, [fd, req, 0, 0, 0, 0]), errno(libc::EPERM));
                assert_eq!(run(&p.programs, X86_64, ioctl, [fd, req | 1 << 32, 0, 0, 0, 0]), errno(libc::EPERM));
            }
        }
        // Ordinary ioctls still work.
        for req in [libc::FIONREAD, libc::TCGETS, libc::FIONBIO] {
            assert_eq!(run(&p.programs, X86_64, ioctl, [1, req, 0, 0, 0, 0]), ALLOW);
        }
    }

    #[test]
    fn clone_is_denied_only_with_namespace_flags() {
        let p = Policy::compile().unwrap();
        let clone = libc::SYS_clone as u32;
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(run(&p.programs, X86_64, clone, [thread, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&p.programs, X86_64, clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), ALLOW);
        for flag in CLONE_NS_FLAGS {
            assert_eq!(run(&p.programs, X86_64, clone, [thread | flag, 0, 0, 0, 0, 0]), errno(libc::EPERM));
        }
    }

    #[test]
    fn x32_calls_are_denied_and_a_foreign_architecture_is_killed() {
        let p = Policy::compile().unwrap();
        for nr in [0, libc::SYS_read as u32, libc::SYS_mount as u32, 512, 547] {
            assert_eq!(run(&p.programs, X86_64, X32_SYSCALL_BIT | nr, [0; 6]), errno(libc::EPERM), "x32 {nr}");
        }
        const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
        assert_eq!(run(&p.programs, AUDIT_ARCH_I386, 3, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        let p = Policy::compile().unwrap();
        for nr in
            [libc::SYS_read, libc::SYS_write, libc::SYS_openat, libc::SYS_mmap, libc::SYS_execve, libc::SYS_exit_group]
        {
            assert_eq!(run(&p.programs, X86_64, nr as u32, [0; 6]), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn a_missing_rule_is_noticed() {
        // The interpreter is what the tests above stand on: check that it
        // reports a policy without `io_uring_setup` as allowing it.
        let fewer: Vec<Rule> = RULES.iter().copied().filter(|r| r.name != "io_uring_setup").collect();
        let p = Policy::compile_rules(&fewer).unwrap();
        assert_eq!(run(&p.programs, X86_64, libc::SYS_io_uring_setup as u32, [0; 6]), ALLOW);
    }
}
