//! After many runs of every kind (success, failure, timeout, OOM), sequential
//! and concurrent, nothing is left behind on the host: mounts, cgroups,
//! processes, temp dirs, uid leases.
//!
//! This test holds the global lock exclusively, so no other test of this
//! binary creates sandboxes while it compares the before and after state.
//! Other programs on the machine may still create cgroups or temp files of
//! their own; the comparisons only count what belongs to this test's runs or
//! to owners that are gone.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    cgroup_dirs, collect, command, host_processes, run_args, setup_exclusive, unique,
    unique_sleep_secs,
};

const CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer", "unified"];

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .count()
}

fn run_cgroup_dirs() -> BTreeSet<PathBuf> {
    let roots: Vec<PathBuf> = CONTROLLERS
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .collect();
    cgroup_dirs(10, &|n: &str| n.starts_with("run-"))
        .into_iter()
        .filter(|d| roots.iter().any(|r| d.starts_with(r)))
        .collect()
}

/// The paddock pid in a `run-<pid>-<n>` cgroup name.
fn owner_of(dir: &Path) -> Option<i32> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("run-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn entries(dir: &str, skip: &[&str]) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !skip.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

fn tmp_entries() -> BTreeSet<String> {
    entries("/tmp", &[])
        .into_iter()
        // The toolchain's own temp dirs (other builds on the machine) and
        // the temp dirs of other test processes of this suite.
        .filter(|n| !n.starts_with("rustc") && !n.starts_with("paddock-test-"))
        .collect()
}

/// Inodes of the uid lease slot files.
fn lease_inodes() -> BTreeSet<u64> {
    std::fs::read_dir("/run/paddock/uids")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.ino())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids holding a flock on a uid lease slot file.
fn lease_holders() -> Vec<i32> {
    let inodes = lease_inodes();
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
            let pid = f.get(4)?.parse::<i32>().ok()?;
            let ino = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
            inodes.contains(&ino).then_some(pid)
        })
        .collect()
}

#[derive(Debug)]
struct Snapshot {
    mounts: usize,
    cgroups: BTreeSet<PathBuf>,
    tmp: BTreeSet<String>,
    run_paddock: BTreeSet<String>,
    staging: BTreeSet<String>,
    shm: BTreeSet<String>,
}

fn snapshot() -> Snapshot {
    Snapshot {
        mounts: mount_count(),
        cgroups: run_cgroup_dirs(),
        tmp: tmp_entries(),
        run_paddock: entries("/run/paddock", &["uids", "root"]),
        staging: entries("/run/paddock/root", &[]),
        shm: entries("/dev/shm", &[]),
    }
}

/// One kind of run: options, argv, expected exit status.
fn case(i: usize, marker: &str, sleep_secs: u64) -> (Vec<String>, i32) {
    let mark = format!("LEAK_MARKER={marker}");
    let (opts, argv, code): (Vec<&str>, Vec<String>, i32) = match i % 4 {
        0 => (vec![], vec!["true".into()], 0),
        1 => (
            vec![],
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo out; echo err >&2; exit 7 # {marker}"),
            ],
            7,
        ),
        2 => (
            vec!["--timeout", "200ms"],
            vec!["sleep".into(), sleep_secs.to_string()],
            124,
        ),
        _ => (
            vec!["--memory", "32M"],
            vec![
                "python3".into(),
                "-c".into(),
                format!("# {marker}\nx = bytearray(1 << 30)"),
            ],
            137,
        ),
    };
    let mut all: Vec<&str> = vec!["--env", &mark];
    all.extend(opts);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    (run_args(&all, &argv), code)
}

/// Runs one case; returns (paddock pid, problem if any).
fn one(i: usize, marker: &str, sleep_secs: u64) -> (i32, Option<String>) {
    let (args, want) = case(i, marker, sleep_secs);
    let mut child = command(&args).spawn().expect("spawn paddock");
    let pid = child.id() as i32;
    let (code, _out, err) = collect(&mut child, None, Duration::from_secs(30), &args);
    let problem = (code != Some(want)).then(|| {
        format!(
            "run {i} ({:?}): exit {code:?}, expected {want}; stderr: {}",
            &args[3..],
            String::from_utf8_lossy(&err)
        )
    });
    (pid, problem)
}

