//! `paddock sandbox | context | files`: a command-line client of
//! `paddock serve`, over plain HTTP/1.1 (a small hand-written client: one
//! connection per request, `Connection: close`, chunked bodies, SSE).
//!
//! ```text
//! paddock sandbox create [--memory SIZE] [--cpus N] [--ttl SECS] [--idle-timeout SECS]
//!                        [--label K=V]... [--key KEY] [--json]
//! paddock sandbox list [--label K=V]... [--json]
//! paddock sandbox inspect ID
//! paddock sandbox exec ID [--timeout DUR] [--json] -- PROGRAM [ARGS...]
//! paddock sandbox kill ID
//! paddock context create ID --lang python|javascript|bash
//! paddock context run ID CID (--code CODE | stdin) [--json]
//! paddock context delete ID CID
//! paddock files put ID LOCAL REMOTE | get ID REMOTE [LOCAL] | ls ID [PATH] [--json] | rm ID PATH
//! ```
//!
//! The server and key come from `--url`/`--api-key` or `PADDOCK_URL`
//! (default `http://127.0.0.1:8080`) and `PADDOCK_API_KEY`. Exit status: 0
//! on success (for `exec`/`run` without `--json`: the program's own, as
//! `paddock run`), 1 when the server refused or could not be reached, 2 on
//! bad usage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the server is and who we are.
#[derive(Debug, Args)]
pub struct Server {
    /// URL of `paddock serve`.
    #[arg(
        long,
        value_name = "URL",
        env = "PADDOCK_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "PADDOCK_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[command(flatten)]
    pub server: Server,
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox (with --key: get or create); prints its id.
    Create {
        /// Template (a base tree plus default limits) configured on the
        /// server; default `default`.
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
        /// Memory limit, e.g. 256M.
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// CPU cores (fractions allowed).
        #[arg(long, value_name = "N")]
        cpus: Option<f64>,
        /// Time to live, in seconds.
        #[arg(long, value_name = "SECS")]
        ttl: Option<f64>,
        /// Idle timeout, in seconds.
        #[arg(long, value_name = "SECS")]
        idle_timeout: Option<f64>,
        /// Label K=V (repeatable).
        #[arg(long = "label", value_name = "K=V", value_parser = label)]
        labels: Vec<(String, String)>,
        /// Get-or-create key, e.g. owner/project.
        #[arg(long)]
        key: Option<String>,
        /// Print the sandbox object.
        #[arg(long)]
        json: bool,
    },
    /// List your sandboxes.
    List {
        /// Only those with label K=V (repeatable).
        #[arg(long = "label", value_name = "K=V", value_parser = label)]
        labels: Vec<(String, String)>,
        /// Only those of this template.
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a sandbox as JSON.
    Inspect {
        /// Sandbox id.
        id: String,
    },
    /// Run a command; its output is passed through as it comes and its exit
    /// status is paddock's (as `paddock run`).
    Exec {
        /// Sandbox id.
        id: String,
        /// Wall-clock limit, e.g. 10s.
        #[arg(long, value_name = "DUR", value_parser = duration)]
        timeout: Option<Duration>,
        /// Print the result object instead.
        #[arg(long)]
        json: bool,
        /// Program and arguments.
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        argv: Vec<String>,
    },
    /// Kill a sandbox.
    Kill {
        /// Sandbox id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ContextArgs {
    #[command(flatten)]
    pub server: Server,
    #[command(subcommand)]
    pub command: ContextCommand,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Create a code context; prints its id.
    Create {
        /// Sandbox id.
        id: String,
        /// python, javascript or bash.
        #[arg(long)]
        lang: String,
    },
    /// Run code (from --code or stdin); prints its output and the value of
    /// the last expression. Exit status 1 if the code raised.
    Run {
        /// Sandbox id.
        id: String,
        /// Context id.
        cid: String,
        /// The code (default: read stdin).
        #[arg(long)]
        code: Option<String>,
        /// Wall-clock limit, e.g. 10s.
        #[arg(long, value_name = "DUR", value_parser = duration)]
        timeout: Option<Duration>,
        /// Print the result object instead.
        #[arg(long)]
        json: bool,
    },
    /// Delete a code context.
    Delete {
        /// Sandbox id.
        id: String,
        /// Context id.
        cid: String,
    },
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    #[command(flatten)]
    pub server: Server,
    #[command(subcommand)]
    pub command: FilesCommand,
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Upload a local file (- for stdin) to a path inside the sandbox.
    Put {
        /// Sandbox id.
        id: String,
        /// Local file, or - for stdin.
        local: String,
        /// Path inside the sandbox (relative: under /home/user).
        remote: String,
    },
    /// Download a file to LOCAL (default: stdout).
    Get {
        /// Sandbox id.
        id: String,
        /// Path inside the sandbox (relative: under /home/user).
        remote: String,
        /// Local file (default: stdout).
        local: Option<PathBuf>,
    },
    /// List a directory.
    Ls {
        /// Sandbox id.
        id: String,
        /// Path inside the sandbox (relative: under /home/user).
        #[arg(default_value = "/home/user")]
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a file (or, with --recursive, a directory).
    Rm {
        /// Sandbox id.
        id: String,
        /// Path inside the sandbox (relative: under /home/user).
        path: String,
        /// Remove a directory and everything in it.
        #[arg(long, short)]
        recursive: bool,
    },
}

fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "expected K=V".to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    paddock_types::parse_duration(s).map_err(|e| format!("expected {}", e.expected))
}

/// Exit status when the server refused or could not be reached.
const EXIT_FAILED: i32 = 1;

fn finish(r: anyhow::Result<i32>) -> i32 {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paddock: {e:#}");
            EXIT_FAILED
        }
    }
}

pub fn sandbox_main(args: SandboxArgs) -> i32 {
    finish(sandbox(args))
}

pub fn context_main(args: ContextArgs) -> i32 {
    finish(context(args))
}

pub fn files_main(args: FilesArgs) -> i32 {
    finish(files(args))
}

/// Percent-encodes a query value or a path (keeping `/` in paths).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn sandbox(args: SandboxArgs) -> anyhow::Result<i32> {
    let c = Client::new(&args.server)?;
    match args.command {
        SandboxCommand::Create {
            template,
            memory,
            cpus,
            ttl,
            idle_timeout,
            labels,
            key,
            json,
        } => {
            let mut limits = serde_json::Map::new();
            if let Some(m) = memory {
                limits.insert("memory".into(), json!(m));
            }
            if let Some(c) = cpus {
                limits.insert("cpus".into(), json!(c));
            }
            let mut body = json!({"limits": limits, "labels": labels.into_iter().collect::<std::collections::BTreeMap<_, _>>()});
            if let Some(t) = ttl {
                body["ttl_s"] = json!(t);
            }
            if let Some(t) = idle_timeout {
                body["idle_timeout_s"] = json!(t);
            }
            if let Some(k) = key {
                body["key"] = json!(k);
            }
            if let Some(t) = template {
                body["template"] = json!(t);
            }
            let v = c.call_json("POST", "/v1/sandboxes", &body)?;
            if json {
                print_json(&v)?;
            } else {
                println!("{}", v["id"].as_str().unwrap_or(""));
            }
            Ok(0)
        }
        SandboxCommand::List {
            labels,
            template,
            json,
        } => {
            let mut query: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("label={}", encode(&format!("{k}={v}"), false)))
                .collect();
            if let Some(t) = template {
                query.push(format!("template={}", encode(&t, false)));
            }
            let path = if query.is_empty() {
                "/v1/sandboxes".to_string()
            } else {
                format!("/v1/sandboxes?{}", query.join("&"))
            };
            let v = c.call_json("GET", &path, &Value::Null)?;
            if json {
                print_json(&v)?;
                return Ok(0);
            }
            let list = v["sandboxes"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<24}  {:>8}  {:>10}  {:<20}  LABELS",
                "ID", "MEMORY", "EXPIRES", "KEY"
            );
            for s in list {
                let labels: Vec<String> = s["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<24}  {:>8}  {:>9.0}s  {:<20}  {}",
                    s["id"].as_str().unwrap_or(""),
                    paddock_types::format_size(s["limits"]["memory_bytes"].as_u64().unwrap_or(0)),
                    s["expires_in_s"].as_f64().unwrap_or(0.0),
                    s["key"].as_str().unwrap_or("-"),
                    labels.join(",")
                );
            }
            Ok(0)
        }
        SandboxCommand::Inspect { id } => {
            let v = c.call_json(
                "GET",
                &format!("/v1/sandboxes/{}", encode(&id, false)),
                &Value::Null,
            )?;
            print_json(&v)?;
            Ok(0)
        }
        SandboxCommand::Exec {
            id,
            timeout,
            json,
            argv,
        } => {
            let mut body = json!({ "cmd": argv });
            if let Some(t) = timeout {
                body["timeout_ms"] = json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            }
            let path = format!("/v1/sandboxes/{}/exec", encode(&id, false));
            if json {
                print_json(&c.call_json("POST", &path, &body)?)?;
                return Ok(0);
            }
            let result = c.stream(&path, &body)?;
            let r: paddock_types::RunResult =
                serde_json::from_value(result).context("the server's result object")?;
            Ok(r.cli_exit_code())
        }
        SandboxCommand::Kill { id } => {
            c.call(
                "DELETE",
                &format!("/v1/sandboxes/{}", encode(&id, false)),
                &[],
            )?;
            Ok(0)
        }
    }
}

