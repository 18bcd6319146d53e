//! Unit tests of the engine, in-process (the sandboxed workers are tested
//! end to end in `crates/paddock/tests/functions.rs`).

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn engine() -> Engine {
    Engine::new().expect("engine")
}

fn run(code: &str, input: serde_json::Value) -> FnResult {
    engine().run(code, &input.to_string(), &Options::default())
}

fn run_opts(code: &str, input: &str, opts: &Options) -> FnResult {
    engine().run(code, input, opts)
}

#[track_caller]
fn ok(r: &FnResult) -> &serde_json::Value {
    assert_eq!(r.status, Status::Ok, "{r:#?}");
    assert!(r.error.is_none());
    &r.output
}

#[track_caller]
fn err(r: &FnResult, status: Status) -> FnError {
    assert_eq!(r.status, status, "{r:#?}");
    assert_eq!(r.output, serde_json::Value::Null);
    r.error.clone().expect("an error")
}

pub(crate) const TRANSFORM: &str = "function transform(data) {
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

#[test]
fn seed_transform() {
    let r = run(
        TRANSFORM,
        json!([
            { "id": 1, "name": "apple", "price": 0.5, "quantity": 10 },
            { "id": 2, "name": "banana", "price": 0.3, "quantity": 15 }
        ]),
    );
    assert_eq!(
        ok(&r),
        &json!([
            { "id": 1, "name": "APPLE", "total": 5 },
            { "id": 2, "name": "BANANA", "total": 4.5 }
        ])
    );
    assert!(r.memory_used_bytes > 10_000, "{r:?}");
    assert!(r.memory_used_bytes < 16 << 20, "{r:?}");
}

#[test]
fn seed_validator() {
    let good = run(VALIDATOR, json!({"email": "a@b.c", "age": 30}));
    assert_eq!(ok(&good), &json!({"valid": true, "errors": []}));
    let bad = run(VALIDATOR, json!({"email": "nope", "age": 12}));
    assert_eq!(
        ok(&bad),
        &json!({"valid": false, "errors": ["Invalid email", "Must be 18 or older"]})
    );
}

#[test]
fn seed_vector_length() {
    let r = run(VECTOR, json!({"x": 2, "y": 3, "z": 6}));
    assert_eq!(ok(&r), &json!(7));
}

#[test]
fn forms_return_output_and_declared_output() {
    assert_eq!(ok(&run("return input * 2", json!(21))), &json!(42));
    assert_eq!(ok(&run("output = input + 1", json!(1))), &json!(2));
    assert_eq!(ok(&run("let output = [input]", json!(1))), &json!([1]));
    assert_eq!(
        ok(&run("const output = {a: input}", json!(1))),
        &json!({"a": 1})
    );
    assert_eq!(ok(&run("var output = 'v'", json!(null))), &json!("v"));
    assert_eq!(ok(&run("globalThis.output = 3", json!(null))), &json!(3));
    // A return value wins over `output`.
    assert_eq!(ok(&run("output = 1; return 2", json!(null))), &json!(2));
    // Nothing produced: null.
    assert_eq!(ok(&run("input + 1", json!(1))), &json!(null));
    assert_eq!(ok(&run("", json!(1))), &json!(null));
    // Strict mode works with the assignment form.
    assert_eq!(
        ok(&run("'use strict'; output = input", json!(5))),
        &json!(5)
    );
    // A trailing line comment does not swallow the wrapper.
    assert_eq!(ok(&run("output = 4 // done", json!(null))), &json!(4));
    // `input` is also a global.
    assert_eq!(
        ok(&run("return globalThis.input.a", json!({"a": 9}))),
        &json!(9)
    );
}

