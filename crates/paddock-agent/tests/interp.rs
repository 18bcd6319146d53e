//! Code-context interpreters against the real `/usr/bin/python3`,
//! `/usr/bin/node` and `/usr/bin/bash` (no sandbox needed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_agent::interp::{
    Completeness, Exit, InterpError, Interpreter, Language, RunReply, Stream,
};
use tokio::time::{sleep, timeout};

/// Upper bound for anything that should take milliseconds: a hang fails
/// the test instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(30);

fn env(home: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOME".into(), home.display().to_string()),
    ]
}

struct Ctx {
    interp: Interpreter,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

fn spawn(lang: Language) -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let interp = Interpreter::spawn(lang, &path, &env(&path)).unwrap();
    Ctx {
        interp,
        _dir: dir,
        dir: path,
    }
}

/// Runs `code`, collecting both streams.
async fn run(i: &mut Interpreter, code: &str) -> (Result<RunReply, InterpError>, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let r = {
        let mut sink = |s: Stream, d: &[u8]| match s {
            Stream::Stdout => out.extend_from_slice(d),
            Stream::Stderr => err.extend_from_slice(d),
        };
        timeout(LIMIT, i.run(code, &mut sink))
            .await
            .expect("run hung")
    };
    (
        r,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Runs `code`, which must succeed; returns (result, stdout, stderr).
async fn ok(i: &mut Interpreter, code: &str) -> (Option<String>, String, String) {
    let (r, out, err) = run(i, code).await;
    let reply = r.unwrap_or_else(|e| panic!("{code:?}: {e}\nstdout: {out}\nstderr: {err}"));
    assert!(
        reply.error.is_none(),
        "{code:?} failed: {:?}\nstderr: {err}",
        reply.error
    );
    (reply.result, out, err)
}

async fn value(i: &mut Interpreter, code: &str) -> Option<String> {
    ok(i, code).await.0
}

/// Runs `code`, which must raise; returns the error.
async fn error(i: &mut Interpreter, code: &str) -> paddock_agent::interp::ErrorInfo {
    let (r, _, err) = run(i, code).await;
    let reply = r.unwrap_or_else(|e| panic!("{code:?}: {e}"));
    reply
        .error
        .unwrap_or_else(|| panic!("{code:?} did not fail; stderr: {err}"))
}

async fn complete(i: &mut Interpreter, code: &str) -> Completeness {
    timeout(LIMIT, i.complete(code))
        .await
        .expect("complete hung")
        .unwrap()
}

/// Runs `code` and interrupts it after `after`, like the agent's timeout
/// policy: interrupt, then give it a grace period.
async fn run_interrupted(
    i: &mut Interpreter,
    code: &str,
    after: Duration,
) -> (Result<RunReply, InterpError>, String) {
    let signaller = i.signaller();
    let mut out = Vec::new();
    let mut sink = |_: Stream, d: &[u8]| out.extend_from_slice(d);
    let r = {
        let fut = i.run(code, &mut sink);
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => panic!("{code:?} finished before the interrupt: {r:?}"),
            _ = sleep(after) => {}
        }
        signaller.interrupt();
        timeout(Duration::from_secs(10), &mut fut)
            .await
            .expect("the interrupt did not end the cell")
    };
    (r, String::from_utf8_lossy(&out).into_owned())
}

fn died(r: Result<RunReply, InterpError>) -> Exit {
    match r {
        Err(InterpError::Died(exit)) => exit,
        other => panic!("expected Died, got {other:?}"),
    }
}

/// Asserts that an `ls -l /proc/self/fd` listing made by a program the
/// interpreter started does not show the interpreter's control socket (its
/// fd 3), nor any fd above 3 other than the one `ls` reads the directory with.
fn no_control_socket(i: &Interpreter, listing: &str) {
    let control = std::fs::read_link(format!("/proc/{}/fd/3", i.pid())).unwrap();
    let control = control.to_string_lossy();
    assert!(control.starts_with("socket:"), "{control}");
    assert!(listing.contains("/proc/"), "not a listing: {listing}");
    assert!(
        !listing.contains(control.as_ref()),
        "the control socket {control} leaked into a child:\n{listing}"
    );
    for line in listing.lines().filter(|l| l.contains(" -> ")) {
        let fd: u32 = line
            .split(" -> ")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(fd <= 3, "fd {fd} leaked into a child:\n{listing}");
    }
}

// ---------------------------------------------------------------- python

#[tokio::test]
async fn python_state_results_and_statements() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    assert_eq!(value(i, "x = 41").await, None);
    assert_eq!(value(i, "x + 1").await.as_deref(), Some("42"));
    assert_eq!(value(i, "1+1").await.as_deref(), Some("2"));
    assert_eq!(value(i, "None").await, None);
    assert_eq!(value(i, "'a'").await.as_deref(), Some("'a'"));
    assert_eq!(value(i, "def f(n):\n    return n * 2").await, None);
    assert_eq!(value(i, "y = f(x)\ny").await.as_deref(), Some("82"));
    // A notebook-like __main__: no driver names, argv [""].
    assert_eq!(
        value(i, "import sys\n(__name__, sys.argv)")
            .await
            .as_deref(),
        Some("('__main__', [''])")
    );
    assert_eq!(
        value(i, "sorted(k for k in globals() if not k.startswith('__'))")
            .await
            .as_deref(),
        Some("['f', 'sys', 'x', 'y']")
    );
    // Exactly the given environment.
    assert_eq!(
        value(i, "import os\nsorted(os.environ)").await.as_deref(),
        Some("['HOME', 'LANG', 'PATH']")
    );
}