fn context(args: ContextArgs) -> anyhow::Result<i32> {
    let c = Client::new(&args.server)?;
    match args.command {
        ContextCommand::Create { id, lang } => {
            let v = c.call_json(
                "POST",
                &format!("/v1/sandboxes/{}/contexts", encode(&id, false)),
                &json!({ "language": lang }),
            )?;
            println!("{}", v["id"]);
            Ok(0)
        }
        ContextCommand::Run {
            id,
            cid,
            code,
            timeout,
            json,
        } => {
            let code = match code {
                Some(c) => c,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the code from stdin")?;
                    s
                }
            };
            let mut body = json!({ "code": code });
            if let Some(t) = timeout {
                body["timeout_ms"] = json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            }
            let path = format!(
                "/v1/sandboxes/{}/contexts/{}/run",
                encode(&id, false),
                encode(&cid, false)
            );
            if json {
                print_json(&c.call_json("POST", &path, &body)?)?;
                return Ok(0);
            }
            let r = c.stream(&path, &body)?;
            if let Some(v) = r["result"].as_str() {
                println!("{v}");
            }
            if let Some(e) = r["error"].as_object() {
                let tb = e.get("traceback").and_then(Value::as_str).unwrap_or("");
                if tb.is_empty() {
                    eprintln!(
                        "{}: {}",
                        e.get("name").and_then(Value::as_str).unwrap_or("Error"),
                        e.get("value").and_then(Value::as_str).unwrap_or("")
                    );
                } else {
                    eprint!("{tb}");
                }
            }
            Ok(match r["status"].as_str() {
                Some("ok") => 0,
                Some("timeout") => 124,
                _ => 1,
            })
        }
        ContextCommand::Delete { id, cid } => {
            c.call(
                "DELETE",
                &format!(
                    "/v1/sandboxes/{}/contexts/{}",
                    encode(&id, false),
                    encode(&cid, false)
                ),
                &[],
            )?;
            Ok(0)
        }
    }
}

