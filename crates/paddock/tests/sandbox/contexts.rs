//! Code contexts: notebook semantics, isolation, ordering, timeouts,
//! crashes, and cleanup.

use std::time::{Duration, Instant};

use paddock_sandbox::{ContextDeath, ErrorKind, RunStatus, Sandbox, SandboxError};
use paddock_types::Limits;

use crate::util::{T, fd_count, host_processes, sandbox, sandbox_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notebook_semantics_in_each_language() {
    let sb = sandbox().await;
    let py = sb.create_context("python").await.unwrap();
    let r = py.run("import math\nx = 41", T).await.unwrap();
    assert_eq!(
        (r.status, r.result.as_deref()),
        (RunStatus::Ok, None),
        "{r:?}"
    );
    let r = py.run("print('hi')\nx + 1", T).await.unwrap();
    assert_eq!(
        (r.stdout.as_str(), r.result.as_deref()),
        ("hi\n", Some("42")),
        "{r:?}"
    );
    // Any text travels both ways intact: quotes, backslashes, control
    // characters, non-ASCII, astral planes, lone surrogates.
    let r = py
        .run("s = 'é\"\\\\\\n😀\\t\\x01'\nprint(s)\ns", T)
        .await
        .unwrap();
    assert_eq!(r.stdout, "é\"\\\n😀\t\u{1}\n", "{r:?}");
    assert_eq!(r.result.as_deref(), Some("'é\"\\\\\\n😀\\t\\x01'"), "{r:?}");
    let r = py
        .run("raise ValueError('ünïcode \"q\"')", T)
        .await
        .unwrap();
    assert_eq!(r.error.unwrap().value, "ünïcode \"q\"");
    let r = py.run("'\\ud800'", T).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("'\\ud800'"), "{r:?}");
    let r = py.run("math.floor(2.5)", T).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("2"));
    let r = py.run("a = 1\nb = 0\na / b", T).await.unwrap();
    assert_eq!(r.status, RunStatus::Error);
    let err = r.error.unwrap();
    assert_eq!(err.name, "ZeroDivisionError");
    assert!(err.traceback.contains("line 3"), "{}", err.traceback);

    let js = sb.create_context("javascript").await.unwrap();
    assert_eq!(js.run("1+1", T).await.unwrap().result.as_deref(), Some("2"));
    js.run("let y = 20; function f() { return y + 1 }", T)
        .await
        .unwrap();
    assert_eq!(
        js.run("f() * 2", T).await.unwrap().result.as_deref(),
        Some("42")
    );
    let r = js
        .run("await new Promise(r => setTimeout(() => r(7), 10))", T)
        .await
        .unwrap();
    assert_eq!(r.result.as_deref(), Some("7"), "{r:?}");
    let r = js.run("null.x", T).await.unwrap();
    assert_eq!(r.error.unwrap().name, "TypeError");

    let bash = sb.create_context("bash").await.unwrap();
    bash.run("X=5; cd /tmp", T).await.unwrap();
    let r = bash.run("echo $X; pwd", T).await.unwrap();
    assert_eq!(r.stdout, "5\n/tmp\n");
    let r = bash.run("false", T).await.unwrap();
    assert_eq!(r.status, RunStatus::Error);
    assert_eq!(r.error.unwrap().value, "1");

    let e = sb.create_context("cobol").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::UnknownLanguage));
    let msg = e.to_string();
    assert!(
        msg.contains("python") && msg.contains("javascript") && msg.contains("bash"),
        "{msg}"
    );
}

