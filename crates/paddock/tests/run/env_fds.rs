//! Nothing of the host's environment or file descriptors leaks in.

use std::collections::BTreeMap;
use std::process::Stdio;

use crate::common::{DEADLINE, PADDOCK, finish, run, run_args, setup};

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn host_environment_is_not_inherited() {
    let _g = setup();
    let secret = crate::common::unique("secret");
    let mut cmd = crate::common::command(&run_args(&[], &["env"]));
    cmd.env("PADDOCK_TEST_SECRET", &secret)
        .env("LD_PRELOAD", "/nonexistent/evil.so")
        .env("PYTHONPATH", "/nonexistent")
        .env("HOME", "/root");
    let out = finish(cmd, None, DEADLINE);
    out.expect_code(0, "env");
    let text = out.stdout_str();
    assert!(
        !text.contains(&secret) && !text.contains("PADDOCK_TEST_SECRET"),
        "a host variable is visible inside:\n{text}"
    );
    let env = parse_env(&text);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec!["HOME", "LANG", "PATH"],
        "exactly PATH, HOME and LANG by default:\n{text}"
    );
    assert_eq!(env["HOME"], "/home/user", "HOME inside:\n{text}");
    assert!(
        env["PATH"].split(':').any(|p| p == "/usr/bin"),
        "PATH has /usr/bin:\n{text}"
    );
    // Through a shell, only what the shell itself adds appears on top.
    let out = run(&[], &["bash", "-c", "env"]);
    out.expect_code(0, "bash -c env");
    let env = parse_env(&out.stdout_str());
    let allowed = ["PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "OLDPWD"];
    let extra: Vec<&String> = env
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "unexpected variables {extra:?}\n{}",
        out.describe()
    );
}

#[test]
fn env_option_sets_variables() {
    let _g = setup();
    let out = run(
        &[
            "--env",
            "K=V",
            "--env",
            "WITH_EQ=a=b",
            "--env",
            "EMPTY=",
            "--env",
            "LANG=C",
        ],
        &["env"],
    );
    out.expect_code(0, "env with --env");
    let env = parse_env(&out.stdout_str());
    assert_eq!(
        env.get("K").map(String::as_str),
        Some("V"),
        "{}",
        out.describe()
    );
    assert_eq!(
        env.get("WITH_EQ").map(String::as_str),
        Some("a=b"),
        "{}",
        out.describe()
    );
    assert_eq!(
        env.get("EMPTY").map(String::as_str),
        Some(""),
        "{}",
        out.describe()
    );
    assert_eq!(
        env.get("LANG").map(String::as_str),
        Some("C"),
        "--env overrides a default\n{}",
        out.describe()
    );
    assert_eq!(
        out.stdout_str().matches("LANG=").count(),
        1,
        "LANG appears once\n{}",
        out.describe()
    );
}

#[test]
fn parent_file_descriptors_do_not_leak_in() {
    let _g = setup();
    // bash opens fds 7 and 250 without close-on-exec and execs paddock, so
    // paddock starts with them open.
    let script = format!(
        "exec 7</etc/hostname 250</etc/passwd 9<>/proc/self/status; exec {PADDOCK} {}",
        run_args(&[], &["ls", "/proc/self/fd"]).join(" ")
    );
    let out = bash(&script);
    out.expect_code(0, "ls /proc/self/fd with inherited fds");
    let fds: Vec<u32> = out
        .stdout_str()
        .split_whitespace()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("bad fd {s:?}\n{}", out.describe()))
        })
        .collect();
    // 0, 1, 2 and the one ls itself uses to read the directory.
    assert!(
        fds.len() <= 4 && fds.iter().all(|&fd| fd <= 3),
        "only 0, 1, 2 (and ls's own) may be open inside, got {fds:?}\n{}",
        out.describe()
    );
    for fd in [0, 1, 2] {
        assert!(fds.contains(&fd), "fd {fd} missing: {fds:?}");
    }
    // Python's view agrees, and stdio is what the contract says.
    let script = format!(
        "exec 7</etc/hostname; exec {PADDOCK} run -- python3 -c \
         'import os; print(sorted(int(x) for x in os.listdir(\"/proc/self/fd\")))'"
    );
    let out = bash(&script);
    out.expect_code(0, "python listing fds");
    assert_eq!(out.stdout_str(), "[0, 1, 2, 3]\n", "{}", out.describe());
}

/// Runs `script` with `bash -c` (which execs paddock with extra fds open).
fn bash(script: &str) -> crate::common::Out {
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    finish(cmd, None, DEADLINE)
}

/// paddock started with its stdin closed: its start-up opens `/dev/null`
/// there (std's runtime would have; paddock skips that runtime), so the
/// first fd paddock opens for itself (a signalfd) cannot become the stdin
/// that `--stdin` passes to the program.
#[test]
fn closed_stdin_stays_empty() {
    let _g = setup();
    let script = format!(
        "exec 0<&-; exec {PADDOCK} {}",
        run_args(
            &["--json", "--stdin"],
            &["/usr/bin/readlink", "/proc/self/fd/0"]
        )
        .join(" ")
    );
    let out = bash(&script);
    out.expect_code(0, "paddock run --stdin with fd 0 closed");
    let result: serde_json::Value =
        serde_json::from_str(out.stdout_str().trim()).unwrap_or_else(|e| {
            panic!("not one JSON result ({e})\n{}", out.describe());
        });
    assert_eq!(result["status"], "exited", "{}", out.describe());
    assert_eq!(
        result["stdout"],
        "/dev/null\n",
        "the program's stdin\n{}",
        out.describe()
    );
}
