//! The hostile-function suite: functions that try to escape or starve the
//! host. Each attack must be contained, its activation must say what
//! happened, and an ordinary function must keep answering during and after.

mod common;

use std::time::Duration;

use common::{Flick, manifest};

/// An ordinary function, to prove the platform keeps serving.
fn deploy_canary(flick: &Flick) {
    flick.deploy_files(
        "canary",
        &[
            ("flick.toml", &manifest("canary", "python3", "main.handler", "concurrency = 4\n")),
            ("main.py", "def handler(event, context):\n    return {'ok': event.get('n', 0) * 2}\n"),
        ],
    );
}

fn assert_canary_answers(flick: &Flick) {
    let r = flick.invoke("canary", r#"{"n": 21}"#);
    assert_eq!(r.status, 200, "canary failed: {}", r.text());
    assert_eq!(r.json()["ok"], 42);
}

/// Invokes `name` in a thread while checking the canary from this one.
fn attack_while_canary_answers(flick: &Flick, name: &str, body: &str) -> common::Reply {
    std::thread::scope(|s| {
        let attack = s.spawn(|| flick.invoke(name, body));
        std::thread::sleep(Duration::from_millis(300));
        assert_canary_answers(flick);
        let r = attack.join().unwrap();
        assert_canary_answers(flick);
        r
    })
}

/// What an instance sees of itself. A thread started at import shows that
/// every task of the process is checked, not only the one that answers.
const INTROSPECT: &str = r#"
import ctypes, os, socket, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
def status(path):
    return dict((k, v.strip()) for k, v in (l.split(':', 1) for l in open(path).read().splitlines() if ':' in l))
def attempt(call, *args):
    try:
        call(*args)
        return 'allowed'
    except OSError as e:
        return e.errno
def handler(event, context):
    me = status('/proc/self/status')
    libc = ctypes.CDLL(None, use_errno=True)
    mount = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
    mount_errno = ctypes.get_errno()
    unshare = libc.unshare(0x10000000)  # CLONE_NEWUSER
    unshare_errno = ctypes.get_errno()
    tasks = {t: status('/proc/self/task/%s/status' % t) for t in os.listdir('/proc/self/task')}
    return {
        'uid': os.getuid(), 'gid': os.getgid(), 'pid': os.getpid(),
        'no_new_privs': me['NoNewPrivs'], 'seccomp': me['Seccomp'],
        'tasks': {t: {k: s[k] for k in ('Uid', 'Gid', 'CapInh', 'CapPrm', 'CapEff', 'CapAmb', 'CapBnd')} for t, s in tasks.items()},
        'setuid_root': attempt(os.setuid, 0), 'setgid_root': attempt(os.setgid, 0),
        'setresuid_other': attempt(os.setresuid, *[event.get('other') or os.getuid() + 1] * 3),
        'shadow': attempt(open, '/etc/shadow', 'rb'),
        'securebits': libc.prctl(27, 0, 0, 0, 0),  # PR_GET_SECUREBITS
        'hostname': socket.gethostname(), 'procs': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
        'mount': [mount, mount_errno], 'unshare': [unshare, unshare_errno],
        'root': sorted(os.listdir('/')), 'cwd': os.getcwd(),
    }
"#;

const EPERM: i64 = 1;

/// Every task of the instance: no id is 0 and no capability is held, as
/// the kernel reports it (`/proc/<pid>/task/<tid>/status`).
fn assert_no_task_is_privileged(v: &serde_json::Value, sets: &[&str]) {
    let tasks = v["tasks"].as_object().unwrap();
    assert!(!tasks.is_empty(), "{v}");
    for (tid, task) in tasks {
        for ids in ["Uid", "Gid"] {
            let ids: Vec<&str> = task[ids].as_str().unwrap().split_whitespace().collect();
            assert_eq!(ids.len(), 4, "{task}");
            assert!(!ids.contains(&"0"), "task {tid} has a root id: {task}");
        }
        for set in sets {
            assert_eq!(task[set], "0000000000000000", "task {tid} holds {set}: {task}");
        }
    }
}

fn assert_unprivileged_filtered_and_alone(v: &serde_json::Value) {
    assert_ne!(v["uid"], 0, "runs as root: {v}");
    assert_ne!(v["gid"], 0);
    assert_no_task_is_privileged(v, &["CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd"]);
    assert!(v["tasks"].as_object().unwrap().len() >= 2, "the import's thread is among the tasks: {v}");
    assert_eq!(v["setuid_root"], EPERM, "{v}");
    assert_eq!(v["setgid_root"], EPERM, "{v}");
    assert_eq!(v["setresuid_other"], EPERM, "{v}");
    assert_ne!(v["shadow"], "allowed", "/etc/shadow is readable: {v}");
    // Locked: uid 0 would gain nothing at exec (NOROOT), and a uid change
    // always clears the capability sets (no NO_SETUID_FIXUP, no KEEP_CAPS).
    let bits = v["securebits"].as_i64().unwrap();
    let (noroot, no_fixup, keep_caps) = (1, 1 << 2, 1 << 4);
    assert_eq!(bits & (noroot | no_fixup | keep_caps), noroot, "securebits {bits:#x}");
    for locked in [noroot, no_fixup, keep_caps] {
        assert_ne!(bits & (locked << 1), 0, "securebit {locked:#x} is not locked: {bits:#x}");
    }
    assert_eq!(v["no_new_privs"], "1");
    assert_eq!(v["seccomp"], "2");
    assert_eq!(v["hostname"], "flick");
    assert_eq!(v["pid"], 1, "own pid namespace");
    assert!(v["procs"].as_array().unwrap().len() <= 3, "sees other processes: {}", v["procs"]);
    assert_eq!(v["mount"], serde_json::json!([-1, 1]), "mount must fail with EPERM");
    assert_eq!(v["unshare"], serde_json::json!([-1, 1]), "unshare must fail with EPERM");
    assert_eq!(v["cwd"], "/var/task");
    let root: Vec<&str> = v["root"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    for hidden in ["home", "srv", "work", "mnt", "boot", "sys"] {
        assert!(!root.contains(&hidden), "/{hidden} is visible: {root:?}");
    }
}

/// Invokes `name` and checks whether its instance came from a stem cell.
fn invoke_from(flick: &Flick, name: &str, prewarmed: bool) -> serde_json::Value {
    let r = flick.invoke(name, "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], prewarmed, "{name}");
    r.json()
}

/// Both ways an instance starts, each forced: a cold start drops
/// everything in the sandbox before exec; a stem cell (uid 0 with
/// CAP_SETUID/CAP_SETGID until specialised) drops it in its bootstrap.
#[test]
fn an_instance_is_unprivileged_filtered_and_alone() {
    let cold = Flick::start_with(&[], Some("stem_cells = 0\n"));
    cold.deploy_py("introspect", "", INTROSPECT);
    assert_unprivileged_filtered_and_alone(&invoke_from(&cold, "introspect", false));

    let warm = Flick::start();
    // Stem cells of a runtime start with its first function.
    warm.deploy_py("introspect", "", INTROSPECT);
    assert!(warm.wait_until(Duration::from_secs(20), || stem_cells(&warm, "python3/none") >= 1), "a python stem");
    assert_unprivileged_filtered_and_alone(&invoke_from(&warm, "introspect", true));
}

/// Node's stem has V8's and libuv's threads running when it switches uid:
/// every one of them must have left root and hold nothing. (Node cannot
/// empty its inheritable set; the bounding set is empty, which is what
/// would let anything grow from it at exec.)
#[test]
fn every_thread_of_a_specialised_node_stem_is_unprivileged() {
    let flick = Flick::start();
    flick.deploy_files(
        "threads",
        &[
            ("flick.toml", &manifest("threads", "node", "index.handler", "")),
            (
                "index.js",
                r#"
const fs = require('fs');
function status(path) {
  const out = {};
  for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}
function attempt(f) { try { f(); return 'allowed'; } catch (e) { return e.code; } }
exports.handler = async () => {
  const tasks = {};
  for (const t of fs.readdirSync('/proc/self/task')) tasks[t] = status(`/proc/self/task/${t}/status`);
  return {
    uid: process.getuid(), tasks,
    setuid_root: attempt(() => process.setuid(0)), setgid_root: attempt(() => process.setgid(0)),
  };
};
"#,
            ),
        ],
    );
    // Stem cells of a runtime start with its first function.
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "node/none") >= 1), "a node stem");
    let v = invoke_from(&flick, "threads", true);
    assert!(v["tasks"].as_object().unwrap().len() > 1, "node runs threads: {v}");
    assert_no_task_is_privileged(&v, &["CapPrm", "CapEff", "CapAmb", "CapBnd"]);
    assert_eq!(v["setuid_root"], "EPERM", "{v}");
    assert_eq!(v["setgid_root"], "EPERM", "{v}");
}

