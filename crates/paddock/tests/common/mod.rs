//! Helpers shared by the `paddock run` integration tests: running the real
//! binary with a hard deadline, parsing its result object, and inspecting the
//! host (processes, cgroups, mounts) from outside the sandbox.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const PADDOCK: &str = env!("CARGO_BIN_EXE_paddock");

/// No single paddock invocation in this suite may take longer than this; a
/// hung paddock fails its test instead of hanging the suite.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Normal tests hold this shared; the leak test holds it exclusively, so it
/// compares global state (mounts, cgroups, processes, temp dirs) while no
/// other test of this binary is creating sandboxes.
static GLOBAL: RwLock<()> = RwLock::new(());

/// Taken at the start of every test: asserts the preconditions loudly (the
/// suite must fail, never skip, where it cannot test for real) and holds the
/// shared side of the global lock.
pub fn setup() -> RwLockReadGuard<'static, ()> {
    let guard = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    preconditions();
    guard
}

/// Like [`setup`], but exclusive: for the leak test.
pub fn setup_exclusive() -> RwLockWriteGuard<'static, ()> {
    let guard = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    preconditions();
    guard
}

fn preconditions() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the paddock run integration tests must run as root (euid is {}); they create real \
         sandboxes (user namespaces with host uid ranges, cgroups) and do not skip",
        rustix::process::geteuid().as_raw()
    );
    assert!(
        Path::new(PADDOCK).is_file(),
        "the paddock binary {PADDOCK} does not exist"
    );
    assert!(
        Path::new("/proc/self/ns/user").exists(),
        "this kernel has no user namespaces (/proc/self/ns/user is missing)"
    );
    assert!(
        Path::new("/sys/fs/cgroup").is_dir(),
        "no cgroup filesystem at /sys/fs/cgroup"
    );
}

/// A unique token for this test process (markers in argv, file names).
pub fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "paddocktest-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique, unusual `sleep` duration (seconds) so that a leftover sleeper can
/// be found among the host's processes by its argument.
pub fn unique_sleep_secs() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    // 40000 + 100 per process (by pid) + a counter: far longer than the
    // suite, and distinct within this process.
    40_000 + u64::from(std::process::id() % 10_000) * 100 + N.fetch_add(1, Ordering::Relaxed) % 100
}

/// What one paddock invocation did, seen from outside.
#[derive(Debug)]
pub struct Out {
    /// The exit code, `None` if paddock died of a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Wall time measured by the test.
    pub elapsed: Duration,
    /// The argv that was run, for messages.
    pub argv: Vec<String>,
}

impl Out {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        let clip = |s: String| {
            if s.len() > 2000 {
                let mut end = 2000;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}… ({} bytes)", &s[..end], s.len())
            } else {
                s
            }
        };
        format!(
            "argv: {:?}\nexit: {:?}, took {:?}\nstdout: {}\nstderr: {}",
            self.argv,
            self.code,
            self.elapsed,
            clip(self.stdout_str()),
            clip(self.stderr_str())
        )
    }
    /// Asserts exit status `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: expected paddock to exit {code}\n{}",
            self.describe()
        );
        self
    }
    /// Parses stdout as the `--json` result object.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON result object ({e})\n{}",
                self.describe()
            )
        })
    }
}

/// Builds `paddock run OPTS -- ARGV`.
pub fn run_args(opts: &[&str], argv: &[&str]) -> Vec<String> {
    let mut v = vec!["run".to_string()];
    v.extend(opts.iter().map(|s| s.to_string()));
    if !argv.is_empty() {
        v.push("--".into());
        v.extend(argv.iter().map(|s| s.to_string()));
    }
    v
}

/// A paddock command with a clean, predictable environment.
pub fn command(args: &[String]) -> Command {
    let mut c = Command::new(PADDOCK);
    c.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `cmd` (stdout/stderr must be piped) to completion, feeding `input`
/// to its stdin if given, killing it and failing after `deadline`.
pub fn finish(mut cmd: Command, input: Option<Vec<u8>>, deadline: Duration) -> Out {
    let argv: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    let out = collect(&mut child, input, deadline, &argv);
    Out {
        code: out.0,
        stdout: out.1,
        stderr: out.2,
        elapsed: start.elapsed(),
        argv,
    }
}

/// Waits for a spawned child with a deadline, collecting its output.
pub fn collect(
    child: &mut Child,
    input: Option<Vec<u8>>,
    deadline: Duration,
    argv: &[String],
) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    let start = Instant::now();
    let writer: Option<JoinHandle<()>> = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => Some(std::thread::spawn(move || {
            // The program may legitimately stop reading; ignore EPIPE.
            let _ = stdin.write_all(&data);
        })),
        _ => None,
    };
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "{argv:?} did not finish within {deadline:?}; killed it. stderr so far: {}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for {argv:?}: {e}"),
        }
    };
    let stdout = out.join().expect("stdout reader thread");
    let stderr = err.join().expect("stderr reader thread");
    if let Some(w) = writer {
        let _ = w.join();
    }
    let text = String::from_utf8_lossy(&stderr);
    assert!(
        !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
        "paddock panicked (stderr must never show a panic or backtrace)\nargv: {argv:?}\nstderr: {text}"
    );
    (status.code(), stdout, stderr)
}

/// `paddock run OPTS -- ARGV` with the default deadline.
pub fn run(opts: &[&str], argv: &[&str]) -> Out {
    finish(command(&run_args(opts, argv)), None, DEADLINE)
}

/// `paddock run --json OPTS -- ARGV`; asserts exit 0 and a well-formed result
/// object, and returns it.
pub fn run_json(opts: &[&str], argv: &[&str]) -> (Value, Out) {
    let mut all = vec!["--json"];
    all.extend_from_slice(opts);
    let out = run(&all, argv);
    out.expect_code(0, "with --json paddock exits 0 whenever the sandbox ran");
    let v = out.json();
    check_result_shape(&v, &out);
    (v, out)
}

