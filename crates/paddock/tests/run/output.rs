//! stdin handling and output capture.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, command, finish, run, run_args, run_json, s, setup};

#[test]
fn without_stdin_the_program_sees_eof() {
    let _g = setup();
    // paddock's own stdin is a pipe with data that is never closed by us
    // before paddock ends: the program must not see it, nor wait for it.
    let mut cmd = command(&run_args(&[], &["cat"]));
    cmd.stdin(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn paddock");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"must-not-arrive\n").expect("write stdin");
    let args = run_args(&[], &["cat"]);
    let (code, stdout, stderr) =
        crate::common::collect(&mut child, None, Duration::from_secs(20), &args);
    drop(stdin);
    assert_eq!(
        code,
        Some(0),
        "cat ends at once; stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    assert!(
        stdout.is_empty(),
        "without --stdin the program must see an empty stdin, got {:?}",
        String::from_utf8_lossy(&stdout)
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let (v, out) = run_json(&[], &["cat"]);
    assert_eq!(s(&v, "stdout"), "", "{}", out.describe());
}

#[test]
fn with_stdin_input_arrives() {
    let _g = setup();
    let input: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let out = finish(
        command(&run_args(&["--stdin", "--output-limit", "16M"], &["cat"])),
        Some(input.clone()),
        DEADLINE,
    );
    out.expect_code(0, "cat with --stdin");
    assert_eq!(out.stdout.len(), input.len(), "all of stdin arrives");
    assert!(out.stdout == input, "stdin arrives unchanged");
    let out = finish(
        command(&run_args(
            &["--stdin", "--json"],
            &["sh", "-c", "read a; echo got:$a"],
        )),
        Some(b"hello\n".to_vec()),
        DEADLINE,
    );
    out.expect_code(0, "--stdin --json");
    assert_eq!(
        s(&out.json(), "stdout"),
        "got:hello\n",
        "{}",
        out.describe()
    );
}

#[test]
fn non_utf8_output() {
    let _g = setup();
    let (v, out) = run_json(&[], &["printf", "a\\377\\376b"]);
    let text = s(&v, "stdout");
    assert_eq!(
        text,
        "a\u{FFFD}\u{FFFD}b",
        "lossy replacement\n{}",
        out.describe()
    );
    let (v, out) = run_json(&[], &["sh", "-c", "printf '\\377' >&2"]);
    assert_eq!(s(&v, "stderr"), "\u{FFFD}", "{}", out.describe());
    // Without --json the bytes pass through unchanged.
    let out = run(&[], &["printf", "a\\377\\376b"]);
    out.expect_code(0, "printf");
    assert_eq!(out.stdout, b"a\xff\xfeb", "raw bytes pass through");
}

#[test]
fn default_output_limit_is_1m() {
    let _g = setup();
    let code = "import sys\nfor _ in range(10): sys.stdout.buffer.write(b'y' * (1 << 20))";
    let (v, out) = run_json(&[], &["python3", "-c", code]);
    assert_eq!(v["stdout_truncated"], true, "{}", out.describe());
    assert_eq!(s(&v, "stdout").len(), 1 << 20, "1M kept by default");
    assert_eq!(s(&v, "status"), "exited", "{}", out.describe());
    assert_eq!(v["exit_code"], 0, "{}", out.describe());
    let out = run(&[], &["python3", "-c", code]);
    out.expect_code(0, "10 MB without --json");
    assert_eq!(out.stdout.len(), 1 << 20, "passthrough cut at 1M");
}

#[test]
fn output_exactly_at_the_limit_is_not_truncated() {
    let _g = setup();
    let code = "import sys\nsys.stdout.buffer.write(b'z' * 4096)";
    let (v, out) = run_json(&["--output-limit", "4K"], &["python3", "-c", code]);
    assert_eq!(s(&v, "stdout").len(), 4096, "{}", out.describe());
    assert_eq!(
        v["stdout_truncated"],
        false,
        "4096 bytes fit in 4K\n{}",
        out.describe()
    );
    let code = "import sys\nsys.stdout.buffer.write(b'z' * 4097)";
    let (v, out) = run_json(&["--output-limit", "4K"], &["python3", "-c", code]);
    assert_eq!(s(&v, "stdout").len(), 4096, "{}", out.describe());
    assert_eq!(v["stdout_truncated"], true, "{}", out.describe());
}

#[test]
fn large_stdout_and_stderr_at_once_do_not_deadlock() {
    let _g = setup();
    let code = "import sys\n\
                o, e = b'o' * 65536, b'e' * 65536\n\
                for _ in range(80):\n\
                \x20   sys.stdout.buffer.write(o); sys.stdout.flush()\n\
                \x20   sys.stderr.buffer.write(e); sys.stderr.flush()";
    let start = Instant::now();
    let (v, out) = run_json(
        &["--output-limit", "16M", "--timeout", "60s"],
        &["python3", "-c", code],
    );
    assert_eq!(s(&v, "status"), "exited", "{}", out.describe());
    let (o, e) = (s(&v, "stdout"), s(&v, "stderr"));
    assert_eq!(o.len(), 80 * 65536, "stdout complete");
    assert_eq!(e.len(), 80 * 65536, "stderr complete");
    assert!(o.bytes().all(|b| b == b'o') && e.bytes().all(|b| b == b'e'));
    assert_eq!(v["stdout_truncated"], false);
    assert_eq!(v["stderr_truncated"], false);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    // The same through passthrough.
    let out = run(&["--output-limit", "16M"], &["python3", "-c", code]);
    out.expect_code(0, "both streams without --json");
    assert_eq!(out.stdout.len(), 80 * 65536);
    assert_eq!(out.stderr.len(), 80 * 65536);
}

/// `paddock run -- yes | head -n1`: when the reader of paddock's stdout goes
/// away, the run ends promptly (as `yes | head -n1` does without paddock)
/// instead of running on until the timeout with nobody listening.
#[test]
fn closed_stdout_reader_ends_the_run() {
    use std::io::Read;
    let _g = setup();
    let args = run_args(&["--timeout", "10s"], &["yes"]);
    let start = Instant::now();
    let mut child = command(&args).spawn().expect("spawn paddock");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 4];
    stdout.read_exact(&mut first).expect("read the first bytes");
    assert_eq!(&first, b"y\ny\n", "yes runs");
    drop(stdout);
    let closed = Instant::now();
    let (code, _, stderr) =
        crate::common::collect(&mut child, None, Duration::from_secs(40), &args);
    let took = closed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "paddock ran on for {took:?} after its stdout reader went away (exit {code:?}, stderr: {}); \
         total {:?}",
        String::from_utf8_lossy(&stderr),
        start.elapsed()
    );
    // An exit status, not death by SIGPIPE: paddock ignores the signal
    // (its own start-up does, as std's runtime would) and reports 128 + 13.
    assert_eq!(
        code,
        Some(141),
        "paddock should end with 141 after its reader left; stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
}