/// A function past the end of the uid range runs as the shared uid. Its
/// stem cell must be told that uid too: it once kept uid 0 and
/// CAP_SETUID/CAP_SETGID for good, and could become any function's uid.
#[test]
fn a_function_past_the_uid_range_never_keeps_a_stem_cells_root() {
    let flick = Flick::start_with(&[], Some("uid_range = [300000, 300000]\n"));
    flick.deploy_py("first", "", INTROSPECT);
    flick.deploy_py("second", "", INTROSPECT);
    let first = flick.invoke("first", "{}").json();
    assert_eq!(first["uid"], 300000, "the range's only uid: {first}");
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1), "a python stem");
    let second = invoke_from(&flick, "second", true);
    assert_eq!(second["uid"], 65534, "the shared uid: {second}");
    assert_unprivileged_filtered_and_alone(&second);
    // What the stem's capabilities were for: becoming another function.
    let r = flick.invoke("second", r#"{"other": 300000}"#);
    assert_eq!(r.json()["setresuid_other"], EPERM, "{}", r.text());
}

#[test]
fn secrets_other_code_and_the_host_are_out_of_reach() {
    let flick = Flick::start();
    deploy_canary(&flick);
    flick.deploy_py(
        "snoop",
        "",
        r#"
import os
def attempt(path):
    try:
        with open(path, 'rb') as f:
            return 'READ %d bytes' % len(f.read())
    except OSError as e:
        return type(e).__name__
def handler(event, context):
    return {p: attempt(p) for p in event['paths']}
"#,
    );
    let data = flick.data_dir().canonicalize().unwrap();
    let canary_code = std::fs::read_dir(data.join("code"))
        .unwrap()
        .map(|e| e.unwrap().path().join("main.py"))
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("'ok'")))
        .expect("canary code on disk");
    let paths = [
        data.join("admin.key").display().to_string(),
        data.join("flick.db").display().to_string(),
        canary_code.display().to_string(),
        "/etc/shadow".into(),
        "/root/.bash_history".into(),
        "/proc/1/root/etc/shadow".into(),
    ];
    let body = serde_json::json!({ "paths": paths }).to_string();
    let r = flick.invoke("snoop", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for p in &paths {
        let outcome = v[p].as_str().unwrap();
        assert!(!outcome.starts_with("READ"), "{p} was readable from inside the sandbox");
    }
    // The same kind of read works on the function's own code: the probe can succeed.
    let own = flick.invoke("snoop", r#"{"paths": ["/var/task/main.py"]}"#).json();
    assert!(own["/var/task/main.py"].as_str().unwrap().starts_with("READ"), "{own}");
    assert!(!flick.invoke("snoop", &body).text().contains(&flick.key));
}

#[test]
fn code_is_read_only_and_tmp_is_private_and_capped() {
    let flick = Flick::start();
    flick.deploy_py(
        "writer",
        "tmp_size = \"8MiB\"\n",
        r#"
import errno, os
def try_write(path, size):
    try:
        with open(path, 'wb') as f:
            chunk = b'x' * (1 << 20)
            for _ in range(size):
                f.write(chunk)
        return 'wrote'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def handler(event, context):
    out = {
        'code': try_write('/var/task/evil.py', 1),
        'root': try_write('/evil', 1),
        'tmp_small': try_write('/tmp/small', 1),
        'tmp_huge': try_write('/tmp/huge', 100),
    }
    if os.path.exists('/tmp/huge'):
        os.remove('/tmp/huge')
    return out
"#,
    );
    let v = flick.invoke("writer", "{}").json();
    assert_eq!(v["code"], "EROFS", "{v}");
    assert_eq!(v["root"], "EROFS", "{v}");
    assert_eq!(v["tmp_small"], "wrote", "{v}");
    assert_eq!(v["tmp_huge"], "ENOSPC", "{v}");
    // Nothing reached the host's copy of the code.
    let data = flick.data_dir();
    let leaked = std::fs::read_dir(data.join("code")).unwrap().any(|e| e.unwrap().path().join("evil.py").exists());
    assert!(!leaked);
}

#[test]
fn a_fork_bomb_is_contained() {
    let flick = Flick::start();
    deploy_canary(&flick);
    flick.deploy_py(
        "forkbomb",
        "timeout = \"3s\"\n",
        r#"
import os
def handler(event, context):
    while True:
        try:
            os.fork()
        except OSError:
            pass
"#,
    );
    let r = attack_while_canary_answers(&flick, "forkbomb", "{}");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(flick.activation(&r.activation_id())["status"], "timeout");
    // Every forked process died with the instance.
    assert!(flick.wait_until(Duration::from_secs(10), || flick.instances("forkbomb") == 0));
}

#[test]
fn memory_over_the_limit_is_out_of_memory() {
    let flick = Flick::start();
    deploy_canary(&flick);
    flick.deploy_py(
        "hog",
        "memory = \"64MiB\"\n",
        r#"
def handler(event, context):
    if event.get('hog'):
        blocks = [bytearray(64 << 20) for _ in range(10)]
        return {'allocated': len(blocks)}
    return {'fine': True}
"#,
    );
    let r = attack_while_canary_answers(&flick, "hog", r#"{"hog": true}"#);
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Runtime.OutOfMemory");
    let a = flick.activation(&r.activation_id());
    assert_eq!(a["status"], "out_of_memory");
    // The function itself recovers on a fresh instance.
    let r = flick.invoke("hog", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["fine"], true);
}

#[test]
fn an_infinite_loop_times_out_and_the_host_keeps_serving() {
    let flick = Flick::start();
    deploy_canary(&flick);
    flick.deploy_py("spin", "timeout = \"2s\"\n", "def handler(event, context):\n    while True:\n        pass\n");
    let r = attack_while_canary_answers(&flick, "spin", "{}");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(flick.activation(&r.activation_id())["status"], "timeout");
}

#[test]
fn signals_cannot_reach_outside_the_sandbox() {
    let flick = Flick::start();
    deploy_canary(&flick);
    flick.deploy_py(
        "killer",
        "",
        r#"
import os, signal
def handler(event, context):
    out = {}
    for pid in event['pids']:
        try:
            os.kill(pid, signal.SIGKILL)
            out[str(pid)] = 'killed'
        except OSError as e:
            out[str(pid)] = type(e).__name__
    return out
"#,
    );
    let pid = flick.pid();
    let body = serde_json::json!({ "pids": [pid, std::process::id(), 2] }).to_string();
    let r = flick.invoke("killer", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v[pid.to_string()], "ProcessLookupError", "{v}");
    assert_eq!(v[std::process::id().to_string()], "ProcessLookupError", "{v}");
    // kill(-1) only reaches its own namespace: the instance dies, flick does not.
    flick.deploy_py("suicide", "", "import os\ndef handler(event, context):\n    os.kill(-1, 9)\n");
    let r = flick.invoke("suicide", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(flick.get_anon("/healthz").status, 200);
    assert_canary_answers(&flick);
}

#[test]
fn network_none_reaches_nothing_and_host_does() {
    let flick = Flick::start();
    let code = r#"
import socket
def handler(event, context):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(('127.0.0.1', event['port']))
        return 'connected'
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
"#;
    flick.deploy_py("offline", "", code);
    flick.deploy_py("online", "network = \"host\"\n", code);
    let port: u16 = flick.base.rsplit(':').next().unwrap().parse().unwrap();
    let body = format!("{{\"port\": {port}}}");
    assert_eq!(flick.invoke("offline", &body).json(), "ConnectionRefusedError");
    assert_eq!(flick.invoke("online", &body).json(), "connected", "control: host network reaches flick");
}

#[test]
fn gigabytes_of_output_are_capped() {
    let flick = Flick::start();
    deploy_canary(&flick);
    // Output over the log budget drains at 64 MiB/s: the gigabyte takes ~16 s.
    flick.deploy_py(
        "chatty",
        "timeout = \"60s\"\n",
        r#"
import sys
def handler(event, context):
    line = 'x' * 1023 + '\n'
    block = line * 1024
    for _ in range(1024):
        sys.stdout.write(block)
    sys.stdout.flush()
    return 'done'
"#,
    );
    let r = attack_while_canary_answers(&flick, "chatty", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let a = flick.activation(&r.activation_id());
    assert_eq!(a["status"], "success");
    assert_eq!(a["logs_truncated"], true);
    assert!(a["logs"].as_array().unwrap().len() <= 1000);
    // flick did not buffer the gigabyte.
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", flick.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").parse().unwrap()))
        .unwrap();
    assert!(rss_kib < 300 * 1024, "flick RSS grew to {rss_kib} KiB");
}

/// Instance cgroups named after a flick pid, anywhere under the pids hierarchy.
fn instance_cgroups(flick_pid: u32) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, prefix: &str, depth: usize, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                out.push(e.path());
            } else if depth > 0 {
                walk(&e.path(), prefix, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    for root in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
        walk(std::path::Path::new(root), &format!("i{flick_pid}-"), 4, &mut out);
    }
    out
}

