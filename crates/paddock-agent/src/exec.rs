//! `exec`: one command in the sandbox, output streamed as it comes.
//!
//! The command runs in its own process group; a timeout or a cancel kills
//! the group. The agent waits with `wait4` on a pidfd (never `waitpid(-1)`,
//! which would steal the exit statuses of the interpreters), which also
//! gives the command's CPU time and peak RSS.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_sys::ExitKind;
use paddock_types::Status;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{Notify, mpsc};

use crate::proto::{AgentError, ErrorKind, ExecReply, ExecRequest, Kind};
use crate::server::Output;

/// Where commands and interpreters start when the caller names no directory.
pub const DEFAULT_CWD: &str = "/home/user";

/// The environment to use: the caller's, or the agent's own (the sandbox's
/// environment, from its spec).
pub(crate) fn environment(env: Option<Vec<(String, String)>>) -> Vec<(String, String)> {
    env.unwrap_or_else(|| std::env::vars().collect())
}

fn io_err(what: &str, e: std::io::Error) -> AgentError {
    AgentError::new(ErrorKind::Io, format!("{what}: {e}"))
}

/// Runs `req`; `stdin` carries the data the host streams in.
pub(crate) async fn exec(
    req: ExecRequest,
    stdin: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    cancel: Arc<Notify>,
    out: Output,
) -> Result<ExecReply, AgentError> {
    let Some(program) = req.argv.first() else {
        return Err(AgentError::new(
            ErrorKind::InvalidRequest,
            "no command given",
        ));
    };
    let cwd = req.cwd.as_deref().unwrap_or(DEFAULT_CWD);
    let mut cmd = std::process::Command::new(program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(environment(req.env))
        .process_group(0)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    // The command inherits the agent's working directory, entered here
    // rather than set on `cmd`: std starts a program with `posix_spawn` (no
    // copy of the agent) only without one, because in a static binary it
    // cannot find glibc's `posix_spawn_file_actions_addchdir_np`, and forks
    // instead (~0.1 ms more per command). Every command starts from the
    // agent's one runtime thread, with no await in between, so no other
    // spawn sees this directory by accident. A relative `cwd` starts from
    // the agent's first directory, as it did when the command entered it.
    std::env::set_current_dir(start_dir().join(cwd)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AgentError::new(
            ErrorKind::NotFound,
            format!("working directory {cwd} does not exist"),
        ),
        _ => io_err(&format!("enter the working directory {cwd}"), e),
    })?;
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, e))?;
    let pid = child.id() as i32;
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| io_err("pidfd", std::io::ErrorKind::InvalidData.into()))?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| io_err("pidfd_open", e.into()))?;
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and the same
    // file) until the AsyncFd is dropped.
    let exited = unsafe { AsyncFd::register(pidfd) }
        .map_err(|e| io_err("watch the command", e.into_parts().1))?;

    let feeder = match (child.stdin.take(), stdin) {
        (Some(w), Some(rx)) => Some(tokio::spawn(feed(OwnedFd::from(w), rx))),
        _ => None,
    };
    let mut out_s = Stream::new(child.stdout.take().map(OwnedFd::from), Kind::Stdout)?;
    let mut err_s = Stream::new(child.stderr.take().map(OwnedFd::from), Kind::Stderr)?;
    let limit = req.output_limit;
    let timeout = tokio::time::sleep(Duration::from_millis(req.timeout_ms));
    tokio::pin!(timeout);
    let mut timed_out = false;
    let mut killed = false;
    let mut buf = vec![0u8; 64 << 10];
    let mut buf2 = vec![0u8; 64 << 10];
    let (kind, usage) = loop {
        if let Some(done) = reap(pid)? {
            break done;
        }
        tokio::select! {
            ready = exited.readable() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
            }
            n = read_some(&mut out_s, &mut buf) => out_s.deliver(&buf[..n], limit, &out).await,
            n = read_some(&mut err_s, &mut buf2) => err_s.deliver(&buf2[..n], limit, &out).await,
            _ = &mut timeout, if !killed => {
                timed_out = true;
                killed = true;
                kill_group(pid);
            }
            _ = cancel.notified(), if !killed => {
                killed = true;
                kill_group(pid);
            }
        }
    };
    // What the command wrote before it ended is in the pipes now.
    out_s.drain(&mut buf, limit, &out).await;
    err_s.drain(&mut buf, limit, &out).await;
    if let Some(f) = feeder {
        f.abort();
    }
    if killed && !timed_out {
        return Err(AgentError::new(ErrorKind::Cancelled, "cancelled"));
    }
    let (status, exit_code, signal) = match kind {
        _ if timed_out => (Status::Timeout, None, Some(libc::SIGKILL)),
        ExitKind::Exited(c) => (Status::Exited, Some(c), None),
        ExitKind::Signaled(s) => (Status::Signaled, None, Some(s)),
    };
    let (o, e) = (&out_s, &err_s);
    Ok(ExecReply {
        status,
        exit_code,
        signal,
        stdout_bytes: o.total,
        stderr_bytes: e.total,
        stdout_truncated: o.total > limit,
        stderr_truncated: e.total > limit,
        wall_time_ms: started.elapsed().as_secs_f64() * 1000.0,
        cpu_time_ms: usage.cpu_us as f64 / 1000.0,
        memory_peak_bytes: usage.max_rss_bytes,
    })
}

