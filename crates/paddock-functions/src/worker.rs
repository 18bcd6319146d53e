//! The worker process: `paddock fn-worker`, run by the [`crate::pool`]
//! inside a sandbox of the isolation core, talking to the host over the
//! channel at fd 3.
//!
//! Start-up, in order:
//!
//! 1. take fd 3 (the channel) and open `/proc/self/statm` (for its RSS);
//! 2. create the engine and warm it up: one run through every path (JSON,
//!    Date and the time zone, RegExp, console, an out-of-memory error, a
//!    timeout) so that everything that needs the filesystem or a one-time
//!    syscall has done so;
//! 3. apply the seccomp allow-list of [`filter`] (on top of the jail's own
//!    deny-list): from here on the process can read and write its channel,
//!    write to stderr, read its statm, manage memory (never executable),
//!    read clocks and exit; any other syscall kills it (`SIGSYS`);
//! 4. say "ready", then serve requests until the host closes the channel.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::engine::{BatchMode, Engine, Options};
use crate::protocol::{Reply, Request, read_frame, write_frame};

/// The channel's fd inside the sandbox.
pub const CHANNEL_FD: RawFd = 3;

/// Largest request frame a worker accepts (code + inputs + header).
pub(crate) const MAX_REQUEST: usize = 256 << 20;

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// fd 3 is not open: not started by a pool.
    #[error("no channel at fd 3 (this subcommand is started by paddock itself): {0}")]
    NoChannel(paddock_sys::Errno),
    /// Talking to the host failed.
    #[error("channel: {0}")]
    Channel(#[from] std::io::Error),
    /// The host sent something unreadable.
    #[error("{0}")]
    Protocol(#[from] crate::protocol::ProtocolError),
    /// The engine could not start.
    #[error("{0}")]
    Engine(#[from] crate::engine::EngineInitError),
    /// The filter could not be built or applied.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// Entry point of `paddock fn-worker`; returns the exit status.
pub fn main() -> i32 {
    match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("paddock fn-worker: {e}");
            1
        }
    }
}

fn serve() -> Result<(), WorkerError> {
    let channel = paddock_sys::take_inherited_fd(CHANNEL_FD).map_err(WorkerError::NoChannel)?;
    let mut channel = File::from(channel);
    let statm = File::open("/proc/self/statm")?;
    // SAFETY: sysconf only reads a constant of the system.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut engine = Engine::new()?;
    warm_up(&mut engine);
    let program = filter(channel.as_raw_fd(), statm.as_raw_fd())?;
    seccompiler::apply_filter(&program).map_err(|e| WorkerError::Seccomp(e.to_string()))?;

    let rss = |statm: &File| rss_bytes(statm, page);
    write_frame(
        &mut channel,
        &Reply::Ready {
            rss_bytes: rss(&statm),
        }
        .encode(),
    )?;
    while let Some(payload) = read_frame(&mut channel, MAX_REQUEST)? {
        let request = Request::decode(&payload)?;
        drop(payload);
        let inputs: Vec<&str> = request.inputs.iter().map(String::as_str).collect();
        let results = engine.run_batch_raw(&request.code, &inputs, &request.opts, request.mode);
        let reply = Reply::Results {
            rss_bytes: rss(&statm),
            results,
        };
        write_frame(&mut channel, &reply.encode())?;
    }
    Ok(())
}

/// Resident set size from `/proc/self/statm` (second field, in pages), read
/// with `pread` on the fd opened before the filter.
fn rss_bytes(statm: &File, page: u64) -> u64 {
    let mut buf = [0u8; 128];
    let Ok(n) = rustix::io::pread(statm, &mut buf, 0) else {
        return 0;
    };
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|pages| pages.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Runs every path of the engine once, before the filter.
fn warm_up(engine: &mut Engine) {
    let opts = Options {
        debug: true,
        ..Options::default()
    };
    let code = "const d = new Date(0); console.log(d.toString(), d.getTimezoneOffset(), \
                d.toLocaleString(), Math.random() < 2, /a+b/i.test('AAB'), 'x'.localeCompare('y'), \
                JSON.stringify(new Map([[1, 2]])), [3, 1, 2].sort()); \
                return Promise.resolve(input).then(v => ({v, s: String(Symbol('s')), n: (1.5).toFixed(2)}))";
    let _ = engine.run_batch_raw(code, &["{\"a\":[1,2,3]}"], &opts, BatchMode::Fresh);
    let _ = engine.run_batch_raw(code, &["1", "2"], &opts, BatchMode::SharedContext);
    let small = Options {
        memory_bytes: 2 << 20,
        ..Options::default()
    };
    let _ = engine.run_batch_raw(
        "const a = []; while (true) a.push([a.length]);",
        &["null"],
        &small,
        BatchMode::Fresh,
    );
    let quick = Options {
        timeout: Duration::from_millis(1),
        ..Options::default()
    };
    let _ = engine.run_batch_raw("while (true) {}", &["null"], &quick, BatchMode::Fresh);
    let _ = engine.run_batch_raw("syntax error (", &["null"], &quick, BatchMode::Fresh);
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, WorkerError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| WorkerError::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, WorkerError> {
    SeccompRule::new(conditions).map_err(|e| WorkerError::Seccomp(e.to_string()))
}

/// The syscalls a worker may make once started, and on what arguments.
/// Anything else kills the process.
///
/// | syscall | allowed when | why |
/// |---|---|---|
/// | `read` | fd is the channel | requests |
/// | `write` | fd is the channel or stderr | replies; a last word before dying |
/// | `pread64` | fd is `/proc/self/statm` | its own RSS, for recycling |
/// | `mmap`, `mprotect` | the protection has no `PROT_EXEC` | heap; never executable memory |
/// | `munmap`, `mremap`, `brk`, `madvise` | always | heap |
/// | `futex`, `sched_yield` | always | locks of the standard library |
/// | `clock_gettime`, `gettimeofday`, `time` | always | deadlines and `Date` (normally in the vDSO) |
/// | `getrandom` | always | `Math.random` and hash seeds |
/// | `rt_sigreturn`, `rt_sigprocmask` | always | signal return, `abort` |
/// | `close` | always | dropping the channel at exit |
/// | `exit`, `exit_group` | always | leaving |
pub fn filter(channel: RawFd, statm: RawFd) -> Result<BpfProgram, WorkerError> {
    let fd = |v: RawFd| u64::try_from(v).map_err(|_| WorkerError::Seccomp(format!("bad fd {v}")));
    let no_exec = || -> Result<Vec<SeccompRule>, WorkerError> {
        Ok(vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(
        libc::SYS_read,
        vec![rule(vec![cond(0, SeccompCmpOp::Eq, fd(channel)?)?])?],
    );
    rules.insert(
        libc::SYS_write,
        vec![
            rule(vec![cond(0, SeccompCmpOp::Eq, fd(channel)?)?])?,
            rule(vec![cond(0, SeccompCmpOp::Eq, 2)?])?,
        ],
    );
    rules.insert(
        libc::SYS_pread64,
        vec![rule(vec![cond(0, SeccompCmpOp::Eq, fd(statm)?)?])?],
    );
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);
    for nr in [
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_time,
        libc::SYS_getrandom,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_close,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ] {
        rules.insert(nr, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| WorkerError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| WorkerError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks a child that applies the filter (with fd 3 a pipe and fd 4 a
    /// file for statm), runs `body`, and exits 0; returns how it ended.
    fn in_filtered_child(body: fn()) -> (bool, i32) {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let statm = File::open("/proc/self/statm").expect("statm");
        let program = filter(w.as_raw_fd(), statm.as_raw_fd()).expect("filter");
        // SAFETY: the child only makes raw syscalls (no allocation, no
        // locks) before `_exit`, as required after fork in a threaded test.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: _exit is always safe to call.
                unsafe { libc::_exit(90) };
            }
            body();
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        drop(r);
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFSIGNALED(status) {
            (false, libc::WTERMSIG(status))
        } else {
            (true, libc::WEXITSTATUS(status))
        }
    }

    #[test]
    fn memory_clock_and_exit_are_allowed() {
        let got = in_filtered_child(|| {
            // SAFETY: raw syscalls with valid arguments.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    libc::_exit(91);
                }
                let mut ts: libc::timespec = std::mem::zeroed();
                libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
                libc::munmap(p, 4096);
            }
        });
        assert_eq!(got, (true, 0));
    }

    #[test]
    fn executable_memory_is_refused() {
        let got = in_filtered_child(|| {
            // SAFETY: raw syscall; the filter kills the process.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            }
        });
        assert_eq!(got, (false, libc::SIGSYS));
    }

    #[test]
    fn files_processes_and_sockets_are_refused() {
        for body in [
            (|| {
                // SAFETY: raw syscall; the filter kills the process.
                unsafe {
                    libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0)
                };
            }) as fn(),
            || {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_getpid) };
            },
            || {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
            },
            || {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            },
            || {
                // stdin is not the channel.
                let mut b = [0u8; 1];
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_read, 0, b.as_mut_ptr(), 1) };
            },
            || {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_write, 1, c"x".as_ptr(), 1) };
            },
        ] {
            assert_eq!(in_filtered_child(body), (false, libc::SIGSYS));
        }
    }
}