/// The CPU policy, as the kernel holds it in each instance's cgroup: by
/// default a weight that follows the function's memory and no quota (so
/// nothing throttles a burst); `cpu_limit = "hard"` adds the quota of
/// `instance_cpus`.
#[test]
fn instances_get_cpu_weights_by_default_and_a_quota_when_asked() {
    let hard = "cpu_limit = \"hard\"\ninstance_cpus = 0.5\n";
    for (config, quota_v1, max_v2) in [(None, "-1", "max 100000"), (Some(hard), "50000", "50000 100000")] {
        let flick = Flick::start_with(&[], config);
        flick.deploy_py("cpu", "memory = \"512MiB\"\n", "def handler(event, context):\n    return 'hi'\n");
        assert_eq!(flick.invoke("cpu", "{}").status, 200);
        let read = |dir: &std::path::Path, file: &str| {
            std::fs::read_to_string(dir.join(file)).map(|t| t.trim().to_string()).unwrap_or_default()
        };
        // v1: the cpu controller's directories; v2: the unified ones.
        let cpu_dirs: Vec<_> = instance_cgroups(flick.pid())
            .into_iter()
            .filter(|c| c.join("cpu.cfs_quota_us").exists() || c.join("cpu.max").exists())
            .collect();
        assert!(!cpu_dirs.is_empty(), "no CPU cgroup for the instance ({config:?})");
        let mut weights = Vec::new();
        for dir in &cpu_dirs {
            if dir.join("cpu.max").exists() {
                assert_eq!(read(dir, "cpu.max"), max_v2, "{} ({config:?})", dir.display());
                weights.push(read(dir, "cpu.weight"));
            } else {
                assert_eq!(read(dir, "cpu.cfs_quota_us"), quota_v1, "{} ({config:?})", dir.display());
                weights.push(read(dir, "cpu.shares"));
            }
        }
        // The instance came from a stem cell: it weighs by its own memory.
        assert!(weights.iter().any(|w| w == "2048" || w == "200"), "512 MiB weighs double: {weights:?}");
    }
}

