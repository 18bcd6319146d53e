//! Resource limits: pids, memory, disk, output, time, CPU, escaping children,
//! rlimits, and the figures reported from the cgroup.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{
    collect, command, f, processes_matching, run, run_args, run_cgroups_of, run_json, s, setup,
    unique, unique_sleep_secs, wait_no_exact, wait_no_process,
};

fn host_can_fork() {
    for i in 0..20 {
        let st = Command::new("true")
            .status()
            .unwrap_or_else(|e| panic!("the host cannot fork/exec after the bomb (try {i}): {e}"));
        assert!(st.success(), "`true` failed on the host: {st}");
    }
}

#[test]
fn fork_bomb_is_contained_by_pids_limit() {
    let _g = setup();
    let marker = unique("forkbomb");
    let code = format!(
        "# {marker}\n\
         import os\n\
         while True:\n\
         \x20   try:\n\
         \x20       os.fork()\n\
         \x20   except OSError:\n\
         \x20       pass\n"
    );
    let args = run_args(
        &["--json", "--pids", "64", "--timeout", "5s"],
        &["python3", "-c", &code],
    );
    let start = Instant::now();
    let mut child = command(&args).spawn().expect("spawn paddock");
    let pid = child.id();
    // While it runs: the sandbox's pids cgroup caps it at 64.
    let mut samples = Vec::new();
    let mut max_seen = None;
    while start.elapsed() < Duration::from_secs(4) {
        for dir in run_cgroups_of(pid) {
            if let Ok(max) = std::fs::read_to_string(dir.join("pids.max")) {
                max_seen = Some(max.trim().to_string());
                if let Ok(cur) = std::fs::read_to_string(dir.join("pids.current")) {
                    samples.push(cur.trim().parse::<u64>().unwrap_or(0));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, stdout, stderr) = collect(&mut child, None, Duration::from_secs(30), &args);
    let elapsed = start.elapsed();
    assert_eq!(
        code,
        Some(0),
        "paddock --json exits 0; stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&stdout).expect("json result");
    assert_eq!(
        s(&v, "status"),
        "timeout",
        "the bomb runs until the timeout stops it: {v}"
    );
    assert!(
        elapsed < Duration::from_secs(12),
        "the fork bomb run took {elapsed:?} (timeout 5s)"
    );
    assert_eq!(
        max_seen.as_deref(),
        Some("64"),
        "the sandbox's cgroup must have pids.max = 64 (found {max_seen:?})"
    );
    assert!(
        samples.iter().all(|&n| n <= 64),
        "pids.current exceeded 64: {samples:?}"
    );
    host_can_fork();
    let left = wait_no_process(&marker, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "fork bomb processes survived the run: {left:?}"
    );
    assert!(run_cgroups_of(pid).is_empty(), "the cgroup was not removed");
}

#[test]
fn shell_fork_bomb_ends_and_the_host_still_forks() {
    let _g = setup();
    let start = Instant::now();
    let out = run(
        &["--json", "--pids", "64", "--timeout", "5s"],
        &["bash", "-c", ":(){ :|:& };:; wait"],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let v = out.json();
    let st = s(&v, "status");
    assert!(
        st == "timeout" || st == "exited" || st == "signaled",
        "unexpected status {st}: {v}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "the bash fork bomb run took {:?} (timeout 5s)",
        start.elapsed()
    );
    host_can_fork();
}

#[test]
fn memory_bomb_is_reported_as_oom() {
    let _g = setup();
    let code = "x = bytearray(1 << 30)\nprint('allocated')";
    let (v, out) = run_json(&["--memory", "64M"], &["python3", "-c", code]);
    assert_eq!(
        s(&v, "status"),
        "oom",
        "1 GiB under --memory 64M\n{}",
        out.describe()
    );
    assert!(
        !s(&v, "stdout").contains("allocated"),
        "the allocation cannot succeed\n{}",
        out.describe()
    );
    let peak = f(&v, "memory_peak_bytes");
    assert!(
        peak > 0.0 && peak <= (64u64 << 20) as f64 * 1.05,
        "memory_peak_bytes {peak} must be within the 64M limit\n{}",
        out.describe()
    );
    let out = run(&["--memory", "64M"], &["python3", "-c", code]);
    out.expect_code(137, "OOM without --json");
    assert!(
        out.stderr_str().to_lowercase().contains("memory"),
        "paddock says it ran out of memory\n{}",
        out.describe()
    );
    // Gradual growth is caught too.
    let code = "a = []\nwhile True:\n    a.append(bytearray(1 << 20))";
    let (v, out) = run_json(
        &["--memory", "64M", "--timeout", "20s"],
        &["python3", "-c", code],
    );
    assert_eq!(s(&v, "status"), "oom", "gradual growth\n{}", out.describe());
}

#[test]
fn a_program_that_kills_itself_with_sigkill_is_not_oom() {
    let _g = setup();
    let (v, out) = run_json(&["--memory", "64M"], &["sh", "-c", "kill -KILL $$"]);
    assert_eq!(
        s(&v, "status"),
        "signaled",
        "SIGKILL without hitting the limit is not an OOM\n{}",
        out.describe()
    );
}

#[test]
fn disk_filler_gets_enospc() {
    let _g = setup();
    let start = Instant::now();
    let (v, out) = run_json(
        &["--disk", "32M"],
        &[
            "sh",
            "-c",
            "yes abcdefghijklmnop | head -c 1073741824 > /tmp/f; echo rc=$?; du -k /tmp/f",
        ],
    );
    let stderr = s(&v, "stderr");
    assert!(
        stderr.contains("No space left"),
        "writing 1 GiB under --disk 32M must end with ENOSPC\n{}",
        out.describe()
    );
    assert_eq!(s(&v, "status"), "exited", "{}", out.describe());
    let stdout = s(&v, "stdout");
    assert!(stdout.contains("rc=1"), "head failed\n{}", out.describe());
    let kib: u64 = stdout
        .lines()
        .find_map(|l| l.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(u64::MAX);
    assert!(
        kib <= 33 * 1024,
        "the file grew to {kib} KiB under --disk 32M\n{}",
        out.describe()
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the disk filler run took {:?}",
        start.elapsed()
    );
    // The same in /home/user, from python.
    let code = "import errno\nf = open('/home/user/f', 'wb')\ntry:\n    \
                for i in range(1024): f.write(b'x' * (1 << 20)); f.flush()\n\
                except OSError as e:\n    print(errno.errorcode[e.errno])";
    let (v, out) = run_json(&["--disk", "32M"], &["python3", "-c", code]);
    assert_eq!(
        s(&v, "stdout"),
        "ENOSPC\n",
        "python in /home/user\n{}",
        out.describe()
    );
}

#[test]
fn output_flood_is_truncated_fast() {
    let _g = setup();
    let code = "import sys\nb = b'x' * (1 << 20)\nfor _ in range(100): sys.stdout.buffer.write(b)\nsys.stdout.flush()";
    let start = Instant::now();
    let (v, out) = run_json(&["--output-limit", "64K"], &["python3", "-c", code]);
    let elapsed = start.elapsed();
    assert_eq!(v["stdout_truncated"], true, "{}", out.describe());
    assert_eq!(v["stderr_truncated"], false, "{}", out.describe());
    let stdout = s(&v, "stdout");
    assert_eq!(stdout.len(), 65536, "exactly --output-limit bytes are kept");
    assert!(
        stdout.bytes().all(|b| b == b'x'),
        "kept bytes are the first ones"
    );
    assert_eq!(
        s(&v, "status"),
        "exited",
        "the program ran to its end\n{}",
        out.describe()
    );
    assert_eq!(v["exit_code"], 0, "{}", out.describe());
    assert!(
        elapsed < Duration::from_secs(10),
        "100 MB of output took {elapsed:?}"
    );
    // Without --json: the first 64 KiB pass through, and paddock says it cut.
    let start = Instant::now();
    let out = run(&["--output-limit", "64K"], &["python3", "-c", code]);
    out.expect_code(0, "output flood without --json");
    assert_eq!(out.stdout.len(), 65536, "passthrough is cut at the limit");
    assert!(
        out.stderr_str().contains("--output-limit"),
        "paddock says the output was cut\n{}",
        out.describe()
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn infinite_loop_times_out() {
    let _g = setup();
    let start = Instant::now();
    let (v, out) = run_json(
        &["--timeout", "500ms"],
        &["sh", "-c", "while true; do :; done"],
    );
    let elapsed = start.elapsed();
    assert_eq!(s(&v, "status"), "timeout", "{}", out.describe());
    assert!(
        v["exit_code"].is_null(),
        "no exit code on timeout\n{}",
        out.describe()
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "a 500ms timeout took {elapsed:?} to stop the loop"
    );
    let wall = f(&v, "wall_time_ms");
    assert!(
        (450.0..3000.0).contains(&wall),
        "wall_time_ms {wall} for a 500ms timeout\n{}",
        out.describe()
    );
    let start = Instant::now();
    let out = run(
        &["--timeout", "500ms"],
        &["sh", "-c", "while true; do :; done"],
    );
    out.expect_code(124, "timeout without --json");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        out.stderr_str().contains("timed out"),
        "paddock says it timed out\n{}",
        out.describe()
    );
}

#[test]
fn sleeping_program_times_out() {
    let _g = setup();
    let secs = unique_sleep_secs();
    let needle = format!("sleep {secs}");
    let start = Instant::now();
    let (v, out) = run_json(&["--timeout", "300ms"], &["sleep", &secs.to_string()]);
    assert_eq!(s(&v, "status"), "timeout", "{}", out.describe());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    let left = wait_no_exact(&needle, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "the sleeper survived its timeout: {left:?}"
    );
}

/// Python code that double-forks a `setsid` `sleep SECS`, checks inside that
/// it is running, prints `sleeper-running`, then does `then`.
fn double_fork(secs: u64, then: &str) -> String {
    format!(
        "import os, time\n\
         r, w = os.pipe()\n\
         if os.fork() == 0:\n\
         \x20   os.setsid()\n\
         \x20   if os.fork() == 0:\n\
         \x20       os.close(r); os.close(w)\n\
         \x20       os.execvp('sleep', ['sleep', '{secs}'])\n\
         \x20   os._exit(0)\n\
         os.close(w); os.read(r, 1); os.wait()\n\
         for _ in range(100):\n\
         \x20   found = False\n\
         \x20   for p in os.listdir('/proc'):\n\
         \x20       if p.isdigit():\n\
         \x20           try: found |= open(f'/proc/{{p}}/cmdline','rb').read() == b'sleep\\x00{secs}\\x00'\n\
         \x20           except OSError: pass\n\
         \x20   if found: break\n\
         \x20   time.sleep(0.02)\n\
         print('sleeper-running' if found else 'sleeper-missing', flush=True)\n\
         {then}\n"
    )
}

#[test]
fn setsid_double_forked_sleeper_dies_with_the_run() {
    let _g = setup();
    let secs = unique_sleep_secs();
    let needle = format!("sleep {secs}");
    let (v, out) = run_json(&[], &["python3", "-c", &double_fork(secs, "os._exit(0)")]);
    assert_eq!(s(&v, "stdout"), "sleeper-running\n", "{}", out.describe());
    assert_eq!(s(&v, "status"), "exited", "{}", out.describe());
    let left = wait_no_exact(&needle, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "a setsid double-forked sleeper outlived its sandbox: {left:?}"
    );
    // The shell form from the brief (stdin given explicitly: a background
    // job of a non-interactive shell would otherwise open /dev/null).
    let secs = unique_sleep_secs();
    let needle = format!("sleep {secs}");
    let script = format!(
        "setsid sh -c 'sleep {secs} </proc/self/status &'; \
         for i in $(seq 50); do ps -eo args | grep -qx 'sleep {secs}' && break; sleep 0.05; done; \
         ps -eo args | grep -qx 'sleep {secs}' && echo sleeper-running; exit 0"
    );
    let out = run(&[], &["sh", "-c", &script]);
    out.expect_code(0, "sh setsid sleeper");
    assert_eq!(out.stdout_str(), "sleeper-running\n", "{}", out.describe());
    let left = wait_no_exact(&needle, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "the shell's setsid sleeper survived: {left:?}"
    );
}

#[test]
fn setsid_double_forked_sleeper_dies_at_the_timeout() {
    let _g = setup();
    let secs = unique_sleep_secs();
    let needle = format!("sleep {secs}");
    let start = Instant::now();
    let (v, out) = run_json(
        &["--timeout", "1500ms"],
        &["python3", "-c", &double_fork(secs, "time.sleep(100)")],
    );
    assert_eq!(s(&v, "stdout"), "sleeper-running\n", "{}", out.describe());
    assert_eq!(s(&v, "status"), "timeout", "{}", out.describe());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let left = wait_no_exact(&needle, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "the sleeper survived the timeout: {left:?}"
    );
    assert!(
        processes_matching(&needle).is_empty(),
        "paddock or the sleeper is still running"
    );
}

#[test]
fn cpu_quota_is_enforced() {
    let _g = setup();
    let code = "import time\nt = time.time()\nwhile time.time() - t < 2: pass";
    let (v, out) = run_json(&["--cpus", "0.5"], &["python3", "-c", code]);
    assert_eq!(s(&v, "status"), "exited", "{}", out.describe());
    let cpu = f(&v, "cpu_time_ms");
    let wall = f(&v, "wall_time_ms");
    assert!(
        wall >= 1900.0,
        "the loop ran 2 s of wall time: {wall}\n{}",
        out.describe()
    );
    assert!(cpu > 0.0, "cpu_time_ms > 0\n{}", out.describe());
    assert!(
        cpu <= 0.6 * wall,
        "--cpus 0.5: cpu_time_ms {cpu} must be at most ~60% of wall_time_ms {wall}\n{}",
        out.describe()
    );
}

#[test]
fn cgroup_figures_are_reported() {
    let _g = setup();
    let (v, out) = run_json(
        &[],
        &[
            "python3",
            "-c",
            "x = bytearray(20 << 20); print(sum(range(10**6)))",
        ],
    );
    assert_eq!(s(&v, "status"), "exited", "{}", out.describe());
    let mem = f(&v, "memory_peak_bytes");
    let cpu = f(&v, "cpu_time_ms");
    assert!(mem > 0.0, "memory_peak_bytes > 0\n{}", out.describe());
    assert!(
        mem >= (20u64 << 20) as f64,
        "memory_peak_bytes {mem} must include the 20 MiB python allocated\n{}",
        out.describe()
    );
    assert!(cpu > 0.0, "cpu_time_ms > 0\n{}", out.describe());
    assert!(f(&v, "wall_time_ms") > 0.0, "{}", out.describe());
}

#[test]
fn rlimits_no_core_bounded_files() {
    let _g = setup();
    let out = run(
        &[],
        &[
            "bash",
            "-c",
            "ulimit -c; ulimit -Hc; ulimit -n; ulimit -Hn; ulimit -f",
        ],
    );
    out.expect_code(0, "ulimit");
    let text = out.stdout_str();
    let v: Vec<&str> = text.lines().collect();
    assert_eq!(v.len(), 5, "{}", out.describe());
    assert_eq!(v[0], "0", "core dumps disabled (soft)\n{text}");
    assert_eq!(v[1], "0", "core dumps disabled (hard)\n{text}");
    for (i, what) in [
        (2, "open files"),
        (3, "open files (hard)"),
        (4, "file size"),
    ] {
        assert_ne!(v[i], "unlimited", "{what} must be bounded\n{text}");
    }
}

#[test]
fn pids_limit_applies_to_threads() {
    let _g = setup();
    let code = "import threading, time\n\
                n = 0\n\
                try:\n\
                \x20   for _ in range(200):\n\
                \x20       threading.Thread(target=time.sleep, args=(5,), daemon=True).start(); n += 1\n\
                except RuntimeError:\n\
                \x20   pass\n\
                print(n)";
    let (v, out) = run_json(&["--pids", "32"], &["python3", "-c", code]);
    let n: u64 = s(&v, "stdout").trim().parse().unwrap_or(u64::MAX);
    assert!(
        n < 32,
        "{n} threads started under --pids 32\n{}",
        out.describe()
    );
}
