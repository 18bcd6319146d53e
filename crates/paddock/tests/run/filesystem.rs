//! The sandbox's tree: host programs work, a generated /etc, nothing of the
//! host's private files, writes stay inside, a minimal usable /dev.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::{run, setup, sh_ok, unique};

#[test]
fn host_programs_work() {
    let _g = setup();
    let cases: &[(&[&str], &str)] = &[
        (
            &["python3", "-c", "import json, ssl, sqlite3; print('py ok')"],
            "py ok",
        ),
        (&["node", "-e", "console.log('node ok')"], "node ok"),
        (&["bash", "-c", "echo bash ok"], "bash ok"),
        (&["sh", "-c", "printf 'a b c' | wc -w"], "3"),
        (&["sh", "-c", "seq 3 | sort -r | head -n1 | tr 3 x"], "x"),
        (
            &["env", "-i", "/usr/bin/date", "+coreutils-ok"],
            "coreutils-ok",
        ),
    ];
    for (argv, want) in cases {
        let out = run(&[], argv);
        out.expect_code(0, &format!("{argv:?}"));
        assert!(
            out.stdout_str().contains(want),
            "{argv:?} should print {want:?}\n{}",
            out.describe()
        );
    }
}

#[test]
fn etc_is_generated_not_the_hosts() {
    let _g = setup();
    let passwd = sh_ok(&[], "cat /etc/passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("user:x:1000:1000:")),
        "/etc/passwd has the sandbox user:\n{passwd}"
    );
    // No user of the host other than the few the sandbox defines itself.
    let host = std::fs::read_to_string("/etc/passwd").expect("read host /etc/passwd");
    let own: BTreeSet<&str> = ["root", "user", "nobody"].into();
    let leaked: Vec<&str> = host
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|n| !n.is_empty() && !own.contains(n))
        .filter(|n| passwd.lines().any(|l| l.split(':').next() == Some(n)))
        .collect();
    assert!(
        leaked.is_empty(),
        "host users visible in the sandbox's /etc/passwd: {leaked:?}\n{passwd}"
    );
    let group = sh_ok(&[], "cat /etc/group");
    assert!(
        group.lines().any(|l| l.starts_with("user:x:1000:")),
        "/etc/group has the user group:\n{group}"
    );
    // The host's own hostname file is not what the sandbox sees.
    let hostname = sh_ok(&[], "cat /etc/hostname");
    assert_eq!(hostname.trim(), "sandbox", "/etc/hostname inside");
    // Secrets of the host: absent.
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            "for f in /etc/shadow /etc/gshadow /etc/sudoers /etc/ssh; do test -e $f && echo $f; done; true",
        ],
    );
    out.expect_code(0, "checking host secrets");
    assert_eq!(
        out.stdout_str(),
        "",
        "host secret files visible inside\n{}",
        out.describe()
    );
    // The files the brief lists exist.
    sh_ok(
        &[],
        "test -s /etc/hosts && test -s /etc/nsswitch.conf && test -s /etc/ld.so.cache && test -d /etc/ssl/certs",
    );
}

#[test]
fn host_private_paths_are_invisible() {
    let _g = setup();
    let mut paths: Vec<String> = vec!["/root".into(), "/work".into()];
    let cwd = std::env::current_dir().expect("current dir");
    paths.push(cwd.display().to_string());
    paths.push(env!("CARGO_MANIFEST_DIR").to_string());
    if let Ok(rd) = std::fs::read_dir("/home") {
        for e in rd.flatten() {
            if e.file_name() != "user" {
                paths.push(e.path().display().to_string());
            }
        }
    }
    let mut script = String::new();
    for p in &paths {
        script.push_str(&format!("test -e '{p}' && echo 'VISIBLE {p}'; "));
    }
    script.push_str("ls -A /home; true");
    let out = run(&[], &["sh", "-c", &script]);
    out.expect_code(0, "probing host paths");
    let text = out.stdout_str();
    assert!(
        !text.contains("VISIBLE"),
        "host paths visible inside the sandbox:\n{text}"
    );
    let homes: Vec<&str> = text.lines().collect();
    assert_eq!(
        homes,
        vec!["user"],
        "/home contains only user\n{}",
        out.describe()
    );
}

#[test]
fn sys_is_empty_or_read_only() {
    let _g = setup();
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            "ls -A /sys; echo ==; touch /sys/paddock-x 2>&1 || echo WRITE-FAILED; true",
        ],
    );
    out.expect_code(0, "probing /sys");
    let text = out.stdout_str();
    let (listing, write) = text.split_once("==\n").expect("marker");
    if !listing.trim().is_empty() {
        assert!(
            write.contains("WRITE-FAILED"),
            "/sys is populated and writable:\n{text}"
        );
    }
    // The host's cgroup tree is not reachable through /sys.
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            "test -e /sys/fs/cgroup/memory && echo CGROUP; true",
        ],
    );
    assert_eq!(
        out.stdout_str(),
        "",
        "/sys/fs/cgroup visible\n{}",
        out.describe()
    );
}

#[test]
fn tmp_and_home_are_writable() {
    let _g = setup();
    let out = sh_ok(
        &[],
        "echo a > /tmp/a && cat /tmp/a && echo b > /home/user/b && cat /home/user/b && \
         echo c > $HOME/c && cat ~/c && mkdir -p /tmp/d/e && echo ok",
    );
    assert_eq!(out, "a\nb\nc\nok\n");
}

