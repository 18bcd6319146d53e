//! `paddock bench --suite functions`: JavaScript functions against
//! isolated-vm and node's `vm`, in the same run.
//!
//! The workload is seed 002's transform on a 10-item array, JSON in and
//! out, a 16 MiB heap and a 500 ms limit, a fresh heap per call:
//!
//! - paddock, 1 worker, 1 caller (latency of one call, no queueing);
//! - paddock, one worker per core, 2 callers per worker (throughput);
//! - paddock batches of 100 inputs, fresh context per input, and the same
//!   with one shared context (one compiled function called per input);
//! - the engine in-process on one thread (no sandbox, no IPC): the floor;
//! - isolated-vm 5 (16 MB): a new isolate per call, and one isolate with a
//!   new context per call; node `vm`: a new context per call. These run
//!   from `bench/isolated_vm.js` with node, when `node` is installed and
//!   isolated-vm is found in `--node-modules` / `PADDOCK_BENCH_NODE_MODULES`.
//!
//! Each mode runs for `--fn-seconds`; the ratio column divides by the best
//! isolated-vm mode of the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use paddock_functions::{
    Batch, BatchMode, Call, Engine, Options, Pool, PoolConfig, Priority, Status,
};

use crate::cli::BenchArgs;

const NODE_SCRIPT: &str = include_str!("bench/isolated_vm.js");

/// Seed 002's transform, as its users write it.
pub const TRANSFORM: &str = "function transform(data) {
    return data.map(item => ({
        id: item.id,
        name: item.name.toUpperCase(),
        total: item.price * item.quantity
    }));
}

output = transform(input);";

const BATCH: usize = 100;

