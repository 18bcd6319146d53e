//! Integration tests of functions (issue 5): `paddock fn` and the worker
//! pool, with the real binary as the sandboxed worker
//! (`paddock fn-worker`). They need root and fail, never skip, without it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_functions::{
    Batch, BatchMode, Call, FnResult, FunctionsError, Options, Pool, PoolConfig, Priority, Status,
};
use serde_json::{Value, json};

const PADDOCK: &str = env!("CARGO_BIN_EXE_paddock");

fn preconditions() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the functions integration tests must run as root (euid is {}): the workers run in real \
         sandboxes (user namespaces with host uid ranges, cgroups); they do not skip",
        rustix::process::geteuid().as_raw()
    );
    assert!(Path::new(PADDOCK).is_file(), "{PADDOCK} does not exist");
}

fn pool_with(workers: usize, tweak: impl FnOnce(&mut PoolConfig)) -> Pool {
    preconditions();
    let mut config = PoolConfig::new(PADDOCK);
    config.workers = workers;
    tweak(&mut config);
    Pool::new(config).expect("start the pool")
}

fn pool(workers: usize) -> Pool {
    pool_with(workers, |_| {})
}

fn call(code: &str, input: Value) -> Call {
    Call::new(code, input.to_string())
}

#[track_caller]
fn ok(r: &FnResult) -> &Value {
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    &r.output
}

const TRANSFORM: &str = "function transform(data) {
    return data.map(item => ({
        id: item.id,
        name: item.name.toUpperCase(),
        total: item.price * item.quantity
    }));
}

output = transform(input);";

const VALIDATOR: &str = "function validate(record) {
    const errors = [];

    if (!record.email || !record.email.includes('@')) {
        errors.push('Invalid email');
    }

    if (!record.age || record.age < 18) {
        errors.push('Must be 18 or older');
    }

    return {
        valid: errors.length === 0,
        errors: errors
    };
}

output = validate(input);";

const VECTOR: &str = "function evaluate(vars) {
    const { x, y, z } = vars;
    return Math.sqrt(x * x + y * y + z * z);
}

output = evaluate(input);";

