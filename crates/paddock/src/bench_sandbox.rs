//! `paddock bench --suite sandbox`: persistent sandboxes, measured in this
//! process through the library, each figure next to a peer measured in the
//! same run (interleaved round-robin):
//!
//! - creating a sandbox (until its agent answers) vs `paddock run -- true`;
//! - `exec /usr/bin/true` in a warm sandbox vs a bare fork+exec of `true`;
//! - creating (and deleting) a python context vs a bare `python3 -c pass`;
//! - `1+1` in a warm python and a warm javascript context (target p50 ≤ 1 ms);
//! - writing and reading back a 1 MB file vs the same on the host's /dev/shm.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use paddock_sandbox::{ExecRequest, RunStatus, Sandbox, SandboxConfig};
use paddock_types::SandboxSpec;

use crate::cli::BenchArgs;

struct Series {
    name: &'static str,
    hist: Histogram<u64>,
}

impl Series {
    fn new(name: &'static str) -> Result<Series> {
        Ok(Series {
            name,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).context("histogram")?,
        })
    }
    fn record(&mut self, d: Duration) -> Result<()> {
        self.hist
            .record((d.as_micros() as u64).max(1))
            .context("record")
    }
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs the suite and prints the table.
pub fn main(args: &BenchArgs) -> Result<()> {
    let rt = crate::client_runtime().context("start the runtime")?;
    rt.block_on(suite(args))
}

fn time_process(argv: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("start {}", argv[0]))?;
    if !status.success() {
        bail!("{} failed: {status}", argv.join(" "));
    }
    Ok(start.elapsed())
}

async fn suite(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locate the paddock binary")?;
    let exe_s = exe.to_string_lossy().into_owned();
    let config = SandboxConfig {
        spec: SandboxSpec::new(Vec::new()),
        agent_exe: exe.clone(),
    };
    let runs = args.runs;
    let mut groups: Vec<(&str, Vec<Series>)> = Vec::new();

    // Creation.
    let mut create = Series::new("create sandbox (agent answers)")?;
    let mut run_true = Series::new("paddock run -- /usr/bin/true")?;
    let create_runs = runs.clamp(5, 100);
    for _ in 0..create_runs {
        let t = Instant::now();
        let sb = Sandbox::create(config.clone()).await?;
        create.record(t.elapsed())?;
        sb.kill().await?;
        run_true.record(time_process(&[&exe_s, "run", "--", "/usr/bin/true"])?)?;
    }
    groups.push(("creation", vec![create, run_true]));

    let sb = Sandbox::create(config.clone()).await?;
    // exec in a warm sandbox.
    let mut exec = Series::new("exec /usr/bin/true (warm sandbox)")?;
    let mut bare = Series::new("bare fork+exec /usr/bin/true")?;
    for i in 0..=runs {
        let t = Instant::now();
        let r = sb.exec(ExecRequest::new(["/usr/bin/true"])).await?;
        let d = t.elapsed();
        if r.exit_code != Some(0) {
            bail!("exec true failed: {r:?}");
        }
        let b = time_process(&["/usr/bin/true"])?;
        if i > 0 {
            exec.record(d)?;
            bare.record(b)?;
        }
    }
    groups.push(("exec", vec![exec, bare]));

    // Python context creation.
    let mut ctx = Series::new("create python context")?;
    let mut py = Series::new("bare python3 -c pass")?;
    for _ in 0..runs.clamp(5, 100) {
        let t = Instant::now();
        let c = sb.create_context("python").await?;
        c.run("pass", Duration::from_secs(30)).await?;
        ctx.record(t.elapsed())?;
        c.delete().await?;
        py.record(time_process(&["/usr/bin/python3", "-c", "pass"])?)?;
    }
    groups.push(("python context", vec![ctx, py]));

    // 1+1 round trips.
    let pyc = sb.create_context("python").await?;
    let jsc = sb.create_context("javascript").await?;
    let mut py_run = Series::new("1+1 in a warm python context")?;
    let mut js_run = Series::new("1+1 in a warm javascript context")?;
    for i in 0..=runs {
        for (c, s) in [(&pyc, &mut py_run), (&jsc, &mut js_run)] {
            let t = Instant::now();
            let r = c.run("1+1", Duration::from_secs(30)).await?;
            let d = t.elapsed();
            if r.status != RunStatus::Ok || r.result.as_deref() != Some("2") {
                bail!("1+1 gave {r:?}");
            }
            if i > 0 {
                s.record(d)?;
            }
        }
    }
    groups.push(("code", vec![py_run, js_run]));

    // 1 MB file.
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    let mut file = Series::new("write + read 1 MB file")?;
    let mut host = Series::new("host /dev/shm write + read 1 MB")?;
    let shm_dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let shm = shm_dir.join(format!("paddock-bench-{}", std::process::id()));
    for i in 0..=runs {
        let t = Instant::now();
        sb.write_file("bench.bin", &data).await?;
        let back = sb.read_file("bench.bin").await?;
        let d = t.elapsed();
        if back.len() != data.len() {
            bail!("file came back with {} bytes", back.len());
        }
        let t = Instant::now();
        std::fs::write(&shm, &data)?;
        let back = std::fs::read(&shm)?;
        let h = t.elapsed();
        if back.len() != data.len() {
            bail!("host file came back short");
        }
        if i > 0 {
            file.record(d)?;
            host.record(h)?;
        }
    }
    let _ = std::fs::remove_file(&shm);
    groups.push(("files", vec![file, host]));
    sb.kill().await?;

    let mut report = serde_json::Map::new();
    for (group, series) in &groups {
        println!("\n{group}: {} runs each (ms)", series[0].hist.len());
        println!(
            "{:<40} {:>8} {:>8} {:>10}",
            "measure", "p50", "p95", "first÷this"
        );
        let base = series[0].p(0.5);
        for s in series {
            let ratio = if std::ptr::eq(s, &series[0]) {
                "-".to_string()
            } else {
                format!("{:.2}x", base / s.p(0.5))
            };
            println!(
                "{:<40} {:>8.3} {:>8.3} {:>10}",
                s.name,
                s.p(0.5),
                s.p(0.95),
                ratio
            );
            report.insert(
                s.name.to_string(),
                serde_json::json!({"p50_ms": s.p(0.5), "p95_ms": s.p(0.95), "runs": s.hist.len()}),
            );
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}