#[test]
fn nothing_is_left_after_sigkill_and_restart() {
    let flick = Flick::start();
    flick.deploy_py("warm", "", "def handler(event, context):\n    return 'hi'\n");
    assert_eq!(flick.invoke("warm", "{}").status, 200);
    let pid = flick.pid();
    let cgroups = instance_cgroups(pid);
    assert!(!cgroups.is_empty(), "expected a cgroup for the warm instance");
    let members: Vec<String> = cgroups
        .iter()
        .flat_map(|c| {
            std::fs::read_to_string(c.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!members.is_empty(), "the warm instance runs in its cgroup");

    let dir = flick.kill9();
    // The instance dies with flick (parent-death signal)...
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        members.iter().all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    });
    assert!(gone, "instance processes outlived flick: {members:?}");
    // ...and the restarted flick sweeps the cgroups the killed one left.
    let flick = Flick::start_in(dir, &[]);
    assert!(cgroups.iter().all(|c| !c.exists()), "cgroups left behind: {cgroups:?}");
    assert_eq!(flick.invoke("warm", "{}").status, 200);
}

#[test]
fn doctor_reports_a_complete_sandbox_here() {
    let out = std::process::Command::new(common::BIN).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "flick doctor failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    for feature in ["namespaces", "cgroups", "seccomp", "sandboxed probe", "session", "descriptors", "uid scheme"] {
        assert!(text.lines().any(|l| l.starts_with("ok") && l.contains(feature)), "{feature} not ok:\n{text}");
    }
    assert!(text.contains("sandbox: complete"), "{text}");
    // The policy is named, not just counted.
    for rule in ["io_uring_setup", "TIOCSTI", "clone3", "x32", "one uid per function"] {
        assert!(text.contains(rule), "{rule} not reported:\n{text}");
    }
}

