//! Landlock, for real: `restrict_self` runs in a child between fork and exec
//! (`pre_exec`, as the jail does), then a Python probe reports what it can
//! and cannot do.
//!
//! Needs Linux with Landlock ABI >= 6 (this machine reports 7) and
//! `/usr/bin/python3`; the tests fail, rather than skip, without them. Root is
//! not needed but does not matter either: Landlock restricts root too.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use paddock_sys::landlock::{self, Status};

const PYTHON: &str = "/usr/bin/python3";

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "paddock-landlock-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `&'static CStr` for a path; leaking is fine in a test, and the
/// `pre_exec` closure needs `'static` data it can borrow without allocating.
fn leak(path: &Path) -> &'static CStr {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths");
    Box::leak(c.into_boxed_c_str())
}

/// Runs `script` (which prints `name=result` lines) under
/// `restrict_self(read_exec, read_write, scope)`. The child refuses to exec
/// (and the spawn fails) unless the status is `Enforced` with the kernel's
/// ABI and the expected scoping.
fn probe(
    read_exec: &[&Path],
    read_write: &[&Path],
    scope: bool,
    script: &str,
    args: &[&str],
) -> BTreeMap<String, String> {
    let abi = landlock::abi_version().expect("this kernel has Landlock");
    let expected = Status::Enforced {
        abi,
        scoped: scope && abi >= 6,
    };
    let read_exec: Vec<&'static CStr> = read_exec.iter().map(|p| leak(p)).collect();
    let read_write: Vec<&'static CStr> = read_write.iter().map(|p| leak(p)).collect();

    let mut command = Command::new(PYTHON);
    command.arg("-c").arg(script).args(args);
    // SAFETY: the closure only calls `landlock::restrict_self`, which is
    // allocation-free (raw syscalls on borrowed, prepared data), compares
    // plain values and builds `io::Error`s from raw errnos, which do not
    // allocate: all safe between fork and exec.
    unsafe {
        command.pre_exec(
            move || match landlock::restrict_self(&read_exec, &read_write, scope) {
                Ok(status) if status == expected => Ok(()),
                Ok(_) => Err(io::Error::from_raw_os_error(libc::EPROTO)),
                Err(errno) => Err(io::Error::from_raw_os_error(errno.raw_os_error())),
            },
        );
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("restrict_self or exec failed in the child: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "probe failed ({}): {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn check(results: &BTreeMap<String, String>, expected: &[(&str, &str)]) {
    let failures: Vec<String> = expected
        .iter()
        .filter(|(name, want)| results.get(*name).map(String::as_str) != Some(*want))
        .map(|(name, want)| format!("{name}: expected {want}, got {:?}", results.get(*name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{}\nall: {results:?}",
        failures.join("\n")
    );
}

/// Runs each check and prints `name=ok` or `name=<exception class>`.
const PRELUDE: &str = r#"
import os, socket, subprocess, sys

def report(name, fn):
    try:
        fn()
        result = "ok"
    except Exception as e:
        result = type(e).__name__
    print(f"{name}={result}", flush=True)
"#;

const FS_PROBE: &str = r#"
inside, outside = sys.argv[1], sys.argv[2]

def write_inside():
    p = os.path.join(inside, "f")
    with open(p, "w") as f:
        f.write("hello")
    with open(p) as f:
        assert f.read() == "hello"
    with open(p, "r+") as f:
        f.truncate(1)
    os.mkdir(os.path.join(inside, "d"))
    os.rename(p, os.path.join(inside, "d", "g"))
    os.symlink("g", os.path.join(inside, "d", "link"))
    os.mkfifo(os.path.join(inside, "d", "fifo"))
    os.unlink(os.path.join(inside, "d", "g"))
    assert sorted(os.listdir(os.path.join(inside, "d"))) == ["fifo", "link"]

def write_outside():
    open(outside, "w").close()

def mkdir_outside():
    os.mkdir(outside)

def write_usr():
    open("/usr/paddock-landlock-probe", "w").close()

def read_etc_hostname():
    open("/etc/hostname").read()

def read_ld_so_cache():
    open("/etc/ld.so.cache", "rb").read(16)

def list_root():
    os.listdir("/root")

def read_proc():
    open("/proc/self/status").read()

def list_usr():
    assert "bin" in os.listdir("/usr")

def execute():
    assert subprocess.run(["/usr/bin/true"]).returncode == 0

def signal_parent():
    os.kill(os.getppid(), 0)

for name, fn in list(globals().items()):
    if callable(fn) and name not in ("report",) and fn.__module__ == "__main__" and not name.startswith("_"):
        report(name, fn)
"#;

#[test]
fn abi_version_is_reported() {
    let abi = landlock::abi_version().expect("this kernel has Landlock");
    assert!(abi >= 1, "ABI {abi}");
}

#[test]
fn filesystem_is_limited_to_the_listed_paths() {
    let inside = TempDir::new("rw");
    let outside =
        std::env::temp_dir().join(format!("paddock-landlock-outside-{}", std::process::id()));
    let results = probe(
        &[
            Path::new("/usr"),
            // A file, not a directory: gets the file rights only.
            Path::new("/etc/ld.so.cache"),
            // Does not exist: skipped.
            Path::new("/nonexistent-paddock-landlock"),
        ],
        &[&inside.0],
        false,
        &format!("{PRELUDE}{FS_PROBE}"),
        &[
            inside.0.to_str().expect("UTF-8 temp dir"),
            outside.to_str().expect("UTF-8 temp dir"),
        ],
    );
    let outside_exists = outside.exists();
    let _ = std::fs::remove_file(&outside);
    let _ = std::fs::remove_dir(&outside);
    assert!(!outside_exists, "the probe created {}", outside.display());
    check(
        &results,
        &[
            ("write_inside", "ok"),
            ("write_outside", "PermissionError"),
            ("mkdir_outside", "PermissionError"),
            ("write_usr", "PermissionError"),
            ("read_etc_hostname", "PermissionError"),
            ("read_ld_so_cache", "ok"),
            ("list_root", "PermissionError"),
            ("read_proc", "PermissionError"),
            ("list_usr", "ok"),
            ("execute", "ok"),
            // No scope asked: signals still reach the parent.
            ("signal_parent", "ok"),
        ],
    );
}

const SCOPE_PROBE: &str = r#"
host_socket = sys.argv[1]

def signal_parent():
    os.kill(os.getppid(), 0)

def signal_self():
    os.kill(os.getpid(), 0)

def signal_own_child():
    child = subprocess.Popen(["/usr/bin/sleep", "10"])
    os.kill(child.pid, 9)
    child.wait()

def connect_host_abstract_socket():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\0" + host_socket)

def own_abstract_socket():
    name = "\0" + host_socket + "-own"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(name)

for name, fn in list(globals().items()):
    if callable(fn) and name != "report" and fn.__module__ == "__main__":
        report(name, fn)
"#;

#[test]
fn scope_isolates_signals_and_abstract_sockets() {
    let abi = landlock::abi_version().expect("this kernel has Landlock");
    assert!(abi >= 6, "scopes need Landlock ABI 6, the kernel has {abi}");
    let name = format!("paddock-landlock-scope-{}", std::process::id());
    let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let _listener = UnixListener::bind_addr(&address).expect("bind the host's abstract socket");

    let results = probe(
        &[Path::new("/usr")],
        &[],
        true,
        &format!("{PRELUDE}{SCOPE_PROBE}"),
        &[&name],
    );
    check(
        &results,
        &[
            ("signal_parent", "PermissionError"),
            ("signal_self", "ok"),
            ("signal_own_child", "ok"),
            ("connect_host_abstract_socket", "PermissionError"),
            ("own_abstract_socket", "ok"),
        ],
    );
}

#[test]
fn errors_are_reported_not_swallowed() {
    // A path the process may not open (a component that is not searchable)
    // is an error, unlike a missing path. Root can search anything, so use a
    // path that is too long instead: ENAMETOOLONG.
    let long = PathBuf::from(format!("/{}", "x".repeat(5000)));
    let read_exec = [leak(&long)];
    let mut command = Command::new(PYTHON);
    command.args(["-c", "pass"]);
    // SAFETY: as in `probe`: only allocation-free calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            landlock::restrict_self(&read_exec, &[], false)
                .map(drop)
                .map_err(|errno| io::Error::from_raw_os_error(errno.raw_os_error()))
        });
    }
    let error = command.output().expect_err("restrict_self must fail");
    assert_eq!(error.raw_os_error(), Some(libc::ENAMETOOLONG), "{error}");
}