/// `sh -c SCRIPT` in a sandbox; asserts exit 0 and returns stdout.
pub fn sh_ok(opts: &[&str], script: &str) -> String {
    let out = run(opts, &["sh", "-c", script]);
    out.expect_code(0, &format!("sh -c {script:?} should succeed"));
    out.stdout_str()
}

/// Asserts the result object has exactly the contract's fields and types.
pub fn check_result_shape(v: &Value, out: &Out) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("result is not a JSON object\n{}", out.describe()));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = vec![
        "status",
        "exit_code",
        "signal",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "wall_time_ms",
        "cpu_time_ms",
        "memory_peak_bytes",
    ];
    want.sort_unstable();
    assert_eq!(keys, want, "result object fields\n{}", out.describe());
    let status = v["status"].as_str().unwrap_or_default();
    assert!(
        ["exited", "signaled", "timeout", "oom"].contains(&status),
        "status {status:?} is not one of exited/signaled/timeout/oom\n{}",
        out.describe()
    );
    assert!(
        v["exit_code"].is_null() || v["exit_code"].is_i64(),
        "exit_code must be an integer or null\n{}",
        out.describe()
    );
    assert!(
        v["signal"].is_null() || v["signal"].is_i64(),
        "signal must be an integer or null\n{}",
        out.describe()
    );
    for k in ["stdout", "stderr"] {
        assert!(v[k].is_string(), "{k} must be a string\n{}", out.describe());
    }
    for k in ["stdout_truncated", "stderr_truncated"] {
        assert!(
            v[k].is_boolean(),
            "{k} must be a boolean\n{}",
            out.describe()
        );
    }
    for k in ["wall_time_ms", "cpu_time_ms", "memory_peak_bytes"] {
        assert!(
            v[k].as_f64().is_some_and(|x| x >= 0.0),
            "{k} must be a non-negative number\n{}",
            out.describe()
        );
    }
}

/// `v[key]` as a string (panics with context otherwise).
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// `v[key]` as f64.
pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

// ---------------------------------------------------------------------------
// Looking at the host from outside.

/// Every process on the host: (pid, cmdline with NULs as spaces).
pub fn host_processes() -> Vec<(i32, String)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            v.push((pid, cmd.trim_end().to_string()));
        }
    }
    v
}

/// Host processes whose cmdline contains `needle` (paddock's own cmdline
/// contains its program's arguments, so this matches paddock too).
pub fn processes_matching(needle: &str) -> Vec<(i32, String)> {
    host_processes()
        .into_iter()
        .filter(|(_, c)| c.contains(needle))
        .collect()
}

/// Host processes whose whole cmdline is `cmdline` (e.g. `sleep 41234`).
pub fn processes_exact(cmdline: &str) -> Vec<(i32, String)> {
    host_processes()
        .into_iter()
        .filter(|(_, c)| c == cmdline)
        .collect()
}

/// Waits up to `within` until `find` returns nothing; returns what is left.
pub fn wait_none(find: impl Fn() -> Vec<(i32, String)>, within: Duration) -> Vec<(i32, String)> {
    let start = Instant::now();
    loop {
        let left = find();
        if left.is_empty() || start.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `within` for no host process to match `needle`; returns the
/// ones still there.
pub fn wait_no_process(needle: &str, within: Duration) -> Vec<(i32, String)> {
    wait_none(|| processes_matching(needle), within)
}

/// Waits up to `within` for no host process to be exactly `cmdline`.
pub fn wait_no_exact(cmdline: &str, within: Duration) -> Vec<(i32, String)> {
    wait_none(|| processes_exact(cmdline), within)
}

/// Waits up to `within` for a host process whose cmdline is exactly
/// `cmdline` to appear.
pub fn wait_exact(cmdline: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if !processes_exact(cmdline).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Every directory under `/sys/fs/cgroup` (up to `depth` levels) whose name
/// satisfies `pred`.
pub fn cgroup_dirs(depth: usize, pred: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, pred: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let p = e.path();
            if e.file_name().to_str().is_some_and(pred) {
                out.push(p.clone());
            }
            walk(&p, depth - 1, pred, out);
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), depth, pred, &mut out);
    out.sort();
    out
}

/// The cgroup directories paddock process `pid` created (`run-<pid>-N`).
pub fn run_cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("run-{pid}-");
    cgroup_dirs(6, &|n: &str| n.starts_with(&prefix))
}

/// Lines of the test process's (host) mountinfo that mention paddock.
pub fn host_paddock_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter(|l| l.contains("paddock"))
        .map(str::to_string)
        .collect()
}

/// A host directory the sandbox user (an unprivileged host uid) can read
/// (and write, if `writable`).
pub fn shared_tempdir(writable: bool) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("paddock-test-")
        .tempdir()
        .expect("create temp dir");
    let mode = if writable { 0o777 } else { 0o755 };
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode))
        .expect("chmod temp dir");
    d
}

/// Writes `contents` to `path` with mode 0644.
pub fn write_file(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A minimal Linux tree: dash, libc and the dynamic loader, merged-/usr
/// links, and a marker file the host does not have.
pub fn minimal_tree(root: &Path) {
    for dir in [
        "usr/bin",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib64",
        "usr/share",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let copy = |from: &str, to: &str| {
        std::fs::copy(from, root.join(to)).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    };
    copy("/usr/bin/dash", "usr/bin/sh");
    copy(
        "/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
    );
    copy(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib64/ld-linux-x86-64.so.2",
    );
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }
    write_file(&root.join("usr/share/marker"), "from the template\n");
}