/// 12 contexts, each with its own uniquely named global that no other sees.
async fn twelve_isolated(sb: &Sandbox, lang: &str) -> Vec<paddock_sandbox::Context> {
    let mut contexts = Vec::new();
    for i in 0..12 {
        let c = sb.create_context(lang).await.unwrap();
        let (set, others) = match lang {
            "python" => (
                format!("import os\nos.environ['CTX'] = '{i}'\nmarker_{i} = {i}"),
                format!("[n for n in globals() if n.startswith('marker_') and n != 'marker_{i}']"),
            ),
            _ => (
                format!("process.env.CTX = '{i}'; globalThis.marker_{i} = {i}"),
                format!(
                    "JSON.stringify(Object.keys(globalThis).filter(n => n.startsWith('marker_') && n !== 'marker_{i}'))"
                ),
            ),
        };
        let r = c.run(&set, T).await.unwrap();
        assert_eq!(r.status, RunStatus::Ok, "{lang} {i}: {r:?}");
        let r = c.run(&others, T).await.unwrap();
        let seen = r.result.unwrap_or_default();
        assert!(
            seen == "[]" || seen == "'[]'",
            "{lang} context {i} sees other contexts' globals: {seen}"
        );
        contexts.push(c);
    }
    contexts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_are_isolated_and_run_in_parallel() {
    let sb = sandbox().await;
    for lang in ["python", "javascript"] {
        let contexts = twelve_isolated(&sb, lang).await;
        // 20 concurrent runs over the 12 contexts, each checking its own
        // global and environment.
        let contexts = std::sync::Arc::new(contexts);
        let mut tasks = Vec::new();
        for k in 0..20 {
            let contexts = contexts.clone();
            let lang = lang.to_string();
            tasks.push(tokio::spawn(async move {
                let i = k % 12;
                let code = if lang == "python" {
                    format!("import os\n(marker_{i}, os.environ['CTX'])")
                } else {
                    format!("[marker_{i}, process.env.CTX].join(',')")
                };
                let r = contexts[i].run(&code, T).await.unwrap();
                (i, r.result.unwrap_or_default())
            }));
        }
        for t in tasks {
            let (i, got) = t.await.unwrap();
            let want = if lang == "python" {
                format!("({i}, '{i}')")
            } else {
                format!("'{i},{i}'")
            };
            assert_eq!(got, want, "{lang} context {i}");
        }
    }
    // Different contexts run at the same time.
    let a = sb.create_context("python").await.unwrap();
    let b = sb.create_context("python").await.unwrap();
    let started = Instant::now();
    let (ra, rb) = tokio::join!(
        a.run("import time; time.sleep(1.5)", T),
        b.run("import time; time.sleep(1.5)", T)
    );
    ra.unwrap();
    rb.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "two contexts ran one after the other: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_one_context_are_serialised_in_order() {
    let sb = sandbox().await;
    for (lang, init, step, read) in [
        ("python", "x = 0", "x = x + 1", "x"),
        ("javascript", "var x = 0", "x = x + 1; undefined", "x"),
    ] {
        let c = std::sync::Arc::new(sb.create_context(lang).await.unwrap());
        c.run(init, T).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.run(step, T).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().status, RunStatus::Ok);
        }
        assert_eq!(
            c.run(read, T).await.unwrap().result.as_deref(),
            Some("10"),
            "{lang}"
        );
    }
    // Arrival order: each run appends its number.
    let c = std::sync::Arc::new(sb.create_context("python").await.unwrap());
    c.run("seen = []", T).await.unwrap();
    let codes: Vec<String> = (0..10).map(|i| format!("seen.append({i})")).collect();
    // Polled in order, so run i is sent before run i+1.
    let sends: Vec<_> = codes.iter().map(|code| c.run(code, T)).collect();
    for r in futures_join(sends).await {
        r.unwrap();
    }
    assert_eq!(
        c.run("seen", T).await.unwrap().result.as_deref(),
        Some("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
    );
}

