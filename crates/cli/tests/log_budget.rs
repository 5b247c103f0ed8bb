//! Log floods: flick splits instances' output into lines itself, outside
//! every cgroup, so that work is bounded per instance. A function flooding
//! its output gets it dropped (and is told so on its activation) and slows
//! only itself.

mod common;

use std::time::{Duration, Instant};

use common::Flick;

/// CPU time flick itself has used so far (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let per_sec: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    ticks as f64 / per_sec
}

#[test]
fn a_function_flooding_its_output_slows_only_itself() {
    let flick = Flick::start();
    // Newlines in large writes: the cheapest output to produce and, split
    // line by line, the dearest for flick to read.
    flick.deploy_py(
        "flood",
        "timeout = \"60s\"\n",
        "import os, time\n\
         def handler(event, context):\n    \
             block = b'\\n' * 65536\n    \
             end = time.time() + 4\n    \
             writes = 0\n    \
             while time.time() < end:\n        \
                 os.write(1, block)\n        \
                 writes += 1\n    \
             return {'bytes': writes * len(block)}\n",
    );
    flick.deploy_py("calm", "", "def handler(event, context):\n    return {'echo': event}\n");
    assert_eq!(flick.invoke("calm", "{\"warm\":1}").status, 200);

    let cpu_before = cpu_seconds(flick.pid());
    let started = Instant::now();
    let (flood, calm) = std::thread::scope(|s| {
        let flood = s.spawn(|| flick.invoke("flood", "{}"));
        std::thread::sleep(Duration::from_millis(500));
        let mut calm = Vec::new();
        for i in 0..10 {
            calm.push((i, flick.invoke("calm", &format!("{{\"n\":{i}}}"))));
            std::thread::sleep(Duration::from_millis(100));
        }
        (flood.join().unwrap(), calm)
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(flick.pid()) - cpu_before;

    for (i, r) in calm {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["echo"]["n"], i, "{}", r.text());
    }
    assert_eq!(flood.status, 200, "{}", flood.text());
    let written = flood.json()["bytes"].as_u64().unwrap();
    let a = flick.activation(&flood.activation_id());
    assert_eq!(a["logs_truncated"], true, "{a}");
    let last = a["logs"].as_array().unwrap().last().unwrap()["text"].as_str().unwrap().to_string();
    assert!(last.contains("bytes of output dropped"), "the activation says output was dropped: {last}");
    let dropped: u64 = last.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(dropped > 0 && dropped <= written, "dropped {dropped} of {written} bytes");

    // flick's own CPU stays small next to what the flood produced and how
    // long it ran. Splitting it line by line cost flick about a second of
    // CPU per MiB (and so about a core for the whole flood).
    let mib = written as f64 / f64::from(1 << 20);
    eprintln!("flood wrote {mib:.0} MiB in {wall:.1} s; flick used {cpu:.2} s of CPU");
    assert!(cpu < 0.25 + mib * 0.01, "flick used {cpu:.2} s of CPU for {mib:.1} MiB of output");
    assert!(cpu < wall * 0.5, "flick used {cpu:.2} s of CPU during a {wall:.1} s flood");
}