#[test]
fn writes_to_usr_fail_and_never_reach_the_host() {
    let _g = setup();
    let name = unique("usr");
    let inside = format!("/usr/{name}");
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            &format!("touch {inside}; echo rc=$?; echo x >> /usr/bin/env; echo rc=$?"),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout_str(),
        "rc=1\nrc=2\n",
        "writes to /usr must fail\n{}",
        out.describe()
    );
    let err = out.stderr_str();
    assert!(
        err.contains("Read-only file system") || err.contains("Permission denied"),
        "EROFS or EACCES expected\n{}",
        out.describe()
    );
    assert!(
        !Path::new(&inside).exists(),
        "{inside} appeared on the host"
    );
    // Also as python, checking errno.
    let out = run(
        &[],
        &[
            "python3",
            "-c",
            &format!(
                "import errno\ntry:\n open('{inside}','w')\nexcept OSError as e:\n print(errno.errorcode[e.errno])"
            ),
        ],
    );
    out.expect_code(0, "python write to /usr");
    let code = out.stdout_str();
    assert!(
        code.trim() == "EROFS" || code.trim() == "EACCES",
        "expected EROFS/EACCES\n{}",
        out.describe()
    );
    assert!(
        !Path::new(&inside).exists(),
        "{inside} appeared on the host"
    );
}

#[test]
fn writes_to_root_stay_inside() {
    let _g = setup();
    let name = unique("root");
    let inside = format!("/{name}");
    // Whether or not the user may write to / inside, nothing reaches the host.
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            &format!("touch {inside} 2>&1; mkdir /{name}.d 2>&1; true"),
        ],
    );
    out.expect_code(0, "touch in /");
    assert!(
        !Path::new(&inside).exists(),
        "{inside} appeared on the host"
    );
    assert!(
        !Path::new(&format!("{inside}.d")).exists(),
        "{inside}.d appeared on the host"
    );
    // Writes to the writable layer are not visible to the next sandbox.
    let marker = unique("tmp");
    sh_ok(&[], &format!("echo x > /tmp/{marker}"));
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            &format!("test -e /tmp/{marker} && echo LEAKED; true"),
        ],
    );
    assert_eq!(out.stdout_str(), "", "files survive into the next sandbox");
    assert!(
        !Path::new(&format!("/tmp/{marker}")).exists(),
        "/tmp/{marker} appeared on the host"
    );
}

#[test]
fn dev_has_the_minimal_nodes() {
    let _g = setup();
    let listing = sh_ok(&[], "ls -A /dev");
    let names: BTreeSet<&str> = listing.split_whitespace().collect();
    for want in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
    ] {
        assert!(names.contains(want), "/dev lacks {want}: {names:?}");
    }
    for host_only in ["sda", "vda", "mem", "kmsg", "port", "kvm", "loop0"] {
        assert!(
            !names.contains(host_only),
            "/dev exposes host device {host_only}: {names:?}"
        );
    }
}

/// The standard device nodes must be usable by the program, as on any Linux
/// system: redirecting to /dev/null, reading /dev/zero and /dev/urandom,
/// ENOSPC from /dev/full.
#[test]
fn dev_nodes_are_usable() {
    let _g = setup();
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            "echo x > /dev/null && echo null-w; cat /dev/null && echo null-r; \
             head -c 4 /dev/zero | od -An -tx1 | tr -d ' \\n'; echo; \
             head -c 16 /dev/urandom | wc -c; head -c 16 /dev/random | wc -c; \
             python3 -c \"import errno, os
fd = os.open('/dev/full', os.O_WRONLY)
try:
    os.write(fd, b'x')
except OSError as e:
    print('full', errno.errorcode[e.errno])\"",
        ],
    );
    assert_eq!(
        out.stdout_str(),
        "null-w\nnull-r\n00000000\n16\n16\nfull ENOSPC\n",
        "device nodes must work inside the sandbox\n{}",
        out.describe()
    );
    // Background jobs of sh read /dev/null; python's subprocess uses it too.
    let out = run(
        &[],
        &[
            "python3",
            "-c",
            "import subprocess; print(subprocess.run(['true'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode)",
        ],
    );
    out.expect_code(0, "python subprocess with DEVNULL");
    assert_eq!(out.stdout_str(), "0\n", "{}", out.describe());
}

#[test]
fn dev_shm_and_pts() {
    let _g = setup();
    let out = sh_ok(
        &[],
        "echo s > /dev/shm/x && cat /dev/shm/x && python3 -c 'import os; m, s = os.openpty(); print(os.ttyname(s).startswith(\"/dev/pts/\"))'",
    );
    assert_eq!(
        out, "s\nTrue\n",
        "/dev/shm writable and a pty can be opened"
    );
}

#[test]
fn workdir_option() {
    let _g = setup();
    let out = run(&[], &["pwd"]);
    out.expect_code(0, "pwd");
    assert_eq!(
        out.stdout_str(),
        "/home/user\n",
        "default workdir\n{}",
        out.describe()
    );
    let out = run(&["--workdir", "/tmp"], &["pwd"]);
    out.expect_code(0, "--workdir /tmp");
    assert_eq!(out.stdout_str(), "/tmp\n", "{}", out.describe());
    let out = run(
        &["--workdir", "/home/user/new/dir"],
        &["sh", "-c", "pwd; touch here && echo writable"],
    );
    out.expect_code(0, "--workdir of a new directory");
    assert_eq!(
        out.stdout_str(),
        "/home/user/new/dir\nwritable\n",
        "the working directory is created\n{}",
        out.describe()
    );
    assert!(
        !Path::new("/home/user/new/dir").exists(),
        "the working directory was created on the host"
    );
}