/// Runs the binary with a hard deadline.
fn paddock(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    preconditions();
    let mut child = Command::new(PADDOCK)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paddock");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "paddock {args:?} hung");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_result(args: &[&str]) -> Value {
    let (code, out, err) = paddock(args, None);
    assert_eq!(code, 0, "paddock {args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn cli_runs_the_three_seed_examples() {
    let r = cli_result(&[
        "fn",
        "--code",
        TRANSFORM,
        "--input",
        r#"[{"id":1,"name":"apple","price":0.5,"quantity":10},{"id":2,"name":"banana","price":0.3,"quantity":15}]"#,
    ]);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(
        r["output"],
        json!([{"id": 1, "name": "APPLE", "total": 5}, {"id": 2, "name": "BANANA", "total": 4.5}])
    );
    for key in ["console", "error", "duration_us", "memory_used_bytes"] {
        assert!(r.get(key).is_some(), "{key} missing in {r}");
    }
    let r = cli_result(&[
        "fn",
        "--code",
        VALIDATOR,
        "--input",
        r#"{"email":"x","age":3}"#,
    ]);
    assert_eq!(
        r["output"],
        json!({"valid": false, "errors": ["Invalid email", "Must be 18 or older"]})
    );
    let r = cli_result(&["fn", "--code", VECTOR, "--input", r#"{"x":1,"y":4,"z":8}"#]);
    assert_eq!(r["output"], json!(9));
}

#[test]
fn cli_files_batches_debug_and_exit_statuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let code = dir.path().join("f.js");
    std::fs::write(&code, "console.log('got', input); return input * 2").expect("write");
    let input = dir.path().join("in.json");
    std::fs::write(&input, "21").expect("write");
    let r = cli_result(&[
        "fn",
        "--file",
        code.to_str().expect("utf-8"),
        "--input",
        &format!("@{}", input.display()),
        "--debug",
    ]);
    assert_eq!(r["output"], json!(42));
    assert_eq!(r["console"], json!([{"level": "log", "message": "got 21"}]));

    // Batch: JSON Lines in, one result per line out, in order.
    let (code_, out, err) = paddock(
        &[
            "fn",
            "--code",
            "if (input === 3) throw new Error('three'); return input * 2",
            "--inputs",
            "-",
        ],
        Some("1\n2\n\n3\n4\n"),
    );
    assert_eq!(code_, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let got: Vec<(&str, &Value)> = lines
        .iter()
        .map(|l| (l["status"].as_str().unwrap_or(""), &l["output"]))
        .collect();
    assert_eq!(
        got,
        [
            ("ok", &json!(2)),
            ("ok", &json!(4)),
            ("error", &Value::Null),
            ("ok", &json!(8))
        ]
    );
    let (code_, out, err) = paddock(
        &[
            "fn",
            "--code",
            "globalThis.n = (globalThis.n || 0) + 1; return n",
            "--inputs",
            "-",
            "--shared-context",
        ],
        Some("1\n1\n1\n"),
    );
    assert_eq!(code_, 0, "{err}");
    let outs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["output"].clone())
        .collect();
    assert_eq!(outs, [json!(1), json!(2), json!(3)]);

    // A function that fails still exits 0: the result object says why.
    let r = cli_result(&["fn", "--code", "while (true) {}", "--timeout", "100ms"]);
    assert_eq!(r["status"], "timeout");
    assert_eq!(r["error"]["name"], "TimeoutError");

    // Bad usage exits 2 with a message.
    for args in [
        &["fn", "--code", "return 1", "--input", "{nope"][..],
        &["fn", "--input", "1"][..],
        &["fn", "--code", "1", "--file", "/nonexistent"][..],
        &["fn", "--file", "/nonexistent/f.js"][..],
        &["fn", "--code", "1", "--memory", "10"][..],
        &["fn", "--code", "1", "--timeout", "0ms"][..],
    ] {
        let (c, _, err) = paddock(args, None);
        assert_eq!(c, 2, "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?}");
    }
}

#[test]
fn infinite_loop_times_out_within_the_limit_plus_a_margin() {
    let pool = pool(1);
    let t = Instant::now();
    let r = pool.run(call("while(true){}", json!(null))).expect("run");
    let elapsed = t.elapsed();
    assert_eq!(r.status, Status::Timeout, "{r:?}");
    assert!(r.duration_us >= 500_000, "{r:?}");
    assert!(r.duration_us < 650_000, "{r:?}");
    assert!(elapsed < Duration::from_millis(1200), "{elapsed:?}");
    // The worker is fine afterwards (no restart).
    let pid = pool.workers()[0].worker_pid;
    assert_eq!(
        ok(&pool.run(call("return 1", json!(null))).expect("run")),
        &json!(1)
    );
    assert_eq!(pool.workers()[0].worker_pid, pid);
    assert_eq!(pool.stats().worker_crashes, 0);
}

#[test]
fn allocation_loop_is_oom_and_the_worker_stays_healthy() {
    let pool = pool(1);
    let before = pool.workers()[0].clone();
    let bomb = call(
        "const a = []; while (true) a.push({ k: 'x'.repeat(64) + a.length });",
        json!(null),
    );
    let r = pool.run(bomb.clone()).expect("run");
    assert_eq!(r.status, Status::Oom, "{r:?}");
    assert_eq!(
        r.error.as_ref().map(|e| e.name.as_str()),
        Some("OutOfMemoryError")
    );
    let r = pool
        .run(call(
            TRANSFORM,
            json!([{"id": 1, "name": "a", "price": 2, "quantity": 3}]),
        ))
        .expect("run");
    assert_eq!(ok(&r), &json!([{"id": 1, "name": "A", "total": 6}]));
    let r = pool.run(bomb).expect("run");
    assert_eq!(r.status, Status::Oom, "{r:?}");
    let after = pool.workers()[0].clone();
    assert_eq!(
        before.worker_pid, after.worker_pid,
        "the worker was restarted"
    );
    let stats = pool.stats();
    assert_eq!((stats.oom, stats.ok, stats.worker_crashes), (2, 1, 0));
}

#[test]
fn recursion_syntax_errors_and_cycles_are_errors() {
    let pool = pool(1);
    let r = pool
        .run(call(
            "function f(n) { return f(n + 1) } return f(0)",
            json!(null),
        ))
        .expect("run");
    assert_eq!(r.status, Status::Error);
    assert_eq!(
        r.error.as_ref().map(|e| e.name.as_str()),
        Some("RangeError")
    );

    let r = pool
        .run(call("const a = 1;\nconst b = ;\n", json!(null)))
        .expect("run");
    assert_eq!(r.status, Status::Error);
    let e = r.error.expect("error");
    assert_eq!((e.name.as_str(), e.line), ("SyntaxError", Some(2)), "{e:?}");

    let r = pool
        .run(call(
            "const a = {b: {}}; a.b.a = a; output = a",
            json!(null),
        ))
        .expect("run");
    assert_eq!(r.status, Status::Error);
    let e = r.error.expect("error");
    assert_eq!(e.name, "OutputError");
    assert!(e.message.contains("circular"), "{e:?}");
    assert_eq!(pool.stats().worker_crashes, 0);
}

#[test]
fn no_host_access_from_a_function() {
    let pool = pool(1);
    for code in [
        "require('fs')",
        "process.exit()",
        "return import('x')",
        "import('x')",
        "fetch('http://127.0.0.1:8080/')",
        "globalThis.constructor.constructor('return process')()",
        "return new Function('return require')()('child_process')",
    ] {
        let r = pool.run(call(code, json!(null))).expect("run");
        assert_eq!(r.status, Status::Error, "{code}: {r:?}");
        let e = r.error.expect("error");
        assert!(
            ["ReferenceError", "TypeError", "UnhandledRejection"].contains(&e.name.as_str()),
            "{code}: {e:?}"
        );
    }
    assert_eq!(pool.stats().worker_crashes, 0);

    // The worker process itself is confined: its sandbox's uid 1000 mapped
    // to an unprivileged host uid, no capabilities, no_new_privs, and two
    // seccomp filters (the jail's deny-list and the worker's allow-list).
    let pid = pool.workers()[0].worker_pid.expect("worker pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("Seccomp_filters:"), "2", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    let uid: u32 = field("Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uid");
    assert!(uid >= 0x4000_0000, "host uid {uid}");
    // It has nothing open but its standard streams, the channel and statm.
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    assert!(fds <= 5, "{fds} fds open");
}

#[test]
fn no_state_is_kept_between_calls() {
    let pool = pool(1);
    ok(&pool
        .run(call(
            "globalThis.secret = input; Array.prototype.leak = 1; Object.prototype.p = 2; output = 1",
            json!("s3cret"),
        ))
        .expect("run"));
    let r = pool
        .run(call(
            "return [typeof secret, [].leak, ({}).p, typeof input]",
            json!(5),
        ))
        .expect("run");
    assert_eq!(ok(&r), &json!(["undefined", null, null, "number"]));
}

#[test]
fn a_killed_worker_fails_only_its_own_call() {
    let pool = Arc::new(pool(2));
    let long = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            let mut c = call("while (true) {}", json!(null));
            c.options.timeout = Duration::from_secs(30);
            pool.run(c)
        })
    };
    // Wait until a worker is busy with the long call, then kill that worker.
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        if let Some(w) = pool.workers().into_iter().find(|w| w.busy) {
            break w;
        }
        assert!(Instant::now() < deadline, "the long call never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid = victim.worker_pid.expect("worker pid");
    // Other calls go on while it runs.
    ok(&pool.run(call("return input + 1", json!(1))).expect("run"));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the worker");
    let t = Instant::now();
    let r = long.join().expect("thread");
    assert!(t.elapsed() < Duration::from_secs(10));
    match r {
        Err(FunctionsError::WorkerCrashed(why)) => {
            assert!(why.contains("signal 9"), "{why}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    // Every later call succeeds, on a restarted worker.
    for i in 0..10 {
        assert_eq!(
            ok(&pool.run(call("return input * 2", json!(i))).expect("run")),
            &json!(i * 2)
        );
    }
    // The dead worker's slot starts a new one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.stats().worker_starts < 3 {
        assert!(Instant::now() < deadline, "{:?}", pool.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.stats().worker_crashes, 1, "{:?}", pool.stats());
}

#[test]
fn two_hundred_concurrent_calls_all_succeed() {
    let pool = Arc::new(pool(2));
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let r = pool.run(call(
                    TRANSFORM,
                    json!([{"id": i, "name": "n", "price": i, "quantity": 2}]),
                ));
                (i, r)
            })
        })
        .collect();
    for t in threads {
        let (i, r) = t.join().expect("thread");
        let r = r.expect("call");
        assert_eq!(ok(&r), &json!([{"id": i, "name": "N", "total": i * 2}]));
    }
    let stats = pool.stats();
    assert_eq!(stats.ok, 200, "{stats:?}");
    assert_eq!(stats.wait_count, 200);
    assert_eq!(stats.wait_buckets.last().map(|b| b.1), Some(200));
    assert_eq!(
        (stats.queue_depth, stats.rejected_busy, stats.worker_crashes),
        (0, 0, 0)
    );
}

