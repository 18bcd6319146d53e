//! Only the sandbox's own processes are visible.

use crate::common::{DEADLINE, PADDOCK, finish, run, run_args, setup};

#[test]
fn proc_shows_only_the_sandbox() {
    let _g = setup();
    let me = std::process::id();
    let exe = std::env::current_exe().expect("current exe");
    let exe_name = exe
        .file_name()
        .expect("exe name")
        .to_string_lossy()
        .into_owned();
    let script = "for p in /proc/[0-9]*; do printf '%s ' \"${p#/proc/}\"; tr '\\0' ' ' < $p/cmdline; echo; done";
    let out = run(&[], &["sh", "-c", script]);
    out.expect_code(0, "listing /proc");
    let text = out.stdout_str();
    let pids: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("bad pid line in {text}"))
        })
        .collect();
    assert!(
        !pids.is_empty() && pids.len() < 10,
        "the sandbox sees {} processes (expected a handful):\n{text}",
        pids.len()
    );
    assert!(
        pids.iter().all(|&p| p < 100),
        "pids inside are those of a fresh pid namespace (small):\n{text}"
    );
    assert!(pids.contains(&1), "the sandbox has its own pid 1:\n{text}");
    assert!(
        !pids.contains(&me),
        "the test's own pid {me} is visible inside:\n{text}"
    );
    assert!(
        !text.contains(&exe_name),
        "the test process ({exe_name}) is visible inside:\n{text}"
    );
    assert!(
        !text.contains("systemd") && !text.contains("cargo"),
        "host processes are visible inside:\n{text}"
    );
}

#[test]
fn ps_sees_only_the_sandbox() {
    let _g = setup();
    let out = run(&[], &["ps", "-e", "-o", "pid=,comm="]);
    out.expect_code(0, "ps -e");
    let text = out.stdout_str();
    let n = text.lines().count();
    assert!((1..10).contains(&n), "ps shows {n} processes:\n{text}");
    assert!(text.contains(" ps"), "ps sees itself:\n{text}");
    // Signals cannot reach outside the pid namespace either.
    let me = std::process::id();
    let out = run(
        &[],
        &["sh", "-c", &format!("kill -0 {me} 2>&1; echo rc=$?")],
    );
    assert!(
        out.stdout_str().trim_end().ends_with("rc=1"),
        "kill -0 on a host pid must fail\n{}",
        out.describe()
    );
}

/// `Cpus_allowed_list` of a `/proc/PID/status` text.
fn cpus_allowed(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in\n{status}"))
}

/// paddock moves the sandbox's first process off its own CPU while it sets
/// the sandbox up; the program must end up with exactly the CPUs paddock
/// itself may use: all of them, or the one it was restricted to.
#[test]
fn the_program_may_use_the_cpus_paddock_may_use() {
    let _g = setup();
    let grep = ["grep", "Cpus_allowed_list", "/proc/self/status"];
    let own = std::fs::read_to_string("/proc/self/status").expect("read own status");
    let own = cpus_allowed(&own);
    for _ in 0..3 {
        let out = run(&[], &grep);
        out.expect_code(0, "grep Cpus_allowed_list");
        assert_eq!(
            cpus_allowed(&out.stdout_str()),
            own,
            "the program's CPUs\n{}",
            out.describe()
        );
    }
    // Restricted to one CPU (the last one this test may use), paddock has
    // nowhere to move the child, and the program keeps that one CPU.
    let last = own
        .rsplit([',', '-'])
        .next()
        .expect("a CPU number")
        .to_string();
    let mut args = vec!["-c".to_string(), last.clone(), PADDOCK.to_string()];
    args.extend(run_args(&[], &grep));
    let mut taskset = std::process::Command::new("taskset");
    taskset
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = finish(taskset, None, DEADLINE);
    out.expect_code(0, "taskset -c N paddock run -- grep Cpus_allowed_list");
    assert_eq!(
        cpus_allowed(&out.stdout_str()),
        last,
        "the program's CPUs under taskset\n{}",
        out.describe()
    );
}
