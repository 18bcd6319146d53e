//! `paddock repl` fed from a pipe.

use crate::common::{DEADLINE, command, finish};

fn repl(lang: &str, input: &str) -> crate::common::Out {
    let _guard = crate::common::setup();
    let args: Vec<String> = ["repl", "--lang", lang, "--memory", "256M"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    finish(command(&args), Some(input.as_bytes().to_vec()), DEADLINE)
}

#[test]
fn python_repl_prints_results_and_keeps_state() {
    let out = repl(
        "python",
        "x = 20\nx + 22\ndef f(a):\n    return a * 2\n\nprint(f(x))\n1/0\n'after error'\n",
    );
    assert_eq!(
        out.stdout_str(),
        "42\n40\n'after error'\n",
        "{}",
        out.describe()
    );
    assert!(
        out.stderr_str().contains("ZeroDivisionError"),
        "{}",
        out.describe()
    );
}

#[test]
fn javascript_and_bash_repls_work_from_a_pipe() {
    let out = repl(
        "javascript",
        "let a = [1, 2, 3]\na.map(x => x * 2)\nconsole.log('hi')\n",
    );
    assert_eq!(out.stdout_str(), "[ 2, 4, 6 ]\nhi\n", "{}", out.describe());
    out.expect_code(0, "javascript repl");
    let out = repl(
        "bash",
        "N=3\nfor i in $(seq $N); do\n  echo $i\ndone\necho end\n",
    );
    assert_eq!(out.stdout_str(), "1\n2\n3\nend\n", "{}", out.describe());
    out.expect_code(0, "bash repl");
}

#[test]
fn a_crash_in_the_repl_restarts_the_interpreter() {
    let out = repl("python", "x = 1\nimport os; os._exit(7)\nx = 2\nx\n");
    assert_eq!(out.stdout_str(), "2\n", "{}", out.describe());
    assert!(
        out.stderr_str().contains("exited with code 7"),
        "{}",
        out.describe()
    );
}

#[test]
fn ctrl_c_interrupts_the_cell_not_the_repl() {
    let _guard = crate::common::setup();
    let args: Vec<String> = ["repl", "--lang", "python"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut cmd = command(&args);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin
        .write_all(b"import time\nkept = 'yes'\ntime.sleep(60)\n")
        .unwrap();
    stdin.flush().unwrap();
    // Let the sleep start, then Ctrl-C (SIGINT to paddock, as a terminal sends).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    stdin.write_all(b"print(kept)\n").unwrap();
    drop(stdin);
    let started = std::time::Instant::now();
    let out = crate::common::collect(&mut child, None, DEADLINE, &args);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.1);
    let stderr = String::from_utf8_lossy(&out.2);
    assert_eq!(stdout, "yes\n", "stderr: {stderr}");
    assert!(stderr.contains("KeyboardInterrupt"), "{stderr}");
    assert_eq!(out.0, Some(0), "stderr: {stderr}");
}