#[tokio::test]
async fn python_streams_in_order() {
    let mut c = spawn(Language::Python);
    let (_, out, err) = ok(
        &mut c.interp,
        "import sys\nfor n in range(3):\n    print('out', n)\n    print('err', n, file=sys.stderr)",
    )
    .await;
    assert_eq!(out, "out 0\nout 1\nout 2\n");
    assert_eq!(err, "err 0\nerr 1\nerr 2\n");
}

#[tokio::test]
async fn python_output_is_streamed_before_the_reply() {
    let mut c = spawn(Language::Python);
    // The cell waits for a file that the test creates only once it has
    // seen the cell's first line: without streaming this would hang.
    let flag = c.dir.join("flag");
    let code = format!(
        "import os, time\nprint('ready')\nwhile not os.path.exists({:?}):\n    time.sleep(0.01)\nprint('done')",
        flag.display().to_string()
    );
    let mut out = String::new();
    let mut sink = |s: Stream, d: &[u8]| {
        assert_eq!(s, Stream::Stdout);
        out.push_str(&String::from_utf8_lossy(d));
        if out.contains("ready") {
            std::fs::write(&flag, b"").unwrap();
        }
    };
    let reply = timeout(LIMIT, c.interp.run(&code, &mut sink))
        .await
        .expect("output was not streamed")
        .unwrap();
    assert!(reply.error.is_none(), "{reply:?}");
    assert_eq!(out, "ready\ndone\n");
}