#[test]
fn promises_are_settled() {
    assert_eq!(
        ok(&run(
            "return Promise.resolve(input).then(x => x + 1)",
            json!(1)
        )),
        &json!(2)
    );
    assert_eq!(
        ok(&run(
            "output = (async () => { const v = await input; return v * 3 })()",
            json!(2)
        )),
        &json!(6)
    );
    let e = err(
        &run("return Promise.reject(new RangeError('no'))", json!(1)),
        Status::Error,
    );
    assert_eq!((e.name.as_str(), e.message.as_str()), ("RangeError", "no"));
    let e = err(
        &run("return new Promise(() => {})", json!(1)),
        Status::Error,
    );
    assert!(e.message.contains("never settled"), "{e:?}");
    let e = err(
        &run("Promise.reject(new Error('lost')); output = 1", json!(1)),
        Status::Error,
    );
    assert_eq!(e.name, "UnhandledRejection");
    assert!(e.message.contains("lost"), "{e:?}");
    // Handled later: fine.
    assert_eq!(
        ok(&run(
            "const p = Promise.reject(1); p.catch(() => {}); output = 2",
            json!(1)
        )),
        &json!(2)
    );
}

#[test]
fn infinite_loop_times_out_on_time() {
    let opts = Options::default();
    let t = Instant::now();
    let r = run_opts("while(true){}", "null", &opts);
    let elapsed = t.elapsed();
    let e = err(&r, Status::Timeout);
    assert_eq!(e.name, "TimeoutError");
    assert!(elapsed >= Duration::from_millis(490), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
    // Catching does not help: the interruption is uncatchable.
    let r = run_opts(
        "try { while(true){} } catch (e) { output = 'caught' }",
        "null",
        &Options {
            timeout: Duration::from_millis(100),
            ..Options::default()
        },
    );
    err(&r, Status::Timeout);
    // Neither does an endless chain of promise jobs.
    let r = run_opts(
        "function f() { Promise.resolve().then(f) } f(); output = 1",
        "null",
        &Options {
            timeout: Duration::from_millis(100),
            ..Options::default()
        },
    );
    err(&r, Status::Timeout);
}

#[test]
fn catastrophic_regex_times_out() {
    let t = Instant::now();
    let r = run_opts(
        "return /(a+)+$/.test('a'.repeat(40) + 'b')",
        "null",
        &Options {
            timeout: Duration::from_millis(200),
            ..Options::default()
        },
    );
    err(&r, Status::Timeout);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn allocation_loop_is_oom_and_the_engine_goes_on() {
    let mut engine = engine();
    // Generous time: filling 16 MiB is slow in an unoptimised test build.
    let opts = Options {
        timeout: Duration::from_secs(20),
        ..Options::default()
    };
    let r = engine.run(
        "const a = []; while (true) a.push([1, 2, 3, 4]);",
        "null",
        &opts,
    );
    let e = err(&r, Status::Oom);
    assert_eq!(e.name, "OutOfMemoryError");
    assert!(e.message.contains("16 MiB"), "{e:?}");
    assert!(r.memory_used_bytes <= 17 << 20, "{r:?}");
    let r = engine.run(
        "const m = new Map(); for (let i = 0; ; i++) m.set(i, 'v' + i);",
        "null",
        &opts,
    );
    err(&r, Status::Oom);
    let r = engine.run(
        TRANSFORM,
        r#"[{"id":1,"name":"a","price":1,"quantity":2}]"#,
        &opts,
    );
    assert_eq!(ok(&r), &json!([{"id": 1, "name": "A", "total": 2}]));
    // JS may catch an allocation failure; the call then goes on normally.
    let r = engine.run(
        "try { const a = []; while (true) a.push(new Array(1000).fill(1)); } catch (e) { output = String(e) }",
        "null",
        &opts,
    );
    assert_eq!(ok(&r), &json!("InternalError: out of memory"));
    // A smaller limit is honoured.
    let small = Options {
        memory_bytes: 2 << 20,
        ..opts.clone()
    };
    let r = engine.run("return new Array(5e5).fill(0).length", "null", &small);
    err(&r, Status::Oom);
    assert_eq!(
        ok(&engine.run("return new Array(5e5).fill(0).length", "null", &opts)),
        &json!(500_000)
    );
}

#[test]
fn deep_recursion_is_an_error() {
    let r = run(
        "function f(n) { return f(n + 1) + 1 } return f(0)",
        json!(null),
    );
    let e = err(&r, Status::Error);
    assert_eq!(e.name, "RangeError");
    assert!(e.message.contains("stack"), "{e:?}");
    assert_eq!(e.line, Some(1));
    // Deeply nested input is refused the same way, not a crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = run_opts("return 1", &deep, &Options::default());
    assert_eq!(r.status, Status::Error, "{r:?}");
    // And deeply nested source.
    let src = format!("return {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let r = run_opts(&src, "null", &Options::default());
    assert_eq!(r.status, Status::Error, "{r:?}");
}

#[test]
fn syntax_error_has_its_line() {
    let r = run("const a = 1;\nconst b = 2;\nconst c = ;\n", json!(null));
    let e = err(&r, Status::Error);
    assert_eq!(e.name, "SyntaxError");
    assert_eq!(e.line, Some(3), "{e:?}");
    let r = run("function f() {\n  return 1\n", json!(null));
    let e = err(&r, Status::Error);
    assert_eq!(e.name, "SyntaxError");
    assert_eq!(e.line, Some(2), "{e:?}");
    // Runtime errors carry the line too.
    let r = run("\n\nnull.x", json!(null));
    let e = err(&r, Status::Error);
    assert_eq!(e.name, "TypeError");
    assert_eq!(e.line, Some(3), "{e:?}");
    assert!(
        e.stack.as_deref().unwrap_or("").contains("function.js:3"),
        "{e:?}"
    );
}

#[test]
fn no_host_access() {
    for (code, name) in [
        ("require('fs')", "ReferenceError"),
        ("process.exit()", "ReferenceError"),
        ("fetch('http://127.0.0.1/')", "ReferenceError"),
        (
            "globalThis.constructor.constructor('return process')()",
            "ReferenceError",
        ),
        ("setTimeout(() => {}, 1)", "ReferenceError"),
        ("import x from 'y'", "SyntaxError"),
        ("output = import('x')", "TypeError"),
        (
            "return import('fs').then(fs => fs.readFileSync('/etc/passwd'))",
            "TypeError",
        ),
        ("new Function('return this')().process.exit()", "TypeError"),
        ("return eval('require')('fs')", "ReferenceError"),
    ] {
        let r = run(code, json!(null));
        let e = err(&r, Status::Error);
        assert!(
            e.name == name
                || e.name == "ReferenceError"
                || e.name == "TypeError"
                || e.name == "SyntaxError",
            "{code}: {e:?}"
        );
        if code.contains("import(") {
            assert!(
                e.message.to_lowercase().contains("module") || e.message.contains("x"),
                "{code}: {e:?}"
            );
        }
    }
    // A bare dynamic import that nobody awaits is an unhandled rejection.
    let e = err(&run("import('x')", json!(null)), Status::Error);
    assert_eq!(e.name, "UnhandledRejection");
    // What exists: the language, nothing of a host.
    let r = run(
        "return [typeof require, typeof process, typeof fetch, typeof setTimeout, typeof performance, \
         typeof eval, typeof Function, typeof JSON, typeof Map, typeof Uint8Array, typeof Date, typeof atob]",
        json!(null),
    );
    assert_eq!(
        ok(&r),
        &json!([
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "function",
            "function",
            "object",
            "function",
            "function",
            "function",
            "undefined"
        ])
    );
    assert_eq!(ok(&run("return eval('1 + 1')", json!(null))), &json!(2));
    assert_eq!(
        ok(&run("return new Date(0).toISOString()", json!(null))),
        &json!("1970-01-01T00:00:00.000Z")
    );
}

#[test]
fn output_must_be_json() {
    let e = err(
        &run("const a = {}; a.self = a; output = a", json!(null)),
        Status::Error,
    );
    assert_eq!(e.name, "OutputError");
    assert!(e.message.contains("circular"), "{e:?}");
    let e = err(&run("output = function () {}", json!(null)), Status::Error);
    assert_eq!(e.name, "OutputError");
    assert!(e.message.contains("output itself is a function"), "{e:?}");
    let e = err(
        &run("output = {a: [1, () => 2]}", json!(null)),
        Status::Error,
    );
    assert!(e.message.contains("key \"1\" is a function"), "{e:?}");
    let e = err(&run("output = {n: 10n}", json!(null)), Status::Error);
    assert!(e.message.contains("BigInt"), "{e:?}");
    let e = err(&run("output = Symbol('s')", json!(null)), Status::Error);
    assert!(e.message.contains("symbol"), "{e:?}");
    // What JSON does with the rest is kept: undefined members vanish, NaN is null, toJSON is used.
    assert_eq!(
        ok(&run(
            "output = {a: undefined, b: NaN, d: new Date(0), m: new Map([[1, 2]])}",
            json!(null)
        )),
        &json!({"b": null, "d": "1970-01-01T00:00:00.000Z", "m": {}})
    );
    assert_eq!(ok(&run("output = undefined", json!(null))), &json!(null));
}

#[test]
fn no_state_between_calls() {
    let mut engine = engine();
    let opts = Options::default();
    let r = engine.run(
        "globalThis.leak = 42; Array.prototype.evil = 1; Object.prototype.x = 2; JSON.parse = null; output = 1",
        "null",
        &opts,
    );
    ok(&r);
    let r = engine.run(
        "return [typeof leak, [].evil, ({}).x, typeof JSON.parse]",
        "null",
        &opts,
    );
    assert_eq!(ok(&r), &json!(["undefined", null, null, "function"]));
}

#[test]
fn console_is_captured_only_in_debug_mode() {
    let code = "console.log('a', 1, {b: 2}); console.warn('w'); console.error(new TypeError('t')); output = 1";
    let quiet = run(code, json!(null));
    ok(&quiet);
    assert!(quiet.console.is_empty());
    let opts = Options {
        debug: true,
        ..Options::default()
    };
    let loud = run_opts(code, "null", &opts);
    ok(&loud);
    let lines: Vec<(Level, &str)> = loud
        .console
        .iter()
        .map(|c| (c.level, c.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (Level::Log, "a 1 {\"b\":2}"),
            (Level::Warn, "w"),
            (Level::Error, "TypeError: t")
        ]
    );
    assert!(!loud.console_truncated);
    let capped = Options {
        debug: true,
        max_console_bytes: 100,
        ..Options::default()
    };
    let r = run_opts(
        "for (let i = 0; i < 1000; i++) console.info('line ' + i); output = 1",
        "null",
        &capped,
    );
    ok(&r);
    assert!(r.console_truncated);
    let total: usize = r.console.iter().map(|c| c.message.len()).sum();
    assert!(total <= 100, "{total}");
}

#[test]
fn size_limits() {
    let opts = Options {
        max_input_bytes: 10,
        ..Options::default()
    };
    let e = err(
        &run_opts("return 1", "[1,2,3,4,5,6,7]", &opts),
        Status::Error,
    );
    assert_eq!(e.name, "InputError");
    let opts = Options {
        max_output_bytes: 100,
        ..Options::default()
    };
    let e = err(
        &run_opts("return 'x'.repeat(200)", "null", &opts),
        Status::Error,
    );
    assert_eq!(e.name, "OutputError");
    assert!(e.message.contains("100 bytes"), "{e:?}");
    let opts = Options {
        max_code_bytes: 10,
        ..Options::default()
    };
    let e = err(
        &run_opts("return 12345678901", "null", &opts),
        Status::Error,
    );
    assert_eq!(e.name, "InputError");
    let e = err(
        &run_opts("return 1", "{nope", &Options::default()),
        Status::Error,
    );
    assert_eq!(e.name, "InputError");
    assert!(e.message.contains("not valid JSON"), "{e:?}");
}

#[test]
fn compile_cache_is_used() {
    let mut engine = engine();
    let opts = Options::default();
    for i in 0..5 {
        ok(&engine.run("return input + 1", &i.to_string(), &opts));
    }
    let s = engine.cache_stats();
    assert_eq!((s.misses, s.hits, s.entries), (1, 4, 1));
    err(
        &engine.run("syntax error here", "null", &opts),
        Status::Error,
    );
    err(
        &engine.run("syntax error here", "null", &opts),
        Status::Error,
    );
    assert_eq!(engine.cache_stats().misses, 2);
}

#[test]
fn batches() {
    let mut engine = engine();
    let opts = Options {
        timeout: Duration::from_millis(100),
        ..Options::default()
    };
    let inputs = ["1", "2", "\"loop\"", "4", "{bad"];
    let code = "if (input === 'loop') while (true) {} globalThis.seen = (globalThis.seen || 0) + 1; return [input, seen]";
    for mode in [BatchMode::Fresh, BatchMode::SharedContext] {
        let rs = engine.run_batch(code, &inputs, &opts, mode);
        let statuses: Vec<Status> = rs.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [
                Status::Ok,
                Status::Ok,
                Status::Timeout,
                Status::Ok,
                Status::Error
            ],
            "{mode:?}"
        );
        let seen: Vec<&serde_json::Value> = rs.iter().map(|r| &r.output).collect();
        match mode {
            BatchMode::Fresh => assert_eq!(seen[..2], [&json!([1, 1]), &json!([2, 1])]),
            // Shared: globals persist, but a timeout starts a fresh context.
            BatchMode::SharedContext => {
                assert_eq!(seen[..2], [&json!([1, 1]), &json!([2, 2])]);
                assert_eq!(seen[3], &json!([4, 1]));
            }
        }
    }
    let rs = engine.run_batch("syntax(", &["1", "2"], &opts, BatchMode::SharedContext);
    assert!(rs.iter().all(|r| r.status == Status::Error));
    assert_eq!(rs.len(), 2);
}

#[test]
fn tiny_heap_limit_is_oom_not_a_crash() {
    let opts = Options {
        memory_bytes: 64 << 10,
        ..Options::default()
    };
    let r = run_opts("return 1", "null", &opts);
    assert_eq!(r.status, Status::Oom, "{r:?}");
}

#[test]
fn thrown_values_and_errors() {
    let e = err(&run("throw 5", json!(null)), Status::Error);
    assert_eq!(
        (e.name.as_str(), e.message.as_str()),
        ("Error", "uncaught 5")
    );
    let e = err(&run("throw {a: 1}", json!(null)), Status::Error);
    assert_eq!(e.message, "uncaught {\"a\":1}");
    let e = err(&run("\nthrow new Error('x')", json!(null)), Status::Error);
    assert_eq!(
        (e.name.as_str(), e.message.as_str(), e.line),
        ("Error", "x", Some(2))
    );
}

#[test]
fn the_fast_path_is_available() {
    assert!(engine().has_template());
}

/// The ordinary path (a new runtime and context per call) must behave as
/// the fast path does; these run a mix of cases on both.
#[test]
fn both_paths_agree() {
    let cases: &[(&str, &str, Status, serde_json::Value)] = &[
        (
            TRANSFORM,
            r#"[{"id":1,"name":"a","price":1,"quantity":2}]"#,
            Status::Ok,
            json!([{"id": 1, "name": "A", "total": 2}]),
        ),
        (VECTOR, r#"{"x":2,"y":3,"z":6}"#, Status::Ok, json!(7)),
        (
            "globalThis.k = (globalThis.k || 0) + 1; return k",
            "null",
            Status::Ok,
            json!(1),
        ),
        (
            "Array.prototype.x = 1; return [].x",
            "null",
            Status::Ok,
            json!(1),
        ),
        ("return [].x", "null", Status::Ok, json!(null)),
        (
            "const a = []; while (true) a.push([a.length]);",
            "null",
            Status::Oom,
            json!(null),
        ),
        ("while (true) {}", "null", Status::Timeout, json!(null)),
        ("return Promise.resolve(5)", "null", Status::Ok, json!(5)),
        (
            "throw new TypeError('x')",
            "null",
            Status::Error,
            json!(null),
        ),
        (
            "return typeof Math.random()",
            "null",
            Status::Ok,
            json!("number"),
        ),
    ];
    // Only the timeout case needs a short deadline; the others get a long
    // one, so that a loaded machine cannot turn an OOM into a timeout.
    let short = Options {
        timeout: Duration::from_millis(300),
        ..Options::default()
    };
    let long = Options {
        timeout: Duration::from_secs(20),
        ..Options::default()
    };
    let mut fast = engine();
    let mut slow = engine();
    slow.disable_template();
    assert!(fast.has_template() && !slow.has_template());
    for _round in 0..2 {
        for (code, input, status, output) in cases {
            let opts = if *status == Status::Timeout {
                &short
            } else {
                &long
            };
            for e in [&mut fast, &mut slow] {
                let r = e.run(code, input, opts);
                assert_eq!((&r.status, &r.output), (status, output), "{code}: {r:?}");
            }
        }
    }
}

#[test]
fn fast_path_heap_is_fresh_and_bounded() {
    let mut e = engine();
    let opts = Options::default();
    // Math.random differs between calls (reseeded) and is in [0, 1).
    let a = e.run("return [Math.random(), Math.random()]", "null", &opts);
    let b = e.run("return [Math.random(), Math.random()]", "null", &opts);
    assert_ne!(ok(&a), ok(&b));
    let r = e.run(
        "let lo = 1, hi = 0; for (let i = 0; i < 10000; i++) { const x = Math.random(); lo = Math.min(lo, x); hi = Math.max(hi, x) } return [lo >= 0, hi < 1, hi - lo > 0.9]",
        "null",
        &opts,
    );
    assert_eq!(ok(&r), &json!([true, true, true]));
    // Breaking built-ins does not carry over.
    ok(&e.run(
        "Math.random = null; Object.freeze(Math); JSON.stringify = 0; output = 1",
        "null",
        &opts,
    ));
    assert_eq!(
        ok(&e.run(
            "return [typeof Math.random, typeof JSON.stringify]",
            "null",
            &opts
        )),
        &json!(["function", "function"])
    );
    // Garbage, cyclic garbage and a near-limit call, then small calls: the
    // heap of each call starts from the template again.
    ok(&e.run("let n = 0; for (let i = 0; i < 200000; i++) { const a = {i}; a.self = a; n += a.i } return n", "null",
        &Options { timeout: Duration::from_secs(20), ..Options::default() }));
    ok(&e.run(
        "const a = []; for (let i = 0; i < 60000; i++) a.push({i, s: 'x' + i}); return a.length",
        "null",
        &Options {
            timeout: Duration::from_secs(20),
            ..Options::default()
        },
    ));
    let small = e.run("return 1", "null", &opts);
    ok(&small);
    for _ in 0..200 {
        let r = e.run("return 1", "null", &opts);
        assert_eq!(r.memory_used_bytes, small.memory_used_bytes, "{r:?}");
    }
}

/// The template is made on one thread and may serve calls on another: the
/// stack limit must follow the calling thread.
#[test]
fn an_engine_moved_to_another_thread_keeps_a_working_stack_limit() {
    let mut e = engine();
    let handle = std::thread::spawn(move || {
        let opts = Options::default();
        let shallow = e.run(
            "function f(n) { return n ? f(n - 1) + 1 : 0 } return f(100)",
            "null",
            &opts,
        );
        let deep = e.run(
            "function f(n) { return f(n + 1) + 1 } return f(0)",
            "null",
            &opts,
        );
        (shallow, deep)
    });
    let (shallow, deep) = handle.join().expect("thread");
    assert_eq!(ok(&shallow), &json!(100));
    assert_eq!(err(&deep, Status::Error).name, "RangeError");
}

#[test]
fn an_engine_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Engine>();
}
