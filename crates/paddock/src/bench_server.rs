//! `paddock bench --suite server`: a load generator against a real
//! `paddock serve` (this binary, started on a free loopback port with a
//! generated key and a configuration written to a temporary directory whose
//! quotas and caps are out of the way). Clients are tokio tasks, each with
//! its own keep-alive HTTP/1.1 connection. It measures:
//!
//! 1. create → exec `/usr/bin/true` → delete, at each concurrency level
//!    (default 1, 16, 64) for `--server-seconds` each: cycles/s and
//!    p50/p95/p99 of the whole cycle and of each step;
//! 2. exec `/usr/bin/true` on warm sandboxes (one per client) at the same
//!    levels;
//! 3. creation from the pool (a second server with `pool_size` set; before
//!    each sample the pool is full again) against creation that cannot use
//!    it (non-default limits), `--runs` samples each, with the server's own
//!    figure for the hits (its create latency histogram, from `/v1/stats`);
//! 4. `--server-idle` idle sandboxes held at once: host memory per sandbox
//!    (Δ of MemTotal−MemAvailable, and the server's own RSS share) and the
//!    latency of `GET /healthz` and of an exec in one of them, with one
//!    sandbox alive and then with all of them.
//!
//! Afterwards every sandbox is deleted, the servers get SIGTERM, and the
//! suite checks that no process and no cgroup of theirs is left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::cli::BenchArgs;

/// Runs the suite and prints the table.
pub fn main(args: &BenchArgs) -> Result<()> {
    let rt = crate::client_runtime().context("start the runtime")?;
    rt.block_on(suite(args))
}

// ---------------------------------------------------------------------------
// A keep-alive HTTP/1.1 client (the CLI's client in client.rs is blocking and
// opens one connection per request; a load generator wants neither).

/// One connection to the server, reopened after an error.
struct Conn {
    addr: SocketAddr,
    auth: String,
    io: Option<BufReader<TcpStream>>,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("the server's answer is not JSON")
    }
    fn expect(self, status: u16, what: &str) -> Result<Reply> {
        if self.status != status {
            bail!(
                "{what}: {}",
                crate::client::describe_error(self.status, &self.body)
            );
        }
        Ok(self)
    }
}

impl Conn {
    fn new(addr: SocketAddr, key: &str) -> Conn {
        Conn {
            addr,
            auth: format!("Authorization: Bearer {key}\r\n"),
            io: None,
        }
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        let r = self.call_inner(method, path, body).await;
        if r.is_err() {
            self.io = None;
        }
        r
    }

    async fn call_inner(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            self.auth,
            body.len()
        );
        req.push_str(&body);
        if self.io.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect to {}", self.addr))?;
            s.set_nodelay(true)?;
            self.io = Some(BufReader::new(s));
        }
        let Some(io) = self.io.as_mut() else {
            bail!("no connection");
        };
        io.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response: {line:?}"))?;
        let (mut chunked, mut length, mut close) = (false, 0usize, false);
        loop {
            line.clear();
            if io.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "content-length" => length = v.parse().context("content-length")?,
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                io.read_line(&mut line).await?;
                let size = line.trim().split(';').next().unwrap_or("");
                let n = usize::from_str_radix(size, 16)
                    .with_context(|| format!("bad chunk size {size:?}"))?;
                if n == 0 {
                    // Trailers (none expected) end with an empty line.
                    loop {
                        line.clear();
                        if io.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + n, 0);
                io.read_exact(&mut body[start..]).await?;
                line.clear();
                io.read_line(&mut line).await?;
            }
        } else if length > 0 {
            body.resize(length, 0);
            io.read_exact(&mut body).await?;
        }
        if close {
            self.io = None;
        }
        Ok(Reply { status, body })
    }

    /// Creates a sandbox; its id.
    async fn create(&mut self, body: &Value) -> Result<String> {
        let v = self
            .call("POST", "/v1/sandboxes", Some(body))
            .await?
            .expect(201, "create")?
            .json()?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in {v}"))
    }

    async fn exec_true(&mut self, id: &str) -> Result<()> {
        let v = self
            .call(
                "POST",
                &format!("/v1/sandboxes/{id}/exec"),
                Some(&json!({"cmd": ["/usr/bin/true"]})),
            )
            .await?
            .expect(200, "exec")?
            .json()?;
        if v["exit_code"] != json!(0) {
            bail!("exec /usr/bin/true gave {v}");
        }
        Ok(())
    }

    async fn delete(&mut self, id: &str) -> Result<()> {
        self.call("DELETE", &format!("/v1/sandboxes/{id}"), None)
            .await?
            .expect(204, "delete")?;
        Ok(())
    }

    async fn healthz(&mut self) -> Result<()> {
        self.call("GET", "/healthz", None)
            .await?
            .expect(200, "healthz")?;
        Ok(())
    }

    async fn stats(&mut self) -> Result<Value> {
        self.call("GET", "/v1/stats", None)
            .await?
            .expect(200, "stats")?
            .json()
    }
}

