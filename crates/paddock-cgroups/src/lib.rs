//! One cgroup API for cgroup v1 and v2.
//!
//! The version is *detected*, never configured: [`Hierarchy::detect`] reads
//! `/proc/self/mountinfo` and `/proc/self/cgroup` and picks
//!
//! - **v1** if `memory` and `pids` are mounted as v1 hierarchies (this needs
//!   `memory`, `cpu`, `cpuacct`, `pids` and `freezer`; `cpu` and `cpuacct`
//!   may share one mount such as `/sys/fs/cgroup/cpu,cpuacct`), otherwise
//! - **v2** if a cgroup2 mount offers `memory`, `cpu` and `pids` in the
//!   `cgroup.controllers` of our own cgroup, otherwise
//! - [`CgroupError::Unusable`] with a one-line reason naming what is missing.
//!
//! Every sandbox cgroup is nested under the cgroup the current process is in:
//! `<mount>/<own cgroup>/paddock/<name>` (see [`GROUP_DIR`]), in every
//! controller hierarchy that v1 needs, or once for v2.
//!
//! Typical life cycle, as used by the sandbox runtime:
//!
//! ```no_run
//! # fn main() -> Result<(), paddock_cgroups::CgroupError> {
//! use paddock_cgroups::{Hierarchy, Limits};
//! let hierarchy = Hierarchy::detect()?;
//! let limits = Limits { memory_bytes: Some(256 << 20), cpu_millicores: Some(500), pids: Some(64) };
//! let cgroup = hierarchy.create("sbx-1234", &limits)?;
//! # let pid1 = 1;
//! cgroup.attach(pid1)?;            // or clone3(CLONE_INTO_CGROUP, cgroup.dir_fd()) on v2
//! // ... the sandbox runs; on timeout: cgroup.kill_all()?;
//! let stats = cgroup.stats()?;
//! cgroup.remove()?;
//! # let _ = stats; Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod fsutil;
pub mod mountinfo;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

pub use v1::{V1Cgroup, V1Hierarchy};
pub use v2::{V2Cgroup, V2Hierarchy};

/// Name of the directory, under the process's own cgroup, that holds one
/// child cgroup per sandbox.
pub const GROUP_DIR: &str = "paddock";

/// Name of the leaf cgroup our own processes are moved into on cgroup v2
/// when our own cgroup holds processes and therefore cannot enable
/// controllers for its children (the "no internal processes" rule).
pub const SUPERVISOR_DIR: &str = "supervisor";

/// How long [`Cgroup::remove`] keeps retrying `rmdir` on `EBUSY` while the
/// killed processes finish exiting.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`Cgroup::kill_all`] waits for a freezer to report the cgroup
/// frozen before it sends SIGKILL anyway.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// CFS period used for CPU limits, in microseconds (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";
const PROC_SELF_CGROUP_PATH: &str = "/proc/self/cgroup";

/// Resource limits for one cgroup. `None` leaves the kernel default
/// (unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes. Swap is disabled for the cgroup when set
    /// (`memory.memsw.limit_in_bytes` on v1, `memory.swap.max` on v2, when
    /// the kernel has swap accounting).
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in thousandths of a core: 1000 = one full core, 500 =
    /// half a core. Must be at least 10 (the kernel's 1 ms minimum quota per
    /// 100 ms period).
    pub cpu_millicores: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
}

impl Limits {
    /// The CFS quota in microseconds per [`CPU_PERIOD_US`] for
    /// `cpu_millicores`, validated.
    fn cpu_quota_us(&self) -> Result<Option<u64>, CgroupError> {
        let Some(millicores) = self.cpu_millicores else {
            return Ok(None);
        };
        let quota = millicores
            .checked_mul(CPU_PERIOD_US / 1000)
            .ok_or_else(|| CgroupError::InvalidLimits {
                reason: format!("cpu_millicores {millicores} is too large"),
            })?;
        if quota < 1000 {
            return Err(CgroupError::InvalidLimits {
                reason: format!("cpu_millicores {millicores} is below the minimum of 10"),
            });
        }
        Ok(Some(quota))
    }
}

