//! Tests against fake cgroupfs trees in a temporary directory.
//!
//! On a fake tree the control files of a freshly created cgroup do not
//! exist; `fsutil::write_raw` creates them (only off cgroupfs), so tests can
//! read back what was written. Before `remove()`, tests delete the regular
//! files, as the kernel does when a cgroup directory is removed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use tempfile::TempDir;

use crate::{CgroupError, Hierarchy, Limits, Stats, v1, v2};

// ---------------------------------------------------------------- helpers

/// A child process killed and reaped on drop, for tests that send SIGKILL
/// (so that a fake `cgroup.procs` never names a process we care about).
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid fits i32")
    }

    /// Waits for the child and returns the signal that ended it.
    fn wait_signal(&mut self) -> Option<i32> {
        self.0.wait().expect("wait for child").signal()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent");
    }
    fs::write(path, text).expect("write fake file");
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Deletes regular files below `dir`, as removing a cgroup directory makes
/// its control files vanish on a real cgroupfs.
fn strip_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            strip_files(&path);
        } else {
            fs::remove_file(&path).expect("remove fake control file");
        }
    }
}

fn mount_line(id: u32, root: &str, mount_point: &Path, fstype: &str, options: &str) -> String {
    format!(
        "{id} 31 0:{id} {root} {} rw,nosuid,nodev,noexec,relatime shared:{id} - {fstype} {fstype} {options}\n",
        mount_point.display()
    )
}

/// Which v1 layout to fake.
#[derive(Clone, Copy)]
enum CpuLayout {
    /// `/sys/fs/cgroup/cpu` and `/sys/fs/cgroup/cpuacct` (this machine).
    Separate,
    /// `/sys/fs/cgroup/cpu,cpuacct`.
    Combined,
}

struct Fake {
    tmp: TempDir,
    mountinfo: String,
    proc_cgroup: String,
}

impl Fake {
    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn detect(&self) -> Result<Hierarchy, CgroupError> {
        Hierarchy::detect_at(&self.mountinfo, &self.proc_cgroup)
    }

    fn hierarchy(&self) -> Hierarchy {
        self.detect().expect("detect fake tree")
    }
}

/// A hybrid host like this machine: v1 controllers (with `controllers`
/// mounted) plus cgroup2 at `unified` with only hugetlb. Our memory cgroup is
/// `/process_api/abc`, everything else `/`.
fn fake_v1_with(layout: CpuLayout, controllers: &[&str]) -> Fake {
    let tmp = TempDir::new().expect("tempdir");
    let root = tmp.path().to_owned();
    let mut mountinfo = mount_line(30, "/", &root, "tmpfs", "rw,mode=755");
    let mut proc_cgroup = String::from("9:name=systemd:/\n");
    let mut id = 40;
    let mut hierarchy = 1;
    let mut add = |dir: &str, opts: &str, own: &str| {
        let mount_point = root.join(dir);
        fs::create_dir_all(mount_point.join(own.trim_start_matches('/'))).expect("mkdir");
        mountinfo.push_str(&mount_line(
            id,
            "/",
            &mount_point,
            "cgroup",
            &format!("rw,{opts}"),
        ));
        proc_cgroup.push_str(&format!("{hierarchy}:{opts}:{own}\n"));
        id += 1;
        hierarchy += 1;
    };
    let has = |c: &str| controllers.contains(&c);
    match layout {
        CpuLayout::Separate => {
            if has("cpu") {
                add("cpu", "cpu", "/");
            }
            if has("cpuacct") {
                add("cpuacct", "cpuacct", "/");
            }
        }
        CpuLayout::Combined => add("cpu,cpuacct", "cpu,cpuacct", "/"),
    }
    for controller in ["cpuset", "memory", "devices", "freezer", "blkio", "pids"] {
        if controller == "cpuset"
            || controller == "devices"
            || controller == "blkio"
            || has(controller)
        {
            let own = if controller == "memory" {
                "/process_api/abc"
            } else {
                "/"
            };
            add(controller, controller, own);
        }
    }
    let unified = root.join("unified");
    write(&unified.join("cgroup.controllers"), "hugetlb\n");
    mountinfo.push_str(&mount_line(60, "/", &unified, "cgroup2", "rw"));
    proc_cgroup.push_str("0::/\n");
    Fake {
        tmp,
        mountinfo,
        proc_cgroup,
    }
}

