//! cgroup v2: the unified hierarchy.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::mountinfo::{Mount, ProcCgroup, cgroup_dir};
use crate::{
    CPU_PERIOD_US, Cgroup, CgroupError, FREEZE_TIMEOUT, GROUP_DIR, Limits, REMOVE_TIMEOUT,
    SUPERVISOR_DIR, Stats, check_writable, fsutil,
};

/// The controllers a sandbox cgroup needs, in the order they are enabled.
const REQUIRED: [&str; 3] = ["memory", "cpu", "pids"];

/// How many times processes are moved out of our own cgroup before giving
/// up (new ones may be forked while we move).
const EVACUATE_ATTEMPTS: usize = 3;

/// A detected cgroup v2 setup: our own cgroup's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Hierarchy {
    own: PathBuf,
}

impl V2Hierarchy {
    /// Builds the hierarchy from parsed mountinfo and `/proc/self/cgroup`.
    pub(crate) fn detect(mounts: &[Mount], entries: &[ProcCgroup]) -> Result<Self, CgroupError> {
        let unusable = |reason: String| CgroupError::Unusable {
            reason: format!("cgroup v2: {reason}"),
        };
        let cgroup2: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup2").collect();
        if cgroup2.is_empty() {
            return Err(unusable("no cgroup2 filesystem is mounted".into()));
        }
        let entry = entries
            .iter()
            .find(|e| e.hierarchy_id == 0 && e.controllers.is_empty())
            .ok_or_else(|| unusable("no '0::' line in /proc/self/cgroup".into()))?;
        let mut own = cgroup2
            .iter()
            .find_map(|m| cgroup_dir(m, &entry.path))
            .ok_or_else(|| {
                unusable(format!(
                    "own cgroup {} is outside every cgroup2 mount",
                    entry.path.display()
                ))
            })?;
        // After we moved ourselves into <own>/supervisor (see
        // `enable_controllers`), /proc/self/cgroup names the supervisor leaf;
        // the sandboxes still belong under its parent.
        if own.file_name().is_some_and(|n| n == SUPERVISOR_DIR)
            && let Some(parent) = own.parent()
            && parent.join(GROUP_DIR).is_dir()
        {
            own = parent.to_owned();
        }

        let controllers_path = own.join("cgroup.controllers");
        let available = fs::read_to_string(&controllers_path)
            .map_err(|e| unusable(format!("cannot read {}: {e}", controllers_path.display())))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| !available.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(unusable(format!(
                "{} lacks {} (available: {})",
                controllers_path.display(),
                missing.join(", "),
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(" ")
                }
            )));
        }
        check_writable(&own, "cgroup v2")?;
        Ok(V2Hierarchy { own })
    }

    /// Our own cgroup's directory.
    pub fn own_dir(&self) -> &Path {
        &self.own
    }

    pub(crate) fn create(
        &self,
        name: &str,
        limits: &Limits,
        cpu_quota_us: Option<u64>,
    ) -> Result<V2Cgroup, CgroupError> {
        let group = self.own.join(GROUP_DIR);
        let dir = group.join(name);
        fsutil::mkdir_with_parent(&dir, || {
            // `paddock` first, so that after an evacuation the supervisor
            // leaf has a `paddock` sibling (which detection relies on).
            fsutil::mkdir_exist_ok(&group)?;
            enable_controllers(&self.own, true)?;
            enable_controllers(&group, false)
        })?;
        let result = open_dir(&dir).and_then(|fd| {
            let cgroup = V2Cgroup {
                dir: dir.clone(),
                fd,
            };
            cgroup.write_limits(limits, cpu_quota_us)?;
            Ok(cgroup)
        });
        if result.is_err() {
            let _ = fs::remove_dir(&dir);
        }
        result
    }

    pub(crate) fn open(&self, name: &str) -> Result<V2Cgroup, CgroupError> {
        let dir = self.own.join(GROUP_DIR).join(name);
        if !dir.is_dir() {
            return Err(CgroupError::NotFound { path: dir });
        }
        let fd = open_dir(&dir)?;
        Ok(V2Cgroup { dir, fd })
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, CgroupError> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| CgroupError::Open {
        path: dir.to_owned(),
        source: errno.into(),
    })
}

