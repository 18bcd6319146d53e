//! Plain data shared by every part of paddock: the sandbox specification,
//! sizes and durations as users write them, and the result object of the
//! interface contract. No I/O happens here.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod parse;
pub use parse::{ParseError, parse_cpus, parse_duration, parse_env, parse_mount, parse_size};

/// Resource limits of one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (no swap).
    pub memory_bytes: u64,
    /// CPU quota in thousandths of a core (`1000` = one core).
    pub cpu_millicores: u64,
    /// Maximum number of processes and threads.
    pub pids: u64,
    /// Size of the writable layer (the tmpfs holding `/`, `/tmp`, `/home/user`).
    pub disk_bytes: u64,
    /// Maximum open files per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 << 20,
            cpu_millicores: 1000,
            pids: 256,
            disk_bytes: 256 << 20,
            open_files: 1024,
        }
    }
}

/// What the sandbox may reach over the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only the sandbox's own loopback interface.
    #[default]
    None,
    /// The same as `None` today (the sandbox's own loopback); egress comes later.
    Loopback,
}

impl std::str::FromStr for NetworkMode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "none" => Ok(NetworkMode::None),
            "loopback" => Ok(NetworkMode::Loopback),
            _ => Err(ParseError::new(s, "none or loopback")),
        }
    }
}

/// A host path bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute host path (must exist).
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    /// Whether the sandbox may write through it.
    pub writable: bool,
}

/// Everything needed to start one sandboxed program.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Program and arguments. A program without `/` is looked up in the `PATH`
    /// of [`SandboxSpec::env`], inside the sandbox.
    pub argv: Vec<String>,
    /// The complete environment of the program; nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (created if missing).
    pub workdir: PathBuf,
    /// Resource limits.
    pub limits: Limits,
    /// Network mode.
    pub network: NetworkMode,
    /// Host paths bound into the sandbox.
    pub mounts: Vec<Mount>,
    /// Hostname inside.
    pub hostname: String,
    /// The base root filesystem: a host directory holding a Linux tree (at
    /// least `usr/`, e.g. a debootstrap result) whose `/usr`, top-level
    /// links and `/etc` essentials the sandbox sees instead of the host's.
    /// `None`: the host's own.
    pub rootfs: Option<PathBuf>,
}

/// The user the program runs as inside the sandbox.
pub const SANDBOX_UID: u32 = 1000;
/// The group the program runs as inside the sandbox.
pub const SANDBOX_GID: u32 = 1000;
/// The environment a program gets when the caller sets nothing.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

impl SandboxSpec {
    /// A spec with the contract's defaults for `argv`.
    pub fn new(argv: Vec<String>) -> Self {
        SandboxSpec {
            argv,
            env: default_env(),
            workdir: PathBuf::from("/home/user"),
            limits: Limits::default(),
            network: NetworkMode::None,
            mounts: Vec::new(),
            hostname: "sandbox".to_string(),
            rootfs: None,
        }
    }

    /// Sets `key=value`, replacing an earlier value of `key`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
    }
}

/// `PATH`, `HOME` and `LANG`: the only variables a sandbox gets by default.
pub fn default_env() -> Vec<(String, String)> {
    vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOME".to_string(), "/home/user".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ]
}

/// How a sandboxed program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It exited by itself; see `exit_code`.
    Exited,
    /// A signal ended it; see `signal`.
    Signaled,
    /// paddock stopped it at the wall-clock limit.
    Timeout,
    /// The memory limit was hit (the cgroup's OOM killer acted).
    Oom,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Exited => "exited",
            Status::Signaled => "signaled",
            Status::Timeout => "timeout",
            Status::Oom => "oom",
        })
    }
}

/// The result object of the interface contract (CLI `--json`, HTTP exec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// How it ended.
    pub status: Status,
    /// Exit code when `status` is `exited` (also set for `oom` when the
    /// program exited by itself after a child was killed).
    pub exit_code: Option<i32>,
    /// Signal number when the program was killed by a signal.
    pub signal: Option<i32>,
    /// Captured standard output (lossy UTF-8), at most the output limit.
    pub stdout: String,
    /// Captured standard error (lossy UTF-8), at most the output limit.
    pub stderr: String,
    /// Whether standard output went over the limit and was cut.
    pub stdout_truncated: bool,
    /// Whether standard error went over the limit and was cut.
    pub stderr_truncated: bool,
    /// Wall-clock time from sandbox creation to the program's end.
    pub wall_time_ms: f64,
    /// CPU time of everything in the sandbox, from its cgroup.
    pub cpu_time_ms: f64,
    /// Peak memory of the sandbox, from its cgroup.
    pub memory_peak_bytes: u64,
}

impl RunResult {
    /// The exit status `paddock run` uses without `--json`: the program's own,
    /// 128+N for signal N, 124 on timeout, 137 on out-of-memory.
    pub fn cli_exit_code(&self) -> i32 {
        match self.status {
            Status::Exited => self.exit_code.unwrap_or(0),
            Status::Signaled => 128 + self.signal.unwrap_or(9),
            Status::Timeout => 124,
            Status::Oom => 137,
        }
    }
}

/// Formats a duration the way users write it back (`1.5s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Formats a byte count the way `--memory`/`--disk` take it (`512M`, `1G`,
/// `1536K`, `100`): the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn sizes_format_back_to_what_parses() {
        for (n, s) in [
            (512 << 20, "512M"),
            (1 << 30, "1G"),
            (1536 << 10, "1536K"),
            (100, "100"),
        ] {
            assert_eq!(format_size(n), s);
            assert_eq!(parse_size(s).unwrap(), n);
        }
        assert_eq!(format_size(0), "0");
    }
}