/// The agent's working directory before any command moved it (the
/// sandbox's working directory).
fn start_dir() -> &'static std::path::Path {
    static START: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    START.get_or_init(|| {
        std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from(DEFAULT_CWD))
    })
}

fn spawn_error(program: &str, e: std::io::Error) -> AgentError {
    match e.kind() {
        std::io::ErrorKind::NotFound => AgentError::new(
            ErrorKind::ProgramNotFound,
            format!("{program}: command not found in the sandbox"),
        ),
        std::io::ErrorKind::PermissionDenied => AgentError::new(
            ErrorKind::NotExecutable,
            format!("{program}: not executable in the sandbox ({e})"),
        ),
        _ => io_err(&format!("start {program}"), e),
    }
}

fn reap(pid: i32) -> Result<Option<(ExitKind, paddock_sys::ChildUsage)>, AgentError> {
    paddock_sys::try_wait_usage(pid).map_err(|e| io_err("wait for the command", e.into()))
}

/// SIGKILL to the command's process group.
fn kill_group(pid: i32) {
    let _ = paddock_sys::kill(-pid, libc::SIGKILL);
}

/// Copies the host's stdin chunks into the command's stdin, then closes it.
async fn feed(w: OwnedFd, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let Ok(mut w) = pipe::Sender::from_owned_fd(w) else {
        return;
    };
    while let Some(chunk) = rx.recv().await {
        if w.write_all(&chunk).await.is_err() {
            // The command closed its stdin; the rest is not wanted.
            return;
        }
    }
}

/// One output pipe of the command.
struct Stream {
    pipe: Option<pipe::Receiver>,
    kind: Kind,
    total: u64,
}

impl Stream {
    fn new(fd: Option<OwnedFd>, kind: Kind) -> Result<Stream, AgentError> {
        let pipe = match fd {
            Some(fd) => {
                Some(pipe::Receiver::from_owned_fd(fd).map_err(|e| io_err("watch the output", e))?)
            }
            None => None,
        };
        Ok(Stream {
            pipe,
            kind,
            total: 0,
        })
    }

    /// Forwards `data` within the limit; an empty read (EOF) closes the pipe.
    async fn deliver(&mut self, data: &[u8], limit: u64, out: &Output) {
        if data.is_empty() {
            self.pipe = None;
            return;
        }
        let room = limit.saturating_sub(self.total);
        self.total += data.len() as u64;
        let keep = (data.len() as u64).min(room) as usize;
        if keep > 0 {
            out.send(self.kind, data[..keep].to_vec()).await;
        }
    }

    /// Reads whatever is buffered, without waiting. (A direct `read` on the
    /// non-blocking fd: tokio's `try_read` answers "would block" until the
    /// reactor has seen the pipe become readable, which may not have
    /// happened yet.)
    async fn drain(&mut self, buf: &mut [u8], limit: u64, out: &Output) {
        while let Some(p) = &self.pipe {
            match rustix::io::read(p, &mut *buf) {
                Ok(n) => self.deliver(&buf[..n], limit, out).await,
                Err(_) => break,
            }
        }
    }
}

/// Reads from a stream that is open; pends forever on a closed one (so a
/// `select!` simply stops polling it). Errors count as EOF.
async fn read_some(s: &mut Stream, buf: &mut [u8]) -> usize {
    match &mut s.pipe {
        Some(p) => p.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}
