//! Small file-system helpers shared by the v1 and v2 back ends.
//!
//! Everything here maps `io::Error`s to [`CgroupError`] variants carrying the
//! path involved, and every wait loop is bounded by a deadline.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::CgroupError;

/// cgroup v1 filesystem magic (`CGROUP_SUPER_MAGIC`).
const CGROUP_SUPER_MAGIC: i128 = 0x0027_e0eb;
/// cgroup v2 filesystem magic (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_SUPER_MAGIC: i128 = 0x6367_7270;

/// Whether `dir` lives on a cgroup (v1 or v2) filesystem.
pub(crate) fn is_cgroupfs(dir: &Path) -> bool {
    match rustix::fs::statfs(dir) {
        Ok(st) => {
            let magic = i128::from(st.f_type);
            magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC
        }
        Err(_) => false,
    }
}

/// Writes `value` to a control file with a single `write(2)`.
///
/// On a real cgroupfs the control files exist and are never created. When
/// the file is missing and the directory is *not* a cgroupfs (a fake tree
/// used by tests) the file is created, so that tests can observe what was
/// written; on a real cgroupfs a missing file stays a `NotFound` error.
pub(crate) fn write_raw(path: &Path, value: &str) -> io::Result<()> {
    let mut file = match fs::OpenOptions::new().write(true).truncate(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let fake = path
                .parent()
                .is_some_and(|dir| dir.is_dir() && !is_cgroupfs(dir));
            if !fake {
                return Err(e);
            }
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?
        }
        Err(e) => return Err(e),
    };
    // Control files must be written in one go; a short write would be
    // parsed by the kernel as a partial value.
    let written = file.write(value.as_bytes())?;
    if written != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {written} of {} bytes", value.len()),
        ));
    }
    Ok(())
}

/// [`write_raw`] mapped to [`CgroupError::Write`].
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_raw(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Reads a whole control file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    read_sized(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `fs::read_to_string` for `/proc` and cgroupfs files. Those report a size
/// of 0, so std's sizing (a `statx` and an `lseek` first) learns nothing;
/// reading page-sized chunks takes `open`, one or two `read`s and `close`.
fn read_sized(path: &Path) -> io::Result<String> {
    use io::Read;
    let mut file = fs::File::open(path)?;
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads a control file that may not exist on every kernel; `None` if it
/// does not.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match read_sized(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Fails with [`CgroupError::Read`] (`NotFound`) if the cgroup directory is
/// gone, so that stats of a removed cgroup are an error rather than all
/// `None`.
pub(crate) fn require_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(CgroupError::Read {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(source) => Err(CgroupError::Read {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Parses a file holding a single unsigned integer.
pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    let trimmed = text.trim();
    trimmed.parse::<u64>().map_err(|e| CgroupError::Parse {
        path: path.to_owned(),
        reason: format!("expected an unsigned integer, got {trimmed:?}: {e}"),
    })
}

/// Finds `key N` in a flat-keyed file (`memory.events`, `cpu.stat`,
/// `memory.oom_control`). `None` if the key is absent.
pub(crate) fn keyed_u64(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            let value = parts.next().unwrap_or("");
            return value
                .parse::<u64>()
                .map(Some)
                .map_err(|e| CgroupError::Parse {
                    path: path.to_owned(),
                    reason: format!("bad value {value:?} for key {key:?}: {e}"),
                });
        }
    }
    Ok(None)
}

/// Reads a `cgroup.procs` file. A missing file (the cgroup is being removed
/// or never existed) reads as empty.
pub(crate) fn read_procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let Some(text) = read_optional(path)? else {
        return Ok(Vec::new());
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<i32>().map_err(|e| CgroupError::Parse {
                path: path.to_owned(),
                reason: format!("bad pid {l:?}: {e}"),
            })
        })
        .collect()
}

/// `dir` and all directories below it, children before parents (the order in
/// which they can be removed). A missing `dir` yields an empty list.
pub(crate) fn subtree_post_order(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    collect_post_order(dir, &mut out)?;
    Ok(out)
}

fn collect_post_order(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        // A child removed concurrently makes file_type fail; skip it.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_post_order(&entry.path(), out)?;
        }
    }
    out.push(dir.to_owned());
    Ok(())
}

