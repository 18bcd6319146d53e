//! Dangerous system calls fail with EPERM (the seccomp filter returns an
//! error rather than killing the process).

use crate::common::{run, setup};

/// One probe: a name and a python expression calling it through ctypes.
fn probes() -> Vec<(&'static str, String)> {
    let sys = |nr: libc::c_long, args: &str| format!("libc.syscall({nr}{args})");
    vec![
        (
            "mount",
            "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)".into(),
        ),
        (
            "mount-bind",
            "libc.mount(b'/usr', b'/tmp', None, 4096, None)".into(),
        ),
        ("umount2", "libc.umount2(b'/proc', 2)".into()),
        ("unshare(CLONE_NEWUSER)", "libc.unshare(0x10000000)".into()),
        ("unshare(CLONE_NEWNS)", "libc.unshare(0x00020000)".into()),
        ("unshare(CLONE_NEWNET)", "libc.unshare(0x40000000)".into()),
        (
            "ptrace(PTRACE_TRACEME)",
            "libc.ptrace(0, 0, None, None)".into(),
        ),
        (
            "ptrace(PTRACE_ATTACH, 1)",
            "libc.ptrace(16, 1, None, None)".into(),
        ),
        ("keyctl", sys(libc::SYS_keyctl, ", 0, -3, 0, 0")),
        (
            "add_key",
            sys(libc::SYS_add_key, ", b'user', b'k', b'v', 1, -3"),
        ),
        (
            "request_key",
            sys(libc::SYS_request_key, ", b'user', b'k', None, 0"),
        ),
        ("bpf", sys(libc::SYS_bpf, ", 0, None, 0")),
        ("kexec_load", sys(libc::SYS_kexec_load, ", 0, 0, None, 0")),
        ("init_module", sys(libc::SYS_init_module, ", None, 0, b''")),
        ("finit_module", sys(libc::SYS_finit_module, ", 0, b'', 0")),
        (
            "delete_module",
            sys(libc::SYS_delete_module, ", b'loop', 0"),
        ),
        (
            "setns",
            "libc.setns(os.open('/proc/self/ns/net', os.O_RDONLY), 0)".into(),
        ),
        (
            "pivot_root",
            sys(libc::SYS_pivot_root, ", b'/tmp', b'/tmp'"),
        ),
        (
            "perf_event_open",
            sys(libc::SYS_perf_event_open, ", None, 0, -1, -1, 0"),
        ),
        (
            "process_vm_readv",
            sys(libc::SYS_process_vm_readv, ", 1, None, 0, None, 0, 0"),
        ),
        ("reboot", sys(libc::SYS_reboot, ", 0, 0, 0, None")),
        ("swapon", sys(libc::SYS_swapon, ", b'/tmp/x', 0")),
        ("acct", sys(libc::SYS_acct, ", None")),
        ("syslog", sys(libc::SYS_syslog, ", 3, None, 0")),
        (
            "open_by_handle_at",
            sys(libc::SYS_open_by_handle_at, ", 0, None, 0"),
        ),
        ("userfaultfd", sys(libc::SYS_userfaultfd, ", 0")),
    ]
}

#[test]
fn dangerous_syscalls_fail_with_eperm() {
    let _g = setup();
    let mut code = String::from(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def probe(name, fn):\n\
         \x20   ctypes.set_errno(0)\n\
         \x20   r = fn()\n\
         \x20   print(f'{name}|{r}|{ctypes.get_errno()}', flush=True)\n",
    );
    let probes = probes();
    for (name, call) in &probes {
        code.push_str(&format!("probe({name:?}, lambda: {call})\n"));
    }
    code.push_str("print('done')\n");
    let out = run(&[], &["python3", "-c", &code]);
    out.expect_code(0, "probing syscalls (the process must not be killed)");
    let text = out.stdout_str();
    assert!(
        text.ends_with("done\n"),
        "the probe process did not run to the end\n{}",
        out.describe()
    );
    let mut failures = Vec::new();
    for (name, _) in &probes {
        let line = text
            .lines()
            .find(|l| l.split('|').next() == Some(name))
            .unwrap_or_else(|| panic!("no result for {name}\n{}", out.describe()));
        let parts: Vec<&str> = line.split('|').collect();
        if parts[1] != "-1" || parts[2] != "1" {
            failures.push(format!(
                "{name}: returned {} with errno {} (expected -1 / EPERM)",
                parts[1], parts[2]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "dangerous syscalls not refused with EPERM:\n{}\n{}",
        failures.join("\n"),
        out.describe()
    );
}

/// ptrace of a sibling process (same uid, same sandbox) is refused too.
#[test]
fn ptrace_attach_to_a_sibling_fails() {
    let _g = setup();
    let code = "import ctypes, os, time, signal\n\
                libc = ctypes.CDLL(None, use_errno=True)\n\
                pid = os.fork()\n\
                if pid == 0:\n\
                \x20   time.sleep(30); os._exit(0)\n\
                ctypes.set_errno(0)\n\
                r = libc.ptrace(16, pid, None, None)\n\
                print(r, ctypes.get_errno())\n\
                os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)\n";
    let out = run(&[], &["python3", "-c", code]);
    out.expect_code(0, "ptrace attach to a sibling");
    assert_eq!(
        out.stdout_str(),
        "-1 1\n",
        "PTRACE_ATTACH must fail with EPERM\n{}",
        out.describe()
    );
}

/// The unshare(1) tool (new user or mount namespace) fails too.
#[test]
fn unshare_command_fails() {
    let _g = setup();
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            "unshare -U -r true 2>&1; echo rc=$?; unshare -m true 2>&1; echo rc=$?",
        ],
    );
    out.expect_code(0, "unshare(1)");
    let text = out.stdout_str();
    assert!(
        !text.contains("rc=0"),
        "unshare(1) succeeded inside the sandbox\n{}",
        out.describe()
    );
    assert!(
        text.contains("Operation not permitted"),
        "unshare fails with EPERM\n{}",
        out.describe()
    );
}

/// With `--stdin` and a terminal as paddock's stdin, the program cannot push
/// input into that terminal (TIOCSTI), which would type commands into the
/// host's shell.
#[test]
fn tiocsti_on_a_terminal_stdin_fails() {
    let _g = setup();
    let inner = "import fcntl, termios, errno, os\n\
                 print('isatty', os.isatty(0))\n\
                 try:\n\
                 \x20   fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('INJECTED')\n\
                 except OSError as e:\n\
                 \x20   print(errno.errorcode[e.errno])\n";
    // A host-side driver: a new pty as paddock's stdin.
    let driver = "import os, pty, subprocess, sys\n\
                  m, s = pty.openpty()\n\
                  r = subprocess.run(sys.argv[1:], stdin=s, capture_output=True, timeout=60)\n\
                  sys.stdout.write(r.stdout.decode()); sys.stderr.write(r.stderr.decode())\n\
                  sys.exit(r.returncode)\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        driver,
        crate::common::PADDOCK,
        "run",
        "--stdin",
        "--",
        "python3",
        "-c",
        inner,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = crate::common::finish(cmd, None, crate::common::DEADLINE);
    out.expect_code(0, "TIOCSTI probe through a pty");
    let text = out.stdout_str();
    assert!(
        text.starts_with("isatty True\n"),
        "the program's stdin is the terminal (the probe is real)\n{}",
        out.describe()
    );
    assert!(
        !text.contains("INJECTED") && (text.contains("EPERM") || text.contains("EIO")),
        "TIOCSTI must fail\n{}",
        out.describe()
    );
}
