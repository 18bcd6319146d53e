//! A smoke run of `paddock bench --suite server` with tiny counts: it
//! starts its own `paddock serve`, measures every phase, stops the server
//! and checks that nothing is left. Runs as root (fails, never skips,
//! elsewhere).

mod common;

use std::process::Command;

#[test]
fn the_server_suite_runs_and_cleans_up() {
    let _guard = common::setup();
    let out = Command::new(common::PADDOCK)
        .args([
            "bench",
            "--suite",
            "server",
            "--server-seconds",
            "1",
            "--server-concurrency",
            "1,2",
            "--server-idle",
            "4",
            "--runs",
            "5",
            "--json",
        ])
        .output()
        .expect("run paddock bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("no sandbox process or cgroup left"),
        "{stdout}"
    );
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
    let cycle = v["cycle"].as_array().expect("cycle rows");
    assert_eq!(cycle.len(), 8, "{v}");
    for row in cycle.iter().chain(v["warm_exec"].as_array().expect("rows")) {
        assert_eq!(row["errors"], 0, "{row}");
        assert!(row["ops"].as_u64().unwrap_or(0) > 0, "{row}");
    }
    assert_eq!(v["idle"]["sandboxes"], 4, "{v}");
    assert_eq!(v["pool"]["hits_counted"], 5, "{v}");
}
