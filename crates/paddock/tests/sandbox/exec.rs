//! `exec` in a long-lived sandbox: results, streaming, timeouts,
//! concurrency, errors, health.

use std::time::{Duration, Instant};

use paddock_sandbox::{Chunk, Death, ErrorKind, ExecRequest, SandboxError};
use paddock_types::{Limits, Status};

use crate::util::{T, host_processes, sandbox, sandbox_with, sh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_many_commands_in_one_sandbox() {
    let sb = sandbox().await;
    let r = sb
        .exec(ExecRequest::new([
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]))
        .await
        .unwrap();
    assert_eq!((r.status, r.exit_code), (Status::Exited, Some(3)), "{r:?}");
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));

    // State of the filesystem persists between execs; identity is the
    // sandbox's user; cwd, env and stdin are the request's.
    sh(&sb, "echo kept > /home/user/f").await;
    assert_eq!(
        sh(&sb, "cat /home/user/f; id -u; hostname").await,
        "kept\n1000\nsandbox\n"
    );
    let mut req = ExecRequest::new(["sh", "-c", "pwd; echo $GREETING; cat"]);
    req.cwd = Some("/tmp".into());
    req.env = Some(vec![("GREETING".into(), "hello".into())]);
    req.stdin = Some(b"from stdin".to_vec());
    let r = sb.exec(req).await.unwrap();
    assert_eq!(r.stdout, "/tmp\nhello\nfrom stdin", "{r:?}");
    assert!(r.wall_time_ms > 0.0);
    // The next command starts in the default directory again, and a
    // relative cwd is taken from there each time, not from the last one.
    assert_eq!(sh(&sb, "pwd").await, "/home/user\n");
    sh(&sb, "mkdir -p /home/user/sub/sub").await;
    for _ in 0..2 {
        let mut req = ExecRequest::new(["pwd"]);
        req.cwd = Some("sub".into());
        let r = sb.exec(req).await.unwrap();
        assert_eq!(r.stdout, "/home/user/sub\n", "{r:?}");
    }

    // 100 sequential execs: the sandbox stays healthy and leaves nothing.
    for i in 0..100 {
        let r = sb
            .exec(ExecRequest::new(["echo", &i.to_string()]))
            .await
            .unwrap();
        assert_eq!(r.stdout, format!("{i}\n"));
    }
    let processes = host_processes(&sb);
    assert_eq!(
        processes.len(),
        2,
        "only init and the agent should be left: {processes:?}"
    );
    sb.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_as_it_is_produced_and_is_limited() {
    let sb = sandbox().await;
    let started = Instant::now();
    let mut exec = sb
        .exec_stream(ExecRequest::new([
            "sh",
            "-c",
            "echo first; sleep 2; echo second",
        ]))
        .await
        .unwrap();
    let first = exec.next_chunk().await.unwrap();
    assert_eq!(first, Some(Chunk::Stdout(b"first\n".to_vec())));
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "the first chunk came only after {:?}",
        started.elapsed()
    );
    let r = exec.result().await.unwrap();
    assert_eq!(r.stdout, "first\nsecond\n");

    let mut req = ExecRequest::new(["sh", "-c", "head -c 300000 /dev/zero; echo done >&2"]);
    req.output_limit = 1000;
    let r = sb.exec(req).await.unwrap();
    assert_eq!(r.stdout.len(), 1000);
    assert!(
        r.stdout_truncated && !r.stderr_truncated,
        "{:?}",
        (r.stdout_truncated, r.stderr_truncated)
    );
    assert_eq!(r.stderr, "done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_kill_the_command_and_its_group_but_not_the_sandbox() {
    let sb = sandbox().await;
    let mut req = ExecRequest::new(["sh", "-c", "sleep 60 & sleep 60; echo never"]);
    req.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let r = sb.exec(req).await.unwrap();
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(r.stdout, "");
    // Both sleeps were in the command's process group.
    let left = sh(&sb, "ps -eo comm= | grep -c '^sleep' || true").await;
    assert_eq!(left.trim(), "0", "sleeps survived the timeout");
    assert_eq!(sh(&sb, "echo alive").await, "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs_run_in_parallel() {
    let sb = sandbox().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let sb = sb.clone();
        tasks.push(tokio::spawn(async move {
            sb.exec(ExecRequest::new([
                "sh",
                "-c",
                &format!("sleep 1; echo {i}"),
            ]))
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.stdout, format!("{i}\n"));
    }
    // Serialised, they would take 10 s.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "10 concurrent 1 s execs took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear() {
    let sb = sandbox().await;
    let e = sb
        .exec(ExecRequest::new(["no-such-program-xyz"]))
        .await
        .unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::ProgramNotFound), "{e}");
    assert!(e.to_string().contains("no-such-program-xyz"), "{e}");
    let e = sb
        .exec(ExecRequest::new(["/etc/passwd"]))
        .await
        .unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::NotExecutable), "{e}");
    let mut req = ExecRequest::new(["true"]);
    req.cwd = Some("/nonexistent-dir".into());
    let e = sb.exec(req).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
    let e = sb
        .exec(ExecRequest::new(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::InvalidRequest), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_over_the_memory_limit_is_oom() {
    let sb = sandbox_with(Limits {
        memory_bytes: 128 << 20,
        ..Limits::default()
    })
    .await;
    let mut req = ExecRequest::new(["python3", "-c", "b = bytearray(1 << 30); print('no')"]);
    req.timeout = T;
    let r = sb.exec(req).await.unwrap();
    assert_eq!(r.status, Status::Oom, "{r:?}");
    assert_eq!(sh(&sb, "echo still here").await, "still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_dead_sandbox_answers_with_the_reason() {
    let sb = sandbox().await;
    let rtt = sb.ping(Duration::from_secs(5)).await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    // Kill the agent from outside (as an operator or the OOM killer would).
    let processes = host_processes(&sb);
    let agent = *processes.get(1).expect("init and agent");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let e = sb.ping(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(
            e,
            SandboxError::Dead(Death::AgentSignaled {
                signal: 9,
                oom: false
            })
        ),
        "{e:?}"
    );
    assert!(!sb.is_alive());
    let e = sb.exec(ExecRequest::new(["true"])).await.unwrap_err();
    assert!(matches!(e, SandboxError::Dead(_)), "{e:?}");

    let sb = sandbox().await;
    let init = sb.pid().unwrap();
    sb.kill().await.unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{init}")).exists());
    let e = sb.exec(ExecRequest::new(["true"])).await.unwrap_err();
    assert!(matches!(e, SandboxError::Dead(Death::Killed)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_exec_is_cancelled_inside() {
    let sb = sandbox().await;
    let exec = sb
        .exec_stream(ExecRequest::new(["sleep", "4242"]))
        .await
        .unwrap();
    // Give it time to start, then walk away (as a disconnected client does).
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(exec);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = sh(&sb, "ps -eo args= | grep -c '^sleep 4242' || true").await;
        if left.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned command kept running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sb.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_created_concurrently() {
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(tokio::spawn(async {
            let sb = sandbox().await;
            let out = sh(&sb, "echo up").await;
            sb.kill().await.unwrap();
            out
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "up\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_agent_is_reported_as_unresponsive() {
    let sb = sandbox().await;
    let agent = host_processes(&sb)[1];
    let pid = rustix::process::Pid::from_raw(agent).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let e = sb.ping(Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(e, SandboxError::Unresponsive(_)), "{e:?}");
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    sb.ping(Duration::from_secs(10)).await.unwrap();
    assert_eq!(sh(&sb, "echo back").await, "back\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_on_a_template_tree_runs_its_agent_through_the_hosts_loader() {
    drop(crate::common::setup());
    let tree = crate::common::shared_tempdir(false);
    crate::common::minimal_tree(tree.path());
    let mut spec = paddock_types::SandboxSpec::new(Vec::new());
    spec.rootfs = Some(tree.path().to_path_buf());
    let sb = paddock_sandbox::Sandbox::create(paddock_sandbox::SandboxConfig {
        spec,
        agent_exe: crate::common::PADDOCK.into(),
    })
    .await
    .unwrap();
    // Programs come from the template: only its dash is there.
    let out = sh(
        &sb,
        "read l < /usr/share/marker; echo $l; for f in /usr/bin/*; do echo $f; done",
    )
    .await;
    assert_eq!(out, "from the template\n/usr/bin/sh\n");
    let e = sb
        .exec(ExecRequest::new(["python3", "-c", "1"]))
        .await
        .unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::ProgramNotFound), "{e}");
    // Files work as anywhere else.
    sb.write_file("t.txt", b"template").await.unwrap();
    assert_eq!(sh(&sb, "read l < t.txt; echo $l").await, "template\n");
    sb.kill().await.unwrap();
}

/// Init's parent-death signal fires when the *thread* that cloned it ends:
/// a sandbox must outlive the thread that created it (tokio's blocking pool
/// retires idle threads, after 10 s by default; 100 ms here).
#[test]
fn a_sandbox_outlives_the_thread_that_created_it() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sb = sandbox().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(sb.is_alive(), "the sandbox died with its creating thread");
        let r = sb.exec(ExecRequest::new(["/usr/bin/true"])).await.unwrap();
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        sb.kill().await.unwrap();
    });
}