fn input() -> String {
    let items: Vec<serde_json::Value> = (1..=10)
        .map(|i| {
            serde_json::json!({
                "id": i, "name": format!("item {i}"), "price": 0.25 * f64::from(i), "quantity": i * 3
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

fn expected(input: &str) -> Result<String> {
    let items: Vec<serde_json::Value> = serde_json::from_str(input)?;
    let out: Vec<serde_json::Value> = items
        .iter()
        .map(|it| {
            let price = it["price"].as_f64().unwrap_or(0.0);
            let qty = it["quantity"].as_f64().unwrap_or(0.0);
            let total = price * qty;
            // JSON from JavaScript writes whole numbers without a fraction.
            let total = if total.fract() == 0.0 && total.abs() < 1e15 {
                serde_json::json!(total as i64)
            } else {
                serde_json::json!(total)
            };
            serde_json::json!({
                "id": it["id"],
                "name": it["name"].as_str().unwrap_or("").to_uppercase(),
                "total": total,
            })
        })
        .collect();
    Ok(serde_json::Value::Array(out).to_string())
}

/// One measured mode.
struct Row {
    mode: String,
    /// Function executions per second (batch inputs count one each).
    per_s: f64,
    p50_us: f64,
    p95_us: f64,
    /// What the latency figures are of.
    latency_of: &'static str,
    peer: bool,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

/// Runs `callers` threads calling `one` until `seconds` pass; `one`
/// returns how many executions it did. Returns (executions/s, histogram of
/// the latency of one `one`).
fn drive(
    callers: usize,
    seconds: u32,
    one: Arc<dyn Fn() -> Result<u64> + Send + Sync>,
) -> Result<(f64, Histogram<u64>)> {
    // Warm-up.
    for _ in 0..20 {
        one()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let one = Arc::clone(&one);
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut hist = histogram()?;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    n += one()?;
                    hist.record(
                        u64::try_from(t.elapsed().as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    )?;
                }
                Ok((n, hist))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(u64::from(seconds)));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = histogram()?;
    for t in threads {
        let (n, h) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        total += n;
        hist.add(h)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((total as f64 / elapsed, hist))
}

fn row(mode: &str, per_s: f64, hist: &Histogram<u64>, latency_of: &'static str) -> Row {
    Row {
        mode: mode.to_string(),
        per_s,
        p50_us: hist.value_at_quantile(0.5) as f64,
        p95_us: hist.value_at_quantile(0.95) as f64,
        latency_of,
        peer: false,
    }
}

fn pool(exe: &Path, workers: usize) -> Result<Arc<Pool>> {
    let mut config = PoolConfig::new(exe);
    config.workers = workers;
    config.queue_capacity = 4096;
    Ok(Arc::new(
        Pool::new(config).context("start the function pool")?,
    ))
}

fn check(r: &paddock_functions::FnResult, want: &serde_json::Value) -> Result<()> {
    if r.status != Status::Ok || &r.output != want {
        bail!("unexpected result: {r:?}");
    }
    Ok(())
}

fn paddock_rows(exe: &Path, seconds: u32, input: &str, want: &str) -> Result<Vec<Row>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let want: serde_json::Value = serde_json::from_str(want)?;
    let mut rows = Vec::new();

    // In-process engine, one thread: no sandbox, no IPC.
    {
        let input = input.to_string();
        let want = want.clone();
        let engine = std::sync::Mutex::new(Engine::new()?);
        let one: Arc<dyn Fn() -> Result<u64> + Send + Sync> = Arc::new(move || {
            let mut e = engine.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            check(&e.run(TRANSFORM, &input, &Options::default()), &want)?;
            Ok(1)
        });
        let (per_s, hist) = drive(1, seconds, one)?;
        rows.push(row(
            "engine in-process, 1 thread (no sandbox)",
            per_s,
            &hist,
            "call",
        ));
    }

    let call = Call {
        code: TRANSFORM.to_string(),
        input: input.to_string(),
        options: Options::default(),
        priority: Priority::Normal,
    };
    for (label, workers, callers) in [
        ("paddock fn, 1 worker, 1 caller".to_string(), 1, 1),
        (
            format!("paddock fn, {cores} workers, {} callers", 2 * cores),
            cores,
            2 * cores,
        ),
    ] {
        let pool = pool(exe, workers)?;
        let (call, want) = (call.clone(), want.clone());
        let one: Arc<dyn Fn() -> Result<u64> + Send + Sync> = Arc::new(move || {
            check(&pool.run(call.clone())?, &want)?;
            Ok(1)
        });
        let (per_s, hist) = drive(callers, seconds, one)?;
        rows.push(row(&label, per_s, &hist, "call"));
    }

    for (mode, name) in [
        (BatchMode::Fresh, "fresh context per input"),
        (BatchMode::SharedContext, "one shared context"),
    ] {
        let pool = pool(exe, cores)?;
        let batch = Batch {
            code: TRANSFORM.to_string(),
            inputs: vec![input.to_string(); BATCH],
            options: Options::default(),
            mode,
            priority: Priority::Normal,
        };
        let want = want.clone();
        let one: Arc<dyn Fn() -> Result<u64> + Send + Sync> = Arc::new(move || {
            let results = pool.run_batch(batch.clone())?;
            for r in &results {
                check(r, &want)?;
            }
            Ok(results.len() as u64)
        });
        let (per_s, hist) = drive(2 * cores, seconds, one)?;
        rows.push(row(
            &format!("paddock fn batch of {BATCH}, {name}, {cores} workers"),
            per_s,
            &hist,
            "batch",
        ));
    }
    Ok(rows)
}

/// The directory to put in NODE_PATH, if isolated-vm is there.
fn node_path(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("node_modules")]
        .into_iter()
        .find(|d| d.join("isolated-vm").join("package.json").is_file())
}

fn peer_rows(args: &BenchArgs, input: &str, want: &str) -> Result<Vec<Row>> {
    let have_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_node {
        eprintln!("node not found: install nodejs for the isolated-vm and node vm figures");
        return Ok(Vec::new());
    }
    let path = args.node_modules.as_deref().and_then(node_path);
    if path.is_none() {
        eprintln!(
            "isolated-vm not found{}: for its figures, install it outside the repository and \
             point paddock at it, e.g.\n  mkdir -p ~/paddock-bench-node && cd ~/paddock-bench-node \
             && npm install --ignore-scripts isolated-vm@5.0.4 \
             && (cd node_modules/isolated-vm && node /usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js \
             rebuild --release --nodedir=/usr)\n  \
             PADDOCK_BENCH_NODE_MODULES=~/paddock-bench-node/node_modules paddock bench --suite functions",
            args.node_modules
                .as_deref()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default()
        );
    }
    let mut cmd = Command::new("node");
    cmd.args(["--no-node-snapshot", "-e", NODE_SCRIPT])
        .env("PADDOCK_BENCH_SECONDS", args.fn_seconds.to_string())
        .env("PADDOCK_BENCH_CODE", TRANSFORM)
        .env("PADDOCK_BENCH_INPUT", input)
        .env("PADDOCK_BENCH_EXPECTED", want);
    if let Some(p) = &path {
        cmd.env("NODE_PATH", p);
    }
    let out = cmd.output().context("run node")?;
    if !out.status.success() {
        bail!(
            "the node benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("node's figures")?;
        if let Some(mode) = v["mode"].as_str() {
            rows.push(Row {
                mode: mode.to_string(),
                per_s: v["calls_per_s"].as_f64().unwrap_or(0.0),
                p50_us: v["p50_us"].as_f64().unwrap_or(0.0),
                p95_us: v["p95_us"].as_f64().unwrap_or(0.0),
                latency_of: "call",
                peer: true,
            });
        }
    }
    Ok(rows)
}

/// Runs the functions suite and prints the table.
pub fn main(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locate the paddock binary")?;
    let input = input();
    let want = expected(&input)?;
    let mut rows = peer_rows(args, &input, &want)?;
    rows.extend(paddock_rows(&exe, args.fn_seconds, &input, &want)?);
    let best_ivm = rows
        .iter()
        .filter(|r| r.peer && r.mode.starts_with("isolated-vm"))
        .map(|r| r.per_s)
        .fold(0.0, f64::max);
    println!(
        "\nfunctions: seed-002 transform, 10 items, 16 MiB heap, 500 ms limit, fresh heap per call; \
         {} s per mode",
        args.fn_seconds
    );
    println!(
        "{:<62} {:>10} {:>10} {:>10} {:>8}",
        "mode", "per s", "p50 ms", "p95 ms", "/ivm"
    );
    let mut report = serde_json::Map::new();
    for r in &rows {
        let ratio = if best_ivm > 0.0 && !r.peer {
            format!("{:.1}x", r.per_s / best_ivm)
        } else {
            "-".to_string()
        };
        let latency = if r.latency_of == "batch" {
            " (batch)"
        } else {
            ""
        };
        println!(
            "{:<62} {:>10.0} {:>10.3} {:>10.3} {:>8}{latency}",
            r.mode,
            r.per_s,
            r.p50_us / 1000.0,
            r.p95_us / 1000.0,
            ratio
        );
        report.insert(
            r.mode.clone(),
            serde_json::json!({
                "per_s": r.per_s, "p50_ms": r.p50_us / 1000.0, "p95_ms": r.p95_us / 1000.0,
                "latency_of": r.latency_of, "peer": r.peer,
            }),
        );
    }
    if best_ivm > 0.0 {
        println!("(/ivm: executions per second over the best isolated-vm mode, {best_ivm:.0}/s)");
    }
    if args.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}
