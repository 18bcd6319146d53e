//! The one test against the real cgroup filesystem of the machine running
//! it. It needs root and usable cgroups (v1 here; it also runs on a v2 host)
//! and FAILS, rather than skips, without them.

use std::fs;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paddock_cgroups::{Cgroup, Hierarchy, Limits};

/// Kills the child and removes the cgroup if the test panics midway, so a
/// failed run leaves nothing behind.
struct Cleanup {
    child: Option<Child>,
    cgroup: Option<Box<dyn Cgroup>>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(cgroup) = &self.cgroup {
            let _ = cgroup.remove();
        }
    }
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The first of `dirs` that has a file called `file`.
fn find_file(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(file)).find(|p| p.exists())
}

#[test]
fn real_cgroup_lifecycle() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the real cgroup test must run as root (euid is {})",
        rustix::process::geteuid().as_raw()
    );
    let hierarchy = Hierarchy::detect()
        .unwrap_or_else(|e| panic!("this machine must have usable cgroups: {e} ({e:?})"));
    eprintln!(
        "detected cgroup v{}; group dirs {:?}",
        hierarchy.version(),
        hierarchy.group_dirs()
    );

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("test-{}-{nanos}", std::process::id());
    let limits = Limits {
        memory_bytes: Some(128 << 20),
        cpu_millicores: Some(500),
        pids: Some(64),
    };
    let mut guard = Cleanup {
        child: None,
        cgroup: None,
    };
    let cgroup = &**guard.cgroup.insert(
        hierarchy
            .create(&name, &limits)
            .unwrap_or_else(|e| panic!("create {name}: {e} ({e:?})")),
    );
    let paths = cgroup.paths();
    assert!(!paths.is_empty());
    assert!(paths.iter().all(|p| p.is_dir()), "{paths:?}");
    assert!(paths.iter().all(|p| p.ends_with(format!("paddock/{name}"))));
    assert!(
        hierarchy
            .leftovers()
            .expect("leftovers")
            .iter()
            .any(|p| p.ends_with(&name))
    );
    assert_eq!(cgroup.dir_fd().is_some(), hierarchy.version() == 2);

    // The kernel holds the limits we asked for.
    match hierarchy.version() {
        1 => {
            let memory = find_file(&paths, "memory.limit_in_bytes").expect("memory dir");
            assert_eq!(read_trimmed(&memory), (128u64 << 20).to_string());
            if let Some(memsw) = find_file(&paths, "memory.memsw.limit_in_bytes") {
                assert_eq!(read_trimmed(&memsw), (128u64 << 20).to_string());
            }
            let quota = find_file(&paths, "cpu.cfs_quota_us").expect("cpu dir");
            assert_eq!(read_trimmed(&quota), "50000");
            let period = find_file(&paths, "cpu.cfs_period_us").expect("cpu dir");
            assert_eq!(read_trimmed(&period), "100000");
        }
        _ => {
            let memory = find_file(&paths, "memory.max").expect("memory.max");
            assert_eq!(read_trimmed(&memory), (128u64 << 20).to_string());
            let cpu = find_file(&paths, "cpu.max").expect("cpu.max");
            assert_eq!(read_trimmed(&cpu), "50000 100000");
        }
    }
    let pids_max = find_file(&paths, "pids.max").expect("pids dir");
    assert_eq!(read_trimmed(&pids_max), "64");

    // A process moves in and is seen. It execs `sleep 30` only after the
    // attach, so that the new image's memory is charged to our cgroup and
    // the peak is a real measurement.
    let child = guard.child.insert(
        Command::new("sh")
            .args(["-c", "read go; exec sleep 30"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh"),
    );
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    cgroup
        .attach(pid)
        .unwrap_or_else(|e| panic!("attach {pid}: {e} ({e:?})"));
    let pids = cgroup.pids().expect("pids");
    assert!(pids.contains(&pid), "{pid} not in {pids:?}");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"go\n")
        .expect("tell sh to exec sleep");
    let comm = PathBuf::from(format!("/proc/{pid}/comm"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_trimmed(&comm) != "sleep" {
        assert!(Instant::now() < deadline, "sh did not exec sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(cgroup.pids().expect("pids").contains(&pid));

    // kill_all kills it with SIGKILL.
    cgroup
        .kill_all()
        .unwrap_or_else(|e| panic!("kill_all: {e} ({e:?})"));
    let status = child.wait().expect("wait for sleep");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "child should die by SIGKILL, got {status:?}"
    );
    guard.child = None;
    assert_eq!(cgroup.pids().expect("pids after kill"), Vec::<i32>::new());

    let stats = cgroup.stats().expect("stats");
    eprintln!("stats: {stats:?}");
    assert!(stats.memory_peak_bytes.is_some_and(|b| b > 0), "{stats:?}");
    assert!(stats.cpu_time_ns.is_some(), "{stats:?}");
    assert_eq!(stats.oom_kills, 0);

    cgroup
        .remove()
        .unwrap_or_else(|e| panic!("remove: {e} ({e:?})"));
    let left: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    cgroup.remove().expect("remove is idempotent");
    assert!(
        !hierarchy
            .leftovers()
            .expect("leftovers")
            .iter()
            .any(|p| p.ends_with(&name))
    );
    // Drop the shared parents too if no other sandbox is using them.
    hierarchy
        .remove_group_dirs()
        .unwrap_or_else(|e| panic!("remove_group_dirs: {e} ({e:?})"));
}
