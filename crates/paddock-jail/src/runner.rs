//! Run one program in a fresh sandbox to completion: capture both output
//! streams concurrently (with a per-stream limit), enforce the wall-clock
//! limit from outside, honour a cancellation fd, and produce the contract's
//! [`RunResult`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use paddock_init::ReportKind;
use paddock_types::{RunResult, SandboxSpec, Status};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::{JailError, Sandbox, Stdio};

/// How to run.
#[derive(Debug)]
pub struct RunOptions<'a> {
    /// Wall-clock limit, from sandbox creation.
    pub timeout: Duration,
    /// Bytes kept per stream; the rest is read and dropped.
    pub output_limit: usize,
    /// Also copy output (up to the limit) to our own stdout/stderr as it comes.
    pub passthrough: bool,
    /// The program's stdin (`None`: empty).
    pub stdin: Option<OwnedFd>,
    /// A signalfd (or any fd) whose readability means "stop now".
    pub cancel: Option<BorrowedFd<'a>>,
}

/// What [`run`] produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The result object.
    pub result: RunResult,
    /// The signal that cancelled the run: the one read from `cancel`, or
    /// `SIGPIPE` when our own stdout/stderr went away during passthrough.
    pub cancelled_by: Option<i32>,
}

struct Stream {
    fd: Option<OwnedFd>,
    kept: Vec<u8>,
    truncated: bool,
    limit: usize,
    echo: Option<i32>,
    /// Our own end of the echo went away (e.g. `paddock run … | head`).
    broken: bool,
}

impl Stream {
    fn new(fd: Option<OwnedFd>, limit: usize, echo: Option<i32>) -> Self {
        Stream {
            fd,
            kept: Vec::new(),
            truncated: false,
            limit,
            echo,
            broken: false,
        }
    }

    /// Reads what is there; closes the stream at EOF.
    fn pump(&mut self, buf: &mut [u8]) -> Result<(), JailError> {
        let Some(fd) = &self.fd else { return Ok(()) };
        let n = match paddock_sys::read(fd.as_raw_fd(), buf) {
            Ok(n) => n,
            Err(paddock_sys::Errno::AGAIN) => return Ok(()),
            Err(e) => return Err(JailError::host("read sandbox output", e.into())),
        };
        if n == 0 {
            self.fd = None;
            return Ok(());
        }
        let room = self.limit.saturating_sub(self.kept.len());
        let keep = n.min(room);
        if keep < n {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&buf[..keep]);
        if let Some(out) = self.echo
            && keep > 0
            && paddock_sys::write_all(out, &buf[..keep]).is_err()
        {
            // Nobody reads our output any more: the run ends, as a shell
            // pipeline's writer would end by SIGPIPE.
            self.echo = None;
            self.broken = true;
        }
        Ok(())
    }
}

