//! Bad usage: exit 2 with a message naming the option and the accepted form.

use crate::common::{run, setup};

/// Runs `paddock run OPTS -- true` and asserts exit 2 and that stderr
/// contains every one of `needles`. Returns a failure description instead of
/// panicking so a table of cases reports all failures at once.
fn check(opts: &[&str], needles: &[&str]) -> Option<String> {
    let out = run(opts, &["true"]);
    let err = out.stderr_str();
    let mut problems = Vec::new();
    if out.code != Some(2) {
        problems.push(format!("exit {:?}, expected 2", out.code));
    }
    for n in needles {
        if !err.contains(n) {
            problems.push(format!("stderr does not mention {n:?}"));
        }
    }
    if err.trim().is_empty() {
        problems.push("empty stderr".into());
    }
    if !out.stdout.is_empty() {
        problems.push("something was printed on stdout".into());
    }
    (!problems.is_empty()).then(|| format!("{opts:?}: {}\n  stderr: {err}", problems.join("; ")))
}

fn check_all(cases: &[(&[&str], &[&str])]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(opts, needles)| check(opts, needles))
        .collect();
    assert!(
        failures.is_empty(),
        "bad option values must exit 2 naming the option and the accepted form:\n{}",
        failures.join("\n")
    );
}

#[test]
fn invalid_option_values_exit_2_with_the_accepted_form() {
    let _g = setup();
    check_all(&[
        (&["--memory", "12X"], &["--memory", "64M"]),
        (&["--memory", "0"], &["--memory"]),
        (&["--cpus", "0"], &["--cpus", "0.5"]),
        (&["--cpus", "many"], &["--cpus", "0.5"]),
        (&["--pids", "0"], &["--pids"]),
        (&["--timeout", "abc"], &["--timeout", "500ms"]),
        (&["--timeout", "5x"], &["--timeout", "500ms"]),
        (&["--disk=-1"], &["--disk", "64M"]),
        (&["--disk", "1Q"], &["--disk", "64M"]),
        (&["--output-limit", "x"], &["--output-limit", "64M"]),
        (&["--network", "wifi"], &["--network", "none", "loopback"]),
        (&["--env", "NOEQ"], &["--env", "="]),
        (&["--env", "=value"], &["--env", "="]),
        (&["--mount", "relative:/x"], &["--mount", "absolute"]),
        (&["--mount", "/tmp:relative"], &["--mount", "absolute"]),
        (&["--mount", "/tmp:/x:rx"], &["--mount", "ro", "rw"]),
        (&["--workdir", "relative"], &["--workdir", "absolute"]),
        (&["--workdir", "/home/user/../../etc"], &["--workdir"]),
        (
            &["--lang", "ruby", "--code", "1"],
            &["--lang", "python", "javascript", "bash"],
        ),
    ]);
}

/// A value that starts with `-` after a space is still the option's value to
/// the user: `--disk -1` must be reported as a bad `--disk` value (naming the
/// option and the accepted form), like `--disk=-1` is.
#[test]
fn negative_values_after_a_space_name_the_option() {
    let _g = setup();
    check_all(&[
        (&["--disk", "-1"], &["--disk", "64M"]),
        (&["--memory", "-5M"], &["--memory", "64M"]),
        (&["--cpus", "-1"], &["--cpus", "0.5"]),
    ]);
}

/// An option whose value was forgotten takes the `--` as its value; the
/// message must still be about that option, not about the program after it.
#[test]
fn a_missing_value_before_the_dashes_names_the_option() {
    let _g = setup();
    check_all(&[
        (&["--timeout"], &["--timeout", "500ms"]),
        (&["--memory"], &["--memory", "64M"]),
        (&["--json", "--env"], &["--env", "="]),
        (&["--mount"], &["--mount", "SRC:DST"]),
    ]);
}

#[test]
fn missing_mount_source_exits_2_saying_it_does_not_exist() {
    let _g = setup();
    let missing = format!("/nonexistent-{}", crate::common::unique("src"));
    let spec = format!("{missing}:/x");
    let out = run(&["--mount", &spec], &["true"]);
    out.expect_code(2, "--mount with a missing source");
    let err = out.stderr_str();
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "the message names the source and says it does not exist\n{}",
        out.describe()
    );
}

#[test]
fn mount_target_inside_proc_or_dev_is_refused() {
    let _g = setup();
    for target in ["/proc/x", "/proc", "/dev/x"] {
        let spec = format!("/tmp:{target}");
        let out = run(&["--mount", &spec], &["true"]);
        out.expect_code(2, &format!("--mount {spec} must be refused"));
        assert!(
            out.stderr_str().contains(target.trim_end_matches("/x")),
            "the message names the refused target\n{}",
            out.describe()
        );
    }
}

#[test]
fn no_program_exits_2() {
    let _g = setup();
    for opts in [&[][..], &["--json"][..], &["--memory", "64M"][..]] {
        let out = run(opts, &[]);
        out.expect_code(2, &format!("paddock run {opts:?} without a program"));
        assert!(
            out.stderr_str().contains("PROGRAM") || out.stderr_str().contains("program"),
            "the message says a program is needed\n{}",
            out.describe()
        );
    }
    // `--` with nothing after it.
    let out = crate::common::finish(
        crate::common::command(&["run".into(), "--".into()]),
        None,
        crate::common::DEADLINE,
    );
    out.expect_code(2, "paddock run -- (nothing)");
    // --code without --lang, --lang without --code, --code with a program.
    for args in [
        vec!["run", "--code", "print(1)"],
        vec!["run", "--lang", "python"],
        vec!["run", "--lang", "python", "--code", "1", "--", "true"],
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let out =
            crate::common::finish(crate::common::command(&args), None, crate::common::DEADLINE);
        out.expect_code(2, &format!("{args:?}"));
    }
}

#[test]
fn unknown_option_exits_2() {
    let _g = setup();
    let out = run(&["--no-such-option"], &["true"]);
    out.expect_code(2, "an unknown option");
    assert!(
        out.stderr_str().contains("--no-such-option"),
        "{}",
        out.describe()
    );
}

#[test]
fn invalid_utf8_arguments_get_a_clear_error() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let _g = setup();
    let bad = OsStr::from_bytes(b"K=\xff");
    for args in [
        vec![
            OsStr::new("run"),
            OsStr::new("--env"),
            bad,
            OsStr::new("--"),
            OsStr::new("true"),
        ],
        vec![OsStr::new("run"), OsStr::new("--"), OsStr::new("echo"), bad],
    ] {
        let mut cmd = std::process::Command::new(crate::common::PADDOCK);
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = crate::common::finish(cmd, None, crate::common::DEADLINE);
        out.expect_code(2, "an argument that is not UTF-8");
        assert!(
            out.stderr_str().contains("UTF-8"),
            "the message says what is wrong\n{}",
            out.describe()
        );
    }
}
