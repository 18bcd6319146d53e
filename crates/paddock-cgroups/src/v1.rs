//! cgroup v1: one hierarchy per controller (`memory`, `cpu`, `cpuacct`,
//! `pids`, `freezer`; `cpu` and `cpuacct` are often co-mounted).

use std::fs;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::mountinfo::{Mount, ProcCgroup, cgroup_dir};
use crate::{
    CPU_PERIOD_US, Cgroup, CgroupError, FREEZE_TIMEOUT, GROUP_DIR, Limits, REMOVE_TIMEOUT, Stats,
    check_writable, fsutil,
};

/// The v1 controllers a sandbox cgroup needs.
const REQUIRED: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

/// One directory per controller. For the hierarchy these are our own
/// cgroup's directories; for a [`V1Cgroup`] the sandbox's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ControllerDirs {
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
    freezer: PathBuf,
}

impl ControllerDirs {
    /// The distinct directories, in controller order (co-mounted
    /// controllers share one).
    fn unique(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::with_capacity(5);
        for dir in [
            &self.memory,
            &self.cpu,
            &self.cpuacct,
            &self.pids,
            &self.freezer,
        ] {
            if !out.contains(dir) {
                out.push(dir.clone());
            }
        }
        out
    }

    fn map(&self, f: impl Fn(&Path) -> PathBuf) -> ControllerDirs {
        ControllerDirs {
            memory: f(&self.memory),
            cpu: f(&self.cpu),
            cpuacct: f(&self.cpuacct),
            pids: f(&self.pids),
            freezer: f(&self.freezer),
        }
    }
}

/// A detected cgroup v1 setup: our own cgroup's directory in each needed
/// controller hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    own: ControllerDirs,
}

impl V1Hierarchy {
    /// Builds the hierarchy from parsed mountinfo and `/proc/self/cgroup`.
    pub(crate) fn detect(mounts: &[Mount], entries: &[ProcCgroup]) -> Result<Self, CgroupError> {
        let mut found = Vec::with_capacity(REQUIRED.len());
        let mut problems = Vec::new();
        for controller in REQUIRED {
            match own_dir(mounts, entries, controller) {
                Ok(dir) => found.push(dir),
                Err(problem) => problems.push(problem),
            }
        }
        let [memory, cpu, cpuacct, pids, freezer] =
            <[PathBuf; 5]>::try_from(found).map_err(|_| CgroupError::Unusable {
                reason: format!("cgroup v1: {}", problems.join("; ")),
            })?;
        let own = ControllerDirs {
            memory,
            cpu,
            cpuacct,
            pids,
            freezer,
        };
        for dir in own.unique() {
            check_writable(&dir, "cgroup v1")?;
        }
        Ok(V1Hierarchy { own })
    }

    /// Our own cgroup's distinct directories (memory, cpu, cpuacct, pids,
    /// freezer order; co-mounted controllers appear once).
    pub fn own_dirs(&self) -> Vec<PathBuf> {
        self.own.unique()
    }

    fn cgroup(&self, name: &str) -> V1Cgroup {
        let dirs = self.own.map(|d| d.join(GROUP_DIR).join(name));
        V1Cgroup {
            unique: dirs.unique(),
            dirs,
        }
    }

    pub(crate) fn create(
        &self,
        name: &str,
        limits: &Limits,
        cpu_quota_us: Option<u64>,
    ) -> Result<V1Cgroup, CgroupError> {
        let cgroup = self.cgroup(name);
        let mut created = Vec::new();
        let result = (|| {
            for (own, dir) in self.own.unique().iter().zip(&cgroup.unique) {
                let group = own.join(GROUP_DIR);
                fsutil::mkdir_child_first(dir, || fsutil::mkdir_exist_ok(&group).map(drop))?;
                created.push(dir.clone());
            }
            cgroup.write_limits(limits, cpu_quota_us)
        })();
        if let Err(e) = result {
            for dir in created.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
        Ok(cgroup)
    }

    /// Leftover sandbox cgroups: every name under the *memory* hierarchy's
    /// `<own>/paddock`, with its directories in all hierarchies.
    ///
    /// The memory directory is the ownership marker: it is created first and
    /// removed last. The other hierarchies are often shared with unrelated
    /// processes (on this kind of host the cpu, pids and freezer cgroup of
    /// every process is `/`), so a name found only there may be another
    /// paddock instance's live sandbox and is not reported.
    pub(crate) fn leftovers(&self) -> Result<Vec<PathBuf>, CgroupError> {
        let mut out = Vec::new();
        for marker in fsutil::child_dirs(&self.own.memory.join(GROUP_DIR))? {
            let Some(name) = marker.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if crate::validate_name(name).is_err() {
                continue;
            }
            out.extend(self.cgroup(name).unique.into_iter().filter(|d| d.is_dir()));
        }
        Ok(out)
    }

    pub(crate) fn open(&self, name: &str) -> Result<V1Cgroup, CgroupError> {
        let cgroup = self.cgroup(name);
        if !cgroup.unique.iter().any(|d| d.is_dir()) {
            return Err(CgroupError::NotFound {
                path: cgroup.dirs.memory.clone(),
            });
        }
        Ok(cgroup)
    }
}

/// Finds our own cgroup's directory in the v1 hierarchy of `controller`.
fn own_dir(mounts: &[Mount], entries: &[ProcCgroup], controller: &str) -> Result<PathBuf, String> {
    let candidates: Vec<&Mount> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.has_option(controller))
        .collect();
    if candidates.is_empty() {
        return Err(format!("{controller} is not mounted"));
    }
    let entry = entries
        .iter()
        .find(|e| e.hierarchy_id != 0 && e.controllers.iter().any(|c| c == controller))
        .ok_or_else(|| format!("{controller} has no line in /proc/self/cgroup"))?;
    candidates
        .iter()
        .find_map(|m| cgroup_dir(m, &entry.path))
        .ok_or_else(|| {
            format!(
                "own {controller} cgroup {} is outside every {controller} mount",
                entry.path.display()
            )
        })
}