#[test]
fn nothing_leaks_after_many_runs() {
    let _g = setup_exclusive();
    let started = Instant::now();
    let marker = unique("leak");
    let sleep_secs = unique_sleep_secs();
    let sleep_needle = format!("sleep {sleep_secs}");
    let before = snapshot();
    assert!(
        before.staging.is_empty(),
        "/run/paddock/root (the staging mount point) is not empty before the test: {:?}",
        before.staging
    );

    let mut pids = Vec::new();
    let mut problems = Vec::new();
    for i in 0..200 {
        let (pid, p) = one(i, &marker, sleep_secs);
        pids.push(pid);
        problems.extend(p);
    }
    let sequential = started.elapsed();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let marker = marker.clone();
            std::thread::spawn(move || one(i, &marker, sleep_secs))
        })
        .collect();
    for h in handles {
        let (pid, p) = h.join().expect("concurrent run thread");
        pids.push(pid);
        problems.extend(p);
    }
    assert!(
        problems.is_empty(),
        "{} of 220 runs ended with the wrong status:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // Processes: nothing of ours may remain (allow a moment for reaping).
    let ours = |cmd: &str| cmd.contains(&marker) || cmd.contains(&sleep_needle);
    let deadline = Instant::now() + Duration::from_secs(3);
    let left = loop {
        let left: Vec<(i32, String)> = host_processes()
            .into_iter()
            .filter(|(p, c)| ours(c) || pids.contains(p))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left.is_empty(), "processes left after the runs: {left:?}");

    let after = snapshot();
    assert_eq!(
        after.mounts, before.mounts,
        "the host's mount table changed: {} lines before, {} after",
        before.mounts, after.mounts
    );
    // cgroups: none of our runs', and none whose owner is gone.
    let leaked_cgroups: Vec<&PathBuf> = after
        .cgroups
        .difference(&before.cgroups)
        .filter(|d| owner_of(d).is_none_or(|p| pids.contains(&p) || !alive(p)))
        .collect();
    assert!(
        leaked_cgroups.is_empty(),
        "cgroup dirs left after the runs: {leaked_cgroups:?}"
    );
    let ours_anywhere: Vec<&PathBuf> = after
        .cgroups
        .iter()
        .filter(|d| owner_of(d).is_some_and(|p| pids.contains(&p)))
        .collect();
    assert!(
        ours_anywhere.is_empty(),
        "cgroups of our runs: {ours_anywhere:?}"
    );
    // Temp dirs and files.
    let new_tmp: Vec<&String> = after.tmp.difference(&before.tmp).collect();
    let new_tmp: Vec<&&String> = new_tmp
        .iter()
        .filter(|n| Path::new("/tmp").join(n).exists())
        .collect();
    assert!(new_tmp.is_empty(), "new entries in /tmp: {new_tmp:?}");
    assert_eq!(
        after.run_paddock, before.run_paddock,
        "entries of /run/paddock changed"
    );
    assert!(
        after.staging.is_empty(),
        "/run/paddock/root is not empty after the runs: {:?}",
        after.staging
    );
    let new_shm: Vec<&String> = after.shm.difference(&before.shm).collect();
    assert!(new_shm.is_empty(), "new entries in /dev/shm: {new_shm:?}");
    // uid ranges: no lease still held by one of our runs.
    let held: Vec<i32> = lease_holders()
        .into_iter()
        .filter(|p| pids.contains(p))
        .collect();
    assert!(
        held.is_empty(),
        "uid leases still held by finished runs: {held:?}"
    );

    let total = started.elapsed();
    assert!(
        total < Duration::from_secs(90),
        "the leak test took {total:?} (sequential part {sequential:?}); 220 runs should be fast"
    );
}
