//! Output passthrough, exit statuses, the result object, `--lang`.

use crate::common::{f, run, run_json, s, setup};

#[test]
fn echo_output_is_passed_through() {
    let _g = setup();
    let out = run(&[], &["echo", "hello from the sandbox"]);
    out.expect_code(0, "echo");
    assert_eq!(
        out.stdout_str(),
        "hello from the sandbox\n",
        "stdout passthrough\n{}",
        out.describe()
    );
    let out = run(&[], &["sh", "-c", "echo to-stderr >&2"]);
    out.expect_code(0, "echo to stderr");
    assert!(
        out.stderr_str().contains("to-stderr\n"),
        "stderr passthrough\n{}",
        out.describe()
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout\n{}",
        out.describe()
    );
}

#[test]
fn exit_code_is_passed_through() {
    let _g = setup();
    run(&[], &["sh", "-c", "exit 3"]).expect_code(3, "sh -c 'exit 3'");
    run(&[], &["false"]).expect_code(1, "false");
    run(&[], &["sh", "-c", "exit 0"]).expect_code(0, "sh -c 'exit 0'");
    run(&[], &["sh", "-c", "exit 255"]).expect_code(255, "sh -c 'exit 255'");
}

#[test]
fn json_result_object_for_a_normal_exit() {
    let _g = setup();
    let (v, out) = run_json(&[], &["sh", "-c", "echo hi; echo err >&2; exit 5"]);
    assert_eq!(s(&v, "status"), "exited", "status\n{}", out.describe());
    assert_eq!(v["exit_code"], 5, "exit_code\n{}", out.describe());
    assert!(v["signal"].is_null(), "signal is null\n{}", out.describe());
    assert_eq!(s(&v, "stdout"), "hi\n", "stdout\n{}", out.describe());
    assert_eq!(s(&v, "stderr"), "err\n", "stderr\n{}", out.describe());
    assert_eq!(v["stdout_truncated"], false, "{}", out.describe());
    assert_eq!(v["stderr_truncated"], false, "{}", out.describe());
    assert!(
        f(&v, "wall_time_ms") > 0.0,
        "wall_time_ms > 0\n{}",
        out.describe()
    );
    // The object is the only thing on stdout: one line.
    assert_eq!(
        out.stdout_str().trim_end().lines().count(),
        1,
        "--json prints exactly one line\n{}",
        out.describe()
    );
}

#[test]
fn killed_by_sigkill_is_128_plus_9() {
    let _g = setup();
    run(&[], &["sh", "-c", "kill -9 $$"]).expect_code(137, "sh killing itself with SIGKILL");
    let (v, out) = run_json(&[], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(s(&v, "status"), "signaled", "status\n{}", out.describe());
    assert_eq!(v["signal"], 9, "signal\n{}", out.describe());
    assert!(
        v["exit_code"].is_null(),
        "exit_code null\n{}",
        out.describe()
    );
}

#[test]
fn killed_by_sigterm_is_128_plus_15() {
    let _g = setup();
    run(&[], &["sh", "-c", "kill -TERM $$"]).expect_code(143, "sh killing itself with SIGTERM");
    let (v, out) = run_json(&[], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(s(&v, "status"), "signaled", "status\n{}", out.describe());
    assert_eq!(v["signal"], 15, "signal\n{}", out.describe());
}

#[test]
fn lang_python() {
    let _g = setup();
    let out = run(&["--lang", "python", "--code", "print(1+1)"], &[]);
    out.expect_code(0, "--lang python");
    assert_eq!(out.stdout_str(), "2\n", "{}", out.describe());
    let out = run(
        &["--lang", "python", "--code", "import sys; sys.exit(4)"],
        &[],
    );
    out.expect_code(4, "--lang python exit code");
}

#[test]
fn lang_javascript() {
    let _g = setup();
    let out = run(
        &[
            "--lang",
            "javascript",
            "--code",
            "console.log([1,2,3].map(x => x * 2).join(','))",
        ],
        &[],
    );
    out.expect_code(0, "--lang javascript");
    assert_eq!(out.stdout_str(), "2,4,6\n", "{}", out.describe());
}

#[test]
fn lang_bash() {
    let _g = setup();
    let out = run(
        &[
            "--lang",
            "bash",
            "--code",
            "a=(x y z); echo ${#a[@]} ${BASH_VERSINFO[0]:+bash}",
        ],
        &[],
    );
    out.expect_code(0, "--lang bash");
    assert_eq!(out.stdout_str(), "3 bash\n", "{}", out.describe());
}

#[test]
fn lang_with_json() {
    let _g = setup();
    let (v, out) = run_json(&["--lang", "python", "--code", "print('py')"], &[]);
    assert_eq!(s(&v, "status"), "exited", "{}", out.describe());
    assert_eq!(s(&v, "stdout"), "py\n", "{}", out.describe());
}

fn assert_one_line(out: &crate::common::Out, what: &str) {
    let text = out.stderr_str();
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "{what}: expected a one-line message on stderr\n{}",
        out.describe()
    );
}

#[test]
fn program_not_found_is_127() {
    let _g = setup();
    let out = run(&[], &["no-such-program-paddock-test"]);
    out.expect_code(127, "a program that is not on PATH");
    assert_one_line(&out, "program not found");
    assert!(
        out.stderr_str().contains("no-such-program-paddock-test"),
        "the message names the program\n{}",
        out.describe()
    );
    let out = run(&[], &["/no/such/dir/prog"]);
    out.expect_code(127, "an absolute path that does not exist");
    assert_one_line(&out, "program not found (absolute path)");
}

#[test]
fn program_not_executable_is_126() {
    let _g = setup();
    let out = run(&[], &["/etc/passwd"]);
    out.expect_code(126, "/etc/passwd is not executable");
    assert_one_line(&out, "not executable");
    assert!(
        out.stderr_str().contains("/etc/passwd"),
        "the message names the program\n{}",
        out.describe()
    );
    let out = run(&[], &["/usr"]);
    out.expect_code(126, "a directory is not executable");
}

/// Running without root is not supported yet: paddock must say so in one
/// line and exit 125, without a panic.
#[test]
fn without_root_exits_125_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let _g = setup();
    // A copy any user can execute, wherever the build directory is.
    let dir = crate::common::shared_tempdir(false);
    let bin = dir.path().join("paddock");
    std::fs::copy(crate::common::PADDOCK, &bin).expect("copy the paddock binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // While another test thread forks, its child holds our copy's write fd
    // until it execs, and executing the copy fails with ETXTBSY: wait until
    // no such child is left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match std::process::Command::new(&bin).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => break,
        }
    }
    for json in [false, true] {
        let mut args = vec!["run"];
        if json {
            args.push("--json");
        }
        args.extend(["--", "true"]);
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&args)
            .uid(65534)
            .gid(65534)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = crate::common::finish(cmd, None, crate::common::DEADLINE);
        out.expect_code(125, "paddock run as an unprivileged user");
        assert_one_line(&out, "not root");
        assert!(
            out.stderr_str().contains("root"),
            "the message says root is needed\n{}",
            out.describe()
        );
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout\n{}",
            out.describe()
        );
    }
}