/// Polls futures in the order given, so their requests go out in that order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_infinite_loop_is_interrupted_with_its_state_kept() {
    let sb = sandbox().await;
    let py = sb.create_context("python").await.unwrap();
    py.run("kept = 'yes'", T).await.unwrap();
    let started = Instant::now();
    let r = py
        .run("while True:\n    pass", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Timeout, "{r:?}");
    assert!(!r.restarted);
    assert_eq!(
        r.error.as_ref().map(|e| e.name.as_str()),
        Some("KeyboardInterrupt")
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        py.run("kept", T).await.unwrap().result.as_deref(),
        Some("'yes'")
    );

    // JavaScript: a busy loop is interrupted too and the state stays.
    let js = sb.create_context("javascript").await.unwrap();
    js.run("var kept = 'yes'", T).await.unwrap();
    let r = js
        .run("while (true) {}", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Timeout, "{r:?}");
    assert_eq!(
        js.run("kept", T).await.unwrap().result.as_deref(),
        Some("'yes'")
    );

    // bash: an external command is interrupted, the shell keeps its state.
    let bash = sb.create_context("bash").await.unwrap();
    bash.run("KEPT=yes", T).await.unwrap();
    let r = bash
        .run("sleep 100", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Timeout, "{r:?}");
    assert_eq!(bash.run("echo $KEPT", T).await.unwrap().stdout, "yes\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_interpreter_is_reported_and_can_be_restarted() {
    let sb = sandbox().await;
    for (lang, set, crash, code, check, fresh) in [
        (
            "python",
            "v = 1",
            "import os\nos._exit(3)",
            3,
            "'v' in globals()",
            "False",
        ),
        (
            "javascript",
            "var v = 1",
            "process.exit(4)",
            4,
            "typeof v",
            "'undefined'",
        ),
        ("bash", "V=1", "exit 5", 5, "echo ${V:-gone}", "gone\n"),
    ] {
        let c = sb.create_context(lang).await.unwrap();
        c.run(set, T).await.unwrap();
        let e = c.run(crash, T).await.unwrap_err();
        assert!(
            matches!(e, SandboxError::ContextDied { death: ContextDeath::Exited(n), .. } if n == code),
            "{lang}: {e:?}"
        );
        assert!(e.to_string().contains("died"), "{e}");
        // Known before the next run too: it is refused, not run.
        let e = c.run("1", T).await.unwrap_err();
        assert!(
            matches!(e, SandboxError::ContextDied { .. }),
            "{lang}: {e:?}"
        );
        c.restart().await.unwrap();
        let r = c.run(check, T).await.unwrap();
        let shown = r.result.unwrap_or(r.stdout);
        assert_eq!(shown, fresh, "{lang}: state after a restart");
    }
    // A death between runs (killed from outside) is noticed before the next.
    let py = sb.create_context("python").await.unwrap();
    let r = py.run("import os\nos.getpid()", T).await.unwrap();
    let pid: i32 = r.result.unwrap().parse().unwrap();
    let r = sb
        .exec(paddock_sandbox::ExecRequest::new([
            "kill",
            "-9",
            &pid.to_string(),
        ]))
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let e = py.run("1", T).await.unwrap_err();
    assert!(
        matches!(
            e,
            SandboxError::ContextDied {
                death: ContextDeath::Signaled(9),
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_over_the_memory_limit_reports_oom() {
    let sb = sandbox_with(Limits {
        memory_bytes: 128 << 20,
        ..Limits::default()
    })
    .await;
    let py = sb.create_context("python").await.unwrap();
    let e = py
        .run(
            "big = bytearray(1 << 30)\nbig[::4096] = b'x' * (len(big) // 4096)",
            T,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            SandboxError::ContextDied {
                death: ContextDeath::Oom,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("memory"), "{e}");
    // The sandbox survived, and a new context works.
    let again = sb.create_context("python").await.unwrap();
    assert_eq!(
        again.run("6 * 7", T).await.unwrap().result.as_deref(),
        Some("42")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_contexts_leave_nothing_behind() {
    let sb = sandbox().await;
    let agent = host_processes(&sb)[1];
    let fds_before = fd_count(agent);
    for i in 0..1040 {
        let lang = match i % 52 {
            0 => "python",
            1 => "javascript",
            _ => "bash",
        };
        let c = sb.create_context(lang).await.unwrap();
        if i % 100 == 0 {
            c.run("true", T).await.unwrap();
        }
        c.delete().await.unwrap();
    }
    assert_eq!(sb.contexts().await.unwrap(), Vec::new());
    let processes = host_processes(&sb);
    assert_eq!(processes.len(), 2, "left behind: {processes:?}");
    let fds_after = fd_count(agent);
    assert!(
        fds_after <= fds_before,
        "the agent has {fds_after} fds open, {fds_before} before"
    );
    // Deleting twice, or an unknown id, is a clear "not found".
    let c = sb.create_context("bash").await.unwrap();
    let id = c.id();
    c.delete().await.unwrap();
    let e = sb.context(id, "bash").run("true", T).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::NotFound), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_ignores_interrupts_is_restarted_and_says_so() {
    let sb = sandbox().await;
    let py = sb.create_context("python").await.unwrap();
    py.run(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nlost = 1",
        T,
    )
    .await
    .unwrap();
    let started = Instant::now();
    let r = py
        .run("while True:\n    pass", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Timeout, "{r:?}");
    assert!(r.restarted, "the result must say the state was lost: {r:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // A fresh interpreter: the old state is gone, the context works.
    let r = py.run("'lost' in globals()", T).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("False"));
}