fn fake_v1(layout: CpuLayout) -> Fake {
    fake_v1_with(layout, &["memory", "cpu", "cpuacct", "pids", "freezer"])
}

/// A pure v2 host: cgroup2 at `cgroup`, we are in `own` (e.g.
/// `/system.slice/paddock.service`), whose `cgroup.controllers` lists
/// `controllers`.
fn fake_v2(own: &str, controllers: &str) -> Fake {
    let tmp = TempDir::new().expect("tempdir");
    let mount_point = tmp.path().join("cgroup");
    let own_dir = mount_point.join(own.trim_start_matches('/'));
    fs::create_dir_all(&own_dir).expect("mkdir own");
    write(
        &mount_point.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    write(&own_dir.join("cgroup.controllers"), controllers);
    write(&own_dir.join("cgroup.subtree_control"), "");
    let mountinfo = mount_line(
        40,
        "/",
        &mount_point,
        "cgroup2",
        "rw,nsdelegate,memory_recursiveprot",
    );
    Fake {
        tmp,
        mountinfo,
        proc_cgroup: format!("0::{own}\n"),
    }
}

fn v1_of(h: &Hierarchy) -> &v1::V1Hierarchy {
    match h {
        Hierarchy::V1(h) => h,
        Hierarchy::V2(_) => panic!("expected v1, got v2"),
    }
}

fn v2_of(h: &Hierarchy) -> &v2::V2Hierarchy {
    match h {
        Hierarchy::V2(h) => h,
        Hierarchy::V1(_) => panic!("expected v2, got v1"),
    }
}

fn unusable_reason(result: Result<Hierarchy, CgroupError>) -> String {
    match result {
        Err(CgroupError::Unusable { reason }) => reason,
        other => panic!("expected Unusable, got {other:?}"),
    }
}

const LIMITS: Limits = Limits {
    memory_bytes: Some(64 << 20),
    cpu_millicores: Some(500),
    pids: Some(32),
};

// ---------------------------------------------------------------- detection

#[test]
fn detects_v1_with_separate_cpu_and_cpuacct() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    assert_eq!(h.version(), 1);
    let r = fake.root();
    assert_eq!(
        v1_of(&h).own_dirs(),
        vec![
            r.join("memory/process_api/abc"),
            r.join("cpu"),
            r.join("cpuacct"),
            r.join("pids"),
            r.join("freezer"),
        ]
    );
    assert_eq!(
        h.group_dirs(),
        v1_of(&h)
            .own_dirs()
            .iter()
            .map(|d| d.join("paddock"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn detects_v1_with_combined_cpu_cpuacct() {
    let fake = fake_v1(CpuLayout::Combined);
    let h = fake.hierarchy();
    assert_eq!(h.version(), 1);
    let r = fake.root();
    assert_eq!(
        v1_of(&h).own_dirs(),
        vec![
            r.join("memory/process_api/abc"),
            r.join("cpu,cpuacct"),
            r.join("pids"),
            r.join("freezer"),
        ]
    );
}

#[test]
fn v1_detection_strips_the_mount_root() {
    // A container that sees only its own sub-tree: the memory mount's root is
    // /process_api, so /process_api/abc lives at <mount>/abc.
    let mut fake = fake_v1(CpuLayout::Combined);
    let memory = fake.root().join("memory");
    fs::create_dir_all(memory.join("abc")).expect("mkdir");
    let needle = format!(" / {} ", memory.display());
    let replacement = format!(" /process_api {} ", memory.display());
    assert!(fake.mountinfo.contains(&needle));
    fake.mountinfo = fake.mountinfo.replace(&needle, &replacement);
    let h = fake.hierarchy();
    assert_eq!(v1_of(&h).own_dirs()[0], memory.join("abc"));

    // A cgroup outside the mount's root cannot be reached.
    fake.proc_cgroup = fake
        .proc_cgroup
        .replace("memory:/process_api/abc", "memory:/elsewhere");
    let reason = unusable_reason(fake.detect());
    assert!(reason.contains("outside every memory mount"), "{reason}");
}

#[test]
fn detects_v2() {
    let fake = fake_v2(
        "/system.slice/paddock.service",
        "cpuset cpu io memory pids\n",
    );
    let h = fake.hierarchy();
    assert_eq!(h.version(), 2);
    let own = fake.root().join("cgroup/system.slice/paddock.service");
    assert_eq!(v2_of(&h).own_dir(), own);
    assert_eq!(h.group_dirs(), vec![own.join("paddock")]);
}

#[test]
fn v2_detection_steps_out_of_the_supervisor_leaf() {
    let fake = fake_v2("/svc/supervisor", "cpu memory pids\n");
    // Not yet a paddock sibling: the supervisor is just our cgroup's name.
    let h = fake.hierarchy();
    assert_eq!(
        v2_of(&h).own_dir(),
        fake.root().join("cgroup/svc/supervisor")
    );

    // After an evacuation, paddock/ sits next to supervisor/.
    let svc = fake.root().join("cgroup/svc");
    fs::create_dir(svc.join("paddock")).expect("mkdir paddock");
    write(&svc.join("cgroup.controllers"), "cpu memory pids\n");
    let h = fake.hierarchy();
    assert_eq!(v2_of(&h).own_dir(), svc);
}

#[test]
fn missing_v1_controller_is_unusable_with_reason() {
    let fake = fake_v1_with(CpuLayout::Separate, &["memory", "cpu", "cpuacct", "pids"]);
    let reason = unusable_reason(fake.detect());
    assert!(reason.contains("cgroup v1"), "{reason}");
    assert!(reason.contains("freezer is not mounted"), "{reason}");
    assert!(!reason.contains('\n'));

    let fake = fake_v1_with(CpuLayout::Separate, &["memory", "pids", "freezer"]);
    let reason = unusable_reason(fake.detect());
    assert!(reason.contains("cpu is not mounted"), "{reason}");
    assert!(reason.contains("cpuacct is not mounted"), "{reason}");
}

#[test]
fn hybrid_without_v1_memory_and_hugetlb_only_v2_is_unusable() {
    let fake = fake_v1_with(CpuLayout::Separate, &["cpu", "cpuacct", "freezer"]);
    let reason = unusable_reason(fake.detect());
    assert!(reason.contains("memory: not v1"), "{reason}");
    assert!(reason.contains("lacks memory, cpu, pids"), "{reason}");
    assert!(reason.contains("available: hugetlb"), "{reason}");
    assert!(!reason.contains('\n'));
}

#[test]
fn v2_missing_controller_is_unusable_with_reason() {
    let fake = fake_v2("/svc", "cpu memory\n");
    let reason = unusable_reason(fake.detect());
    assert!(reason.contains("cgroup v2"), "{reason}");
    assert!(reason.contains("lacks pids"), "{reason}");
}

#[test]
fn no_cgroup_mounts_is_unusable() {
    let reason = unusable_reason(Hierarchy::detect_at(
        "22 1 0:20 / /proc rw - proc proc rw\n",
        "0::/\n",
    ));
    assert!(
        reason.contains("no cgroup2 filesystem is mounted"),
        "{reason}"
    );
}

#[test]
fn own_cgroup_dir_missing_is_unusable() {
    let fake = fake_v1(CpuLayout::Separate);
    fs::remove_dir(fake.root().join("memory/process_api/abc")).expect("rmdir");
    let reason = unusable_reason(fake.detect());
    assert!(reason.contains("does not exist"), "{reason}");
}

#[test]
fn garbage_input_is_a_parse_error() {
    assert!(matches!(
        Hierarchy::detect_at("nonsense\n", "0::/\n"),
        Err(CgroupError::Parse { .. })
    ));
    assert!(matches!(
        Hierarchy::detect_at("", "nonsense\n"),
        Err(CgroupError::Parse { .. })
    ));
}

// ---------------------------------------------------------------- names and limits

#[test]
fn invalid_names_are_refused() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    let long = "x".repeat(201);
    for name in [
        "",
        "a/b",
        "..",
        ".",
        "../x",
        ".hidden",
        "a b",
        "a\nb",
        "é",
        long.as_str(),
    ] {
        match h.create(name, &Limits::default()) {
            Err(CgroupError::InvalidName { .. }) => {}
            other => panic!("name {name:?}: expected InvalidName, got {other:?}"),
        }
        assert!(matches!(h.open(name), Err(CgroupError::InvalidName { .. })));
    }
    // Nothing was created, not even the paddock dirs.
    assert!(h.group_dirs().iter().all(|d| !d.exists()));
    assert!(crate::validate_name("sbx-0123_a.b").is_ok());
}

#[test]
fn invalid_cpu_limits_are_refused() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    for millicores in [0, 9, u64::MAX] {
        let limits = Limits {
            cpu_millicores: Some(millicores),
            ..Limits::default()
        };
        assert!(matches!(
            h.create("x", &limits),
            Err(CgroupError::InvalidLimits { .. })
        ));
    }
    assert!(h.group_dirs().iter().all(|d| !d.exists()));
}

// ---------------------------------------------------------------- v1

#[test]
fn v1_create_writes_limits_separate() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    let cg = h.create("sbx1", &LIMITS).expect("create");
    let r = fake.root();
    let memory = r.join("memory/process_api/abc/paddock/sbx1");
    let cpu = r.join("cpu/paddock/sbx1");
    let cpuacct = r.join("cpuacct/paddock/sbx1");
    let pids = r.join("pids/paddock/sbx1");
    let freezer = r.join("freezer/paddock/sbx1");
    assert_eq!(
        cg.paths(),
        vec![
            memory.clone(),
            cpu.clone(),
            cpuacct.clone(),
            pids.clone(),
            freezer
        ]
    );
    assert!(cg.paths().iter().all(|p| p.is_dir()));
    assert_eq!(
        read(&memory.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    // No swap accounting file in the fake tree: not created.
    assert!(!memory.join("memory.memsw.limit_in_bytes").exists());
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&pids.join("pids.max")), "32");
    // Nothing is written to the cpuacct dir.
    assert_eq!(fs::read_dir(&cpuacct).expect("read cpuacct").count(), 0);
    assert!(cg.dir_fd().is_none());
}

#[test]
fn v1_create_writes_limits_combined() {
    let fake = fake_v1(CpuLayout::Combined);
    let h = fake.hierarchy();
    let limits = Limits {
        memory_bytes: None,
        cpu_millicores: Some(2000),
        pids: None,
    };
    let cg = h.create("sbx1", &limits).expect("create");
    let cpu = fake.root().join("cpu,cpuacct/paddock/sbx1");
    assert_eq!(cg.paths().len(), 4);
    assert!(cg.paths().contains(&cpu));
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "200000");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    // Unset limits are not written.
    let memory = fake.root().join("memory/process_api/abc/paddock/sbx1");
    assert!(!memory.join("memory.limit_in_bytes").exists());
    assert!(!fake.root().join("pids/paddock/sbx1/pids.max").exists());
}

