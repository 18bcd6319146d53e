//! `paddock bench`: the project's benchmark for the isolation core.
//!
//! Every figure is measured in the same run as its peer, interleaving the
//! commands round-robin so that machine load hits all of them alike:
//!
//! - `paddock run -- /usr/bin/true` vs bubblewrap doing the same (read-only
//!   /usr, /proc, /dev, `--unshare-all`) vs a bare fork+exec of `true`;
//! - `paddock run -- python3 -c pass` vs bare `python3 -c pass` (and bwrap);
//! - both also against util-linux `unshare` making the same namespaces
//!   (user with a root map, pid, mount, net, ipc, uts, cgroup) and exec'ing
//!   the program with nothing else: the floor that namespace creation alone
//!   sets on this machine, so the gap between it and paddock is what paddock's
//!   own work (cgroups, filesystem, filters, init) costs;
//! - host memory an idle sandbox costs (Δ of MemTotal−MemAvailable over N
//!   sleeping sandboxes, minus the same for N bare `sleep`s), vs bubblewrap.
//!
//! Each command is timed as a whole process from spawn to exit.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use crate::cli::{BenchArgs, Suite};

struct Case {
    name: &'static str,
    argv: Vec<String>,
    hist: Histogram<u64>,
}

impl Case {
    fn new(name: &'static str, argv: Vec<String>) -> Result<Case> {
        Ok(Case {
            name,
            argv,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
        })
    }

    fn run_once(&mut self) -> Result<()> {
        let start = Instant::now();
        let status = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("start {}", self.argv[0]))?;
        let us = start.elapsed().as_micros() as u64;
        if !status.success() {
            bail!("{} failed: {status} ({})", self.name, self.argv.join(" "));
        }
        self.hist.record(us.max(1)).context("record")?;
        Ok(())
    }

    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

fn bwrap_argv(cmd: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["bwrap", "--ro-bind", "/usr", "/usr"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for link in ["bin", "sbin", "lib", "lib64"] {
        if let Ok(target) = std::fs::read_link(format!("/{link}")) {
            v.extend([
                "--symlink".to_string(),
                target.to_string_lossy().into_owned(),
                format!("/{link}"),
            ]);
        }
    }
    v.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--unshare-all",
            "--die-with-parent",
            "--",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v.extend(cmd.iter().map(|s| s.to_string()));
    v
}

/// util-linux `unshare` making the namespaces a sandbox has, then exec'ing
/// `cmd` as the namespace's root: no filesystem, cgroup or filter set-up.
fn unshare_argv(cmd: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["unshare".into(), "-UrpfmniuC".into(), "--".into()];
    v.extend(cmd.iter().map(|s| s.to_string()));
    v
}

fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locate the paddock binary")
}

/// Runs the chosen suites, one after the other.
pub fn main(args: BenchArgs) -> Result<()> {
    let mut suites = args.suite.clone();
    suites.dedup();
    for suite in suites {
        match suite {
            Suite::Core => core(&args)?,
            Suite::Sandbox => crate::bench_sandbox::main(&args)?,
            Suite::Functions => crate::bench_functions::main(&args)?,
            Suite::Server => crate::bench_server::main(&args)?,
        }
    }
    Ok(())
}

