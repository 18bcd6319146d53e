//! SIGINT / SIGTERM to `paddock run`: the sandbox is killed, everything is
//! cleaned up, and paddock exits 128+N.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::common::{
    collect, command, host_paddock_mounts, run_args, run_cgroups_of, setup, unique_sleep_secs,
    wait_exact, wait_no_exact,
};

fn interrupt(sig: Signal, expected: i32) {
    let secs = unique_sleep_secs();
    let needle = format!("sleep {secs}");
    let args = run_args(&[], &["sleep", &secs.to_string()]);
    let mut child = command(&args).spawn().expect("spawn paddock");
    let pid = child.id();
    assert!(
        wait_exact(&needle, Duration::from_secs(10)),
        "the sandboxed `{needle}` never started"
    );
    // The sandbox's cgroup exists while it runs (the check below is real).
    assert!(
        !run_cgroups_of(pid).is_empty(),
        "no run-{pid}-* cgroup found while the sandbox runs"
    );
    let sent = Instant::now();
    kill_process(Pid::from_raw(pid as i32).expect("pid"), sig).expect("send the signal to paddock");
    let (code, _stdout, stderr) = collect(&mut child, None, Duration::from_secs(20), &args);
    let took = sent.elapsed();
    assert_eq!(
        code,
        Some(expected),
        "paddock must exit {expected} after {sig:?}; stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    assert!(
        took < Duration::from_secs(5),
        "paddock took {took:?} to exit after {sig:?}"
    );
    let left = wait_no_exact(&needle, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "the sandboxed sleeper survived {sig:?}: {left:?}"
    );
    let cgroups = run_cgroups_of(pid);
    assert!(
        cgroups.is_empty(),
        "cgroups left after {sig:?}: {cgroups:?}"
    );
    let mounts = host_paddock_mounts();
    assert!(
        mounts.is_empty(),
        "host mounts mention paddock after {sig:?}: {mounts:?}"
    );
    let procs = crate::common::host_processes()
        .into_iter()
        .filter(|&(p, _)| p == pid as i32)
        .collect::<Vec<_>>();
    assert!(procs.is_empty(), "paddock itself is still there: {procs:?}");
}

#[test]
fn sigint_kills_the_sandbox_and_exits_130() {
    let _g = setup();
    interrupt(Signal::INT, 130);
}

#[test]
fn sigterm_kills_the_sandbox_and_exits_143() {
    let _g = setup();
    interrupt(Signal::TERM, 143);
}
