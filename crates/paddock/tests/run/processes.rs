//! Only the sandbox's own processes are visible.

use crate::common::{run, setup};

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
