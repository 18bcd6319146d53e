//! The seccomp policy, for real: probes run under the filter in a child
//! process (installed with `pre_exec`, as the jail does), and the same probes
//! run without it as a control.
//!
//! Must run as root on Linux x86_64 with `/usr/bin/python3`. These tests
//! fail, rather than skip, when the environment is wrong: the control run
//! proves that each denied call would have got another answer from the
//! kernel, so `EPERM` under the filter comes from the filter.
//!
//! Every denied call is made with arguments that are harmless if the call
//! does get through (nonexistent paths, invalid fds, `/dev/null` instead of a
//! terminal), and each runs in a forked child of the probe, so the control
//! run changes nothing on the host.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use paddock_jail::seccomp;

const PYTHON: &str = "/usr/bin/python3";

/// Prints `name=<errno>` for each call, 0 meaning success; each call runs in
/// a forked child.
const DENIED_PROBE: &str = r##"
import ctypes, os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def arg(a):
    return ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a)

def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
    return ctypes.get_errno() if r == -1 else 0

def clone(flags):
    r = libc.syscall(ctypes.c_long(56), ctypes.c_ulong(flags), *[ctypes.c_long(0)] * 4)
    if r == 0:
        os._exit(0)
    if r == -1:
        return ctypes.get_errno()
    os.waitpid(r, 0)
    return 0

def tty_ioctl(request):
    fd = os.open("/dev/null", os.O_RDONLY)
    c = ctypes.c_char(b"x")
    return sc(16, fd, request, ctypes.addressof(c))

def isolated(fn):
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

NOPE = b"/nonexistent-paddock-seccomp-probe"
CLONE_NEW = {
    "ns": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
    "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000,
}
checks = {
    "mount": lambda: sc(165, b"none", NOPE, b"tmpfs", 0, 0),
    "umount2": lambda: sc(166, NOPE, 0),
    "pivot_root": lambda: sc(155, NOPE, NOPE),
    "chroot": lambda: sc(161, NOPE),
    "open_tree": lambda: sc(428, -100, NOPE, 0),
    "fsopen": lambda: sc(430, b"nonexistent-fs", 0),
    "unshare_user": lambda: sc(272, 0x10000000),
    "unshare_files": lambda: sc(272, 0x00000400),
    "setns": lambda: sc(308, -1, 0),
    "clone_high_bits_user": lambda: clone((1 << 32) | 0x10000000 | 17),
    "clone3": lambda: sc(435, 0, 0),
    "ptrace_traceme": lambda: sc(101, 0, 0, 0, 0),
    "process_vm_readv": lambda: sc(310, os.getpid(), 0, 0, 0, 0, 0),
    "kexec_load": lambda: sc(246, 0, 0, 0, 0xdead0000),
    "init_module": lambda: sc(175, 0, 0, b""),
    "bpf": lambda: sc(321, 0xffff, 0, 0),
    "perf_event_open": lambda: sc(298, 0, 0, -1, -1, 0),
    "userfaultfd": lambda: sc(323, 0),
    "keyctl": lambda: sc(250, 0, -3, 0),
    "syslog": lambda: sc(103, 10, 0, 0),
    "io_uring_setup": lambda: sc(425, 1, 0),
    "adjtimex": lambda: sc(159, 0),
    "socket_packet_raw": lambda: sc(41, 17, 3, 0),
    "socket_packet_dgram": lambda: sc(41, 17, 2, 0),
    "socket_packet_high_bits": lambda: sc(41, (1 << 32) | 17, 3, 0),
    "socket_inet_raw": lambda: sc(41, 2, 3, 1),
    "socket_inet_raw_cloexec": lambda: sc(41, 2, 3 | 0o2000000, 1),
    "socket_inet6_raw": lambda: sc(41, 10, 3, 58),
    "socket_vsock": lambda: sc(41, 40, 1, 0),
    "ioctl_tiocsti": lambda: tty_ioctl(0x5412),
    "ioctl_tiocsti_high_bits": lambda: tty_ioctl(0x1_0000_5412),
    "ioctl_tioclinux": lambda: tty_ioctl(0x541C),
    "personality_no_aslr": lambda: sc(135, 0x0040000),
}
for name, flag in CLONE_NEW.items():
    checks["clone_new" + name] = (lambda f: lambda: clone(f | 17))(flag)
for name, fn in checks.items():
    print(f"{name}={isolated(fn)}", flush=True)
"##;

/// Prints `name=ok` or `name=<what went wrong>`.
const ALLOWED_PROBE: &str = r##"
import ctypes, os, socket, subprocess, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return ctypes.get_errno() if r == -1 else 0

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7

def threads():
    seen = []
    ts = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(seen) == list(range(8)), seen

def run_subprocess():
    assert subprocess.run(["true"]).returncode == 0
    out = subprocess.run(["/usr/bin/python3", "-c", "print(6 * 7)"], capture_output=True)
    assert out.stdout == b"42\n", out

def tcp():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    client.sendall(b"ping")
    assert conn.recv(4) == b"ping"