#[tokio::test]
async fn python_exceptions() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    let e = error(i, "a = 1\n1/0").await;
    assert_eq!(e.name, "ZeroDivisionError");
    assert_eq!(e.value, "division by zero");
    assert!(
        e.traceback.contains("File \"<cell>\", line 2"),
        "{}",
        e.traceback
    );
    assert!(e.traceback.contains("1/0"), "{}", e.traceback);
    assert!(
        e.traceback
            .ends_with("ZeroDivisionError: division by zero\n"),
        "{}",
        e.traceback
    );
    for driver in ["<string>", "_paddock", "python.py", "run_until_complete"] {
        assert!(!e.traceback.contains(driver), "{driver}: {}", e.traceback);
    }
    // The state from before the error is kept.
    assert_eq!(value(i, "a").await.as_deref(), Some("1"));

    // A function from an earlier cell shows its own source line.
    ok(i, "def g():\n    return {}['missing']").await;
    let e = error(i, "\ng()").await;
    assert_eq!(e.name, "KeyError");
    assert!(
        e.traceback.contains("line 2, in <module>"),
        "{}",
        e.traceback
    );
    assert!(e.traceback.contains("line 2, in g"), "{}", e.traceback);
    assert!(
        e.traceback.contains("return {}['missing']"),
        "{}",
        e.traceback
    );

    let e = error(i, "x = )").await;
    assert_eq!(e.name, "SyntaxError");
    assert!(e.traceback.contains("<cell>"), "{}", e.traceback);

    // sys.exit is an error of the cell, not the end of the context.
    let e = error(i, "import sys\nsys.exit(3)").await;
    assert_eq!((e.name.as_str(), e.value.as_str()), ("SystemExit", "3"));
    assert_eq!(value(i, "a").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn python_top_level_await_and_imports() {
    let mut c = spawn(Language::Python);
    std::fs::write(c.dir.join("mymod.py"), "V = 'from mymod'\n").unwrap();
    let i = &mut c.interp;
    assert_eq!(
        value(i, "import asyncio\nawait asyncio.sleep(0.01)\n7")
            .await
            .as_deref(),
        Some("7")
    );
    assert_eq!(
        value(i, "async def h():\n    return 5\nr = await h()").await,
        None
    );
    assert_eq!(value(i, "r").await.as_deref(), Some("5"));
    assert_eq!(
        value(i, "import mymod\nmymod.V").await.as_deref(),
        Some("'from mymod'")
    );
}

#[tokio::test]
async fn python_interrupt_keeps_state() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    ok(i, "kept = 'yes'").await;
    let (r, _) = run_interrupted(
        i,
        "import time\nwhile True: time.sleep(0.01)",
        Duration::from_millis(300),
    )
    .await;
    let e = r.unwrap().error.expect("no error after the interrupt");
    assert_eq!(e.name, "KeyboardInterrupt");
    assert!(e.traceback.contains("line 2"), "{}", e.traceback);
    assert!(!e.traceback.contains("on_sigint"), "{}", e.traceback);
    assert_eq!(value(i, "kept").await.as_deref(), Some("'yes'"));

    // Also a pure-Python loop, and an awaited sleep.
    let (r, _) = run_interrupted(i, "n = 0\nwhile True: n += 1", Duration::from_millis(200)).await;
    assert_eq!(r.unwrap().error.unwrap().name, "KeyboardInterrupt");
    let (r, _) = run_interrupted(
        i,
        "import asyncio\nawait asyncio.sleep(60)",
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(r.unwrap().error.unwrap().name, "KeyboardInterrupt");

    // SIGINT between runs is ignored, by the signaller and by the driver.
    i.signaller().interrupt();
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(i.pid()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(i.try_exit(), None);
    assert_eq!(value(i, "kept").await.as_deref(), Some("'yes'"));
    assert!(value(i, "n").await.is_some());
}

#[tokio::test]
async fn python_interrupt_before_the_cell_starts_is_kept() {
    // A fresh interpreter: the run first waits for the driver to start.
    let mut c = spawn(Language::Python);
    let signaller = c.interp.signaller();
    let mut sink = |_: Stream, _: &[u8]| {};
    let fut = c.interp.run("while True: pass", &mut sink);
    tokio::pin!(fut);
    tokio::select! {
        biased;
        r = &mut fut => panic!("finished: {r:?}"),
        _ = std::future::ready(()) => {}
    }
    signaller.interrupt();
    let r = timeout(LIMIT, &mut fut)
        .await
        .expect("the interrupt was lost");
    assert_eq!(r.unwrap().error.unwrap().name, "KeyboardInterrupt");
}

#[tokio::test]
async fn python_death() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    ok(i, "x = 1").await;
    let (r, out, _) = run(i, "import os\nprint('last words', flush=True)\nos._exit(3)").await;
    assert_eq!(died(r), Exit::Code(3));
    assert_eq!(out, "last words\n");
    assert_eq!(i.try_exit(), Some(Exit::Code(3)));
    // Every later call says the same.
    assert_eq!(died(run(i, "x").await.0), Exit::Code(3));
    assert!(matches!(
        i.complete("x").await,
        Err(InterpError::Died(Exit::Code(3)))
    ));
    assert_eq!(i.exited().await, Exit::Code(3));
}

#[tokio::test]
async fn python_closing_the_control_fd_ends_the_context() {
    let mut c = spawn(Language::Python);
    let (r, _, _) = run(&mut c.interp, "import os\nos.close(3)").await;
    assert!(matches!(r, Err(InterpError::Died(_))), "{r:?}");
}

#[tokio::test]
async fn python_killed() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    let signaller = i.signaller();
    let mut sink = |_: Stream, _: &[u8]| {};
    let fut = i.run("import time\ntime.sleep(30)", &mut sink);
    tokio::pin!(fut);
    tokio::select! {
        r = &mut fut => panic!("finished: {r:?}"),
        _ = sleep(Duration::from_millis(200)) => {}
    }
    signaller.kill();
    let r = timeout(LIMIT, &mut fut).await.unwrap();
    assert_eq!(died(r), Exit::Signal(9));
    assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
}