/// Sub-directories (child cgroups) directly under `dir`, sorted. A missing
/// `dir` yields an empty list.
pub(crate) fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// All pids in `cgroup.procs` of every directory of every tree in `roots`,
/// sorted and deduplicated.
pub(crate) fn pids_in_trees(roots: &[PathBuf]) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    for root in roots {
        for dir in subtree_post_order(root)? {
            pids.extend(read_procs(&dir.join("cgroup.procs"))?);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Creates a directory; `Ok(false)` if it already existed (concurrent
/// creators of shared parents race, and that is fine).
pub(crate) fn mkdir_exist_ok(path: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates a directory that must not exist yet.
pub(crate) fn mkdir_new(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(|source| CgroupError::Create {
        path: path.to_owned(),
        source,
    })
}

/// Creates `dir`, and only when its parent is missing runs
/// [`mkdir_with_parent`]: for a parent that needs nothing but to exist.
pub(crate) fn mkdir_child_first(
    dir: &Path,
    prepare_parent: impl Fn() -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    match mkdir_new(dir) {
        Err(CgroupError::Create { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            mkdir_with_parent(dir, prepare_parent)
        }
        other => other,
    }
}

/// Runs `prepare_parent` (which creates and sets up the shared `paddock`
/// directory) and creates `dir` inside it. If `paddock` vanishes in between
/// (another process removing empty group directories, see
/// `Hierarchy::remove_group_dirs`), the pair is retried a few times.
pub(crate) fn mkdir_with_parent(
    dir: &Path,
    prepare_parent: impl Fn() -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        prepare_parent()?;
        match mkdir_new(dir) {
            Err(CgroupError::Create { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Sends SIGKILL to each pid. Pids that are already gone are skipped; the
/// first other error is returned after all pids were tried.
pub(crate) fn kill_pids(pids: &[i32]) -> Result<(), CgroupError> {
    let mut first_error = None;
    for &pid in pids {
        // cgroup.procs shows 0 for processes outside our pid namespace.
        let Some(target) = Pid::from_raw(pid) else {
            continue;
        };
        match kill_process(target, Signal::KILL) {
            Ok(()) => {}
            Err(rustix::io::Errno::SRCH) => {}
            Err(errno) => {
                if first_error.is_none() {
                    first_error = Some(CgroupError::Kill {
                        pid,
                        source: errno.into(),
                    });
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Polls `done` with a growing sleep (1 ms doubling to 10 ms) until it
/// returns `true` or `timeout` passes. Returns whether it finished.
pub(crate) fn poll_until(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// The shared `remove` algorithm: rmdir every directory of every tree
/// (children first), killing whatever is still inside and retrying `EBUSY`
/// until `timeout`. Missing directories count as removed, so this is
/// idempotent.
///
/// `kill_all` errors are not fatal here: the processes may be exiting on
/// their own, and a cgroup that cannot be emptied shows up as the final
/// `EBUSY` [`CgroupError::Remove`].
pub(crate) fn remove_trees(
    roots: &[PathBuf],
    timeout: Duration,
    kill_all: impl Fn() -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    const KILL_INTERVAL: Duration = Duration::from_millis(100);
    // Fast path: a finished sandbox's cgroup is empty and has no children,
    // so one rmdir per directory does it without walking the trees.
    let mut all_gone = true;
    for root in roots {
        match fs::remove_dir(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => all_gone = false,
        }
    }
    if all_gone {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let mut last_kill: Option<Instant> = None;
    let mut pause = Duration::from_millis(1);
    loop {
        let pids = pids_in_trees(roots)?;
        if !pids.is_empty() && last_kill.is_none_or(|t| t.elapsed() >= KILL_INTERVAL) {
            // Best effort, see above.
            let _ = kill_all();
            last_kill = Some(Instant::now());
        }
        match rmdir_trees(roots) {
            Ok(()) => return Ok(()),
            Err(CgroupError::Remove { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn rmdir_trees(roots: &[PathBuf]) -> Result<(), CgroupError> {
    for root in roots {
        for dir in subtree_post_order(root)? {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Remove { path: dir, source }),
            }
        }
    }
    Ok(())
}