#[test]
fn doctor_sees_descriptors_a_sandbox_would_leak() {
    // The doctor's own probe runs under the same rules: started with an
    // extra descriptor, it still reports only stdio inside the sandbox.
    let out =
        std::process::Command::new("bash").args(["-c", r#"exec 7</; exec "$0" doctor"#, common::BIN]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("descriptors")), "{text}");
}

#[test]
fn running_unsandboxed_takes_a_loud_flag() {
    let flick = Flick::start_with(&["--insecure-no-sandbox"], None);
    flick.deploy_py("exposed", "", "import os\ndef handler(event, context):\n    return {'uid': os.getuid()}\n");
    let r = flick.invoke("exposed", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["uid"], 0, "without the sandbox a function runs as flick's own user");
}

#[test]
fn a_clean_stop_leaves_no_cgroups_behind() {
    let mut flick = Flick::start();
    flick.deploy_py("warm", "", "def handler(event, context):\n    return 'hi'\n");
    assert_eq!(flick.invoke("warm", "{}").status, 200);
    let pid = flick.pid();
    let cgroups = instance_cgroups(pid);
    assert!(!cgroups.is_empty(), "expected cgroups for the instance and the stem cells");
    let scopes: Vec<_> = cgroups.iter().filter_map(|c| c.parent().map(|p| p.to_path_buf())).collect();
    assert!(flick.stop().success());
    assert!(cgroups.iter().all(|c| !c.exists()), "instance cgroups left behind: {cgroups:?}");
    assert!(scopes.iter().all(|s| !s.exists()), "scope cgroups left behind: {scopes:?}");
}

/// Runs `argv[2:]` on a new pseudo-terminal as its controlling terminal
/// (the way `flick up` runs in the foreground of an interactive shell),
/// with the terminal also left open on fd 7, and copies everything the
/// terminal shows (echoed input included) to the file `argv[1]`.
const PTY_WRAPPER: &str = r#"
import os, pty, signal, sys
pid, master = pty.fork()
if pid == 0:
    os.dup2(os.open('/dev/tty', os.O_RDWR), 7)
    os.execv(sys.argv[2], sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
with open(sys.argv[1], 'ab', buffering=0) as log:
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        log.write(data)
_, status = os.waitpid(pid, 0)
sys.exit(1 if status else 0)
"#;

#[test]
fn the_operators_terminal_is_out_of_reach() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("terminal.py");
    std::fs::write(&wrapper, PTY_WRAPPER).unwrap();
    let screen = dir.path().join("screen.log");
    let (wrapper, screen_arg) = (wrapper.display().to_string(), screen.display().to_string());
    let mut flick = Flick::start_in_via(dir, &[], &["python3", &wrapper, &screen_arg]);
    flick.deploy_py(
        "typist",
        "",
        r#"
import ctypes, errno, fcntl, os, termios
MARK = 'echo flick-tiocsti-typed\n'
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))
def handler(event, context):
    out = {'open': {}, 'typed': [], 'refused': {}}
    fds = {0, 1, 2}
    for path in ['/dev/tty', '/dev/console', '/dev/ptmx', '/dev/pts/0', '/dev/tty0', '/dev/tty1']:
        try:
            fds.add(os.open(path, os.O_RDWR | os.O_NOCTTY))
            out['open'][path] = 'opened'
        except OSError as e:
            out['open'][path] = name(e)
    fds |= {int(n) for n in os.listdir('/proc/self/fd')}
    libc = ctypes.CDLL(None, use_errno=True)
    for fd in sorted(fds):
        for request in [termios.TIOCSTI, termios.TIOCSTI | (1 << 32)]:
            for ch in MARK.encode():
                ret = libc.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(ctypes.c_char(ch)))
                if ret == 0:
                    out['typed'].append(fd)
                else:
                    out['refused'][f'{fd}/{request:#x}'] = errno.errorcode.get(ctypes.get_errno(), '?')
                    break
        try:
            libc.ioctl(fd, ctypes.c_ulong(termios.TIOCGPGRP), ctypes.byref(ctypes.c_int()))
        except Exception:
            pass
    return out
"#,
    );
    let r = flick.invoke("typist", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for (path, outcome) in v["open"].as_object().unwrap() {
        assert_ne!(outcome, "opened", "{path} opened inside the sandbox: {v}");
    }
    assert_eq!(v["typed"], serde_json::json!([]), "typed into a terminal: {v}");
    // Every attempt was refused, on every descriptor the function had.
    for (fd, outcome) in v["refused"].as_object().unwrap() {
        assert!(outcome == "EPERM" || outcome == "ENOTTY" || outcome == "EBADF", "{fd}: {outcome}");
    }
    assert!(v["refused"].as_object().unwrap().len() >= 6, "{v}");
    // Nothing reached the terminal: the wrapper has copied all it showed
    // once flick is gone.
    assert!(flick.stop().success());
    let shown = String::from_utf8_lossy(&std::fs::read(&screen).unwrap()).into_owned();
    assert!(!shown.contains("flick-tiocsti-typed"), "typed into flick's terminal:\n{shown}");
}

