//! Making sandboxes for the tests.

#![allow(dead_code)]

use std::time::Duration;

use paddock_sandbox::{ExecRequest, Sandbox, SandboxConfig};
use paddock_types::{Limits, SandboxSpec};

/// Generous limit for one run in a test (shared 2-core machines).
pub const T: Duration = Duration::from_secs(30);

/// A sandbox with the default limits, whose agent is the built binary.
pub async fn sandbox() -> Sandbox {
    sandbox_with(Limits::default()).await
}

/// A sandbox with `limits`.
pub async fn sandbox_with(limits: Limits) -> Sandbox {
    // Only the preconditions; sandbox tests need no global lock.
    drop(crate::common::setup());
    let mut spec = SandboxSpec::new(Vec::new());
    spec.limits = limits;
    let config = SandboxConfig {
        spec,
        agent_exe: crate::common::PADDOCK.into(),
    };
    Sandbox::create(config)
        .await
        .unwrap_or_else(|e| panic!("cannot create a sandbox (the tests need root): {e}"))
}

/// Runs `sh -c script` and returns its stdout, asserting exit 0.
pub async fn sh(sandbox: &Sandbox, script: &str) -> String {
    let r = sandbox
        .exec(ExecRequest::new(["sh", "-c", script]))
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
    assert_eq!(r.exit_code, Some(0), "sh -c {script:?} failed: {r:?}");
    r.stdout
}

/// Host pids of the processes in the sandbox (init's descendants).
pub fn host_processes(sandbox: &Sandbox) -> Vec<i32> {
    let Some(init) = sandbox.pid() else {
        return Vec::new();
    };
    let mut out = vec![init];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let path = t.path().join("children");
                if let Ok(children) = std::fs::read_to_string(path) {
                    out.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<i32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    out
}

/// Open fds of a host process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