/// Occupies a worker of `pool` for `ms` (a busy loop that the call's own
/// timeout ends).
fn occupy(pool: &Arc<Pool>, ms: u64) -> std::thread::JoinHandle<()> {
    let pool = Arc::clone(pool);
    std::thread::spawn(move || {
        let mut c = call("while (true) {}", json!(null));
        c.options.timeout = Duration::from_millis(ms);
        let _ = pool.run(c);
    })
}

fn wait_busy(pool: &Pool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pool.workers().iter().all(|w| w.busy) {
        assert!(Instant::now() < deadline, "workers never became busy");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_queue_answers_busy_at_once() {
    let pool = Arc::new(pool_with(1, |c| c.queue_capacity = 2));
    let blocker = occupy(&pool, 1500);
    wait_busy(&pool);
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let tx = tx.clone();
        pool.submit(call("return 1", json!(null)), move |r| {
            let _ = tx.send(r);
        })
        .expect("queued");
    }
    assert_eq!(pool.stats().queue_depth, 2);
    let t = Instant::now();
    match pool.run(call("return 1", json!(null))) {
        Err(e @ FunctionsError::Busy { .. }) => {
            assert!(e.to_string().contains("busy"), "{e}");
        }
        other => panic!("expected busy, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_millis(100));
    for _ in 0..2 {
        let r = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("result")
            .expect("ok");
        assert_eq!(ok(&r), &json!(1));
    }
    blocker.join().expect("blocker");
    let stats = pool.stats();
    assert_eq!(stats.rejected_busy, 1);
    assert!(stats.wait_max_seconds > 0.5, "{stats:?}");
}

#[test]
fn higher_priorities_are_served_first_fifo_within_a_level() {
    let pool = Arc::new(pool(1));
    let blocker = occupy(&pool, 800);
    wait_busy(&pool);
    let order = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for (name, priority) in [
        ("low-1", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high-1", Priority::High),
        ("normal-2", Priority::Normal),
        ("high-2", Priority::High),
        ("low-2", Priority::Low),
    ] {
        let mut c = call("return 1", json!(null));
        c.priority = priority;
        let (order, tx) = (Arc::clone(&order), tx.clone());
        pool.submit(c, move |_| {
            order.lock().expect("lock").push(name);
            let _ = tx.send(());
        })
        .expect("queued");
    }
    for _ in 0..6 {
        rx.recv_timeout(Duration::from_secs(30)).expect("done");
    }
    blocker.join().expect("blocker");
    assert_eq!(
        *order.lock().expect("lock"),
        ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
    );
}

#[test]
fn workers_are_recycled_after_n_calls_and_when_their_rss_grows() {
    let pool = pool_with(1, |c| c.max_calls_per_worker = 3);
    let mut pids = Vec::new();
    for i in 0..7 {
        ok(&pool.run(call("return input", json!(i))).expect("run"));
        pids.push(pool.workers()[0].worker_pid);
    }
    let stats = pool.stats();
    assert_eq!(stats.recycled_calls, 2, "{stats:?}");
    pids.dedup();
    assert!(pids.len() >= 2, "{pids:?}");

    let pool = pool_with(1, |c| c.max_rss_growth_bytes = 1 << 20);
    let mut grow = call(
        // About 3 MB of heap: resident afterwards (large calls give their
        // pages back, this one stays under that threshold).
        "const a = []; for (let i = 0; i < 25000; i++) a.push({i, s: 'x' + i}); return a.length",
        json!(null),
    );
    grow.options.memory_bytes = 64 << 20;
    grow.options.timeout = Duration::from_secs(10);
    for _ in 0..4 {
        ok(&pool.run(grow.clone()).expect("run"));
    }
    let stats = pool.stats();
    assert!(stats.recycled_rss >= 1, "{stats:?}");
    assert_eq!(stats.worker_crashes, 0);
}

#[test]
fn batches_run_many_inputs_on_one_compiled_function() {
    let pool = pool(1);
    let inputs: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    for mode in [BatchMode::Fresh, BatchMode::SharedContext] {
        let results = pool
            .run_batch(Batch {
                code: "return input * 3".into(),
                inputs: inputs.clone(),
                options: Options::default(),
                mode,
                priority: Priority::Normal,
            })
            .expect("batch");
        assert_eq!(results.len(), 50);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(ok(r), &json!(i * 3));
        }
    }
    assert_eq!(pool.stats().ok, 100);
}

#[test]
fn limits_out_of_range_are_refused_before_queueing() {
    let pool = pool_with(1, |c| c.max_memory_bytes = 64 << 20);
    let mut c = call("return 1", json!(null));
    c.options.memory_bytes = 128 << 20;
    assert!(matches!(pool.run(c), Err(FunctionsError::InvalidCall(_))));
    let mut c = call("return 1", json!(null));
    c.options.timeout = Duration::ZERO;
    assert!(matches!(pool.run(c), Err(FunctionsError::InvalidCall(_))));
    let mut c = call("return 1", json!("x".repeat(100)));
    c.options.max_input_bytes = 10;
    assert!(matches!(pool.run(c), Err(FunctionsError::InvalidCall(_))));
    assert_eq!(pool.stats().submitted, 0);
}

#[test]
fn dropping_the_pool_leaves_no_worker_behind() {
    let pool = pool(2);
    ok(&pool.run(call("return 1", json!(null))).expect("run"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.workers().iter().any(|w| w.worker_pid.is_none()) {
        assert!(
            Instant::now() < deadline,
            "workers never started: {:?} {:?}",
            pool.workers(),
            pool.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids: Vec<i32> = pool
        .workers()
        .iter()
        .flat_map(|w| [w.init_pid, w.worker_pid])
        .flatten()
        .collect();
    assert_eq!(pids.len(), 4);
    drop(pool);
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "process {pid} outlived the pool");
    }
}