/// The URL of a path inside the sandbox; a relative path starts at
/// `/home/user`, as everywhere else in paddock.
fn remote_path(id: &str, remote: &str) -> anyhow::Result<String> {
    if remote.is_empty() {
        bail!("no path inside the sandbox given");
    }
    let absolute = if remote.starts_with('/') {
        remote.to_string()
    } else {
        format!("/home/user/{remote}")
    };
    Ok(format!(
        "/v1/sandboxes/{}/files{}",
        encode(id, false),
        encode(&absolute, true)
    ))
}

fn files(args: FilesArgs) -> anyhow::Result<i32> {
    let c = Client::new(&args.server)?;
    match args.command {
        FilesCommand::Put { id, local, remote } => {
            let data = if local == "-" {
                let mut d = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut d)
                    .context("reading stdin")?;
                d
            } else {
                std::fs::read(&local).with_context(|| format!("cannot read {local}"))?
            };
            c.call("PUT", &remote_path(&id, &remote)?, &data)?;
            Ok(0)
        }
        FilesCommand::Get { id, remote, local } => {
            let data = c.call("GET", &remote_path(&id, &remote)?, &[])?;
            match local {
                Some(p) => std::fs::write(&p, &data)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data)?;
                    out.flush()?;
                }
            }
            Ok(0)
        }
        FilesCommand::Ls { id, path, json } => {
            let data = c.call("GET", &format!("{}?list", remote_path(&id, &path)?), &[])?;
            let v: Value = serde_json::from_slice(&data).context("the server's listing")?;
            if json {
                print_json(&v)?;
                return Ok(0);
            }
            for e in v["entries"].as_array().cloned().unwrap_or_default() {
                let kind = e["type"].as_str().unwrap_or("?");
                let name = e["name"].as_str().unwrap_or("");
                let slash = if kind == "dir" { "/" } else { "" };
                println!("{:>10}  {name}{slash}", e["size"].as_u64().unwrap_or(0));
            }
            Ok(0)
        }
        FilesCommand::Rm {
            id,
            path,
            recursive,
        } => {
            let mut p = remote_path(&id, &path)?;
            if recursive {
                p.push_str("?recursive");
            }
            c.call("DELETE", &p, &[])?;
            Ok(0)
        }
    }
}