#[test]
fn inherited_descriptors_do_not_reach_any_runtime() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "stem_cells = 0\n").unwrap();
    // flick started with its own data dir open on fd 7, as a careless
    // shell or supervisor might (the directory holds admin.key and flick.db).
    let data = dir.path().canonicalize().unwrap().display().to_string();
    let flick = Flick::start_in_via(dir, &[], &["bash", "-c", r#"exec 7<"$0"; exec "$@""#, &data]);
    let python = r#"
import os
def handler(event, context):
    out = {}
    for n in range(64):
        try:
            out[n] = os.readlink('/proc/self/fd/%d' % n)
        except OSError:
            continue
        try:
            out['%d:key' % n] = open('/proc/self/fd/%d/admin.key' % n).read()
        except OSError as e:
            pass
    return out
"#;
    flick.deploy_py("py-fds", "", python);
    flick.deploy_files(
        "node-fds",
        &[
            ("flick.toml", &manifest("node-fds", "node", "index.handler", "")),
            (
                "index.js",
                r#"
const fs = require('fs');
exports.handler = async () => {
  const out = {};
  for (let n = 0; n < 64; n++) {
    try { out[n] = fs.readlinkSync(`/proc/self/fd/${n}`); } catch (e) { continue; }
    try { out[`${n}:key`] = fs.readFileSync(`/proc/self/fd/${n}/admin.key`, 'utf8'); } catch (e) {}
  }
  return out;
};
"#,
            ),
        ],
    );
    flick.deploy_files(
        "exec-fds",
        &[
            ("flick.toml", &manifest("exec-fds", "exec", "sh ./run.sh", "")),
            ("run.sh", "for n in $(seq 0 63); do l=$(readlink /proc/self/fd/$n) && echo \"$n $l\"; cat /proc/self/fd/$n/admin.key 2>/dev/null && echo \"$n:key\"; done; true\n"),
        ],
    );
    for name in ["py-fds", "node-fds", "exec-fds"] {
        let r = flick.invoke(name, "{}");
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let text = r.text();
        // The control: the probe does see descriptors (its stdio at least).
        assert!(text.contains("pipe:") || text.contains("/dev/null"), "{name}: {text}");
        assert!(!text.contains(&data), "{name} holds a descriptor of the data dir: {text}");
        assert!(!text.contains(":key"), "{name} read admin.key through an inherited descriptor: {text}");
        assert!(!text.contains(&flick.key), "{name}: {text}");
    }
}

#[test]
fn every_denied_system_call_fails_with_its_errno() {
    let flick = Flick::start();
    // x86_64 numbers and harmless arguments. For the calls marked `*`,
    // the unfiltered kernel gives another answer (0, EBADF, EFAULT,
    // EINVAL, ENOTTY...) to this unprivileged process, so only the filter
    // can make it EPERM; the others need a capability anyway.
    flick.deploy_py(
        "syscalls",
        "",
        r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(256)
P = ctypes.addressof(buf)
NULL = 0
CALLS = {
    'io_uring_setup*': (425, 1, P), 'io_uring_enter*': (426, -1, 0, 0, 0, NULL, 0),
    'io_uring_register*': (427, -1, 0, NULL, 0), 'userfaultfd*': (323, 1),
    'perf_event_open*': (298, NULL, 0, -1, -1, 0), 'name_to_handle_at*': (303, -100, NULL, NULL, NULL, 0),
    'open_by_handle_at': (304, -1, NULL, 0), 'ptrace*': (101, 99999, 0, 0, 0),
    'process_vm_readv*': (310, os.getpid(), NULL, 0, NULL, 0, 0),
    'process_vm_writev*': (311, os.getpid(), NULL, 0, NULL, 0, 0),
    'keyctl*': (250, 0, -2, 0), 'add_key*': (248, NULL, NULL, NULL, 0, 0), 'request_key*': (249, NULL, NULL, NULL, 0),
    'unshare*': (272, 0), 'setns*': (308, -1, 0), 'bpf': (321, -1, NULL, 0),
    'mount': (165, NULL, NULL, NULL, 0, NULL), 'umount2': (166, NULL, 0), 'pivot_root': (155, NULL, NULL),
    'chroot*': (161, NULL), 'kexec_load': (246, 0, 0, NULL, 0), 'kexec_file_load': (320, -1, -1, 0, NULL, 0),
    'init_module': (175, NULL, 0, NULL), 'finit_module': (313, -1, NULL, 0), 'delete_module': (176, NULL, 0),
    'reboot': (169, 0, 0, 0, NULL), 'swapon': (167, NULL, 0), 'swapoff': (168, NULL), 'acct': (163, NULL),
    'clock_settime*': (227, 0, NULL), 'clock_adjtime*': (305, 0, NULL), 'settimeofday*': (164, NULL, NULL),
    'adjtimex*': (159, NULL), 'syslog': (103, 10, NULL, 0), 'quotactl': (179, 0, NULL, 0, NULL),
    'lookup_dcookie*': (212, 0, NULL, 0), 'iopl*': (172, 0), 'ioperm*': (173, 0, 0, 0), 'vhangup': (153,),
    'sethostname': (170, NULL, 0), 'setdomainname': (171, NULL, 0),
    'open_tree*': (428, -1, NULL, 0), 'move_mount': (429, -1, NULL, -1, NULL, 0), 'fsopen': (430, NULL, 0),
    'fsconfig*': (431, -1, 0, NULL, NULL, 0), 'fsmount': (432, -1, 0, 0), 'fspick': (433, -1, NULL, 0),
    'mount_setattr': (442, -1, NULL, 0, NULL, 0),
    'ioctl TIOCSTI*': (16, 0, 0x5412, P), 'ioctl TIOCSTI high bits*': (16, 0, 0x5412 | 1 << 32, P),
    'ioctl TIOCLINUX*': (16, 0, 0x541C, P),
    'clone CLONE_NEWUSER*': (56, 0x10000000 | 0x10000 | 0x800 | 0x100, NULL, NULL, NULL, 0),
    'clone CLONE_NEWPID*': (56, 0x20000000 | 0x10000 | 0x800 | 0x100, NULL, NULL, NULL, 0),
    'clone CLONE_NEWNS*': (56, 0x20000 | 0x200, NULL, NULL, NULL, 0),
    'clone CLONE_NEWNET': (56, 0x40000000 | 0x10000 | 0x800 | 0x100, NULL, NULL, NULL, 0),
    'clone3*': (435, NULL, 0),
    'x32 getpid*': (0x40000000 | 39,),
}
def handler(event, context):
    out = {}
    for name, (nr, *args) in CALLS.items():
        ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        out[name] = 'returned %d' % ret if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), '?')
    # The control: an allowed call still works under the same filter.
    out['getpid (allowed)'] = libc.syscall(ctypes.c_long(39))
    return out
"#,
    );
    let r = flick.invoke("syscalls", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let results = v.as_object().unwrap();
    assert_eq!(v["getpid (allowed)"], 1, "{v}");
    let mut wrong = Vec::new();
    for (name, outcome) in results {
        let expected = if name.starts_with("clone3") { "ENOSYS" } else { "EPERM" };
        if name != "getpid (allowed)" && outcome != expected {
            wrong.push(format!("{name}: {outcome} (want {expected})"));
        }
    }
    assert!(wrong.is_empty(), "not denied:\n{}", wrong.join("\n"));
    assert!(results.len() > 50, "{v}");
}