/// The isolation core: `paddock run` against its peers, and idle memory.
fn core(args: &BenchArgs) -> Result<()> {
    let exe = self_exe()?.to_string_lossy().into_owned();
    let paddock = |cmd: &[&str]| {
        let mut v = vec![exe.clone(), "run".to_string(), "--".to_string()];
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    };
    let bwrap = have("bwrap");
    if !bwrap {
        eprintln!(
            "bwrap not found: install bubblewrap for the peer figures (apt-get install bubblewrap)"
        );
    }
    let unshare = have("unshare");
    if !unshare {
        eprintln!(
            "unshare not found: install util-linux for the namespace-floor figures (apt-get install util-linux)"
        );
    }
    let python = "/usr/bin/python3";

    let mut groups: Vec<(&str, Vec<Case>)> = Vec::new();
    let mut g1 = vec![
        Case::new("paddock run -- /usr/bin/true", paddock(&["/usr/bin/true"]))?,
        Case::new("bare fork+exec /usr/bin/true", vec!["/usr/bin/true".into()])?,
    ];
    if bwrap {
        g1.push(Case::new(
            "bwrap --unshare-all /usr/bin/true",
            bwrap_argv(&["/usr/bin/true"]),
        )?);
    }
    if unshare {
        g1.push(Case::new(
            "namespaces only (unshare) /usr/bin/true",
            unshare_argv(&["/usr/bin/true"]),
        )?);
    }
    groups.push(("true", g1));
    let mut g2 = vec![
        Case::new(
            "paddock run -- python3 -c pass",
            paddock(&[python, "-c", "pass"]),
        )?,
        Case::new(
            "bare python3 -c pass",
            vec![python.into(), "-c".into(), "pass".into()],
        )?,
    ];
    if bwrap {
        g2.push(Case::new(
            "bwrap python3 -c pass",
            bwrap_argv(&[python, "-c", "pass"]),
        )?);
    }
    if unshare {
        g2.push(Case::new(
            "namespaces only (unshare) python3",
            unshare_argv(&[python, "-c", "pass"]),
        )?);
    }
    groups.push(("python", g2));

    let mut report = serde_json::Map::new();
    for (group, cases) in &mut groups {
        // Warm up caches once per case.
        for c in cases.iter_mut() {
            c.run_once()?;
            c.hist.reset();
        }
        for _ in 0..args.runs {
            for c in cases.iter_mut() {
                c.run_once()?;
            }
        }
        let base = cases[0].p(0.5);
        // The bare case is always second; "over bare" is what isolating the
        // same program adds to its p50.
        let bare = cases[1].p(0.5);
        println!("\n{group}: {} runs each, interleaved (ms)", args.runs);
        println!(
            "{:<40} {:>8} {:>8} {:>10} {:>14}",
            "command", "p50", "p95", "over bare", "paddock/peer"
        );
        for c in cases.iter() {
            let ratio = if c.name.starts_with("paddock") {
                "-".to_string()
            } else {
                format!("{:.2}x", base / c.p(0.5))
            };
            let over = if c.name.starts_with("bare") {
                "-".to_string()
            } else {
                format!("{:+.2}", c.p(0.5) - bare)
            };
            println!(
                "{:<40} {:>8.2} {:>8.2} {:>10} {:>14}",
                c.name,
                c.p(0.5),
                c.p(0.95),
                over,
                ratio
            );
            report.insert(
                c.name.to_string(),
                serde_json::json!({"p50_ms": c.p(0.5), "p95_ms": c.p(0.95), "runs": c.hist.len()}),
            );
        }
    }

    println!(
        "\nidle memory: {} sandboxes held at once, each running `sleep`",
        args.idle
    );
    let bare = idle_cost(
        args.idle,
        &["/usr/bin/sleep".to_string(), "600".to_string()],
    )?;
    let pad = idle_cost(args.idle, &paddock(&["/usr/bin/sleep", "600"]))?;
    println!(
        "{:<40} {:>10.0} KiB per process",
        "bare sleep (payload)", bare
    );
    println!(
        "{:<40} {:>10.0} KiB per sandbox over the payload",
        "paddock run -- sleep",
        pad - bare
    );
    report.insert("idle_kib_paddock".into(), serde_json::json!(pad - bare));
    if bwrap {
        let bw = idle_cost(args.idle, &bwrap_argv(&["/usr/bin/sleep", "600"]))?;
        println!(
            "{:<40} {:>10.0} KiB per sandbox over the payload",
            "bwrap -- sleep",
            bw - bare
        );
        report.insert("idle_kib_bwrap".into(), serde_json::json!(bw - bare));
    }
    if args.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}

/// Host memory in use (MemTotal − MemAvailable), KiB.
pub(crate) fn mem_used_kib() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(t), Some(a)) => Ok(t - a),
        _ => bail!("/proc/meminfo lacks MemTotal/MemAvailable"),
    }
}

/// Host memory (KiB) per instance of `argv` while `n` of them idle.
fn idle_cost(n: u32, argv: &[String]) -> Result<f64> {
    std::thread::sleep(Duration::from_millis(300));
    let before = mem_used_kib()?;
    let mut children: Vec<Child> = Vec::new();
    let spawn_all = (|| -> Result<()> {
        for _ in 0..n {
            children.push(
                Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("start {}", argv[0]))?,
            );
        }
        Ok(())
    })();
    // Let every sandbox finish its setup and settle.
    std::thread::sleep(Duration::from_millis(1500 + 20 * u64::from(n)));
    let after = mem_used_kib();
    for c in &mut children {
        // SIGTERM, so that `paddock run` tears its sandbox down cleanly.
        if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for c in &mut children {
        let _ = c.wait();
    }
    spawn_all?;
    Ok((after? - before) / f64::from(n))
}