#[test]
fn v1_create_existing_name_fails_and_other_names_share_paddock() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    let _a = h.create("a", &Limits::default()).expect("create a");
    match h.create("a", &Limits::default()) {
        Err(CgroupError::Create { path, source }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
            assert!(path.ends_with("paddock/a"), "{}", path.display());
        }
        other => panic!("expected Create error, got {other:?}"),
    }
    // The first cgroup is untouched by the failed second create.
    assert!(
        fake.root()
            .join("memory/process_api/abc/paddock/a")
            .is_dir()
    );
    let _b = h
        .create("b", &Limits::default())
        .expect("create b in existing paddock");
}

#[test]
fn v1_memsw_follows_memory_when_present() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path();
    write(&dir.join("memory.limit_in_bytes"), "9223372036854771712\n");
    write(
        &dir.join("memory.memsw.limit_in_bytes"),
        "9223372036854771712\n",
    );
    v1::set_memory_limit(dir, 1 << 30).expect("set memory limit");
    assert_eq!(read(&dir.join("memory.limit_in_bytes")), "1073741824");
    assert_eq!(read(&dir.join("memory.memsw.limit_in_bytes")), "1073741824");
}

#[test]
fn v1_stats_parse() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    let cg = h.create("s", &Limits::default()).expect("create");
    let r = fake.root();
    let memory = r.join("memory/process_api/abc/paddock/s");
    // Before the kernel reports anything: files absent.
    assert_eq!(cg.stats().expect("stats"), Stats::default());
    write(&memory.join("memory.max_usage_in_bytes"), "1234567\n");
    write(
        &memory.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    write(&r.join("cpuacct/paddock/s/cpuacct.usage"), "987654321\n");
    assert_eq!(
        cg.stats().expect("stats"),
        Stats {
            memory_peak_bytes: Some(1_234_567),
            cpu_time_ns: Some(987_654_321),
            oom_kills: 3,
        }
    );
    // Older kernels have no oom_kill line.
    write(
        &memory.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\n",
    );
    assert_eq!(cg.stats().expect("stats").oom_kills, 0);
    write(&memory.join("memory.max_usage_in_bytes"), "lots\n");
    assert!(matches!(cg.stats(), Err(CgroupError::Parse { .. })));
}