/// Resource usage of a cgroup, read at the end of a sandbox's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Highest memory usage seen, in bytes (v1 `memory.max_usage_in_bytes`,
    /// v2 `memory.peak`; `None` on v2 kernels older than 5.19).
    pub memory_peak_bytes: Option<u64>,
    /// Total CPU time consumed, in nanoseconds (v1 `cpuacct.usage`, v2
    /// `cpu.stat` `usage_usec` × 1000).
    pub cpu_time_ns: Option<u64>,
    /// Number of processes the OOM killer killed in the cgroup (`oom_kill` in
    /// v1 `memory.oom_control` or v2 `memory.events`; 0 if the kernel does not
    /// report it).
    pub oom_kills: u64,
}

/// Errors of this crate. Variants are named after the operation that failed
/// and carry the path involved; the underlying `io::Error` is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Creating a cgroup directory failed (`EEXIST` if a cgroup of that name
    /// already exists).
    #[error("cannot create cgroup directory {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing a control file failed.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        source: io::Error,
    },
    /// Reading a control file or directory failed.
    #[error("cannot read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Removing a cgroup directory failed (`EBUSY` after
    /// [`REMOVE_TIMEOUT`] if processes would not leave).
    #[error("cannot remove cgroup directory {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Opening the cgroup directory (for `CLONE_INTO_CGROUP`) failed.
    #[error("cannot open cgroup directory {path}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Moving a process into the cgroup failed.
    #[error("cannot move pid {pid} into {path}")]
    Attach {
        /// The process.
        pid: i32,
        /// The `cgroup.procs` file written.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Sending SIGKILL to a process in the cgroup failed (other than the
    /// process being gone already).
    #[error("cannot send SIGKILL to pid {pid}")]
    Kill {
        /// The process.
        pid: i32,
        /// The OS error.
        source: io::Error,
    },
    /// No usable cgroup hierarchy: a controller is missing, the process may
    /// not write to its cgroup (not root, nothing delegated), ...
    #[error("no usable cgroups: {reason}")]
    Unusable {
        /// One line naming what is missing.
        reason: String,
    },
    /// A cgroup expected to exist does not ([`Hierarchy::open`]).
    #[error("cgroup {path} does not exist")]
    NotFound {
        /// The directory looked for.
        path: PathBuf,
    },
    /// A kernel file had unexpected contents.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The cgroup name is not a single safe path component.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A limit value cannot be expressed to the kernel.
    #[error("invalid limits: {reason}")]
    InvalidLimits {
        /// What was wrong.
        reason: String,
    },
    /// The pid is not a valid target (0 or negative would move the caller
    /// itself or mean nothing).
    #[error("invalid pid {pid}")]
    InvalidPid {
        /// The pid given.
        pid: i32,
    },
}

/// One sandbox's cgroup, in whichever version the host runs.
///
/// All methods take `&self` and may be called from several threads (for
/// example `kill_all` from a timeout thread while another waits).
pub trait Cgroup: Send + Sync + fmt::Debug {
    /// Moves a process (its whole thread group) into the cgroup.
    fn attach(&self, pid: i32) -> Result<(), CgroupError>;

    /// Reads peak memory, CPU time and OOM kills.
    fn stats(&self) -> Result<Stats, CgroupError>;

    /// All processes in the cgroup and its descendants, sorted, as pids in
    /// the caller's pid namespace.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;

    /// Sends SIGKILL to every process in the cgroup without racing forks.
    ///
    /// v2: writes `1` to `cgroup.kill`; on kernels without it (< 5.14),
    /// freezes via `cgroup.freeze`, kills every pid, thaws. v1: sets the
    /// freezer to `FROZEN` (waiting up to [`FREEZE_TIMEOUT`] for the state to
    /// read `FROZEN`), SIGKILLs every pid in `cgroup.procs`, sets `THAWED` so
    /// the signals are delivered. Does not wait for the processes to exit.
    fn kill_all(&self) -> Result<(), CgroupError>;

    /// Kills whatever is left (via [`Cgroup::kill_all`]) and removes every
    /// directory this cgroup consists of, including child cgroups created
    /// inside it, retrying `EBUSY` for up to [`REMOVE_TIMEOUT`] while
    /// processes finish exiting. Idempotent: removing a removed cgroup is
    /// `Ok`.
    fn remove(&self) -> Result<(), CgroupError>;