/// Runs `spec` to completion.
pub fn run(spec: &SandboxSpec, opts: RunOptions<'_>) -> Result<RunOutcome, JailError> {
    let mut sandbox = Sandbox::spawn(
        spec,
        Stdio {
            stdin: opts.stdin,
            capture: true,
            channel: None,
            lean_init: false,
        },
    )?;
    let started = sandbox.started();
    let deadline = started + opts.timeout;
    let mut out = Stream::new(
        sandbox.take_stdout(),
        opts.output_limit,
        opts.passthrough.then_some(1),
    );
    let mut err = Stream::new(
        sandbox.take_stderr(),
        opts.output_limit,
        opts.passthrough.then_some(2),
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended: Option<(ReportKind, i32)> = None;
    // Figures taken when the program's end is reported, while init is still
    // ending what it left behind and exiting (done in parallel, not after).
    let mut stats_at_end = None;
    let mut ended_at: Option<Instant> = None;
    let mut failure: Option<JailError> = None;
    let mut status_open = true;
    let mut timed_out = false;
    let mut cancelled_by = None;

    while status_open || out.fd.is_some() || err.fd.is_some() {
        let now = Instant::now();
        if !timed_out && ended.is_none() && cancelled_by.is_none() && now >= deadline {
            timed_out = true;
            ended_at = Some(now);
            sandbox.kill()?;
        }
        let wait = if timed_out || ended.is_some() || cancelled_by.is_some() {
            // Only draining is left; the sandbox is dead or dying.
            Duration::from_secs(5)
        } else {
            deadline.saturating_duration_since(now)
        };
        let (ready_status, ready_out, ready_err, ready_cancel) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
            let mut slots = [usize::MAX; 4];
            let sources: [Option<BorrowedFd<'_>>; 4] = [
                status_open.then(|| sandbox.status_fd()),
                out.fd.as_ref().map(|f| f.as_fd()),
                err.fd.as_ref().map(|f| f.as_fd()),
                if cancelled_by.is_none() {
                    opts.cancel
                } else {
                    None
                },
            ];
            for (i, src) in sources.iter().enumerate() {
                if let Some(fd) = src {
                    slots[i] = fds.len();
                    fds.push(PollFd::from_borrowed_fd(*fd, PollFlags::IN));
                }
            }
            let ts = Timespec::try_from(wait).unwrap_or(Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            });
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(JailError::host("poll", e.into())),
            }
            let ready = |i: usize| slots[i] != usize::MAX && !fds[slots[i]].revents().is_empty();
            (ready(0), ready(1), ready(2), ready(3))
        };
        if ready_out {
            out.pump(&mut buf)?;
        }
        if ready_err {
            err.pump(&mut buf)?;
        }
        if (out.broken || err.broken) && cancelled_by.is_none() {
            cancelled_by = Some(libc::SIGPIPE);
            ended_at.get_or_insert_with(Instant::now);
            sandbox.kill()?;
        }
        if ready_cancel
            && let Some(fd) = opts.cancel
            && let Ok(sig) = paddock_sys::signalfd_read(fd)
        {
            cancelled_by = Some(sig.unwrap_or(libc::SIGTERM));
            ended_at.get_or_insert_with(Instant::now);
            sandbox.kill()?;
        }
        if ready_status {
            match sandbox.next_report()? {
                None => status_open = false,
                Some(r) => match r.kind {
                    ReportKind::Started => {}
                    ReportKind::Exited | ReportKind::Signaled => {
                        ended = Some((r.kind, r.a));
                        ended_at.get_or_insert_with(Instant::now);
                        stats_at_end = sandbox.stats().ok();
                    }
                    ReportKind::ExecFailed => {
                        let errno = paddock_sys::Errno::from_raw_os_error(r.a);
                        let program = spec.argv.first().cloned().unwrap_or_default();
                        failure.get_or_insert(if errno == paddock_sys::Errno::NOENT {
                            JailError::ProgramNotFound(program)
                        } else {
                            JailError::NotExecutable { program, errno }
                        });
                    }
                    ReportKind::SetupFailed => {
                        failure.get_or_insert(JailError::Setup {
                            step: sandbox.describe_step(r.a as u32),
                            errno: paddock_sys::Errno::from_raw_os_error(r.b),
                        });
                    }
                },
            }
        }
    }
    let end = ended_at.unwrap_or_else(Instant::now);
    sandbox.reap()?;
    let stats = match stats_at_end {
        Some(stats) => stats,
        None => sandbox.stats()?,
    };
    sandbox.teardown()?;
    if let Some(f) = failure {
        return Err(f);
    }
    let (status, exit_code, signal) = match (timed_out, ended) {
        (true, _) => (Status::Timeout, None, None),
        (false, Some((ReportKind::Exited, code))) if stats.oom_kills > 0 && code != 0 => {
            (Status::Oom, Some(code), None)
        }
        (false, Some((ReportKind::Exited, code))) => (Status::Exited, Some(code), None),
        (false, Some((_, sig))) if stats.oom_kills > 0 => (Status::Oom, None, Some(sig)),
        (false, Some((_, sig))) => (Status::Signaled, None, Some(sig)),
        (false, None) if cancelled_by.is_some() => (Status::Signaled, None, Some(libc::SIGKILL)),
        (false, None) if stats.oom_kills > 0 => (Status::Oom, None, Some(libc::SIGKILL)),
        (false, None) => {
            return Err(JailError::InitDied(
                "init exited without reporting the program's end".into(),
            ));
        }
    };
    let result = RunResult {
        status,
        exit_code,
        signal,
        stdout: String::from_utf8_lossy(&out.kept).into_owned(),
        stderr: String::from_utf8_lossy(&err.kept).into_owned(),
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        wall_time_ms: end.duration_since(started).as_secs_f64() * 1000.0,
        cpu_time_ms: stats.cpu_time_ns.unwrap_or(0) as f64 / 1e6,
        memory_peak_bytes: stats.memory_peak_bytes.unwrap_or(0),
    };
    Ok(RunOutcome {
        result,
        cancelled_by,
    })
}
