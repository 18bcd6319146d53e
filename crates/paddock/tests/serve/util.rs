//! Helpers of the `paddock serve` tests: the built binary started as a real
//! server on loopback, a small HTTP/1.1 client over `TcpStream`, and host
//! process inspection.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PADDOCK: &str = env!("CARGO_BIN_EXE_paddock");

pub const ALICE: &str = "alice-key-0123456789";
pub const BOB: &str = "bob-key-0123456789abc";

/// The configuration most tests use: two tenants, fast reaper and health
/// checks, a 1 MiB body limit.
pub const CONFIG: &str = r#"
max_body = "1M"
reaper_interval = "200ms"
health_interval = "500ms"
shutdown_grace = "3s"
function_workers = 1
pool_size = 2

[defaults]
memory = "128M"

[[tenants]]
name = "alice"
api_key = "alice-key-0123456789"
max_sandboxes = 3
max_memory = "1G"

[[tenants]]
name = "bob"
# sha256("bob-key-0123456789abc")
api_key_sha256 = "BOB_HASH"
max_sandboxes = 60
max_memory = "64G"
"#;

/// No request in these tests may take longer than this.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn preconditions() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the paddock serve tests must run as root: they create real sandboxes"
    );
    assert!(
        std::path::Path::new(PADDOCK).is_file(),
        "{PADDOCK} is missing"
    );
}

/// Every server holds this shared; a test that needs no other server to
/// start meanwhile (a starting server cleans up after dead ones) holds it
/// exclusively, see [`exclusive`].
static GLOBAL: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    static EXCLUSIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Holds the global lock exclusively for this test (its own servers do not
/// take it again).
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    let g = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    EXCLUSIVE.with(|e| e.set(true));
    g
}

/// A running `paddock serve`.
pub struct Server {
    _shared: Option<std::sync::RwLockReadGuard<'static, ()>>,
    child: Option<Child>,
    pub addr: String,
    pub stdout_lines: Vec<String>,
    dir: tempfile::TempDir,
}

pub fn sha256_hex(s: &str) -> String {
    // The tests use the binary's own hashing through --check-config would be
    // circular; compute it with the host's sha256sum.
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

impl Server {
    /// Starts with [`CONFIG`].
    pub fn start() -> Server {
        Server::with_config(&CONFIG.replace("BOB_HASH", &sha256_hex(BOB)))
    }

    /// Starts with this TOML on an ephemeral loopback port.
    pub fn with_config(toml: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("paddock.toml");
        std::fs::write(&path, toml).expect("write config");
        let args = [
            "serve".to_string(),
            "--config".into(),
            path.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        Server::spawn(&args, dir)
    }

    /// Starts `paddock ARGS` (a `serve` command line).
    pub fn spawn(args: &[String], dir: tempfile::TempDir) -> Server {
        preconditions();
        let shared = if EXCLUSIVE.with(std::cell::Cell::get) {
            None
        } else {
            Some(GLOBAL.read().unwrap_or_else(|e| e.into_inner()))
        };
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut child = Command::new(PADDOCK)
            .args(args)
            .env_remove("PADDOCK_CONFIG")
            .env_remove("PADDOCK_LISTEN")
            .env_remove("PADDOCK_API_KEY")
            .env_remove("PADDOCK_ROOTFS")
            .env("PADDOCK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start paddock serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Server {
            _shared: shared,
            child: Some(child),
            addr: String::new(),
            stdout_lines: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("paddock serve: listening on http://") {
                        server.addr = a.trim().to_string();
                    }
                    server.stdout_lines.push(line);
                }
                Err(_) => panic!(
                    "paddock serve did not say where it listens; stderr:\n{}",
                    server.stderr()
                ),
            }
        }
        // The key line follows the address line at once, when there is one.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            server.stdout_lines.push(line);
        }
        server
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn req(&self, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Resp {
        request(&self.addr, method, path, key, &[], body)
    }

    pub fn json(&self, method: &str, path: &str, key: &str, body: Value) -> Resp {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        request(
            &self.addr,
            method,
            path,
            Some(key),
            &[("Content-Type", "application/json")],
            &body,
        )
    }

    /// Creates a sandbox and returns its description.
    pub fn create(&self, key: &str, body: Value) -> Value {
        let r = self.json("POST", "/v1/sandboxes", key, body);
        assert_eq!(r.status, 201, "create: {}", r.text());
        r.json()
    }

    /// The server process, no longer stopped by this handle.
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("running")
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "paddock serve did not exit within {within:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a plain pid and signal number has no memory
    // effects; a stale pid at worst signals nothing (ESRCH).
    unsafe {
        libc::kill(pid, sig);
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): status {} {}", self.status, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and the error shape, returning the error code.
    pub fn expect_error(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        let v = self.json();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error.code in {v}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: no error.message in {v}"
        );
        code.to_string()
    }

    /// The server-sent events: (event, data).
    pub fn events(&self) -> Vec<(String, String)> {
        parse_events(&self.text())
    }
}

pub fn parse_events(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::from("message");
        let mut data = String::new();
        let mut any = false;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
                any = true;
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
                any = true;
            }
        }
        if any && !data.is_empty() {
            out.push((name, data));
        }
    }
    out
}

/// Opens a connection and sends one request (`Connection: close`).
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    // A server may answer (413) before reading a large body; ignore EPIPE.
    let _ = s.write_all(body);
    s
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = send(addr, method, path, key, headers, body);
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw)
        && raw.is_empty()
    {
        panic!("{method} {path}: no response: {e}");
    }
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: malformed response: {}",
            String::from_utf8_lossy(&raw)
        )
    })
}

pub fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

pub fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        rest = &rest[eol + 2..];
        if size == 0 || rest.len() < size {
            out.extend_from_slice(&rest[..size.min(rest.len())]);
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// Every process on the host: pid → (ppid, comm).
pub fn processes() -> HashMap<i32, (i32, String)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.insert(pid, (ppid, comm));
    }
    out
}

/// Every descendant of `root` (not `root` itself).
pub fn descendants(root: i32) -> HashSet<i32> {
    let procs = processes();
    let mut out = HashSet::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, (ppid, _)) in &procs {
            if *ppid == p && out.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    out
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|c| stat[c + 1..].split_whitespace().next().map(|s| s != "Z"))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `f` until it holds or `within` passes.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tempdir_path(s: &Server) -> PathBuf {
    s.dir.path().to_path_buf()
}
