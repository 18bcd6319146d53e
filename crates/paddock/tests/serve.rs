//! Integration tests of `paddock serve` (issue 4): the built binary as a
//! real server on loopback, real sandboxes, a plain HTTP/1.1 client. They
//! run as root and fail, never skip, elsewhere.

#[path = "common/mod.rs"]
mod common;
#[path = "serve/util.rs"]
mod util;

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::*;

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

#[test]
fn no_arguments_starts_on_defaults_with_a_printed_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::spawn(&["serve".to_string()], dir);
    let addr: std::net::SocketAddr = server.addr.parse().expect("an address");
    assert!(addr.ip().is_loopback(), "listens on loopback: {addr}");
    assert!(
        (8080..8100).contains(&addr.port()),
        "port 8080 or the next free one: {addr}"
    );
    let key = server
        .stdout_lines
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("pdk_")))
        .map(|k| k.trim_matches('\'').to_string())
        .expect("a development key is printed");
    let key = key.split('\'').next().unwrap_or(&key).to_string();
    assert_eq!(key.len(), 36, "key {key}");
    let r = server.req("GET", "/healthz", None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
    let r = server.req("GET", "/v1/sandboxes", Some(&key), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sandboxes"], json!([]));
    server
        .req("GET", "/v1/sandboxes", Some("pdk_wrong-key-123456"), b"")
        .expect_error(401, "wrong key");
    let created = server.create(&key, json!({}));
    let r = server.json(
        "POST",
        &format!("/v1/sandboxes/{}/exec", id_of(&created)),
        &key,
        json!({"cmd": ["echo", "hi"]}),
    );
    assert_eq!(r.json()["stdout"], "hi\n");
    let log = server.stderr();
    assert!(!log.contains(&key), "the key must never be logged:\n{log}");
    assert!(log.contains(&key[..6]), "the masked key is logged:\n{log}");
}

#[test]
fn check_config_validates_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, CONFIG.replace("BOB_HASH", &sha256_hex(BOB))).expect("write");
    let out = std::process::Command::new(PADDOCK)
        .args(["serve", "--check-config", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 tenant(s)"));
    // The README's example configuration is valid.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = readme
        .split("## `paddock serve`")
        .nth(1)
        .expect("README has a paddock serve section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .expect("README has an example configuration");
    let path = dir.path().join("readme.toml");
    std::fs::write(&path, example).expect("write");
    let out = std::process::Command::new(PADDOCK)
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "README example: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Templates: a good one is listed; a bad rootfs fails clearly.
    let tree = common::shared_tempdir(false);
    common::minimal_tree(tree.path());
    let path = dir.path().join("tpl.toml");
    std::fs::write(&path, template_config(tree.path(), 1)).expect("write");
    let out = std::process::Command::new(PADDOCK)
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("template default: rootfs / (the host's)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("template tiny: rootfs {}", tree.path().display())),
        "{stdout}"
    );
    let out = std::process::Command::new(PADDOCK)
        .args(["serve", "--check-config", "--rootfs"])
        .arg(tree.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(&format!(
                "template default: rootfs {}",
                tree.path().display()
            )),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(PADDOCK)
        .args(["serve", "--check-config", "--rootfs", "/no/such/tree"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--rootfs: rootfs /no/such/tree does not exist"),
        "{err}"
    );
    let no_usr = tempfile::tempdir().expect("tempdir");
    for (bad, says) in [
        (
            "[[templates]]\nname = \"tiny\"\nrootfs = \"/no/such/tree\"".to_string(),
            "templates[0] (tiny): rootfs /no/such/tree does not exist".to_string(),
        ),
        (
            format!(
                "[[templates]]\nname = \"tiny\"\nrootfs = \"{}\"",
                no_usr.path().display()
            ),
            "has no usr/ directory".to_string(),
        ),
        (
            "[[templates]]\nname = \"tiny\"\n[[templates]]\nname = \"tiny\"".to_string(),
            "templates[1]: the name \"tiny\" is used twice".to_string(),
        ),
        (
            "[[templates]]\nname = \"\"".to_string(),
            "templates[0]: a template needs a non-empty name".to_string(),
        ),
    ] {
        let path = dir.path().join("bad-template.toml");
        std::fs::write(&path, &bad).expect("write");
        let out = std::process::Command::new(PADDOCK)
            .args(["serve", "--check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains(&says), "{bad}: {err}");
    }
    for (bad, says) in [
        ("listen = \"nowhere\"", "listen"),
        ("bogus = 1", "bogus"),
        (
            "[[tenants]]\nname = \"x\"\napi_key_sha256 = \"abc\"",
            "api_key_sha256",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, bad).expect("write");
        let out = std::process::Command::new(PADDOCK)
            .args(["serve", "--check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn sandboxes_exec_contexts_files_functions_and_operations() {
    let s = Server::start();
    let sb = s.create(
        BOB,
        json!({"labels": {"team": "a", "env": "dev"}, "limits": {"memory": "96M", "cpus": 0.5}}),
    );
    let id = id_of(&sb);
    assert_eq!(sb["limits"]["memory_bytes"], 96 << 20);
    assert_eq!(sb["labels"]["team"], "a");
    let other = s.create(BOB, json!({"labels": {"team": "b"}}));

    // Inspect and list with label filters.
    let r = s.req("GET", &format!("/v1/sandboxes/{id}"), Some(BOB), b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id.as_str());
    let all = s.req("GET", "/v1/sandboxes", Some(BOB), b"").json();
    assert_eq!(all["sandboxes"].as_array().map(Vec::len), Some(2));
    let a = s
        .req("GET", "/v1/sandboxes?label=team%3Da", Some(BOB), b"")
        .json();
    let ids: Vec<&str> = a["sandboxes"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let none = s
        .req(
            "GET",
            "/v1/sandboxes?label=team=a&label=env=prod",
            Some(BOB),
            b"",
        )
        .json();
    assert_eq!(none["sandboxes"], json!([]));
    s.req("GET", "/v1/sandboxes?colour=red", Some(BOB), b"")
        .expect_error(400, "unknown query parameter");

    // Exec: result object, stdin, env, cwd, exit codes, streamed output.
    let exec = |body: Value| s.json("POST", &format!("/v1/sandboxes/{id}/exec"), BOB, body);
    let r = exec(
        json!({"cmd": ["sh", "-c", "cat; echo \"$GREETING\"; pwd; exit 3"],
        "stdin": "in\n", "env": {"GREETING": "hello", "PATH": "/usr/bin:/bin"}, "cwd": "/tmp"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "exited");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "in\nhello\n/tmp\n");
    for field in [
        "signal",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "wall_time_ms",
        "cpu_time_ms",
        "memory_peak_bytes",
    ] {
        assert!(v.get(field).is_some(), "result has {field}: {v}");
    }
    let r = exec(json!({"cmd": ["sleep", "5"], "timeout_ms": 200}));
    assert_eq!(r.json()["status"], "timeout");
    let code = exec(json!({"cmd": ["/no/such/program"]})).expect_error(400, "missing program");
    assert_eq!(code, "program_not_found");
    exec(json!({"cmd": []})).expect_error(400, "empty cmd");
    let r = request(
        &s.addr,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(BOB),
        &[("Accept", "text/event-stream")],
        json!({"cmd": ["sh", "-c", "echo one; sleep 0.2; echo two >&2; echo three"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
    );
    let events = r.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.len() >= 4,
        "one event per chunk and a result: {events:?}"
    );
    assert_eq!(names.last(), Some(&"result"), "{events:?}");
    let out: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("json")["data"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(out, "one\nthree\n");
    assert!(names.contains(&"stderr"), "{events:?}");
    let result: Value = serde_json::from_str(&events[events.len() - 1].1).expect("result json");
    assert_eq!(result["stdout"], "one\nthree\n");

    // Bytes that are not UTF-8: lossy text, exact base64 on request.
    let r = exec(json!({"cmd": ["printf", "\\377\\376A"], "encoding": "base64"}));
    let v = r.json();
    assert_eq!(v["stdout_base64"], "//5B", "{v}");
    assert_eq!(v["stdout"], "\u{fffd}\u{fffd}A", "{v}");
    assert_eq!(v["stderr_base64"], "");
    let r = exec(json!({"cmd": ["true"], "encoding": "latin1"}));
    r.expect_error(400, "unknown encoding");
    let r = request(
        &s.addr,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(BOB),
        &[("Accept", "text/event-stream")],
        json!({"cmd": ["printf", "\\377\\376A"], "encoding": "base64"})
            .to_string()
            .as_bytes(),
    );
    let events = r.events();
    let b64: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("json")["base64"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(b64, "//5B", "{events:?}");

    // Contexts: create, run (state kept), streamed run, errors, delete.
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/contexts"),
        BOB,
        json!({"language": "python"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let cid = r.json()["id"].as_u64().expect("context id");
    let run = |code: &str| {
        s.json(
            "POST",
            &format!("/v1/sandboxes/{id}/contexts/{cid}/run"),
            BOB,
            json!({"code": code}),
        )
    };
    assert_eq!(run("x = 41").status, 200);
    let v = run("print('p'); x + 1").json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["result"], "42");
    assert_eq!(v["stdout"], "p\n");
    let v = run("1/0").json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["name"], "ZeroDivisionError");
    assert!(v["error"]["traceback"].is_string());
    let r = request(
        &s.addr,
        "POST",
        &format!("/v1/sandboxes/{id}/contexts/{cid}/run"),
        Some(BOB),
        &[("Accept", "text/event-stream")],
        json!({"code": "import time\nprint('a', flush=True)\ntime.sleep(0.2)\nprint('b')\nx"})
            .to_string()
            .as_bytes(),
    );
    let events = r.events();
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("result"),
        "{events:?}"
    );
    let result: Value = serde_json::from_str(&events[events.len() - 1].1).expect("json");
    assert_eq!(result["result"], "41");
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("json")["data"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, "a\nb\n", "{events:?}");
    assert!(events.len() >= 3, "output came in chunks: {events:?}");
    s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/contexts"),
        BOB,
        json!({"language": "cobol"}),
    )
    .expect_error(400, "unknown language");
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/contexts"),
        BOB,
        json!({"language": "javascript"}),
    );
    let js = r.json()["id"].as_u64().expect("js context");
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/contexts/{js}/run"),
        BOB,
        json!({"code": "process.exit(3)"}),
    );
    assert!(r.status == 200 || r.status == 409, "{}", r.text());
    let code = s
        .json(
            "POST",
            &format!("/v1/sandboxes/{id}/contexts/{js}/run"),
            BOB,
            json!({"code": "1"}),
        )
        .expect_error(409, "run in a dead context");
    assert_eq!(code, "context_died");
    let r = s.req(
        "DELETE",
        &format!("/v1/sandboxes/{id}/contexts/{cid}"),
        Some(BOB),
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    s.req(
        "DELETE",
        &format!("/v1/sandboxes/{id}/contexts/{cid}"),
        Some(BOB),
        b"",
    )
    .expect_error(404, "deleted context");
    run("x").expect_error(404, "run in a deleted context");
    s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/contexts/abc/run"),
        BOB,
        json!({"code": "1"}),
    )
    .expect_error(404, "non-numeric context id");

    // Files: put (parents made), get, list, delete, errors.
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let r = s.req(
        "PUT",
        &format!("/v1/sandboxes/{id}/files/home/user/dir/blob.bin"),
        Some(BOB),
        &data,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = s.req(
        "GET",
        &format!("/v1/sandboxes/{id}/files/home/user/dir/blob.bin"),
        Some(BOB),
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body == data,
        "file round trip ({} bytes back)",
        r.body.len()
    );
    let r = s.req(
        "GET",
        &format!("/v1/sandboxes/{id}/files/home/user/dir?list"),
        Some(BOB),
        b"",
    );
    let entries = r.json()["entries"].clone();
    assert_eq!(entries[0]["name"], "blob.bin", "{entries}");
    assert_eq!(entries[0]["size"], 100_000);
    let r = s.req("GET", &format!("/v1/sandboxes/{id}/files"), Some(BOB), b"");
    assert!(
        r.json()["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|f| f["name"] == "home"))
    );
    let r = exec(json!({"cmd": ["wc", "-c", "/home/user/dir/blob.bin"]}));
    assert_eq!(r.json()["stdout"], "100000 /home/user/dir/blob.bin\n");
    let r = s.req(
        "DELETE",
        &format!("/v1/sandboxes/{id}/files/home/user/dir/blob.bin"),
        Some(BOB),
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    s.req(
        "GET",
        &format!("/v1/sandboxes/{id}/files/home/user/dir/blob.bin"),
        Some(BOB),
        b"",
    )
    .expect_error(404, "deleted file");
    s.req(
        "GET",
        &format!("/v1/sandboxes/{id}/files/home/../etc/passwd"),
        Some(BOB),
        b"",
    )
    .expect_error(400, "path with ..");
    let r = s.req(
        "DELETE",
        &format!("/v1/sandboxes/{id}/files/home/user/dir?recursive"),
        Some(BOB),
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());

    // TTL extension.
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/ttl"),
        BOB,
        json!({"ttl_s": 120}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let left = r.json()["expires_in_s"].as_f64().expect("expires_in_s");
    assert!((100.0..=120.0).contains(&left), "{left}");
    s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/ttl"),
        BOB,
        json!({"ttl_s": -1}),
    )
    .expect_error(400, "negative ttl");

    // Functions.
    let r = s.json(
        "POST",
        "/v1/functions/run",
        BOB,
        json!({"code": "return input.a + 1", "input": {"a": 41}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["output"], 42);
    assert!(v["duration_us"].is_u64());
    let v = s
        .json(
            "POST",
            "/v1/functions/run",
            BOB,
            json!({"code": "while(true){}", "timeout_ms": 100}),
        )
        .json();
    assert_eq!(v["status"], "timeout");
    s.json(
        "POST",
        "/v1/functions/run",
        BOB,
        json!({"code": "1", "memory_mb": 0}),
    )
    .expect_error(400, "function with no memory");

    // Delete: 204, then 404.
    let r = s.req(
        "DELETE",
        &format!("/v1/sandboxes/{}", id_of(&other)),
        Some(BOB),
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    s.req(
        "GET",
        &format!("/v1/sandboxes/{}", id_of(&other)),
        Some(BOB),
        b"",
    )
    .expect_error(404, "deleted sandbox");
    s.req(
        "DELETE",
        &format!("/v1/sandboxes/{}", id_of(&other)),
        Some(BOB),
        b"",
    )
    .expect_error(404, "deleted twice");

    // Operations.
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    assert_eq!(stats["sandboxes"]["live"], 1, "{stats}");
    assert_eq!(stats["sandboxes"]["created"], 2, "{stats}");
    assert_eq!(stats["sandboxes"]["killed"]["deleted"], 1, "{stats}");
    assert!(
        stats["executions"]["exec"]["exited"].as_u64() >= Some(2),
        "{stats}"
    );
    assert!(
        stats["latency"]["create"]["p50_ms"].as_f64() > Some(0.0),
        "{stats}"
    );
    assert!(
        stats["executions_by_language"]["python"]["ok"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(
        stats["memory_peak_bytes"]["count"].as_u64() >= Some(1),
        "{stats}"
    );
    assert_eq!(stats["tenant"]["name"], "bob");
    assert_eq!(stats["functions"]["ok"], 1, "{stats}");
    let m = s.req("GET", "/metrics", None, b"");
    assert_eq!(m.status, 200);
    let text = m.text();
    for name in [
        "paddock_sandboxes_live 1",
        "paddock_sandboxes_created_total 2",
        "paddock_sandboxes_killed_total{reason=\"deleted\"} 1",
        "paddock_executions_total{kind=\"exec\",language=\"command\",status=\"exited\"}",
        "paddock_executions_total{kind=\"run\",language=\"python\",status=\"ok\"}",
        "paddock_executions_total{kind=\"function\",language=\"javascript\",status=\"ok\"}",
        "paddock_memory_peak_bytes_bucket{le=",
        "paddock_latency_seconds_bucket{le=",
        "paddock_errors_total{code=\"not_found\"}",
    ] {
        assert!(text.contains(name), "/metrics has {name}:\n{text}");
    }
    let doc = s.req("GET", "/openapi.json", None, b"").json();
    for (method, path) in paddock_server::api::ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "openapi.json lists {method} {path}"
        );
    }
    let r = s.req("GET", "/healthz", None, b"");
    assert!(
        r.header("x-request-id").is_some(),
        "responses carry a request id"
    );
}

#[test]
fn every_error_is_json_with_the_right_status() {
    let s = Server::start();
    let sb = s.create(BOB, json!({}));
    let id = id_of(&sb);
    s.req("GET", "/v1/sandboxes", None, b"")
        .expect_error(401, "no key");
    s.req("GET", "/v1/sandboxes", Some("not-a-key-at-all-xyz"), b"")
        .expect_error(401, "bad key");
    s.req(
        "GET",
        "/v1/sandboxes/ffffffffffffffffffffffff",
        Some(BOB),
        b"",
    )
    .expect_error(404, "unknown id");
    s.req("GET", "/v2/nothing", Some(BOB), b"")
        .expect_error(404, "unknown route");
    s.req("PATCH", "/v1/sandboxes", Some(BOB), b"")
        .expect_error(405, "method");
    s.req("POST", "/v1/sandboxes", Some(BOB), b"{\"limits\": ")
        .expect_error(400, "malformed JSON");
    s.req("POST", "/v1/sandboxes", Some(BOB), b"{\"colour\": \"red\"}")
        .expect_error(400, "unknown field");
    s.req(
        "POST",
        "/v1/sandboxes",
        Some(BOB),
        b"{\"limits\": {\"memory\": \"1K\"}}",
    )
    .expect_error(400, "memory too small");
    s.req(
        "POST",
        "/v1/sandboxes",
        Some(BOB),
        b"{\"limits\": {\"cpus\": -1}}",
    )
    .expect_error(400, "negative cpus");
    s.req("POST", "/v1/sandboxes", Some(BOB), b"{\"ttl_s\": 0}")
        .expect_error(400, "zero ttl");
    s.req("POST", "/v1/sandboxes", Some(BOB), b"{\"key\": \"\"}")
        .expect_error(400, "empty key");
    s.req("POST", "/v1/sandboxes", Some(BOB), b"[1, 2]")
        .expect_error(400, "not an object");
    s.req(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(BOB),
        b"{\"cmd\": [\"\xff\xfe\"]}",
    )
    .expect_error(400, "invalid UTF-8");
    s.req(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(BOB),
        b"{\"cmd\": [\"a\\u0000b\"]}",
    )
    .expect_error(400, "NUL in argv");
    s.req(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(BOB),
        b"{\"cmd\": [\"true\"], \"timeout_ms\": 0}",
    )
    .expect_error(400, "zero timeout");
    let huge = vec![b'x'; 2 << 20];
    s.req(
        "PUT",
        &format!("/v1/sandboxes/{id}/files/tmp/huge"),
        Some(BOB),
        &huge,
    )
    .expect_error(413, "body over max_body");
    let mut big_json = b"{\"cmd\": [\"true\"], \"stdin\": \"".to_vec();
    big_json.extend(std::iter::repeat_n(b'a', 2 << 20));
    big_json.extend(b"\"}");
    s.req(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(BOB),
        &big_json,
    )
    .expect_error(413, "JSON over max_body");
    s.req(
        "GET",
        &format!("/v1/sandboxes/{id}/files/no/such/file"),
        Some(BOB),
        b"",
    )
    .expect_error(404, "missing file");
    // The server is unharmed.
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        BOB,
        json!({"cmd": ["true"]}),
    );
    assert_eq!(r.json()["status"], "exited");
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    assert!(
        stats["errors"]["bad_request"].as_u64() >= Some(8),
        "{stats}"
    );
    assert!(stats["errors"]["too_large"].as_u64() >= Some(2), "{stats}");
}

#[test]
fn tenants_see_only_their_own_sandboxes() {
    let s = Server::start();
    let mine = id_of(&s.create(ALICE, json!({"labels": {"who": "alice"}})));
    let theirs = id_of(&s.create(BOB, json!({})));
    let list = s.req("GET", "/v1/sandboxes", Some(BOB), b"").json();
    let ids: Vec<&str> = list["sandboxes"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(ids, vec![theirs.as_str()]);
    for (method, path, body) in [
        ("GET", format!("/v1/sandboxes/{mine}"), Value::Null),
        ("DELETE", format!("/v1/sandboxes/{mine}"), Value::Null),
        (
            "POST",
            format!("/v1/sandboxes/{mine}/exec"),
            json!({"cmd": ["true"]}),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{mine}/contexts"),
            json!({"language": "bash"}),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{mine}/ttl"),
            json!({"ttl_s": 5}),
        ),
        (
            "GET",
            format!("/v1/sandboxes/{mine}/files/etc/hostname"),
            Value::Null,
        ),
        (
            "PUT",
            format!("/v1/sandboxes/{mine}/files/tmp/x"),
            json!("x"),
        ),
    ] {
        let code = s
            .json(method, &path, BOB, body)
            .expect_error(404, &format!("bob {method} {path}"));
        assert_eq!(code, "not_found");
    }
    // Still alive and untouched for its owner.
    let r = s.req("GET", &format!("/v1/sandboxes/{mine}"), Some(ALICE), b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["contexts"], json!([]));
    // The same key names different sandboxes for different tenants.
    let a = s.create(ALICE, json!({"key": "shared/name"}));
    let b = s.create(BOB, json!({"key": "shared/name"}));
    assert_ne!(a["id"], b["id"]);
}

#[test]
fn quotas_reject_with_429_and_recover() {
    let s = Server::start();
    let ids: Vec<String> = (0..3).map(|_| id_of(&s.create(ALICE, json!({})))).collect();
    let code = s
        .json("POST", "/v1/sandboxes", ALICE, json!({}))
        .expect_error(429, "fourth sandbox over alice's quota of 3");
    assert_eq!(code, "quota_exceeded");
    // Bob is not affected by Alice's quota.
    s.create(BOB, json!({}));
    let r = s.req(
        "DELETE",
        &format!("/v1/sandboxes/{}", ids[0]),
        Some(ALICE),
        b"",
    );
    assert_eq!(r.status, 204);
    s.create(ALICE, json!({}));
    // Memory: 1G in all for alice. Back to one sandbox of 128M, then: 2G
    // alone is over; 600M fits; 400M more does not; after freeing 600M it does.
    for id in &ids[1..] {
        s.req("DELETE", &format!("/v1/sandboxes/{id}"), Some(ALICE), b"");
    }
    let big = s
        .json(
            "POST",
            "/v1/sandboxes",
            ALICE,
            json!({"limits": {"memory": "2G"}}),
        )
        .expect_error(429, "one sandbox over the memory quota");
    assert_eq!(big, "quota_exceeded");
    let first = id_of(&s.create(ALICE, json!({"limits": {"memory": "600M"}})));
    s.json(
        "POST",
        "/v1/sandboxes",
        ALICE,
        json!({"limits": {"memory": "400M"}}),
    )
    .expect_error(429, "memory in all over the quota");
    s.req(
        "DELETE",
        &format!("/v1/sandboxes/{first}"),
        Some(ALICE),
        b"",
    );
    s.create(ALICE, json!({"limits": {"memory": "400M"}}));
    let stats = s.req("GET", "/v1/stats", Some(ALICE), b"").json();
    assert!(
        stats["quota_rejections"]["tenant_sandboxes"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(
        stats["quota_rejections"]["tenant_memory"].as_u64() >= Some(2),
        "{stats}"
    );
    assert!(s.stderr().contains("sandbox created"));
}

#[test]
fn request_rate_over_the_burst_is_429_and_recovers() {
    let toml = format!(
        "[[tenants]]\nname = \"carol\"\napi_key = \"{ALICE}\"\nrate = 0.5\nburst = 4\n\
         [[tenants]]\nname = \"bob\"\napi_key = \"{BOB}\"\n"
    );
    let s = Server::with_config(&toml);
    let statuses: Vec<u16> = (0..8)
        .map(|_| s.req("GET", "/v1/sandboxes", Some(ALICE), b"").status)
        .collect();
    assert_eq!(&statuses[..4], &[200; 4], "the burst passes: {statuses:?}");
    assert!(statuses[4..].contains(&429), "over the burst: {statuses:?}");
    let r = s.req("GET", "/v1/sandboxes", Some(ALICE), b"");
    let code = r.expect_error(429, "still over the rate");
    assert_eq!(code, "rate_limited");
    assert!(r.header("retry-after").is_some(), "429 says when to retry");
    // Another tenant is not limited by carol's rate.
    assert_eq!(s.req("GET", "/v1/sandboxes", Some(BOB), b"").status, 200);
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        s.req("GET", "/v1/sandboxes", Some(ALICE), b"").status,
        200,
        "the bucket refills"
    );
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    assert!(
        stats["quota_rejections"]["rate"].as_u64() >= Some(2),
        "{stats}"
    );
}

#[test]
fn global_cap_answers_503_and_recovers() {
    let toml = format!(
        "max_sandboxes = 2\npool_size = 2\n[[tenants]]\nname = \"bob\"\napi_key = \"{BOB}\"\n"
    );
    let s = Server::with_config(&toml);
    let ready = |s: &Server| {
        s.req("GET", "/v1/stats", Some(BOB), b"").json()["pool"]["ready"]
            .as_i64()
            .unwrap_or(-1)
    };
    assert!(wait_for(Duration::from_secs(10), || ready(&s) == 2));
    // Pooled sandboxes give way to real ones: the cap counts both.
    let one = id_of(&s.create(BOB, json!({"limits": {"memory": "64M"}})));
    assert_eq!(
        ready(&s),
        1,
        "one pooled sandbox was dropped for a real one"
    );
    let two = id_of(&s.create(BOB, json!({})));
    assert_eq!(ready(&s), 0);
    let code = s
        .json("POST", "/v1/sandboxes", BOB, json!({}))
        .expect_error(503, "over the global cap");
    assert_eq!(code, "capacity");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ready(&s), 0, "the pool does not refill past the cap");
    s.req("DELETE", &format!("/v1/sandboxes/{one}"), Some(BOB), b"");
    s.create(BOB, json!({}));
    s.req("DELETE", &format!("/v1/sandboxes/{two}"), Some(BOB), b"");
    assert!(
        wait_for(Duration::from_secs(10), || ready(&s) == 1),
        "the pool refills within the cap"
    );
}

#[test]
fn get_or_create_under_50_concurrent_callers_makes_one_sandbox() {
    let s = Server::start();
    let addr = s.addr.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let addr = addr.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let body = json!({"key": "bob/proj-1", "labels": {"p": "1"}}).to_string();
                let r = request(
                    &addr,
                    "POST",
                    "/v1/sandboxes",
                    Some(BOB),
                    &[],
                    body.as_bytes(),
                );
                (r.status, r.json()["id"].as_str().unwrap_or("").to_string())
            })
        })
        .collect();
    let results: Vec<(u16, String)> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let created = results.iter().filter(|(st, _)| *st == 201).count();
    let found = results.iter().filter(|(st, _)| *st == 200).count();
    assert_eq!((created, found), (1, 49), "{results:?}");
    let ids: HashSet<&str> = results.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one sandbox for all: {ids:?}");
    let list = s.req("GET", "/v1/sandboxes", Some(BOB), b"").json();
    assert_eq!(
        list["sandboxes"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(list["sandboxes"][0]["key"], "bob/proj-1");
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    assert_eq!(stats["key_locks"], 0, "per-key locks are freed: {stats}");
    assert_eq!(stats["sandboxes"]["created"], 1, "{stats}");
    // After it is deleted, the key makes a new one.
    let id = results[0].1.clone();
    s.req("DELETE", &format!("/v1/sandboxes/{id}"), Some(BOB), b"");
    let again = s.create(BOB, json!({"key": "bob/proj-1"}));
    assert_ne!(id_of(&again), id);
}

#[test]
fn ttl_and_idle_expiry_remove_sandboxes() {
    let s = Server::start();
    let ttl = s.create(BOB, json!({"ttl_s": 1, "idle_timeout_s": 60}));
    let idle = s.create(BOB, json!({"ttl_s": 60, "idle_timeout_s": 1}));
    let extended = s.create(BOB, json!({"ttl_s": 1, "idle_timeout_s": 60}));
    let busy = s.create(BOB, json!({"ttl_s": 60, "idle_timeout_s": 1}));
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{}/ttl", id_of(&extended)),
        BOB,
        json!({"ttl_s": 60}),
    );
    assert_eq!(r.status, 200);
    // A command running longer than the idle timeout keeps its sandbox.
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{}/exec", id_of(&busy)),
        BOB,
        json!({"cmd": ["sleep", "2.5"]}),
    );
    assert_eq!(
        r.json()["status"],
        "exited",
        "the busy sandbox was not reaped mid-exec"
    );
    let ttl_pid = ttl["pid"].as_i64().expect("pid") as i32;
    let idle_pid = idle["pid"].as_i64().expect("pid") as i32;
    let gone = |id: &str| {
        s.req("GET", &format!("/v1/sandboxes/{id}"), Some(BOB), b"")
            .status
            == 410
    };
    assert!(wait_for(Duration::from_secs(10), || gone(&id_of(&ttl))
        && gone(&id_of(&idle))));
    let r = s.req(
        "GET",
        &format!("/v1/sandboxes/{}", id_of(&ttl)),
        Some(BOB),
        b"",
    );
    r.expect_error(410, "expired by TTL");
    assert!(r.text().contains("TTL"), "{}", r.text());
    let r = s.req(
        "POST",
        &format!("/v1/sandboxes/{}/exec", id_of(&idle)),
        Some(BOB),
        b"{\"cmd\":[\"true\"]}",
    );
    r.expect_error(410, "expired by idleness");
    assert!(r.text().contains("idle"), "{}", r.text());
    assert!(
        wait_for(Duration::from_secs(5), || !alive(ttl_pid)
            && !alive(idle_pid)),
        "their processes are gone"
    );
    let r = s.req(
        "GET",
        &format!("/v1/sandboxes/{}", id_of(&extended)),
        Some(BOB),
        b"",
    );
    assert_eq!(r.status, 200, "the extended sandbox lives: {}", r.text());
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    assert_eq!(stats["sandboxes"]["killed"]["ttl"], 1, "{stats}");
    assert!(
        stats["sandboxes"]["killed"]["idle"].as_u64() >= Some(1),
        "{stats}"
    );
}

#[test]
fn an_agent_killed_from_outside_is_detected_and_reported() {
    let s = Server::start();
    let sb = s.create(BOB, json!({}));
    let id = id_of(&sb);
    let pid = sb["pid"].as_i64().expect("pid") as i32;
    assert!(alive(pid));
    signal(pid, libc::SIGKILL);
    let started = Instant::now();
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        BOB,
        json!({"cmd": ["true"]}),
    );
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
    let code = r.expect_error(410, "exec in a dead sandbox");
    assert_eq!(code, "gone");
    assert!(
        r.text().contains("killed by signal 9") || r.text().contains("agent"),
        "{}",
        r.text()
    );
    let r = s.req("GET", &format!("/v1/sandboxes/{id}"), Some(BOB), b"");
    r.expect_error(410, "inspect a dead sandbox");
    // Killing only the agent (init's child, not init) is found as well.
    let sb = s.create(BOB, json!({}));
    let id = id_of(&sb);
    let init = sb["pid"].as_i64().expect("pid") as i32;
    let agent = descendants(init)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == b"agent"))
                .unwrap_or(false)
        })
        .expect("the agent process runs under init");
    signal(agent, libc::SIGKILL);
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        BOB,
        json!({"cmd": ["true"]}),
    );
    r.expect_error(410, "exec after the agent was killed");
    assert!(r.text().contains("signal 9"), "{}", r.text());
    assert!(
        wait_for(Duration::from_secs(5), || !alive(init)),
        "its init is gone too"
    );
    // The health checks find one nobody asks about.
    let quiet = s.create(BOB, json!({}));
    let qpid = quiet["pid"].as_i64().expect("pid") as i32;
    signal(qpid, libc::SIGKILL);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let list = s.req("GET", "/v1/sandboxes", Some(BOB), b"").json();
            list["sandboxes"].as_array().is_some_and(|l| l.is_empty())
        }),
        "the dead sandbox is removed from the list"
    );
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    assert_eq!(stats["sandboxes"]["killed"]["died"], 3, "{stats}");
    assert_eq!(stats["sandboxes"]["live"], 0, "{stats}");
    // The quota is given back.
    assert_eq!(stats["tenant"]["sandboxes"], 0, "{stats}");
}

#[test]
fn a_client_leaving_an_sse_stream_leaves_no_process() {
    let s = Server::start();
    let sb = s.create(BOB, json!({}));
    let id = id_of(&sb);
    let init = sb["pid"].as_i64().expect("pid") as i32;
    let marker = "31337";
    for (path, body) in [
        (
            format!("/v1/sandboxes/{id}/exec"),
            json!({"cmd": ["sh", "-c", format!("echo started; exec sleep {marker}")]}),
        ),
        (format!("/v1/sandboxes/{id}/contexts"), Value::Null),
    ] {
        if body.is_null() {
            // Context run: python printing then sleeping.
            let r = s.json("POST", &path, BOB, json!({"language": "python"}));
            let cid = r.json()["id"].as_u64().expect("cid");
            let mut stream = send(
                &s.addr,
                "POST",
                &format!("/v1/sandboxes/{id}/contexts/{cid}/run"),
                Some(BOB),
                &[("Accept", "text/event-stream")],
                json!({"code": format!("import subprocess\nprint('started', flush=True)\nsubprocess.run(['sleep', '{marker}'])")})
                    .to_string()
                    .as_bytes(),
            );
            read_until(&mut stream, "started");
            assert!(wait_for(Duration::from_secs(5), || sleeping(init, marker)));
            drop(stream);
            assert!(
                wait_for(Duration::from_secs(15), || !sleeping(init, marker)),
                "the run is cancelled when its client goes away"
            );
            // The context is still usable: not wedged.
            let r = s.json(
                "POST",
                &format!("/v1/sandboxes/{id}/contexts/{cid}/run"),
                BOB,
                json!({"code": "6 * 7"}),
            );
            assert_eq!(r.json()["result"], "42", "{}", r.text());
            continue;
        }
        let mut stream = send(
            &s.addr,
            "POST",
            &path,
            Some(BOB),
            &[("Accept", "text/event-stream")],
            body.to_string().as_bytes(),
        );
        read_until(&mut stream, "started");
        assert!(
            wait_for(Duration::from_secs(5), || sleeping(init, marker)),
            "the command runs"
        );
        drop(stream);
        assert!(
            wait_for(Duration::from_secs(15), || !sleeping(init, marker)),
            "the command is killed when its client goes away"
        );
    }
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        BOB,
        json!({"cmd": ["echo", "ok"]}),
    );
    assert_eq!(r.json()["stdout"], "ok\n");
    let info = s
        .req("GET", &format!("/v1/sandboxes/{id}"), Some(BOB), b"")
        .json();
    assert_eq!(info["active_requests"], 0, "{info}");
}

/// Whether a `sleep MARKER` runs under `init`.
fn sleeping(init: i32, marker: &str) -> bool {
    descendants(init).into_iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(marker) && alive(pid))
            .unwrap_or(false)
    })
}