#[tokio::test]
async fn python_contexts_are_separate() {
    let mut a = spawn(Language::Python);
    let mut b = spawn(Language::Python);
    ok(&mut a.interp, "secret = 1").await;
    let e = error(&mut b.interp, "secret").await;
    assert_eq!(e.name, "NameError");
    assert_ne!(a.interp.pid(), b.interp.pid());
}

#[tokio::test]
async fn python_control_fd_not_inherited() {
    let mut c = spawn(Language::Python);
    // os.system keeps every inheritable fd; subprocess closes them anyway.
    let (_, out, _) = ok(&mut c.interp, "import os\nos.system('ls -l /proc/self/fd')").await;
    no_control_socket(&c.interp, &out);
    let (_, out, _) = ok(
        &mut c.interp,
        "import subprocess\nsubprocess.run(['ls', '-l', '/proc/self/fd'])",
    )
    .await;
    no_control_socket(&c.interp, &out);
}

#[tokio::test]
async fn python_complete() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    for (code, want) in [
        ("1+1", Completeness::Complete),
        ("x = 1\ny = 2", Completeness::Complete),
        ("await asyncio.sleep(0)", Completeness::Complete),
        ("def f():", Completeness::Incomplete),
        ("x = (1,", Completeness::Incomplete),
        ("s = '''abc", Completeness::Incomplete),
        ("x = )", Completeness::Invalid),
        ("1 +* 2", Completeness::Invalid),
    ] {
        assert_eq!(complete(i, code).await, want, "{code:?}");
    }
    // complete() runs nothing.
    assert_eq!(complete(i, "z = 1").await, Completeness::Complete);
    assert_eq!(error(i, "z").await.name, "NameError");
}

#[tokio::test]
async fn python_large_output() {
    let mut c = spawn(Language::Python);
    let (_, out, _) = ok(
        &mut c.interp,
        "import sys\nsys.stdout.write('x' * 5_000_000)",
    )
    .await;
    assert_eq!(out.len(), 5_000_000);
    assert!(out.bytes().all(|b| b == b'x'));
    // A large result too; a huge one is cut, saying so.
    let r = value(&mut c.interp, "'y' * 1_000_000").await.unwrap();
    assert_eq!(r.len(), 1_000_002);
    let r = value(&mut c.interp, "'z' * 5_000_000").await.unwrap();
    assert!(r.len() < 2_200_000, "{}", r.len());
    assert!(
        r.ends_with("more characters cut by paddock]"),
        "{}",
        &r[r.len() - 60..]
    );
}