/// Enables the [`REQUIRED`] controllers in `<dir>/cgroup.subtree_control`
/// unless they already are.
///
/// With `evacuate`, an `EBUSY` (the "no internal processes" rule: `dir` is
/// not the root and holds processes) is handled by moving every process of
/// `dir` into the leaf `<dir>/supervisor` and retrying. The root cgroup
/// never answers `EBUSY` for this, so its processes are never moved.
pub(crate) fn enable_controllers(dir: &Path, evacuate: bool) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let current = fsutil::read_optional(&path)?.unwrap_or_default();
    let enabled: Vec<&str> = current
        .split_whitespace()
        .map(|c| c.trim_start_matches('+'))
        .collect();
    let value = REQUIRED
        .iter()
        .filter(|c| !enabled.contains(c))
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if value.is_empty() {
        return Ok(());
    }
    let mut attempts = 0;
    loop {
        match fsutil::write_raw(&path, &value) {
            Ok(()) => return Ok(()),
            Err(e)
                if evacuate
                    && attempts < EVACUATE_ATTEMPTS
                    && e.raw_os_error() == Some(libc::EBUSY) =>
            {
                attempts += 1;
                evacuate_to_supervisor(dir)?;
            }
            Err(source) => {
                return Err(CgroupError::Write {
                    path,
                    value,
                    source,
                });
            }
        }
    }
}

/// Moves every process in `<dir>/cgroup.procs` into `<dir>/supervisor`
/// (created if missing). Processes that exit meanwhile are skipped.
pub(crate) fn evacuate_to_supervisor(dir: &Path) -> Result<(), CgroupError> {
    let supervisor = dir.join(SUPERVISOR_DIR);
    fsutil::mkdir_exist_ok(&supervisor)?;
    let target = supervisor.join("cgroup.procs");
    for pid in fsutil::read_procs(&dir.join("cgroup.procs"))? {
        match fsutil::write_raw(&target, &pid.to_string()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => {
                return Err(CgroupError::Attach {
                    pid,
                    path: target,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A sandbox cgroup in the unified hierarchy.
#[derive(Debug)]
pub struct V2Cgroup {
    dir: PathBuf,
    fd: OwnedFd,
}

impl V2Cgroup {
    pub(crate) fn write_limits(
        &self,
        limits: &Limits,
        cpu_quota_us: Option<u64>,
    ) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            fsutil::write(&self.dir.join("memory.max"), &bytes.to_string())?;
            let swap = self.dir.join("memory.swap.max");
            if swap.exists() {
                fsutil::write(&swap, "0")?;
            }
        }
        if let Some(quota) = cpu_quota_us {
            fsutil::write(
                &self.dir.join("cpu.max"),
                &format!("{quota} {CPU_PERIOD_US}"),
            )?;
        }
        if let Some(pids) = limits.pids {
            fsutil::write(&self.dir.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    /// Kill without `cgroup.kill` (kernels before 5.14): freeze, SIGKILL
    /// every pid, thaw.
    fn freeze_and_kill(&self) -> Result<(), CgroupError> {
        let freeze = self.dir.join("cgroup.freeze");
        let events = self.dir.join("cgroup.events");
        // As on v1: kill even if freezing fails or does not finish in time.
        let froze = fsutil::write(&freeze, "1");
        let waited = match froze {
            Ok(()) => fsutil::poll_until(FREEZE_TIMEOUT, || {
                let text = fsutil::read_optional(&events)?.unwrap_or_default();
                Ok(fsutil::keyed_u64(&events, &text, "frozen")? == Some(1))
            })
            .map(drop),
            Err(_) => Ok(()),
        };
        let killed = self.pids().and_then(|pids| fsutil::kill_pids(&pids));
        let thawed = match froze {
            Ok(()) => fsutil::write(&freeze, "0"),
            Err(_) => Ok(()),
        };
        froze.and(waited).and(killed).and(thawed)
    }
}

impl Cgroup for V2Cgroup {
    fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidPid { pid });
        }
        let path = self.dir.join("cgroup.procs");
        fsutil::write_raw(&path, &pid.to_string()).map_err(|source| CgroupError::Attach {
            pid,
            path,
            source,
        })
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        fsutil::require_dir(&self.dir)?;
        let peak_path = self.dir.join("memory.peak");
        let memory_peak_bytes = match fsutil::read_optional(&peak_path)? {
            Some(text) => Some(fsutil::parse_u64(&peak_path, &text)?),
            None => None,
        };
        let cpu_path = self.dir.join("cpu.stat");
        let cpu_time_ns = match fsutil::read_optional(&cpu_path)? {
            Some(text) => fsutil::keyed_u64(&cpu_path, &text, "usage_usec")?
                .map(|usec| usec.saturating_mul(1000)),
            None => None,
        };
        let events_path = self.dir.join("memory.events");
        let oom_kills = match fsutil::read_optional(&events_path)? {
            Some(text) => fsutil::keyed_u64(&events_path, &text, "oom_kill")?.unwrap_or(0),
            None => 0,
        };
        Ok(Stats {
            memory_peak_bytes,
            cpu_time_ns,
            oom_kills,
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fsutil::pids_in_trees(std::slice::from_ref(&self.dir))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            fsutil::write(&kill, "1")
        } else {
            self.freeze_and_kill()
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        fsutil::remove_trees(std::slice::from_ref(&self.dir), REMOVE_TIMEOUT, || {
            self.kill_all()
        })
    }

    fn dir_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}