#[test]
fn a_node_binary_outside_the_system_dirs_shares_only_itself() {
    // node as ~/bin/node with the data dir in the same home: the binary's
    // grandparent is the home directory, and must not be mounted. (Not
    // under /tmp, which every sandbox has its own of.)
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let home = dir.path().canonicalize().unwrap();
    let node = home.join("bin/node");
    std::fs::create_dir_all(node.parent().unwrap()).unwrap();
    let real = std::fs::canonicalize(common::which("node").expect("node on PATH")).unwrap();
    if std::fs::hard_link(&real, &node).is_err() {
        std::fs::copy(&real, &node).unwrap();
    }
    std::fs::write(home.join("config.toml"), format!("node = \"{}\"\n", node.display())).unwrap();
    std::fs::write(home.join("private.txt"), "the operator's file").unwrap();
    let flick = Flick::start_in(dir, &[]);
    flick.deploy_files(
        "peek",
        &[
            ("flick.toml", &manifest("peek", "node", "index.handler", "")),
            (
                "index.js",
                r#"
const fs = require('fs');
exports.handler = async (event) => {
  const out = { execPath: process.execPath };
  for (const p of event.paths) {
    try { out[p] = 'READ ' + fs.readFileSync(p, 'utf8').length; } catch (e) { out[p] = e.code; }
  }
  try { out.listing = fs.readdirSync(event.home); } catch (e) { out.listing = e.code; }
  return out;
};
"#,
            ),
        ],
    );
    let paths = [home.join("private.txt"), home.join("admin.key"), home.join("flick.db")];
    let body = serde_json::json!({ "paths": paths, "home": home }).to_string();
    let r = flick.invoke("peek", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // The control: node itself ran, from the configured binary.
    assert_eq!(v["execPath"], node.display().to_string(), "{v}");
    for p in &paths {
        let outcome = v[p.display().to_string()].as_str().unwrap();
        assert!(!outcome.starts_with("READ"), "{} readable inside the sandbox: {v}", p.display());
    }
    // Only the way to the binary exists there.
    assert_eq!(v["listing"], serde_json::json!(["bin"]), "the home directory is visible: {v}");
}

fn stem_cells(flick: &Flick, kind: &str) -> u64 {
    flick.get("/v1/instances").json()["stem_cells"][kind].as_u64().unwrap_or(0)
}

#[test]
fn each_function_has_its_own_uid_and_its_own_per_user_limits() {
    let flick = Flick::start();
    let identity = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
held = []
def who():
    status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
    return {'uid': os.getuid(), 'gid': os.getgid(), 'euid': os.geteuid(), 'groups': os.getgroups(),
            'cap_prm': status['CapPrm'].strip(), 'cap_eff': status['CapEff'].strip()}
def handler(event, context):
    out = who()
    # inotify instances are counted per user (fs.inotify.max_user_instances).
    while event.get('hoard'):
        fd = libc.inotify_init1(0)
        if fd < 0:
            out['stopped_by'] = errno.errorcode.get(ctypes.get_errno(), '?')
            break
        held.append(fd)
    fd = libc.inotify_init1(0)
    out['one_more'] = 'ok' if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), '?')
    if fd >= 0:
        os.close(fd)
    out['held'] = len(held)
    return out