/// A tiny HTTP/1.1 client for one server.
struct Client {
    host: String,
    key: String,
}

/// A response: status, headers and a reader of its (de-chunked) body.
struct Response {
    status: u16,
    body: Box<dyn BufRead>,
}

impl Client {
    fn new(server: &Server) -> anyhow::Result<Client> {
        let Some(rest) = server.url.strip_prefix("http://") else {
            bail!(
                "the URL must start with http:// (got {}); TLS is not supported",
                server.url
            );
        };
        let host = rest.trim_end_matches('/').to_string();
        if host.is_empty() || host.contains('/') {
            bail!("the URL must be http://HOST:PORT (got {})", server.url);
        }
        let key = server.api_key.clone().ok_or_else(|| {
            anyhow!("no API key: pass --api-key or set PADDOCK_API_KEY (paddock serve prints one)")
        })?;
        Ok(Client { host, key })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        accept: &str,
    ) -> anyhow::Result<Response> {
        let stream = TcpStream::connect(&self.host).with_context(|| {
            format!(
                "cannot reach paddock serve at http://{} (is it running?)",
                self.host
            )
        })?;
        let mut w = stream.try_clone()?;
        write!(
            w,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Accept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.host,
            self.key,
            body.len()
        )?;
        w.write_all(body)?;
        w.flush()?;
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response from {}: {line:?}", self.host))?;
        let mut chunked = false;
        let mut length: Option<u64> = None;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                break;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "content-length" {
                    length = v.parse().ok();
                }
            }
        }
        let body: Box<dyn BufRead> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            }))
        } else if let Some(n) = length {
            Box::new(BufReader::new(r.take(n)))
        } else {
            Box::new(r)
        };
        Ok(Response { status, body })
    }

    /// A request whose answer is read whole; an error status becomes an
    /// error with the server's message.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut r = self.send(method, path, body, "*/*")?;
        let mut data = Vec::new();
        r.body.read_to_end(&mut data)?;
        if r.status >= 400 {
            bail!("{}", describe_error(r.status, &data));
        }
        Ok(data)
    }

    fn call_json(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let data = self.call(method, path, &body)?;
        if data.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&data).context("the server's answer is not JSON")
    }

    /// POSTs with `Accept: text/event-stream`, writes `stdout`/`stderr`
    /// events to ours as they come, and returns the `result` event.
    fn stream(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut r = self.send(
            "POST",
            path,
            body.to_string().as_bytes(),
            "text/event-stream",
        )?;
        if r.status >= 400 {
            let mut data = Vec::new();
            r.body.read_to_end(&mut data)?;
            bail!("{}", describe_error(r.status, &data));
        }
        let (mut event, mut data) = (String::new(), String::new());
        let mut line = String::new();
        loop {
            line.clear();
            if r.body.read_line(&mut line)? == 0 {
                bail!("the server closed the stream before the result");
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = l.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if l.is_empty() && !data.is_empty() {
                let v: Value = serde_json::from_str(&data).context("a stream event")?;
                data.clear();
                match event.as_str() {
                    "stdout" => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(v["data"].as_str().unwrap_or("").as_bytes())?;
                        out.flush()?;
                    }
                    "stderr" => {
                        let mut err = std::io::stderr().lock();
                        err.write_all(v["data"].as_str().unwrap_or("").as_bytes())?;
                        err.flush()?;
                    }
                    "result" => return Ok(v),
                    "error" => bail!(
                        "{} ({})",
                        v["error"]["message"].as_str().unwrap_or("error"),
                        v["error"]["code"].as_str().unwrap_or("error")
                    ),
                    _ => {}
                }
            }
        }
    }
}

pub(crate) fn describe_error(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["error"]["message"].is_string() => format!(
            "{} ({status} {})",
            v["error"]["message"].as_str().unwrap_or(""),
            v["error"]["code"].as_str().unwrap_or("error")
        ),
        _ => format!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(body).trim()
        ),
    }
}

/// Reads a chunked body.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF after the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {size:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}