// ---------------------------------------------------------------------------
// The server under test.

struct ServerProc {
    child: Child,
    addr: SocketAddr,
    key: String,
    dir: PathBuf,
    log: PathBuf,
    /// Keeps the server's stdout open (it prints only at start).
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl ServerProc {
    /// Starts `paddock serve` with `pool_size` and caps above `max` sandboxes.
    fn start(tag: &str, pool_size: usize, max: usize) -> Result<ServerProc> {
        use std::io::BufRead as _;
        let exe = std::env::current_exe().context("locate the paddock binary")?;
        let mut rnd = [0u8; 16];
        getrandom(&mut rnd)?;
        let key = format!(
            "pdk_{}",
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let dir =
            std::env::temp_dir().join(format!("paddock-bench-server-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("paddock.toml");
        std::fs::write(
            &config,
            format!(
                "max_sandboxes = {max}\n\
                 pool_size = {pool_size}\n\
                 shutdown_grace = \"10s\"\n\
                 [defaults]\n\
                 ttl = \"2h\"\n\
                 idle_timeout = \"2h\"\n\
                 [[tenants]]\n\
                 name = \"bench\"\n\
                 api_key = \"{key}\"\n\
                 max_sandboxes = {max}\n\
                 max_memory = {}\n\
                 rate = 1000000.0\n\
                 burst = 1000000.0\n",
                1u64 << 50
            ),
        )
        .context("write the server's configuration")?;
        let log = dir.join("serve.log");
        let mut child = Command::new(&exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env_remove("PADDOCK_API_KEY")
            .env_remove("PADDOCK_LISTEN")
            .env_remove("PADDOCK_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("create the server log")?)
            .spawn()
            .context("start paddock serve")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("read the server's address")?;
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "paddock serve did not start (said {line:?}); its log:\n{}",
                tail(&log)
            );
        };
        Ok(ServerProc {
            child,
            addr,
            key,
            dir,
            log,
            _stdout: stdout,
        })
    }

    fn conn(&self) -> Conn {
        Conn::new(self.addr, &self.key)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait for the exit, then check that no process and no cgroup
    /// of its sandboxes is left. Returns how long the shutdown took. The
    /// temporary directory (configuration, log) is removed unless `keep`.
    fn stop(mut self, keep: bool) -> Result<Duration> {
        let pid = self.pid();
        let t = Instant::now();
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        let deadline = t + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "paddock serve did not stop within 90 s of SIGTERM; its log:\n{}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t.elapsed();
        if !status.success() {
            bail!(
                "paddock serve exited with {status}; its log:\n{}",
                tail(&self.log)
            );
        }
        let left = leftovers(pid)?;
        if !left.is_empty() {
            bail!(
                "after paddock serve stopped, these are left: {}",
                left.join(", ")
            );
        }
        if keep {
            eprintln!("the server's log is kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        Ok(took)
    }
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("read /dev/urandom")
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Processes still in a cgroup of the server `pid`'s sandboxes
/// (`run-<pid>-<n>`), and those cgroups.
fn leftovers(pid: u32) -> Result<Vec<String>> {
    let marker = format!("/run-{pid}-");
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let name = e.file_name();
        let Some(p) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(cg) = std::fs::read_to_string(e.path().join("cgroup"))
            && cg.contains(&marker)
        {
            left.push(format!("process {p}"));
        }
    }
    if let Ok(h) = paddock_jail::hierarchy() {
        for d in h.leftovers().unwrap_or_default() {
            let s = d.to_string_lossy();
            if s.contains(&marker) {
                left.push(format!("cgroup {s}"));
            }
        }
    }
    Ok(left)
}

/// `/proc/meminfo` fields (KiB); `MemUsed` is MemTotal − MemAvailable.
fn meminfo() -> Result<std::collections::BTreeMap<String, f64>> {
    let text = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    let mut m: std::collections::BTreeMap<String, f64> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    let used = crate::bench::mem_used_kib()?;
    m.insert("MemUsed".into(), used);
    Ok(m)
}

/// The meminfo fields reported per sandbox, beside the total.
const MEM_PARTS: &[&str] = &[
    "AnonPages",
    "Shmem",
    "Slab",
    "PageTables",
    "KernelStack",
    "Percpu",
];

/// Proportional set size (KiB) of `pid` and all its descendants.
fn tree_pss_kib(pid: i64) -> f64 {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pids[i])) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    pids.extend(c.split_whitespace().filter_map(|p| p.parse::<i64>().ok()));
                }
            }
        }
        i += 1;
    }
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum()
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Figures.

fn hist() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits; cannot fail with these bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// One row of the table.
struct Row {
    group: String,
    name: String,
    conc: u32,
    ops: u64,
    secs: f64,
    errors: u64,
    h: Histogram<u64>,
}

impl Row {
    fn ms(&self, q: f64) -> f64 {
        self.h.value_at_quantile(q) as f64 / 1000.0
    }
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
    fn json(&self) -> Value {
        json!({
            "group": self.group, "name": self.name, "concurrency": self.conc,
            "ops": self.ops, "seconds": self.secs, "per_second": self.rate(),
            "errors": self.errors,
            "p50_ms": self.ms(0.5), "p95_ms": self.ms(0.95), "p99_ms": self.ms(0.99),
            "max_ms": self.h.max() as f64 / 1000.0,
        })
    }
}

fn print_rows(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "{:<38} {:>5} {:>8} {:>9} {:>8} {:>8} {:>8} {:>6}",
        "measure", "conc", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "errors"
    );
    for r in rows {
        println!(
            "{:<38} {:>5} {:>8} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>6}",
            r.name,
            r.conc,
            r.ops,
            r.rate(),
            r.ms(0.5),
            r.ms(0.95),
            r.ms(0.99),
            r.errors
        );
    }
}

/// Latency of one client's steps, merged over clients afterwards.
struct Steps {
    cycle: Histogram<u64>,
    create: Histogram<u64>,
    exec: Histogram<u64>,
    delete: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            cycle: hist(),
            create: hist(),
            exec: hist(),
            delete: hist(),
            errors: 0,
            first_error: None,
        }
    }
    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }
    fn merge(&mut self, o: &Steps) {
        let _ = self.cycle.add(&o.cycle);
        let _ = self.create.add(&o.create);
        let _ = self.exec.add(&o.exec);
        let _ = self.delete.add(&o.delete);
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }
}