"#;
    // Both python functions start from stem cells (the stem's bootstrap
    // switches uid when specialised); node and exec too.
    flick.deploy_py("hoarder", "", identity);
    assert!(flick.wait_until(Duration::from_secs(30), || stem_cells(&flick, "python3/none") >= 1), "python stem");
    let hoarder = flick.invoke("hoarder", r#"{"hoard": true}"#);
    assert_eq!(hoarder.status, 200, "{}", hoarder.text());
    let hoarder_prewarmed = flick.activation(&hoarder.activation_id())["prewarmed"].clone();
    let hoarder = hoarder.json();
    assert_eq!(hoarder["stopped_by"], "EMFILE", "{hoarder}");
    assert_eq!(hoarder["one_more"], "EMFILE", "the hoarder used up its own inotify instances: {hoarder}");
    assert!(hoarder["held"].as_u64().unwrap() > 0, "{hoarder}");

    flick.deploy_py("watcher", "", identity);
    assert!(flick.wait_until(Duration::from_secs(30), || stem_cells(&flick, "python3/none") >= 1), "python stem");
    let watcher = flick.invoke("watcher", "{}");
    assert_eq!(watcher.status, 200, "{}", watcher.text());
    let watcher_prewarmed = flick.activation(&watcher.activation_id())["prewarmed"].clone();
    let watcher = watcher.json();
    // The hoarder still holds its instances (warm), and the watcher is not starved.
    assert_eq!(watcher["one_more"], "ok", "starved by another function's per-user limit: {watcher}");
    assert_eq!(hoarder_prewarmed, true, "the stem path is what this covers");
    assert_eq!(watcher_prewarmed, true);

    flick.deploy_files(
        "node-id",
        &[
            ("flick.toml", &manifest("node-id", "node", "index.handler", "")),
            (
                "index.js",
                r#"
const fs = require('fs');
exports.handler = async () => {
  const status = Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').split('\n')
    .filter((l) => l.includes(':')).map((l) => [l.split(':')[0], l.split(':')[1].trim()]));
  return { uid: process.getuid(), gid: process.getgid(), euid: process.geteuid(), groups: process.getgroups(),
           cap_prm: status.CapPrm, cap_eff: status.CapEff };
};
"#,
            ),
        ],
    );
    flick.deploy_files(
        "exec-id",
        &[
            ("flick.toml", &manifest("exec-id", "exec", "sh ./run.sh", "")),
            ("run.sh", "echo \"$(id -u) $(id -g) $(grep CapPrm /proc/self/status | cut -f2) $(grep CapEff /proc/self/status | cut -f2)\"\n"),
        ],
    );
    let node = flick.invoke("node-id", "{}").json();
    let exec_reply = flick.invoke("exec-id", "");
    assert_eq!(exec_reply.status, 200, "{}", exec_reply.text());
    let exec: Vec<String> = exec_reply.text().split_whitespace().map(String::from).collect();
    let exec = serde_json::json!({
        "uid": exec[0].parse::<u64>().unwrap(), "gid": exec[1].parse::<u64>().unwrap(),
        "euid": exec[0].parse::<u64>().unwrap(), "groups": [], "cap_prm": exec[2], "cap_eff": exec[3],
    });
    let all = [&hoarder, &watcher, &node, &exec];
    for v in all {
        let uid = v["uid"].as_u64().unwrap();
        assert!((200_000..=265_535).contains(&uid), "uid outside the default range: {v}");
        assert_eq!(v["gid"], v["uid"], "{v}");
        assert_eq!(v["euid"], v["uid"], "{v}");
        // (node lists the effective gid among the groups.)
        assert!(v["groups"].as_array().unwrap().iter().all(|g| *g == v["gid"]), "supplementary groups: {v}");
        assert_eq!(v["cap_prm"], "0000000000000000", "a stem's capabilities survived: {v}");
        assert_eq!(v["cap_eff"], "0000000000000000", "{v}");
    }
    let mut uids: Vec<u64> = all.iter().map(|v| v["uid"].as_u64().unwrap()).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 4, "functions share uids: {all:?}");
    // The same function keeps its uid on its next instance.
    flick.deploy_py("hoarder", "timeout = \"5s\"\n", identity);
    assert_eq!(flick.invoke("hoarder", "{}").json()["uid"], hoarder["uid"]);
}