/// A sandbox cgroup in the v1 hierarchies.
#[derive(Debug)]
pub struct V1Cgroup {
    dirs: ControllerDirs,
    unique: Vec<PathBuf>,
}

impl V1Cgroup {
    /// Writes the limits into the already created directories.
    fn write_limits(&self, limits: &Limits, cpu_quota_us: Option<u64>) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            set_memory_limit(&self.dirs.memory, bytes)?;
        }
        if let Some(quota) = cpu_quota_us {
            fsutil::write(
                &self.dirs.cpu.join("cpu.cfs_period_us"),
                &CPU_PERIOD_US.to_string(),
            )?;
            fsutil::write(&self.dirs.cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(pids) = limits.pids {
            fsutil::write(&self.dirs.pids.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }
}

/// Sets `memory.limit_in_bytes` and, if swap accounting exists,
/// `memory.memsw.limit_in_bytes` to the same value (no swap).
///
/// The kernel requires memory ≤ memsw at all times: lowering needs memory
/// first, raising needs memsw first. Memory is tried first (the case for a
/// fresh cgroup, where both are unlimited); on `EINVAL` memsw goes first.
pub(crate) fn set_memory_limit(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    let value = bytes.to_string();
    let memory = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    match fsutil::write_raw(&memory, &value) {
        Ok(()) => {
            if has_memsw {
                fsutil::write(&memsw, &value)?;
            }
            Ok(())
        }
        Err(e) if has_memsw && e.raw_os_error() == Some(libc::EINVAL) => {
            fsutil::write(&memsw, &value)?;
            fsutil::write(&memory, &value)
        }
        Err(source) => Err(CgroupError::Write {
            path: memory,
            value,
            source,
        }),
    }
}

impl Cgroup for V1Cgroup {
    fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidPid { pid });
        }
        let value = pid.to_string();
        for dir in &self.unique {
            let path = dir.join("cgroup.procs");
            fsutil::write_raw(&path, &value).map_err(|source| CgroupError::Attach {
                pid,
                path,
                source,
            })?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        fsutil::require_dir(&self.dirs.memory)?;
        let peak_path = self.dirs.memory.join("memory.max_usage_in_bytes");
        let memory_peak_bytes = match fsutil::read_optional(&peak_path)? {
            Some(text) => Some(fsutil::parse_u64(&peak_path, &text)?),
            None => None,
        };
        let cpu_path = self.dirs.cpuacct.join("cpuacct.usage");
        let cpu_time_ns = match fsutil::read_optional(&cpu_path)? {
            Some(text) => Some(fsutil::parse_u64(&cpu_path, &text)?),
            None => None,
        };
        let oom_path = self.dirs.memory.join("memory.oom_control");
        let oom_kills = match fsutil::read_optional(&oom_path)? {
            Some(text) => fsutil::keyed_u64(&oom_path, &text, "oom_kill")?.unwrap_or(0),
            None => 0,
        };
        Ok(Stats {
            memory_peak_bytes,
            cpu_time_ns,
            oom_kills,
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fsutil::pids_in_trees(&self.unique)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let state = self.dirs.freezer.join("freezer.state");
        // If the freezer cannot be used (its directory is gone in a partial
        // leftover) or does not finish freezing in time (a task stuck in an
        // uninterruptible sleep), kill anyway: remove() repeats the kill
        // while it waits, and SIGKILLs to frozen tasks land once thawed.
        let froze = fsutil::write(&state, "FROZEN");
        let waited = match froze {
            Ok(()) => fsutil::poll_until(FREEZE_TIMEOUT, || {
                Ok(fsutil::read(&state)?.trim() == "FROZEN")
            })
            .map(drop),
            Err(_) => Ok(()),
        };
        let killed = self.pids().and_then(|pids| fsutil::kill_pids(&pids));
        let thawed = match froze {
            Ok(()) => fsutil::write(&state, "THAWED"),
            Err(_) => Ok(()),
        };
        froze.and(waited).and(killed).and(thawed)
    }

    fn remove(&self) -> Result<(), CgroupError> {
        // Memory last: its directory marks the cgroup as ours (see
        // `V1Hierarchy::leftovers`), so a crash mid-remove stays findable.
        let order: Vec<PathBuf> = self.unique.iter().rev().cloned().collect();
        fsutil::remove_trees(&order, REMOVE_TIMEOUT, || self.kill_all())
    }

    fn dir_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.unique.clone()
    }
}