/// One client of level 1: create → exec → delete until `until`.
async fn cycle_client(mut c: Conn, until: Instant) -> Steps {
    let mut s = Steps::new();
    let body = json!({});
    while Instant::now() < until {
        let t0 = Instant::now();
        let id = match c.create(&body).await {
            Ok(id) => id,
            Err(e) => {
                s.error(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let t1 = Instant::now();
        let exec = c.exec_true(&id).await;
        let t2 = Instant::now();
        let del = c.delete(&id).await;
        let t3 = Instant::now();
        match exec.and(del) {
            Ok(()) => {
                record(&mut s.cycle, t3 - t0);
                record(&mut s.create, t1 - t0);
                record(&mut s.exec, t2 - t1);
                record(&mut s.delete, t3 - t2);
            }
            Err(e) => s.error(e),
        }
    }
    s
}

/// One client of level 2: exec in its own warm sandbox until `until`.
async fn exec_client(mut c: Conn, id: String, until: Instant) -> Steps {
    let mut s = Steps::new();
    while Instant::now() < until {
        let t = Instant::now();
        match c.exec_true(&id).await {
            Ok(()) => record(&mut s.exec, t.elapsed()),
            Err(e) => s.error(e),
        }
    }
    s
}

/// Creates `n` sandboxes with `conc` clients, with progress on stderr.
async fn create_many(
    server: &ServerProc,
    n: usize,
    conc: usize,
    what: &str,
) -> Result<Vec<String>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.min(n).max(1) {
        let mut c = server.conn();
        let (next, done) = (next.clone(), done.clone());
        let what = what.to_string();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                ids.push(c.create(&json!({"labels": {"bench": "idle"}})).await?);
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if d % 100 == 0 || d == n {
                    eprintln!(
                        "  {what}: {d}/{n} sandboxes created ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await.context("a creating client")? {
            Ok(v) => ids.extend(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        // Leave nothing behind: what was created goes with the server.
        delete_many(server, ids, conc, what).await.ok();
        return Err(e.context(format!("creating {n} sandboxes")));
    }
    Ok(ids)
}

async fn delete_many(server: &ServerProc, ids: Vec<String>, conc: usize, what: &str) -> Result<()> {
    let n = ids.len();
    let ids = Arc::new(std::sync::Mutex::new(ids));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let mut c = server.conn();
        let (ids, done) = (ids.clone(), done.clone());
        let what = what.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let id = ids
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some(id) = id else { break };
                c.delete(&id).await?;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if d % 200 == 0 || d == n {
                    eprintln!(
                        "  {what}: {d}/{n} sandboxes deleted ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a deleting client")??;
    }
    Ok(())
}

fn row(group: &str, name: &str, conc: u32, secs: f64, errors: u64, h: Histogram<u64>) -> Row {
    Row {
        group: group.into(),
        name: name.into(),
        conc,
        ops: h.len(),
        secs,
        errors,
        h,
    }
}

// ---------------------------------------------------------------------------

async fn suite(args: &BenchArgs) -> Result<()> {
    let levels: Vec<u32> = args.server_concurrency.clone();
    let max_conc = levels.iter().copied().max().unwrap_or(1) as usize;
    let idle = args.server_idle as usize;
    let secs = f64::from(args.server_seconds);
    let mut report = serde_json::Map::new();

    eprintln!("starting paddock serve (no pool) ...");
    let server = ServerProc::start("main", 0, idle + 2 * max_conc + 16)?;
    let r = run_main(args, &server, &levels, idle, secs, &mut report).await;
    eprintln!("stopping paddock serve (SIGTERM) ...");
    let stopped = server.stop(r.is_err());
    r?;
    let took = stopped?;
    println!(
        "\nserver stopped on SIGTERM in {:.2} s; no sandbox process or cgroup left",
        took.as_secs_f64()
    );

    let pool_size = 8;
    eprintln!("starting paddock serve (pool_size = {pool_size}) ...");
    let server = ServerProc::start("pool", pool_size, 64)?;
    let r = run_pool(args, &server, pool_size, &mut report).await;
    let stopped = server.stop(r.is_err());
    r?;
    stopped?;

    if args.json {
        println!("{}", Value::Object(report));
    }
    Ok(())
}

async fn run_main(
    args: &BenchArgs,
    server: &ServerProc,
    levels: &[u32],
    idle: usize,
    secs: f64,
    report: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let _ = args;
    let mut c = server.conn();
    c.healthz().await?;
    let run_for = Duration::from_secs_f64(secs);

    // 1. create → exec → delete.
    let mut rows = Vec::new();
    for &conc in levels {
        eprintln!("create → exec → delete, {conc} client(s), {secs} s ...");
        let until = Instant::now() + run_for;
        let t = Instant::now();
        let tasks: Vec<_> = (0..conc)
            .map(|_| tokio::spawn(cycle_client(server.conn(), until)))
            .collect();
        let mut all = Steps::new();
        for task in tasks {
            all.merge(&task.await.context("a client")?);
        }
        let took = t.elapsed().as_secs_f64();
        if let Some(e) = &all.first_error {
            eprintln!("  {} error(s); the first: {e}", all.errors);
        }
        if all.cycle.is_empty() {
            bail!(
                "no create → exec → delete cycle succeeded: {}",
                all.first_error.unwrap_or_default()
            );
        }
        let g = "create→exec→delete";
        rows.push(row(
            g,
            "create → exec true → delete (cycle)",
            conc,
            took,
            all.errors,
            all.cycle,
        ));
        rows.push(row(g, "  create step", conc, took, 0, all.create));
        rows.push(row(g, "  exec step", conc, took, 0, all.exec));
        rows.push(row(g, "  delete step", conc, took, 0, all.delete));
    }
    print_rows(
        "create → exec /usr/bin/true → delete (no pool; ops/s = cycles/s)",
        &rows,
    );
    report.insert("cycle".into(), rows.iter().map(Row::json).collect());

    // 2. exec on warm sandboxes, one per client.
    let max_conc = levels.iter().copied().max().unwrap_or(1) as usize;
    let warm = create_many(server, max_conc, 16.min(max_conc), "warm sandboxes").await?;
    let mut rows = Vec::new();
    let r: Result<()> = async {
        for &conc in levels {
            eprintln!("exec on warm sandboxes, {conc} client(s), {secs} s ...");
            // Warm each sandbox once.
            for id in &warm[..conc as usize] {
                c.exec_true(id).await?;
            }
            let until = Instant::now() + run_for;
            let t = Instant::now();
            let tasks: Vec<_> = warm[..conc as usize]
                .iter()
                .map(|id| tokio::spawn(exec_client(server.conn(), id.clone(), until)))
                .collect();
            let mut all = Steps::new();
            for task in tasks {
                all.merge(&task.await.context("a client")?);
            }
            if let Some(e) = &all.first_error {
                eprintln!("  {} error(s); the first: {e}", all.errors);
            }
            rows.push(row(
                "warm exec",
                "exec /usr/bin/true, warm sandbox",
                conc,
                t.elapsed().as_secs_f64(),
                all.errors,
                all.exec,
            ));
        }
        Ok(())
    }
    .await;
    delete_many(server, warm, 16, "warm sandboxes").await?;
    r?;
    print_rows(
        "exec /usr/bin/true on warm sandboxes (one sandbox per client)",
        &rows,
    );
    report.insert("warm_exec".into(), rows.iter().map(Row::json).collect());

    // 4. Idle sandboxes held at once.
    idle_phase(server, idle, secs, report).await
}

/// Alternates `GET /healthz` and an exec in `id` for `d`.
async fn responsiveness(c: &mut Conn, id: &str, d: Duration) -> Result<(Row, Row)> {
    let (mut hz, mut ex) = (hist(), hist());
    let t = Instant::now();
    while t.elapsed() < d {
        let s = Instant::now();
        c.healthz().await?;
        record(&mut hz, s.elapsed());
        let s = Instant::now();
        c.exec_true(id).await?;
        record(&mut ex, s.elapsed());
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((
        row("idle", "GET /healthz", 1, secs, 0, hz),
        row("idle", "exec /usr/bin/true in one of them", 1, secs, 0, ex),
    ))
}

/// Per-sandbox meminfo deltas (`MemUsed` first), the PSS of one sandbox's
/// processes, the server's RSS growth, and the two latency rows.
type IdleFigures = (Vec<(String, f64)>, f64, f64, Row, Row);

async fn idle_phase(
    server: &ServerProc,
    n: usize,
    secs: f64,
    report: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let mut c = server.conn();
    // With the default 5 s, long enough to include one round of the
    // server's agent health checks (every 5 s).
    let probe = Duration::from_secs_f64(secs + 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = meminfo()?;
    let rss_before = rss_kib(server.pid());
    let first = create_many(server, 1, 1, "idle").await?;
    eprintln!(
        "responsiveness with 1 sandbox, {:.0} s ...",
        probe.as_secs_f64()
    );
    let (hz1, ex1) = match responsiveness(&mut c, &first[0], probe).await {
        Ok(r) => r,
        Err(e) => {
            delete_many(server, first, 1, "idle").await.ok();
            return Err(e);
        }
    };
    eprintln!("creating {} more idle sandboxes (16 at a time) ...", n - 1);
    let t = Instant::now();
    let mut ids = first;
    let more = create_many(server, n - 1, 16, "idle").await;
    let created_in = t.elapsed().as_secs_f64();
    let r: Result<IdleFigures> = async {
        ids.extend(more?);
        // Let every agent settle (first page faults, lazy allocations).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = meminfo()?;
        let rss_after = rss_kib(server.pid());
        let delta: Vec<(String, f64)> = std::iter::once("MemUsed")
            .chain(MEM_PARTS.iter().copied())
            .filter(|k| before.contains_key(*k) && after.contains_key(*k))
            .map(|k| (k.to_string(), (after[k] - before[k]) / n as f64))
            .collect();
        // The processes of one sandbox (init and agent): their PSS.
        let info = c
            .call("GET", &format!("/v1/sandboxes/{}", ids[n / 2]), None)
            .await?
            .expect(200, "inspect")?
            .json()?;
        let pss = info["pid"].as_i64().map_or(f64::NAN, tree_pss_kib);
        let live = c.stats().await?["sandboxes"]["live"].as_u64().unwrap_or(0);
        if live != n as u64 {
            bail!("the server reports {live} live sandboxes, not {n}");
        }
        eprintln!(
            "responsiveness with {n} sandboxes, {:.0} s ...",
            probe.as_secs_f64()
        );
        let mid = &ids[n / 2];
        let (hz, ex) = responsiveness(&mut c, mid, probe).await?;
        Ok((delta, pss, rss_after - rss_before, hz, ex))
    }
    .await;
    eprintln!("deleting the {} idle sandboxes ...", ids.len());
    let t = Instant::now();
    delete_many(server, ids, 16, "idle").await?;
    let deleted_in = t.elapsed().as_secs_f64();
    let (delta, pss, rss, hz, ex) = r?;
    let per = delta.first().map_or(f64::NAN, |d| d.1);
    let rss_per = rss / n as f64;
    println!("\n{n} idle sandboxes held at once");
    println!(
        "created in {created_in:.1} s ({:.0}/s, 16 clients), deleted in {deleted_in:.1} s",
        (n - 1) as f64 / created_in.max(1e-9)
    );
    println!("host memory (MemTotal-MemAvailable) per sandbox: {per:.0} KiB");
    let parts: Vec<String> = delta[1..]
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect();
    println!("  meminfo deltas per sandbox (KiB): {}", parts.join(", "));
    println!(
        "  PSS of one sandbox's processes (init + agent): {pss:.0} KiB; the server's RSS grew {rss_per:.0} KiB per sandbox"
    );
    let mut rows = vec![hz1, ex1, hz, ex];
    rows[0].name = "GET /healthz, 1 sandbox alive".into();
    rows[1].name = "exec true, 1 sandbox alive".into();
    rows[2].name = format!("GET /healthz, {n} alive");
    rows[3].name = format!("exec true in one, {n} alive");
    print_rows("responsiveness (one client alternating the two)", &rows);
    report.insert(
        "idle".into(),
        json!({
            "sandboxes": n,
            "host_kib_per_sandbox": per,
            "meminfo_kib_per_sandbox": delta.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<String, Value>>(),
            "sandbox_processes_pss_kib": pss,
            "server_rss_kib_per_sandbox": rss_per,
            "created_s": created_in,
            "deleted_s": deleted_in,
            "latency": rows.iter().map(Row::json).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

/// Waits until the pool holds `size` ready sandboxes.
async fn wait_pool_full(c: &mut Conn, size: usize) -> Result<()> {
    let t = Instant::now();
    loop {
        let v = c.stats().await?;
        if v["pool"]["ready"].as_u64() == Some(size as u64) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the pool did not refill in 60 s: {}", v["pool"]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// 3. Creation from the pool (hit) against creation that cannot use it.
async fn run_pool(
    args: &BenchArgs,
    server: &ServerProc,
    pool_size: usize,
    report: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let mut c = server.conn();
    let samples = args.runs.clamp(5, 2000);
    eprintln!("pool hits: {samples} creates, each with a full pool of {pool_size} ...");
    let hits0 = c.stats().await?["pool"]["hit"].as_u64().unwrap_or(0);
    let mut hit = hist();
    let t = Instant::now();
    for _ in 0..samples {
        wait_pool_full(&mut c, pool_size).await?;
        let s = Instant::now();
        let id = c.create(&json!({})).await?;
        record(&mut hit, s.elapsed());
        c.delete(&id).await?;
    }
    let hit_secs = t.elapsed().as_secs_f64();
    let stats = c.stats().await?;
    let hits = stats["pool"]["hit"].as_u64().unwrap_or(0) - hits0;
    // The server's own time for the hits: its pool-hit histogram when it has
    // one, else its create histogram (only hits were created so far).
    let server_hit = if stats["latency"]["create_pool_hit"].is_object() {
        stats["latency"]["create_pool_hit"].clone()
    } else {
        stats["latency"]["create"].clone()
    };
    eprintln!("pool misses: {samples} creates with non-default limits ...");
    let mut miss = hist();
    let t = Instant::now();
    for _ in 0..samples {
        let s = Instant::now();
        let id = c.create(&json!({"limits": {"memory": "256M"}})).await?;
        record(&mut miss, s.elapsed());
        c.delete(&id).await?;
    }
    let miss_secs = t.elapsed().as_secs_f64();
    let rows = vec![
        row("pool", "create, pool hit (client)", 1, hit_secs, 0, hit),
        row(
            "pool",
            "create, miss (non-default limits)",
            1,
            miss_secs,
            0,
            miss,
        ),
    ];
    print_rows(
        &format!("creation latency, pool_size = {pool_size} (sequential; ops/s include the waits)"),
        &rows,
    );
    let sms = |k: &str| server_hit[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "pool hits counted by the server: {hits}/{samples}; its own create time for them: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms",
        sms("p50_ms"),
        sms("p95_ms"),
        sms("p99_ms")
    );
    if hits != u64::from(samples) {
        eprintln!("warning: only {hits} of {samples} creates were pool hits");
    }
    report.insert(
        "pool".into(),
        json!({
            "pool_size": pool_size,
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "hits_counted": hits,
            "server_create_hit": server_hit,
        }),
    );
    Ok(())
}