#[test]
fn v1_attach_and_pids() {
    let fake = fake_v1(CpuLayout::Combined);
    let h = fake.hierarchy();
    let cg = h.create("p", &Limits::default()).expect("create");
    assert_eq!(cg.pids().expect("pids"), Vec::<i32>::new());
    let child = Sleeper::spawn();
    cg.attach(child.pid()).expect("attach");
    for dir in cg.paths() {
        assert_eq!(read(&dir.join("cgroup.procs")), child.pid().to_string());
    }
    assert_eq!(cg.pids().expect("pids"), vec![child.pid()]);
    // pid 0 would move the writer itself.
    assert!(matches!(
        cg.attach(0),
        Err(CgroupError::InvalidPid { pid: 0 })
    ));
    assert!(matches!(
        cg.attach(-5),
        Err(CgroupError::InvalidPid { pid: -5 })
    ));
}

#[test]
fn v1_kill_all_freezes_kills_and_thaws() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    let cg = h.create("k", &Limits::default()).expect("create");
    let mut child = Sleeper::spawn();
    cg.attach(child.pid()).expect("attach");
    // A nested child cgroup's processes are killed too.
    let mut nested_child = Sleeper::spawn();
    let nested = fake.root().join("pids/paddock/k/inner");
    write(
        &nested.join("cgroup.procs"),
        &format!("{}\n", nested_child.pid()),
    );
    assert_eq!(cg.pids().expect("pids").len(), 2);

    cg.kill_all().expect("kill_all");
    let freezer = fake.root().join("freezer/paddock/k/freezer.state");
    assert_eq!(read(&freezer), "THAWED");
    assert_eq!(child.wait_signal(), Some(libc::SIGKILL));
    assert_eq!(nested_child.wait_signal(), Some(libc::SIGKILL));
}