    /// v2 only: an `O_DIRECTORY` fd of the cgroup directory, for `clone3`
    /// with `CLONE_INTO_CGROUP`. `None` on v1.
    fn dir_fd(&self) -> Option<BorrowedFd<'_>>;

    /// The directories this cgroup consists of (one for v2, one per distinct
    /// controller mount for v1).
    fn paths(&self) -> Vec<PathBuf>;
}

/// The detected cgroup setup of this host, rooted at the process's own
/// cgroup.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// cgroup v1: separate hierarchies per controller.
    V1(V1Hierarchy),
    /// cgroup v2: the unified hierarchy.
    V2(V2Hierarchy),
}

impl Hierarchy {
    /// Whether this is the unified (v2) hierarchy.
    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2(_))
    }

    /// Detects the cgroup setup of the running system from
    /// `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let mountinfo = fsutil::read(Path::new(MOUNTINFO_PATH))?;
        let proc_cgroup = fsutil::read(Path::new(PROC_SELF_CGROUP_PATH))?;
        Self::detect_at(&mountinfo, &proc_cgroup)
    }

    /// Detects from the given texts of a mountinfo file and a
    /// `/proc/<pid>/cgroup` file.
    ///
    /// The mount points named in `mountinfo` are then used as they are, so a
    /// test can describe a fake cgroupfs tree in a temporary directory by
    /// writing mountinfo lines whose mount points are in that directory.
    /// Control files (`cgroup.controllers`) are read from those mount points.
    pub fn detect_at(mountinfo: &str, proc_self_cgroup: &str) -> Result<Hierarchy, CgroupError> {
        let mounts =
            mountinfo::parse_mountinfo(mountinfo).map_err(|reason| CgroupError::Parse {
                path: PathBuf::from(MOUNTINFO_PATH),
                reason,
            })?;
        let entries = mountinfo::parse_proc_cgroup(proc_self_cgroup).map_err(|reason| {
            CgroupError::Parse {
                path: PathBuf::from(PROC_SELF_CGROUP_PATH),
                reason,
            }
        })?;

        let v1_has = |controller: &str| {
            mounts
                .iter()
                .any(|m| m.fstype == "cgroup" && m.has_option(controller))
        };
        if v1_has("memory") && v1_has("pids") {
            return V1Hierarchy::detect(&mounts, &entries).map(Hierarchy::V1);
        }
        let v1_note = format!(
            "cgroup v1 does not mount memory and pids (memory: {}, pids: {})",
            if v1_has("memory") { "v1" } else { "not v1" },
            if v1_has("pids") { "v1" } else { "not v1" },
        );
        V2Hierarchy::detect(&mounts, &entries)
            .map(Hierarchy::V2)
            .map_err(|e| match e {
                CgroupError::Unusable { reason } => CgroupError::Unusable {
                    reason: format!("{v1_note}; {reason}"),
                },
                other => other,
            })
    }

    /// Creates `<own cgroup>/paddock/<name>` in every needed controller
    /// hierarchy (creating `paddock` if missing) and writes `limits`.
    ///
    /// On v2 this also enables `memory`, `cpu` and `pids` in the
    /// `cgroup.subtree_control` of our own cgroup and of `paddock`. If our
    /// own cgroup holds processes (and is not the root), the kernel refuses
    /// that with `EBUSY`; then every process of our own cgroup — normally
    /// just this daemon — is moved into the leaf `<own>/supervisor` first
    /// (see [`SUPERVISOR_DIR`]), and the write is retried.
    ///
    /// Fails with [`CgroupError::Create`] (`EEXIST`) if a cgroup of that name
    /// exists already. On failure the directories created for `name` are
    /// removed again.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn Cgroup>, CgroupError> {
        validate_name(name)?;
        let quota = limits.cpu_quota_us()?;
        match self {
            Hierarchy::V1(h) => Ok(Box::new(h.create(name, limits, quota)?)),
            Hierarchy::V2(h) => Ok(Box::new(h.create(name, limits, quota)?)),
        }
    }

    /// Opens an existing cgroup `<own>/paddock/<name>` without changing it,
    /// e.g. to kill and remove a leftover after a crash.
    pub fn open(&self, name: &str) -> Result<Box<dyn Cgroup>, CgroupError> {
        validate_name(name)?;
        match self {
            Hierarchy::V1(h) => Ok(Box::new(h.open(name)?)),
            Hierarchy::V2(h) => Ok(Box::new(h.open(name)?)),
        }
    }

    /// Existing sandbox cgroup directories under `<own>/paddock/`, sorted:
    /// cgroups left behind by a previous run that crashed.
    ///
    /// On v1 a name counts only if it exists in the memory hierarchy (which
    /// is created first and removed last); its directories in all
    /// hierarchies are listed. Names found only in other hierarchies are
    /// ignored, because those are often shared with other processes (e.g.
    /// every process's cpu cgroup is `/`) and may be another instance's live
    /// sandbox.
    pub fn leftovers(&self) -> Result<Vec<PathBuf>, CgroupError> {
        let mut out = match self {
            Hierarchy::V1(h) => h.leftovers()?,
            Hierarchy::V2(h) => fsutil::child_dirs(&h.own_dir().join(GROUP_DIR))?,
        };
        out.sort();
        Ok(out)
    }

    /// Kills and removes every cgroup listed by [`Hierarchy::leftovers`].
    /// Only for a process that owns its cgroup exclusively (on v1: its
    /// memory cgroup): another process in the same cgroup would lose its
    /// sandboxes. Tries all of them and returns the names removed, or the
    /// first error.
    pub fn remove_leftovers(&self) -> Result<Vec<String>, CgroupError> {
        let mut names: Vec<String> = self
            .leftovers()?
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        let mut first_error = None;
        let mut removed = Vec::new();
        for name in names {
            match self.open(&name).and_then(|cg| cg.remove()) {
                Ok(()) => removed.push(name),
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(removed), Err)
    }

    /// Removes the `<own>/paddock` directories if they are empty, e.g. at
    /// daemon shutdown once every sandbox cgroup is gone, so that not even
    /// the parent is left behind. Directories that still hold cgroups are
    /// kept (that is not an error). A concurrent [`Hierarchy::create`] in
    /// another process copes with the parent vanishing (it re-creates it).
    pub fn remove_group_dirs(&self) -> Result<(), CgroupError> {
        for dir in self.group_dirs() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || matches!(
                            e.raw_os_error(),
                            Some(libc::EBUSY | libc::ENOTEMPTY | libc::EEXIST)
                        ) => {}
                Err(source) => return Err(CgroupError::Remove { path: dir, source }),
            }
        }
        Ok(())
    }

    /// `1` or `2`.
    pub fn version(&self) -> u8 {
        match self {
            Hierarchy::V1(_) => 1,
            Hierarchy::V2(_) => 2,
        }
    }

    /// The `<own>/paddock` directories (one per distinct v1 mount, one for
    /// v2); they may not exist yet.
    pub fn group_dirs(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::V1(h) => h.own_dirs().iter().map(|d| d.join(GROUP_DIR)).collect(),
            Hierarchy::V2(h) => vec![h.own_dir().join(GROUP_DIR)],
        }
    }
}