/// Waits (without reading the interpreter's output) until `path` exists.
async fn wait_for_file(path: &Path) {
    timeout(LIMIT, async {
        while !path.exists() {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the flag file never appeared");
}

#[tokio::test]
async fn python_output_after_the_reply_is_discarded() {
    let mut c = spawn(Language::Python);
    let flag = c.dir.join("printed");
    let i = &mut c.interp;
    ok(
        i,
        "import os, threading, time\n\
         def later(n):\n    time.sleep(0.1)\n    print('late' * n)\n    open('printed', 'w').close()\n\
         t = threading.Thread(target=later, args=(100_000,))\nt.start()",
    )
    .await;
    // Between runs: exited() reads (and drops) the late output, more than
    // a pipe holds, so the thread can finish.
    tokio::select! {
        e = i.exited() => panic!("died: {e}"),
        _ = wait_for_file(&flag) => {}
    }
    let (_, out, _) = ok(i, "t.join()\nprint('ok')").await;
    assert_eq!(out, "ok\n");

    // Late output that nobody read is dropped when the next run starts.
    std::fs::remove_file(&flag).unwrap();
    ok(
        i,
        "t = threading.Thread(target=later, args=(100,))\nt.start()",
    )
    .await;
    wait_for_file(&flag).await;
    let (_, out, _) = ok(i, "t.join()\nprint('ok')").await;
    assert_eq!(out, "ok\n");

    // More than a pipe holds and nobody reading: no deadlock (the rest of
    // the blocked write shows up in the next run).
    std::fs::remove_file(&flag).unwrap();
    ok(
        i,
        "t = threading.Thread(target=later, args=(100_000,))\nt.start()",
    )
    .await;
    sleep(Duration::from_millis(300)).await;
    let (_, out, _) = ok(i, "t.join()\nprint('ok')").await;
    assert!(out.ends_with("ok\n"), "{out:.100}");
}

#[tokio::test]
async fn python_cancelled_run_does_not_confuse_the_next() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    // Started: a run dropped while still waiting for the driver's start-up
    // would never have sent its cell.
    ok(i, "pass").await;
    {
        let mut sink = |_: Stream, _: &[u8]| {};
        // Dropped after 100 ms while the cell still runs.
        let r = timeout(
            Duration::from_millis(100),
            i.run(
                "import time\ntime.sleep(0.5)\ndone = 'first'\n'stale'",
                &mut sink,
            ),
        )
        .await;
        assert!(r.is_err());
    }
    // The next run waits for the first one and gets its own reply.
    let (result, out, _) = ok(i, "print('second')\ndone").await;
    assert_eq!(result.as_deref(), Some("'first'"));
    assert_eq!(out, "second\n");
}

// ------------------------------------------------------------ javascript

#[tokio::test]
async fn javascript_state_results_and_statements() {
    let mut c = spawn(Language::Javascript);
    let i = &mut c.interp;
    assert_eq!(value(i, "let y = 1").await, None);
    assert_eq!(value(i, "y + 1").await.as_deref(), Some("2"));
    assert_eq!(value(i, "function f(){return 3}").await, None);
    assert_eq!(value(i, "f()").await.as_deref(), Some("3"));
    assert_eq!(value(i, "class K { v() { return 'k' } }").await, None);
    assert_eq!(value(i, "new K().v()").await.as_deref(), Some("'k'"));
    assert_eq!(value(i, "1+1").await.as_deref(), Some("2"));
    assert_eq!(value(i, "undefined").await, None);
    assert_eq!(
        value(i, "({a: [1, 2]})").await.as_deref(),
        Some("{ a: [ 1, 2 ] }")
    );
    assert_eq!(value(i, "null").await.as_deref(), Some("null"));
    // A promise value is awaited.
    assert_eq!(value(i, "Promise.resolve(9)").await.as_deref(), Some("9"));
    // require is a global.
    assert_eq!(
        value(i, "require('path').join('a', 'b')").await.as_deref(),
        Some("'a/b'")
    );
}

#[tokio::test]
async fn javascript_streams_in_order() {
    let mut c = spawn(Language::Javascript);
    let (_, out, err) = ok(
        &mut c.interp,
        "for (let n = 0; n < 3; n++) { console.log('out', n); console.error('err', n); }",
    )
    .await;
    assert_eq!(out, "out 0\nout 1\nout 2\n");
    assert_eq!(err, "err 0\nerr 1\nerr 2\n");
}

#[tokio::test]
async fn javascript_exceptions() {
    let mut c = spawn(Language::Javascript);
    let i = &mut c.interp;
    let e = error(i, "let o = null;\no.x").await;
    assert_eq!(e.name, "TypeError");
    assert!(e.value.contains("null"), "{}", e.value);
    assert!(e.traceback.contains("<cell>:2"), "{}", e.traceback);
    for driver in ["[eval]", "node:vm", "paddockDriver", "node:internal"] {
        assert!(!e.traceback.contains(driver), "{driver}: {}", e.traceback);
    }
    let e = error(i, "\n\nnotDefined()").await;
    assert_eq!(e.name, "ReferenceError");
    assert!(e.traceback.contains("<cell>:3"), "{}", e.traceback);
    // A thrown non-Error.
    let e = error(i, "throw 42").await;
    assert_eq!((e.name.as_str(), e.value.as_str()), ("Error", "42"));
    let e = error(i, "let = ;").await;
    assert_eq!(e.name, "SyntaxError");
    // A rejected promise.
    let e = error(i, "await Promise.reject(new RangeError('no'))").await;
    assert_eq!((e.name.as_str(), e.value.as_str()), ("RangeError", "no"));
    assert!(e.traceback.contains("<cell>"), "{}", e.traceback);
}

#[tokio::test]
async fn javascript_top_level_await() {
    let mut c = spawn(Language::Javascript);
    let i = &mut c.interp;
    assert_eq!(
        value(i, "await new Promise(r => setTimeout(() => r(7), 10))")
            .await
            .as_deref(),
        Some("7")
    );
    assert_eq!(value(i, "const z = await Promise.resolve(5)").await, None);
    assert_eq!(value(i, "z").await.as_deref(), Some("5"));
    assert_eq!(
        value(i, "const v = await Promise.resolve(6); v")
            .await
            .as_deref(),
        Some("6")
    );
    assert_eq!(
        value(i, "var w = await 1, u = 2\nw + u").await.as_deref(),
        Some("3")
    );
    assert_eq!(value(i, "w * 10 + u").await.as_deref(), Some("12"));
    // node's own rewrite fails on a trailing comment; the fallback takes
    // over and still hoists the declaration.
    assert_eq!(
        value(i, "const q = await Promise.resolve(3);\n// a comment").await,
        None
    );
    assert_eq!(value(i, "q").await.as_deref(), Some("3"));
    assert_eq!(
        value(
            i,
            "let a1 = await Promise.resolve(1), b1 = 2 // trailing\na1 + b1"
        )
        .await
        .as_deref(),
        Some("3")
    );
    assert_eq!(value(i, "[a1, b1]").await.as_deref(), Some("[ 1, 2 ]"));
}

#[tokio::test]
async fn javascript_interrupts_keep_state() {
    let mut c = spawn(Language::Javascript);
    let i = &mut c.interp;
    ok(i, "let kept = 'yes'").await;
    let (r, _) = run_interrupted(i, "while(true){}", Duration::from_millis(300)).await;
    let e = r.unwrap().error.expect("no error after the interrupt");
    assert_eq!(e.name, "Interrupted");
    assert_eq!(value(i, "kept").await.as_deref(), Some("'yes'"));
    // Interrupting an await.
    let (r, _) =
        run_interrupted(i, "await new Promise(() => {})", Duration::from_millis(300)).await;
    assert_eq!(r.unwrap().error.unwrap().name, "Interrupted");
    assert_eq!(value(i, "kept").await.as_deref(), Some("'yes'"));
    // SIGINT between runs does nothing.
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(i.pid()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(value(i, "kept").await.as_deref(), Some("'yes'"));
}

#[tokio::test]
async fn javascript_background_errors_do_not_kill() {
    let mut c = spawn(Language::Javascript);
    let i = &mut c.interp;
    ok(
        i,
        "setTimeout(() => { throw new Error('boom') }, 0); Promise.reject(new Error('bg')); 1",
    )
    .await;
    sleep(Duration::from_millis(200)).await;
    assert_eq!(value(i, "2").await.as_deref(), Some("2"));
    assert_eq!(i.try_exit(), None);
}

#[tokio::test]
async fn javascript_death_and_isolation() {
    let mut a = spawn(Language::Javascript);
    let mut b = spawn(Language::Javascript);
    ok(&mut a.interp, "var secret = 1").await;
    assert_eq!(error(&mut b.interp, "secret").await.name, "ReferenceError");
    let (r, out, _) = run(&mut a.interp, "console.log('bye'); process.exit(4)").await;
    assert_eq!(died(r), Exit::Code(4));
    assert_eq!(out, "bye\n");
    assert_eq!(a.interp.try_exit(), Some(Exit::Code(4)));
    // The other one is unaffected.
    assert_eq!(value(&mut b.interp, "1").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn javascript_control_fd_not_inherited() {
    let mut c = spawn(Language::Javascript);
    let (_, out, _) = ok(
        &mut c.interp,
        "process.stdout.write(require('child_process').execSync('ls -l /proc/self/fd', {stdio: ['ignore', 'pipe', 'inherit']}).toString())",
    )
    .await;
    no_control_socket(&c.interp, &out);
}

#[tokio::test]
async fn javascript_complete() {
    let mut c = spawn(Language::Javascript);
    let i = &mut c.interp;
    for (code, want) in [
        ("1+1", Completeness::Complete),
        ("await x", Completeness::Complete),
        ("const r = await f()\nr", Completeness::Complete),
        ("function f() {", Completeness::Incomplete),
        ("foo(1,", Completeness::Incomplete),
        ("`abc", Completeness::Incomplete),
        ("x = `a${1 +", Completeness::Incomplete),
        ("/* open comment", Completeness::Incomplete),
        ("let = ;", Completeness::Invalid),
        ("1 +* 2", Completeness::Invalid),
        ("'unterminated", Completeness::Invalid),
    ] {
        assert_eq!(complete(i, code).await, want, "{code:?}");
    }
}

#[tokio::test]
async fn javascript_large_output() {
    let mut c = spawn(Language::Javascript);
    let (_, out, _) = ok(&mut c.interp, "process.stdout.write('x'.repeat(5_000_000))").await;
    assert_eq!(out.len(), 5_000_000);
}

// ------------------------------------------------------------------ bash

#[tokio::test]
async fn bash_state_persists() {
    let mut c = spawn(Language::Bash);
    let i = &mut c.interp;
    assert_eq!(value(i, "X=5; cd /tmp").await, None);
    let (result, out, _) = ok(i, "echo $X; pwd").await;
    assert_eq!(result, None);
    assert_eq!(out, "5\n/tmp\n");
    ok(i, "declare -A M=([a]=1); greet() { echo \"hi $1\"; }").await;
    let (_, out, _) = ok(i, "echo ${M[a]}; greet you").await;
    assert_eq!(out, "1\nhi you\n");
}

#[tokio::test]
async fn bash_streams_and_status() {
    let mut c = spawn(Language::Bash);
    let i = &mut c.interp;
    let (_, out, err) = ok(i, "echo a; echo b >&2; echo c").await;
    assert_eq!((out.as_str(), err.as_str()), ("a\nc\n", "b\n"));
    let e = error(i, "false").await;
    assert_eq!(
        (e.name.as_str(), e.value.as_str(), e.traceback.as_str()),
        ("ExitStatus", "1", "")
    );
    // $? carries over to the next cell.
    let (_, out, _) = ok(i, "echo $?").await;
    assert_eq!(out, "1\n");
    let e = error(i, "(exit 7)").await;
    assert_eq!(e.value, "7");
    // A syntax error is status 2 with bash's message.
    let (r, _, err) = run(i, "echo )").await;
    assert_eq!(r.unwrap().error.unwrap().value, "2");
    assert!(err.contains("syntax error"), "{err}");
    // stdin is empty.
    let (_, out, _) = ok(i, "cat; echo end").await;
    assert_eq!(out, "end\n");
    // NUL bytes cannot be passed to bash.
    assert!(matches!(
        i.run("echo a\0b", &mut |_, _| {}).await,
        Err(InterpError::InvalidCode(_))
    ));
    assert_eq!(ok(i, "echo still").await.1, "still\n");
}

#[tokio::test]
async fn bash_interrupt() {
    let mut c = spawn(Language::Bash);
    let i = &mut c.interp;
    ok(i, "X=kept").await;
    let (r, out) = run_interrupted(
        i,
        "echo before; sleep 30; echo after",
        Duration::from_millis(300),
    )
    .await;
    let e = r.unwrap().error.expect("no error after the interrupt");
    assert_eq!((e.name.as_str(), e.value.as_str()), ("ExitStatus", "130"));
    // (An interactive bash prints a newline when a job dies of SIGINT.)
    assert_eq!(out.trim_end(), "before");
    // Even a loop in bash itself.
    let (r, _) = run_interrupted(
        i,
        "while :; do :; done; echo after",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(r.unwrap().error.unwrap().value, "130");
    let (_, out, _) = ok(i, "echo $X").await;
    assert_eq!(out, "kept\n");
    // SIGINT between runs.
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(i.pid()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    sleep(Duration::from_millis(100)).await;
    let (_, out, _) = ok(i, "echo $X").await;
    assert_eq!(out, "kept\n");
}

#[tokio::test]
async fn bash_exit_is_death() {
    let mut c = spawn(Language::Bash);
    let i = &mut c.interp;
    ok(i, "sleep 1000 &").await;
    let (r, out, _) = run(i, "echo bye; exit 5").await;
    assert_eq!(died(r), Exit::Code(5));
    assert_eq!(out, "bye\n");
    assert_eq!(i.try_exit(), Some(Exit::Code(5)));
}

#[tokio::test]
async fn bash_control_fd_not_inherited() {
    let mut c = spawn(Language::Bash);
    let (_, out, _) = ok(&mut c.interp, "ls -l /proc/self/fd").await;
    no_control_socket(&c.interp, &out);
    // Not even in a background job.
    let (_, out, _) = ok(&mut c.interp, "(ls -l /proc/self/fd) & wait").await;
    no_control_socket(&c.interp, &out);
}

#[tokio::test]
async fn bash_complete() {
    let mut c = spawn(Language::Bash);
    let i = &mut c.interp;
    for (code, want) in [
        ("echo ok", Completeness::Complete),
        ("if true; then", Completeness::Incomplete),
        ("echo \"abc", Completeness::Incomplete),
        ("f() {", Completeness::Incomplete),
        ("cat <<EOF\nx", Completeness::Incomplete),
        ("fi", Completeness::Invalid),
        ("echo )", Completeness::Invalid),
    ] {
        assert_eq!(complete(i, code).await, want, "{code:?}");
    }
    // $? survives a complete().
    let _ = error(i, "false").await;
    complete(i, "echo").await;
    assert_eq!(ok(i, "echo $?").await.1, "1\n");
}

// ---------------------------------------------------------------- common

#[tokio::test]
async fn process_setup_and_kill() {
    for lang in [Language::Python, Language::Javascript, Language::Bash] {
        let c = spawn(lang);
        let pid = c.interp.pid();
        assert_eq!(c.interp.language(), lang);
        let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(adj.trim(), "500", "{lang}");
        let pgid = rustix::process::getpgid(rustix::process::Pid::from_raw(pid)).unwrap();
        assert_eq!(pgid.as_raw_nonzero().get(), pid, "{lang} leads its group");
        assert_eq!(
            timeout(LIMIT, c.interp.kill()).await.unwrap(),
            Exit::Signal(9),
            "{lang}"
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{lang} not reaped"
        );
    }
}

#[tokio::test]
async fn drop_kills_and_reaps() {
    let mut c = spawn(Language::Python);
    ok(
        &mut c.interp,
        "import subprocess\np = subprocess.Popen(['sleep', '1000'])",
    )
    .await;
    let child: i32 = value(&mut c.interp, "p.pid")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let pid = c.interp.pid();
    drop(c);
    // The background reaper needs the runtime to run for a moment.
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists()
            && !Path::new(&format!("/proc/{child}")).exists()
        {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
    panic!("interpreter {pid} or its child {child} survived the drop");
}

#[tokio::test]
async fn exited_notices_a_death_between_runs() {
    let mut c = spawn(Language::Python);
    let i = &mut c.interp;
    ok(i, "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(9))).start()").await;
    let exit = timeout(LIMIT, i.exited()).await.unwrap();
    assert_eq!(exit, Exit::Code(9));
    assert_eq!(died(run(i, "1").await.0), Exit::Code(9));
}

#[tokio::test]
async fn spawn_errors_say_why() {
    let missing = Path::new("/nonexistent/dir");
    let e = Interpreter::spawn(Language::Python, missing, &[]).unwrap_err();
    assert!(matches!(e, InterpError::Spawn(_)), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/dir"), "{e}");
}