#[test]
fn v1_remove_is_complete_and_idempotent() {
    let fake = fake_v1(CpuLayout::Separate);
    let h = fake.hierarchy();
    let cg = h.create("r", &LIMITS).expect("create");
    let inner = fake.root().join("memory/process_api/abc/paddock/r/inner");
    fs::create_dir(&inner).expect("nested cgroup");
    let paths = cg.paths();
    for p in &paths {
        strip_files(p);
    }
    cg.remove().expect("remove");
    assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
    // The shared paddock dirs stay for other sandboxes.
    assert!(h.group_dirs().iter().all(|d| d.is_dir()));
    cg.remove().expect("second remove");
    assert_eq!(h.leftovers().expect("leftovers"), Vec::<PathBuf>::new());
    // Stats of a removed cgroup are an error, not silently empty.
    assert!(matches!(cg.stats(), Err(CgroupError::Read { .. })));
    // With no sandbox left, the parents can go too; a later create brings
    // them back.
    h.remove_group_dirs().expect("remove group dirs");
    assert!(h.group_dirs().iter().all(|d| !d.exists()));
    h.remove_group_dirs().expect("remove group dirs again");
    let again = h
        .create("r", &LIMITS)
        .expect("create after parents removed");
    // Parents that still hold a cgroup are kept without error.
    h.remove_group_dirs().expect("remove busy group dirs");
    assert!(again.paths().iter().all(|p| p.is_dir()));
}