fn read_until(stream: &mut std::net::TcpStream, needle: &str) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}",
            String::from_utf8_lossy(&seen)
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("stream ended: {}", String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

#[test]
fn sigterm_shuts_down_gracefully_and_leaves_nothing() {
    let mut s = Server::start();
    for _ in 0..3 {
        s.create(BOB, json!({}));
    }
    let r = s.json(
        "POST",
        "/v1/functions/run",
        BOB,
        json!({"code": "return 1"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sb = s.create(ALICE, json!({}));
    let id = id_of(&sb);
    // An in-flight request that finishes within the grace period...
    let addr = s.addr.clone();
    let path = format!("/v1/sandboxes/{id}/exec");
    let inflight = std::thread::spawn(move || {
        request(
            &addr,
            "POST",
            &path,
            Some(ALICE),
            &[],
            json!({"cmd": ["sh", "-c", "sleep 1; echo done"]})
                .to_string()
                .as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let server_pid = s.pid();
    let before = descendants(server_pid);
    assert!(
        before.len() >= 5,
        "sandboxes and a function worker run under the server: {before:?}"
    );
    let started = Instant::now();
    let status = s.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        s.stderr()
    );
    let r = inflight.join().expect("thread");
    assert_eq!(
        r.status,
        200,
        "the in-flight request finished: {}",
        r.text()
    );
    assert_eq!(r.json()["stdout"], "done\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let left: Vec<i32> = before.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let cgroups = common::run_cgroups_of(server_pid as u32);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    assert!(
        s.stderr().contains("every sandbox is gone"),
        "{}",
        s.stderr()
    );
}

#[test]
fn sigterm_cuts_requests_longer_than_the_grace_period() {
    let mut s = Server::start();
    let sb = s.create(BOB, json!({}));
    let id = id_of(&sb);
    let addr = s.addr.clone();
    let path = format!("/v1/sandboxes/{id}/exec");
    let inflight = std::thread::spawn(move || {
        let mut stream = send(
            &addr,
            "POST",
            &path,
            Some(BOB),
            &[],
            json!({"cmd": ["sleep", "600"]}).to_string().as_bytes(),
        );
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        raw
    });
    std::thread::sleep(Duration::from_millis(500));
    let server_pid = s.pid();
    let before = descendants(server_pid);
    let started = Instant::now();
    let status = s.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    // Grace is 3 s in the test config.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let _ = inflight.join();
    let left: Vec<i32> = before.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let cgroups = common::run_cgroups_of(server_pid as u32);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
}

#[test]
fn a_restart_after_kill_9_cleans_up_what_the_dead_server_left() {
    let _only_servers_of_this_test = exclusive();
    let mut first = Server::start();
    let first_pid = first.pid() as u32;
    let sb = first.create(BOB, json!({}));
    let init = sb["pid"].as_i64().expect("pid") as i32;
    let mut child = first.take_child();
    child.kill().expect("SIGKILL the server");
    let _ = child.wait();
    // The sandbox's agent sees its channel close and ends; its cgroup stays.
    assert!(
        wait_for(Duration::from_secs(10), || !alive(init)),
        "the orphaned sandbox ends"
    );
    let left = common::run_cgroups_of(first_pid);
    assert!(
        !left.is_empty(),
        "a server killed with SIGKILL leaves its sandboxes' cgroups behind"
    );
    let second = Server::start();
    let left = common::run_cgroups_of(first_pid);
    assert!(
        left.is_empty(),
        "the next server removes them at start: {left:?}; stderr:\n{}",
        second.stderr()
    );
    assert_eq!(second.req("GET", "/healthz", None, b"").status, 200);
}

/// Runs `paddock ARGS` as a client of `s` with BOB's key.
fn cli(s: &Server, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(PADDOCK)
        .args(args)
        .env("PADDOCK_URL", format!("http://{}", s.addr))
        .env("PADDOCK_API_KEY", BOB)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the client");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).expect("stdin");
    }
    child.wait_with_output().expect("client output")
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_cli_client_drives_sandboxes_contexts_and_files() {
    let s = Server::start();
    let o = cli(
        &s,
        &["sandbox", "create", "--label", "team=x", "--memory", "96M"],
        b"",
    );
    assert!(o.status.success(), "{o:?}");
    let id = out(&o).trim().to_string();
    assert_eq!(id.len(), 24, "an id: {id}");
    let o = cli(&s, &["sandbox", "list", "--label", "team=x"], b"");
    assert!(
        out(&o).contains(&id) && out(&o).contains("96M"),
        "{}",
        out(&o)
    );
    let o = cli(&s, &["sandbox", "list", "--json"], b"");
    let v: Value = serde_json::from_slice(&o.stdout).expect("json list");
    assert_eq!(v["sandboxes"][0]["id"], id.as_str());
    let o = cli(
        &s,
        &["sandbox", "list", "--template", "default", "--json"],
        b"",
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json list");
    assert_eq!(v["sandboxes"][0]["template"], "default");
    let o = cli(&s, &["sandbox", "create", "--template", "nope"], b"");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown template \"nope\"; known templates: default"),
        "{err}"
    );
    let o = cli(
        &s,
        &[
            "sandbox",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(3), "the program's exit status");
    assert_eq!(out(&o), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    let o = cli(
        &s,
        &["sandbox", "exec", &id, "--json", "--", "echo", "hi"],
        b"",
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json result");
    assert_eq!(v["stdout"], "hi\n");
    let o = cli(
        &s,
        &[
            "sandbox",
            "exec",
            &id,
            "--timeout",
            "200ms",
            "--",
            "sleep",
            "5",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(124), "timeout");
    let o = cli(&s, &["context", "create", &id, "--lang", "python"], b"");
    let cid = out(&o).trim().to_string();
    assert!(cid.parse::<u64>().is_ok(), "{o:?}");
    let o = cli(
        &s,
        &["context", "run", &id, &cid],
        b"x = 2\nprint('p')\nx * 21\n",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(out(&o), "p\n42\n");
    let o = cli(&s, &["context", "run", &id, &cid, "--code", "1/0"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ZeroDivisionError"));
    let o = cli(
        &s,
        &["files", "put", &id, "-", "/home/user/d/f.txt"],
        b"data\n",
    );
    assert!(o.status.success(), "{o:?}");
    let o = cli(&s, &["files", "get", &id, "/home/user/d/f.txt"], b"");
    assert_eq!(out(&o), "data\n");
    // A relative path starts at /home/user, as everywhere in paddock.
    let o = cli(&s, &["files", "get", &id, "d/f.txt"], b"");
    assert_eq!(out(&o), "data\n");
    let o = cli(&s, &["files", "ls", &id, "/home/user/d"], b"");
    assert!(out(&o).contains("f.txt"), "{}", out(&o));
    let o = cli(&s, &["files", "rm", &id, "-r", "/home/user/d"], b"");
    assert!(o.status.success(), "{o:?}");
    let o = cli(&s, &["files", "get", &id, "/home/user/d/f.txt"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("404"), "{o:?}");
    let o = cli(&s, &["context", "delete", &id, &cid], b"");
    assert!(o.status.success(), "{o:?}");
    let o = cli(&s, &["sandbox", "kill", &id], b"");
    assert!(o.status.success(), "{o:?}");
    let o = cli(&s, &["sandbox", "inspect", &id], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no sandbox"),
        "{o:?}"
    );
    let o = std::process::Command::new(PADDOCK)
        .args([
            "sandbox",
            "list",
            "--url",
            "http://127.0.0.1:1",
            "--api-key",
            BOB,
        ])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach"),
        "{o:?}"
    );
}

#[test]
fn the_pool_serves_default_creates_and_refills() {
    let s = Server::start();
    let ready = |s: &Server| {
        s.req("GET", "/v1/stats", Some(BOB), b"").json()["pool"]["ready"]
            .as_i64()
            .unwrap_or(-1)
    };
    assert!(
        wait_for(Duration::from_secs(10), || ready(&s) == 2),
        "the pool fills to pool_size"
    );
    let a = s.create(BOB, json!({}));
    let b = s.create(BOB, json!({"labels": {"x": "y"}}));
    let c = s.create(BOB, json!({}));
    let custom = s.create(BOB, json!({"limits": {"memory": "64M"}}));
    assert_eq!(custom["limits"]["memory_bytes"], 64 << 20);
    for sb in [&a, &b, &c, &custom] {
        let r = s.json(
            "POST",
            &format!("/v1/sandboxes/{}/exec", id_of(sb)),
            BOB,
            json!({"cmd": ["echo", "ok"]}),
        );
        assert_eq!(r.json()["stdout"], "ok\n", "{}", r.text());
    }
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    let hit = stats["pool"]["hit"].as_u64().unwrap_or(0);
    let miss = stats["pool"]["miss"].as_u64().unwrap_or(0);
    assert!(hit >= 2, "{stats}");
    assert_eq!(
        hit + miss,
        3,
        "custom limits never come from the pool: {stats}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || ready(&s) == 2),
        "the pool refills in the background"
    );
    let m = s.req("GET", "/metrics", None, b"").text();
    assert!(
        m.contains("paddock_pool_ready{template=\"default\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("paddock_pool_total{template=\"default\",result=\"hit\"}"),
        "{m}"
    );
}

/// A configuration with a `tiny` template on `tree` (64M, 5 s timeout,
/// a pool of `pool`) next to the default one (host tree, no pool).
fn template_config(tree: &std::path::Path, pool: usize) -> String {
    format!(
        r#"
health_interval = "500ms"
shutdown_grace = "3s"
[defaults]
memory = "128M"
[[templates]]
name = "tiny"
rootfs = "{}"
memory = "64M"
timeout = "5s"
pool_size = {pool}
[[tenants]]
name = "bob"
api_key = "{BOB}"
max_sandboxes = 60
"#,
        tree.display()
    )
}

fn pool_figures(s: &Server, template: &str) -> Value {
    s.req("GET", "/v1/stats", Some(BOB), b"").json()["pool"]["templates"][template].clone()
}

fn sh_in(s: &Server, id: &str, script: &str) -> Resp {
    s.json(
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        BOB,
        json!({"cmd": ["sh", "-c", script]}),
    )
}

#[test]
fn templates_build_on_their_own_tree_with_their_own_pool_and_limits() {
    let tree = common::shared_tempdir(false);
    common::minimal_tree(tree.path());
    let s = Server::with_config(&template_config(tree.path(), 2));
    let ready = |s: &Server| pool_figures(s, "tiny")["ready"].as_u64().unwrap_or(0);
    assert!(
        wait_for(Duration::from_secs(20), || ready(&s) == 2),
        "the tiny pool fills to its size: {}",
        s.req("GET", "/v1/stats", Some(BOB), b"").text()
    );
    assert_eq!(pool_figures(&s, "default")["ready"], 0, "no default pool");

    // From the pool: the template's tree and limits.
    let tiny = s.create(BOB, json!({"template": "tiny", "labels": {"t": "1"}}));
    assert_eq!(tiny["template"], "tiny");
    assert_eq!(tiny["limits"]["memory_bytes"], 64 << 20);
    assert_eq!(tiny["limits"]["timeout_ms"], 5000);
    let tiny_id = id_of(&tiny);
    let r = sh_in(
        &s,
        &tiny_id,
        "for f in /usr/bin/*; do echo $f; done; read l < /usr/share/marker; echo $l",
    );
    assert_eq!(
        r.json()["stdout"],
        "/usr/bin/sh\nfrom the template\n",
        "{}",
        r.text()
    );
    let code = s
        .json(
            "POST",
            &format!("/v1/sandboxes/{tiny_id}/exec"),
            BOB,
            json!({"cmd": ["python3", "-c", "print(1)"]}),
        )
        .expect_error(400, "no python3 in the tiny tree");
    assert_eq!(code, "program_not_found");
    let f = pool_figures(&s, "tiny");
    assert_eq!(
        (f["hit"].as_u64(), f["miss"].as_u64()),
        (Some(1), Some(0)),
        "{f}"
    );
    assert!(
        wait_for(Duration::from_secs(20), || ready(&s) == 2),
        "the tiny pool refills"
    );

    // The default template: the host's tree, [defaults] limits.
    let host = s.create(BOB, json!({}));
    assert_eq!(host["template"], "default");
    assert_eq!(host["limits"]["memory_bytes"], 128 << 20);
    let r = s.json(
        "POST",
        &format!("/v1/sandboxes/{}/exec", id_of(&host)),
        BOB,
        json!({"cmd": ["python3", "-c", "print(6 * 7)"]}),
    );
    assert_eq!(r.json()["stdout"], "42\n", "{}", r.text());

    // Limits in the request override the template's, field by field; such
    // a sandbox is built on demand, still on the template's tree.
    let custom = s.create(
        BOB,
        json!({"template": "tiny", "limits": {"memory": "96M", "timeout_ms": 2000}}),
    );
    assert_eq!(custom["template"], "tiny");
    assert_eq!(custom["limits"]["memory_bytes"], 96 << 20);
    assert_eq!(custom["limits"]["timeout_ms"], 2000);
    assert_eq!(custom["limits"]["cpus"], tiny["limits"]["cpus"]);
    assert_eq!(custom["limits"]["pids"], tiny["limits"]["pids"]);
    let r = sh_in(&s, &id_of(&custom), "for f in /usr/bin/*; do echo $f; done");
    assert_eq!(r.json()["stdout"], "/usr/bin/sh\n", "{}", r.text());
    let f = pool_figures(&s, "tiny");
    assert_eq!(
        (f["hit"].as_u64(), f["miss"].as_u64()),
        (Some(1), Some(0)),
        "other limits never come from the pool: {f}"
    );

    // Unknown templates are refused with the list of known ones.
    let r = s.json("POST", "/v1/sandboxes", BOB, json!({"template": "nope"}));
    r.expect_error(400, "unknown template");
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("nope") && msg.contains("default, tiny"),
        "{msg}"
    );

    // Lists filter by template.
    let ids = |q: &str| -> Vec<String> {
        let r = s.req("GET", &format!("/v1/sandboxes{q}"), Some(BOB), b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let mut v: Vec<String> = r.json()["sandboxes"]
            .as_array()
            .expect("a list")
            .iter()
            .map(id_of)
            .collect();
        v.sort();
        v
    };
    let mut both = vec![tiny_id.clone(), id_of(&custom)];
    both.sort();
    assert_eq!(ids("?template=tiny"), both);
    assert_eq!(ids("?template=default"), vec![id_of(&host)]);
    assert_eq!(ids("?template=tiny&label=t=1"), vec![tiny_id.clone()]);
    assert_eq!(ids("").len(), 3);
    s.req("GET", "/v1/sandboxes?template=nope", Some(BOB), b"")
        .expect_error(400, "unknown template filter");

    // Get-or-create by key keeps its template.
    let keyed = s.create(BOB, json!({"template": "tiny", "key": "me/proj"}));
    let again = s.json(
        "POST",
        "/v1/sandboxes",
        BOB,
        json!({"template": "tiny", "key": "me/proj"}),
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(id_of(&again.json()), id_of(&keyed));
    let r = s.json("POST", "/v1/sandboxes", BOB, json!({"key": "me/proj"}));
    assert_eq!(
        r.expect_error(409, "another template for the key"),
        "conflict"
    );
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("tiny") && msg.contains("default"), "{msg}");

    // Per-template figures in Prometheus.
    let m = s.req("GET", "/metrics", None, b"").text();
    for line in [
        "paddock_pool_size{template=\"tiny\"} 2",
        "paddock_pool_size{template=\"default\"} 0",
        "paddock_pool_total{template=\"tiny\",result=\"hit\"} 2",
        "paddock_pool_total{template=\"tiny\",result=\"miss\"} 0",
        "paddock_pool_total{template=\"tiny\",result=\"failure\"} 0",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    assert!(m.contains("paddock_pool_ready{template=\"tiny\"}"), "{m}");
}

#[test]
fn a_failing_template_pool_backs_off_and_is_reported() {
    let tree = common::shared_tempdir(false);
    common::minimal_tree(tree.path());
    let s = Server::with_config(&template_config(tree.path(), 1));
    let ready = |s: &Server| pool_figures(s, "tiny")["ready"].as_u64().unwrap_or(0);
    assert!(wait_for(Duration::from_secs(20), || ready(&s) == 1));
    // The tree loses its usr/: refills (and on-demand creates) fail.
    std::fs::rename(tree.path().join("usr"), tree.path().join("usr.off")).expect("rename");
    s.create(BOB, json!({"template": "tiny"}));
    assert!(
        wait_for(Duration::from_secs(10), || {
            pool_figures(&s, "tiny")["failure"].as_u64() >= Some(3)
        }),
        "refills keep failing: {}",
        pool_figures(&s, "tiny")
    );
    let f = pool_figures(&s, "tiny");
    assert!(
        f["last_error"].as_str().is_some_and(|e| e.contains("usr")),
        "{f}"
    );
    // With backoff (100 ms, 200 ms, 400 ms...): few attempts, not a spin.
    std::thread::sleep(Duration::from_secs(2));
    let failures = pool_figures(&s, "tiny")["failure"].as_u64().unwrap_or(0);
    assert!(
        failures <= 8,
        "{failures} failures in about 3 s: no backoff?"
    );
    let m = s.req("GET", "/metrics", None, b"").text();
    assert!(
        m.contains("paddock_pool_total{template=\"tiny\",result=\"failure\"}"),
        "{m}"
    );
    assert!(s.stderr().contains("could not fill the sandbox pool"));
    let r = s.json("POST", "/v1/sandboxes", BOB, json!({"template": "tiny"}));
    r.expect_error(500, "the tree is broken");
    // The tree comes back: the pool recovers.
    std::fs::rename(tree.path().join("usr.off"), tree.path().join("usr")).expect("rename");
    assert!(
        wait_for(Duration::from_secs(40), || ready(&s) == 1),
        "the pool recovers: {}",
        pool_figures(&s, "tiny")
    );
    assert_eq!(pool_figures(&s, "tiny")["consecutive_failures"], 0);
    // The default template was never affected.
    s.create(BOB, json!({}));
}

#[test]
fn all_pools_together_stay_within_the_global_caps() {
    let tree = common::shared_tempdir(false);
    common::minimal_tree(tree.path());
    // default: 1 × 128M, tiny: 2 × 64M = 256M of pools wanted, 192M allowed.
    let toml = template_config(tree.path(), 2).replacen(
        "[defaults]",
        "max_memory = \"192M\"\npool_size = 1\n[defaults]",
        1,
    );
    let s = Server::with_config(&toml);
    let pooled = |s: &Server| {
        let d = pool_figures(s, "default")["ready"].as_u64().unwrap_or(0);
        let t = pool_figures(s, "tiny")["ready"].as_u64().unwrap_or(0);
        (d, t, d * 128 + t * 64)
    };
    assert!(
        wait_for(Duration::from_secs(20), || {
            let (d, t, _) = pooled(&s);
            d + t >= 2
        }),
        "the pools fill: {:?}",
        pooled(&s)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (d, t, mem) = pooled(&s);
    assert!(
        mem <= 192,
        "pools hold {mem}M ({d} default, {t} tiny) over a 192M cap"
    );
    // A real sandbox of 64M (other limits: not from a pool) pushes pooled
    // ones out.
    let real = s.create(BOB, json!({"template": "tiny", "limits": {"pids": 50}}));
    let (d, t, mem) = pooled(&s);
    assert!(
        mem + 64 <= 192,
        "pools hold {mem}M ({d} default, {t} tiny) next to a 64M sandbox"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (_, _, mem) = pooled(&s);
    assert!(mem + 64 <= 192, "no refill past the cap: {mem}M");
    s.req(
        "DELETE",
        &format!("/v1/sandboxes/{}", id_of(&real)),
        Some(BOB),
        b"",
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            let (d, t, mem) = pooled(&s);
            d + t >= 2 && mem <= 192
        }),
        "the pools refill within the cap: {:?}",
        pooled(&s)
    );
}

/// Pool hit vs miss creation latency, client side (an HTTP round trip on a
/// new connection) and server side (the manager's own histogram).
#[test]
fn pool_hits_are_much_faster_than_misses() {
    let tree = common::shared_tempdir(false);
    common::minimal_tree(tree.path());
    let s = Server::with_config(&template_config(tree.path(), 8));
    let ready = |s: &Server| pool_figures(s, "tiny")["ready"].as_u64().unwrap_or(0);
    let mut hits = Vec::new();
    let mut misses = Vec::new();
    let mut ids = Vec::new();
    for _round in 0..3 {
        assert!(
            wait_for(Duration::from_secs(30), || ready(&s) == 8),
            "the pool fills"
        );
        for _ in 0..8 {
            let t = Instant::now();
            let v = s.create(BOB, json!({"template": "tiny"}));
            hits.push(t.elapsed());
            ids.push(id_of(&v));
        }
        for id in ids.drain(..) {
            s.req("DELETE", &format!("/v1/sandboxes/{id}"), Some(BOB), b"");
        }
    }
    for _ in 0..6 {
        // Other limits: never from the pool, built on demand.
        let t = Instant::now();
        let v = s.create(BOB, json!({"template": "tiny", "limits": {"pids": 100}}));
        misses.push(t.elapsed());
        s.req(
            "DELETE",
            &format!("/v1/sandboxes/{}", id_of(&v)),
            Some(BOB),
            b"",
        );
    }
    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let stats = s.req("GET", "/v1/stats", Some(BOB), b"").json();
    let server_hit = &stats["latency"]["create_pool_hit"];
    eprintln!(
        "pool hit (client, {} creates): p50 {:?} p95 {:?}; on-demand (client, {}): p50 {:?} p95 {:?}; \
         server side: hit {server_hit}, create {}",
        hits.len(),
        pct(&mut hits, 0.5),
        pct(&mut hits, 0.95),
        misses.len(),
        pct(&mut misses, 0.5),
        pct(&mut misses, 0.95),
        stats["latency"]["create"]
    );
    assert_eq!(server_hit["count"], 24, "{stats}");
    let p95 = server_hit["p95_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(
        p95 <= 1.0,
        "server-side pool hit p95 {p95} ms > 1 ms: {stats}"
    );
    assert!(
        pct(&mut hits, 0.5) * 3 < pct(&mut misses, 0.5),
        "hits {hits:?} vs misses {misses:?}"
    );
}

#[test]
fn help_never_shows_a_key_from_the_environment() {
    for args in [
        &["serve", "--help"][..],
        &["sandbox", "--help"],
        &["files", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paddock"))
            .args(args)
            .env("PADDOCK_API_KEY", "pdk_secret_value_for_help_test")
            .output()
            .expect("run paddock --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(
            !text.contains("pdk_secret_value_for_help_test"),
            "{args:?} printed the key:\n{text}"
        );
    }
}