def udp_and_unix():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    a, b = socket.socketpair()
    a.sendall(b"x")
    assert b.recv(1) == b"x"

def netlink():
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
    socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG)
    assert socket.if_nameindex()

def read_files():
    with open("/etc/hostname") as f:
        f.read()
    with open("/proc/self/status") as f:
        status = f.read()
    assert "\nSeccomp:\t2\n" in status, status
    assert "\nNoNewPrivs:\t1\n" in status, status

def personality():
    assert sc(135, 0xffffffff) == 0
    assert sc(135, 0) == 0

def other_ioctls():
    fd = os.open("/dev/null", os.O_RDONLY)
    buf = ctypes.create_string_buffer(64)
    assert sc(16, fd, 0x5401, ctypes.addressof(buf)) == 25  # TCGETS: ENOTTY, not EPERM
    r, w = os.pipe()
    os.write(w, b"abc")
    assert sc(16, r, 0x541B, ctypes.addressof(buf)) == 0  # FIONREAD
    assert ctypes.c_int.from_buffer(buf).value == 3

def clone3_gets_enosys():
    assert sc(435, 0, 0) == 38

for fn in [fork, threads, run_subprocess, tcp, udp_and_unix, netlink, read_files,
           personality, other_ioctls, clone3_gets_enosys]:
    try:
        fn()
        result = "ok"
    except BaseException as e:
        result = repr(e).replace("\n", " ")
    print(f"{fn.__name__}={result}", flush=True)
"##;

fn assert_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests must run as root: the control runs need the privileges the filter takes away"
    );
}

/// Runs `command`, with the sandbox's filter when `filtered`.
fn run(mut command: Command, filtered: bool) -> Output {
    if filtered {
        let program = seccomp::sandbox_filter().expect("the policy compiles");
        // SAFETY: the closure only calls `seccomp::apply`, which makes raw
        // `prctl`/`seccomp` calls on prepared data and does not allocate, and
        // builds an `io::Error` from a raw errno, which does not allocate
        // either: both are safe between fork and exec.
        unsafe {
            command
                .pre_exec(move || seccomp::apply(&program).map_err(io::Error::from_raw_os_error));
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn python(script: &str, filtered: bool) -> BTreeMap<String, String> {
    let mut command = Command::new(PYTHON);
    command.arg("-c").arg(script);
    let output = run(command, filtered);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn errno_of(results: &BTreeMap<String, String>, name: &str) -> i32 {
    let value = results
        .get(name)
        .unwrap_or_else(|| panic!("the probe printed no result for {name}: {results:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}: not an errno: {value}"))
}

#[test]
fn denied_calls_fail_with_the_policy_errno_and_not_without_it() {
    assert_root();
    let control = python(DENIED_PROBE, false);
    let filtered = python(DENIED_PROBE, true);
    assert_eq!(
        control.keys().collect::<Vec<_>>(),
        filtered.keys().collect::<Vec<_>>()
    );
    assert!(filtered.len() >= 40, "{filtered:?}");

    let mut failures = Vec::new();
    for name in filtered.keys() {
        let expected = if name == "clone3" {
            libc::ENOSYS
        } else {
            libc::EPERM
        };
        let (with, without) = (errno_of(&filtered, name), errno_of(&control, name));
        if with != expected {
            failures.push(format!(
                "{name}: errno {with} under the filter, expected {expected}"
            ));
        }
        if without == expected {
            failures.push(format!(
                "{name}: errno {without} without the filter too: the check proves nothing here \
                 (not root? a sysctl?)"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ordinary_programs_still_work() {
    assert_root();
    let results = python(ALLOWED_PROBE, true);
    let expected = [
        "fork",
        "threads",
        "run_subprocess",
        "tcp",
        "udp_and_unix",
        "netlink",
        "read_files",
        "personality",
        "other_ioctls",
        "clone3_gets_enosys",
    ];
    for name in expected {
        assert_eq!(
            results.get(name).map(String::as_str),
            Some("ok"),
            "{name}: {results:?}"
        );
    }
}

#[test]
fn unshare_binary_cannot_create_a_user_namespace() {
    assert_root();
    let unshare = || {
        let mut command = Command::new("/usr/bin/unshare");
        command.args(["--user", "true"]);
        command
    };
    run(unshare(), false);

    let mut command = unshare();
    let program = seccomp::sandbox_filter().expect("the policy compiles");
    // SAFETY: as in `run`: only allocation-free calls between fork and exec.
    unsafe {
        command.pre_exec(move || seccomp::apply(&program).map_err(io::Error::from_raw_os_error));
    }
    let output = command.output().expect("run /usr/bin/unshare");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
}

#[test]
fn the_filter_is_small() {
    let program = seccomp::sandbox_filter().expect("the policy compiles");
    assert!(
        program.len() < 200,
        "{} BPF instructions: the filter runs on many syscalls, keep it small",
        program.len()
    );
}

#[test]
fn apply_rejects_an_empty_program() {
    assert_eq!(seccomp::apply(&[]), Err(libc::EINVAL));
}