#[test]
fn v1_leftovers_open_and_remove_leftovers() {
    let fake = fake_v1(CpuLayout::Combined);
    let h = fake.hierarchy();
    assert_eq!(h.leftovers().expect("leftovers"), Vec::<PathBuf>::new());
    let a = h.create("a", &Limits::default()).expect("a");
    let b = h.create("b", &Limits::default()).expect("b");
    let mut expected: Vec<PathBuf> = a.paths().into_iter().chain(b.paths()).collect();
    expected.sort();
    assert_eq!(h.leftovers().expect("leftovers"), expected);

    // A sandbox of another instance that shares the cpu hierarchy but not
    // our memory cgroup is not ours.
    fs::create_dir(fake.root().join("cpu,cpuacct/paddock/foreign")).expect("mkdir foreign");
    assert_eq!(h.leftovers().expect("leftovers"), expected);

    let reopened = h.open("a").expect("open a");
    assert_eq!(reopened.paths(), a.paths());
    assert!(matches!(h.open("zzz"), Err(CgroupError::NotFound { .. })));

    for p in &expected {
        strip_files(p);
    }
    assert_eq!(
        h.remove_leftovers().expect("remove leftovers"),
        vec!["a", "b"]
    );
    assert_eq!(h.leftovers().expect("leftovers"), Vec::<PathBuf>::new());
    assert!(fake.root().join("cpu,cpuacct/paddock/foreign").is_dir());
}

// ---------------------------------------------------------------- v2