/// Checks that `name` is one safe path component: 1 to 200 characters of
/// `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<(), CgroupError> {
    let refuse = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > 200 {
        return refuse("longer than 200 bytes");
    }
    if name.contains('/') {
        return refuse("contains '/'");
    }
    if name.starts_with('.') {
        return refuse("starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return refuse("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

/// Whether the effective user may create directories in `dir`: checks
/// `<dir>/paddock` if it exists (it may have been delegated), else `dir`.
/// One `faccessat` in the usual case (`paddock` exists).
fn check_writable(dir: &Path, what: &str) -> Result<(), CgroupError> {
    let writable = |target: &Path| {
        rustix::fs::accessat(
            rustix::fs::CWD,
            target,
            rustix::fs::Access::WRITE_OK,
            rustix::fs::AtFlags::EACCESS,
        )
    };
    let group = dir.join(GROUP_DIR);
    let (target, result) = match writable(&group) {
        Err(rustix::io::Errno::NOENT) => (dir.to_owned(), writable(dir)),
        other => (group, other),
    };
    match result {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Err(CgroupError::Unusable {
            reason: format!(
                "{what}: own cgroup directory {} does not exist",
                dir.display()
            ),
        }),
        Err(errno) => Err(CgroupError::Unusable {
            reason: format!(
                "{what}: no write access to {} ({}; need root or a delegated cgroup)",
                target.display(),
                io::Error::from(errno)
            ),
        }),
    }
}