#[test]
fn v2_create_enables_controllers_and_writes_limits() {
    let fake = fake_v2("/svc", "cpuset cpu io memory pids\n");
    let h = fake.hierarchy();
    let cg = h.create("sbx", &LIMITS).expect("create");
    let own = fake.root().join("cgroup/svc");
    let dir = own.join("paddock/sbx");
    assert_eq!(cg.paths(), vec![dir.clone()]);
    assert_eq!(
        read(&own.join("cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    assert_eq!(
        read(&own.join("paddock/cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
    assert!(!dir.join("memory.swap.max").exists());
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(&dir.join("pids.max")), "32");

    // dir_fd is an fd of exactly that directory.
    let fd = cg.dir_fd().expect("v2 has a dir fd");
    let st = rustix::fs::fstat(fd).expect("fstat");
    let meta = fs::metadata(&dir).expect("metadata");
    assert_eq!(st.st_ino, meta.ino());
    assert_eq!(st.st_dev, meta.dev());
}

#[test]
fn v2_already_enabled_controllers_are_left_alone() {
    let fake = fake_v2("/svc", "cpu memory pids\n");
    let own = fake.root().join("cgroup/svc");
    write(&own.join("cgroup.subtree_control"), "cpu memory pids\n");
    write(&own.join("paddock/cgroup.subtree_control"), "memory pids\n");
    let h = fake.hierarchy();
    let _cg = h.create("x", &Limits::default()).expect("create");
    assert_eq!(
        read(&own.join("cgroup.subtree_control")),
        "cpu memory pids\n"
    );
    // Only the missing one is added.
    assert_eq!(read(&own.join("paddock/cgroup.subtree_control")), "+cpu");
}

#[test]
fn v2_swap_is_disabled_when_swap_accounting_exists() {
    // The swap file cannot exist before create() on a fake tree, so test the
    // limit writer on a reopened cgroup whose files exist.
    let fake = fake_v2("/svc", "cpu memory pids\n");
    let h = fake.hierarchy();
    let dir = fake.root().join("cgroup/svc/paddock/x");
    let _cg = h.create("x", &Limits::default()).expect("create");
    write(&dir.join("memory.swap.max"), "max\n");
    match &h {
        Hierarchy::V2(v2h) => {
            let cg = v2h.open("x").expect("open");
            cg.write_limits(&LIMITS, Some(50_000))
                .expect("write limits");
        }
        Hierarchy::V1(_) => panic!("expected v2"),
    }
    assert_eq!(read(&dir.join("memory.swap.max")), "0");
    assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
}

#[test]
fn v2_evacuates_own_processes_into_supervisor() {
    let tmp = TempDir::new().expect("tempdir");
    let own = tmp.path();
    // Pids in a fake file; nothing is signalled.
    write(&own.join("cgroup.procs"), "4242\n4343\n");
    v2::evacuate_to_supervisor(own).expect("evacuate");
    let supervisor = own.join("supervisor");
    assert!(supervisor.is_dir());
    // Each pid is a separate write; the fake file keeps the last one.
    assert_eq!(read(&supervisor.join("cgroup.procs")), "4343");
}

#[test]
fn v2_stats_parse() {
    let fake = fake_v2("/svc", "cpu memory pids\n");
    let h = fake.hierarchy();
    let cg = h.create("s", &Limits::default()).expect("create");
    let dir = fake.root().join("cgroup/svc/paddock/s");
    write(
        &dir.join("cpu.stat"),
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    );
    write(
        &dir.join("memory.events"),
        "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
    );
    // No memory.peak (kernel < 5.19).
    assert_eq!(
        cg.stats().expect("stats"),
        Stats {
            memory_peak_bytes: None,
            cpu_time_ns: Some(1_500_000),
            oom_kills: 2,
        }
    );
    write(&dir.join("memory.peak"), "4096\n");
    assert_eq!(cg.stats().expect("stats").memory_peak_bytes, Some(4096));
}

#[test]
fn v2_kill_all_writes_cgroup_kill() {
    let fake = fake_v2("/svc", "cpu memory pids\n");
    let h = fake.hierarchy();
    let cg = h.create("k", &Limits::default()).expect("create");
    let dir = fake.root().join("cgroup/svc/paddock/k");
    write(&dir.join("cgroup.kill"), "");
    cg.kill_all().expect("kill_all");
    assert_eq!(read(&dir.join("cgroup.kill")), "1");
}

#[test]
fn v2_kill_all_without_cgroup_kill_freezes_and_kills() {
    let fake = fake_v2("/svc", "cpu memory pids\n");
    let h = fake.hierarchy();
    let cg = h.create("k", &Limits::default()).expect("create");
    let dir = fake.root().join("cgroup/svc/paddock/k");
    let mut child = Sleeper::spawn();
    cg.attach(child.pid()).expect("attach");
    assert_eq!(cg.pids().expect("pids"), vec![child.pid()]);
    write(&dir.join("cgroup.events"), "populated 1\nfrozen 1\n");
    cg.kill_all().expect("kill_all");
    assert!(!dir.join("cgroup.kill").exists());
    assert_eq!(read(&dir.join("cgroup.freeze")), "0");
    assert_eq!(child.wait_signal(), Some(libc::SIGKILL));
}

#[test]
fn v2_remove_leftovers_and_idempotence() {
    let fake = fake_v2("/svc", "cpu memory pids\n");
    let h = fake.hierarchy();
    let cg = h.create("r", &Limits::default()).expect("create");
    let other = h.create("other", &Limits::default()).expect("create other");
    let dir = fake.root().join("cgroup/svc/paddock/r");
    assert_eq!(
        h.leftovers().expect("leftovers"),
        vec![fake.root().join("cgroup/svc/paddock/other"), dir.clone()]
    );
    strip_files(&dir);
    cg.remove().expect("remove");
    assert!(!dir.exists());
    cg.remove().expect("second remove");
    assert_eq!(h.leftovers().expect("leftovers"), other.paths());
    assert!(matches!(h.open("r"), Err(CgroupError::NotFound { .. })));
}
