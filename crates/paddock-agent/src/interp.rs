//! Code-context interpreters: one long-lived `python3`, `node` or `bash`
//! process per code context, so that variables, functions and imports
//! persist between runs like in a notebook.
//!
//! # The interpreter process
//!
//! [`Interpreter::spawn`] starts the interpreter (`/usr/bin/python3 -u -c
//! DRIVER`, `/usr/bin/node --expose-internals -e DRIVER`, or `/usr/bin/bash
//! --noprofile --norc --noediting -i` fed the driver on its stdin) with:
//!
//! - exactly the given environment and working directory;
//! - stdout and stderr on two pipes that the agent reads while code runs
//!   ([`Stream`] chunks, as they come) and reads and discards between runs;
//! - stdin `/dev/null` (bash: see below);
//! - its own process group, of which it is the leader: [`Signaller`] sends
//!   `SIGINT`/`SIGKILL` to the whole group, so a `sleep` started by the code
//!   is interrupted with it;
//! - fd 3: one end of a `socketpair(AF_UNIX, SOCK_STREAM)`, the control
//!   channel. User code never writes to it: its output goes to fds 1 and 2.
//!   Each driver makes fd 3 unreachable for programs the code starts: Python
//!   sets it close-on-exec, node already opens it close-on-exec, bash closes
//!   it around each cell (`eval ... 3>&-`, bash keeps its saved copy
//!   close-on-exec);
//! - no other fd of the agent: every fd above 3 is marked close-on-exec in
//!   the child before `exec`, even one the agent forgot to;
//! - `/proc/self/oom_score_adj` = 500 (best effort), so the OOM killer picks
//!   an interpreter before the agent.
//!
//! The agent watches the process through a pidfd. When the interpreter ends,
//! the rest of its process group is killed (background jobs of a dead shell
//! do not outlive it) and the process is reaped; the agent must therefore not
//! reap with `waitpid(-1)` itself. Dropping an [`Interpreter`] kills its
//! group too.
//!
//! # Driver protocol (python and javascript)
//!
//! Frames in both directions are a `u32` little-endian length followed by
//! that many bytes of UTF-8 JSON (at most [`MAX_FRAME`]). Every object has a
//! tag `t`:
//!
//! | direction | frame | meaning |
//! |---|---|---|
//! | driver → agent | `{"t":"hello"}` | driver ready (sent once, first) |
//! | agent → driver | `{"t":"run","id":N,"code":"..."}` | run a cell |
//! | driver → agent | `{"t":"started","id":N}` | the cell is about to run; `SIGINT` now interrupts it |
//! | driver → agent | `{"t":"reply","id":N,"result":null\|"...","error":null\|{"name","value","traceback"}}` | the cell ended; all its output was written before this frame |
//! | agent → driver | `{"t":"complete","id":N,"code":"..."}` | is this a complete cell? |
//! | driver → agent | `{"t":"completeness","id":N,"status":"complete"\|"incomplete"\|"invalid"}` | answer |
//!
//! Requests are handled one at a time in order. Ids increase; a reply whose
//! id is not the one awaited (the run of a cancelled `run` future) is
//! discarded, and the next request first waits for the outstanding one.
//!
//! # Driver protocol (bash)
//!
//! Bash runs *interactively* (`-i`, prompts empty, no history, no job
//! control), because only an interactive shell abandons the rest of a
//! command list on `SIGINT` (the cell ends with status 130, even in a
//! pure-bash loop) and survives. Its stdin is a second socket that carries
//! command lines from the agent; the control socket at fd 3 carries code
//! to bash and short text lines back:
//!
//! - start: the agent writes `drivers/bash.sh` to stdin; bash answers `H\n`;
//! - run: the agent writes the code + NUL to fd 3 and the line
//!   `\__paddock_begin N; \builtin eval "$__paddock_code" </dev/null 3>&-`
//!   to stdin. `__paddock_begin` reads the code, answers `S N\n`, and
//!   restores `$?` of the previous cell. The `eval` runs at top level, so
//!   variables (also `declare`d ones), functions, `cd` and traps persist.
//!   `PROMPT_COMMAND` then answers `R N STATUS\n`, also after an
//!   interrupted cell; a non-zero status becomes the error
//!   `{name: "ExitStatus", value: "STATUS", traceback: ""}`;
//! - complete: code + NUL to fd 3, `\__paddock_complete N` to stdin; bash
//!   runs `bash -n` on it and answers `C N complete|incomplete|invalid\n`.
//!
//! When a command of the cell dies of `SIGINT`, bash prints a newline on
//! stdout (as it would after `^C` in a terminal).
//! Code for bash may not contain NUL bytes ([`InterpError::InvalidCode`]).
//! `exit`, `exec` or `set -e` followed by a failure end the shell like in a
//! terminal (the run fails with [`InterpError::Died`]).
//!
//! # Interrupts
//!
//! [`Signaller::interrupt`] sends `SIGINT` to the process group only while a
//! cell runs (between `started` and the reply). Called earlier during a
//! `run` (while it waits for the driver's start-up or sends the request),
//! it is kept and delivered when `started` arrives; between runs it does
//! nothing. The drivers also ignore a `SIGINT` that reaches them outside a
//! cell: Python raises `KeyboardInterrupt` only while user code runs; node
//! keeps a `SIGINT` listener (which ends a pending top-level `await`) and
//! runs synchronous code with `breakOnSigint`; bash is interactive. Code
//! that ignores `SIGINT` (a Python `except: pass` loop, a node loop after
//! an `await`, a bash `trap '' INT`) is the caller's grace-then-kill case.
//!
//! # What a cell returns
//!
//! | | result | error |
//! |---|---|---|
//! | python | `repr()` of the last statement if it is an expression and not `None` | `{name: type(e).__name__, value: str(e), traceback}`; `SystemExit` is an error too, the context survives |
//! | javascript | `util.inspect()` of the completion value unless `undefined`; promises are awaited | `{name: e.name, value: e.message, traceback: e.stack}`; a thrown non-error: `{name: "Error", value: inspect(v)}`; `Interrupted` |
//! | bash | always `None` | `ExitStatus` with the status, empty traceback |
//!
//! Tracebacks name the cell `<cell>` with line numbers of the cell and
//! without the driver's frames. Python cells run in the dict of a fresh
//! `__main__` module, may use top-level `await` (a persistent asyncio loop),
//! and import modules from the working directory. JavaScript cells run with
//! `vm.runInThisContext`, so top-level declarations persist as in the node
//! REPL; `require` is a global; a cell with top-level `await` is rewritten
//! into an async function by node's REPL code (`internal/repl/await`), or,
//! where that fails, by the driver's own small rewrite (see the comment in
//! `drivers/javascript.js` for the forms it supports).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::SendFlags;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// The Python driver (run with `python3 -u -c`).
const PYTHON_DRIVER: &str = include_str!("drivers/python.py");
/// The JavaScript driver (run with `node -e`).
const JAVASCRIPT_DRIVER: &str = include_str!("drivers/javascript.js");
/// The bash driver (written to an interactive bash's stdin).
const BASH_DRIVER: &str = include_str!("drivers/bash.sh");

/// Largest control frame accepted or sent (64 MiB). The drivers cut a
/// result, an error message or a traceback at 2 Mi characters each (with a
/// note saying how much was cut), which keeps any reply below this.
pub const MAX_FRAME: usize = 64 << 20;
/// Longest bash control line.
const MAX_LINE: usize = 4096;
/// Size of the buffer output and control bytes are read into.
const READ_CHUNK: usize = 64 << 10;
/// The child's end of the control socket is moved to at least this fd
/// before the fork, so that setting up fds 0–2 cannot clobber it.
const CHILD_FD_MIN: RawFd = 10;
/// The fd the drivers expect the control socket at.
const CONTROL_FD: RawFd = 3;
/// How long an interpreter that closed its control socket has to exit
/// before it is declared broken.
const CLOSED_GRACE: Duration = Duration::from_secs(2);

/// Every accepted language name, canonical spelling.
pub const LANGUAGES: &[&str] = &["python", "javascript", "bash"];

/// A code-context language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3 (`/usr/bin/python3`).
    #[serde(alias = "py", alias = "python3")]
    Python,
    /// JavaScript on node (`/usr/bin/node`).
    #[serde(alias = "js", alias = "node")]
    Javascript,
    /// bash (`/usr/bin/bash`).
    #[serde(alias = "sh")]
    Bash,
}

impl Language {
    /// The canonical name: `python`, `javascript` or `bash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Bash => "bash",
        }
    }

    /// The interpreter binary that is executed.
    pub fn program(self) -> &'static str {
        match self {
            Language::Python => "/usr/bin/python3",
            Language::Javascript => "/usr/bin/node",
            Language::Bash => "/usr/bin/bash",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            // -u: unbuffered stdout/stderr, so output is in the pipe before
            // the reply. Not -I: the cwd must stay on sys.path for imports.
            Language::Python => &["-u", "-c", PYTHON_DRIVER],
            // --expose-internals: the driver uses node's own REPL rewrite
            // for top-level await (internal/repl/await).
            Language::Javascript => &["--expose-internals", "-e", JAVASCRIPT_DRIVER],
            Language::Bash => &["--noprofile", "--norc", "--noediting", "-i"],
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A language name that is not one of [`LANGUAGES`] (or their aliases).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown language {:?} (known: python, javascript, bash)",
    shorten(given, 64)
)]
pub struct UnknownLanguage {
    /// The name as given.
    pub given: String,
}

fn shorten(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl FromStr for Language {
    type Err = UnknownLanguage;

    /// Accepts `python`/`py`/`python3`, `javascript`/`js`/`node`,
    /// `bash`/`sh`, in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "py" | "python3" => Ok(Language::Python),
            "javascript" | "js" | "node" => Ok(Language::Javascript),
            "bash" | "sh" => Ok(Language::Bash),
            _ => Err(UnknownLanguage {
                given: s.to_string(),
            }),
        }
    }
}

/// An error raised by a cell, shaped like Jupyter's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ErrorInfo {
    /// Exception class: `ZeroDivisionError`, `TypeError`, `KeyboardInterrupt`,
    /// `Interrupted` (javascript), `ExitStatus` (bash).
    pub name: String,
    /// The message (`str(e)`, `e.message`; the status for bash).
    pub value: String,
    /// The formatted traceback, with the driver's frames removed and line
    /// numbers relative to the cell (file name `<cell>`); empty for bash.
    pub traceback: String,
}

/// What a finished run returned.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunReply {
    /// `repr()` / `util.inspect()` of the cell's last expression, if it had
    /// one and it was not `None` / `undefined`. Always `None` for bash.
    pub result: Option<String>,
    /// The error the cell ended with, if any.
    pub error: Option<ErrorInfo>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

/// Whether some code is a whole cell (see [`Interpreter::complete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Completeness {
    /// It can run as it is.
    Complete,
    /// It needs more lines (an open block, bracket, string or here-doc).
    Incomplete,
    /// More lines cannot fix it: a syntax error.
    Invalid,
}

/// How an interpreter process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// It exited with this status. `-1` if the status was lost (someone
    /// else reaped the process).
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match signal_name(s) {
                Some(name) => write!(f, "signal {s} ({name})"),
                None => write!(f, "signal {s}"),
            },
        }
    }
}

/// The name of a Linux signal number (`9` → `SIGKILL`).
pub fn signal_name(sig: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let index = usize::try_from(sig).ok()?.checked_sub(1)?;
    NAMES.get(index).copied()
}

/// Why an interpreter could not be started or could not run something.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// The interpreter could not be started (missing binary, bad working
    /// directory, no Tokio runtime, out of fds or processes).
    #[error("could not start the interpreter: {0}")]
    Spawn(io::Error),
    /// The interpreter process ended before answering; its state is lost.
    #[error("the interpreter ended ({0}); its state is lost")]
    Died(Exit),
    /// The driver sent something that does not follow the protocol, or
    /// closed its control channel. The interpreter is unusable; kill it.
    #[error("the interpreter's driver broke the protocol: {0}")]
    Protocol(String),
    /// Talking to the interpreter failed.
    #[error("I/O error with the interpreter: {0}")]
    Io(io::Error),
    /// The code cannot be sent to this interpreter (too large, or a NUL
    /// byte for bash). Nothing was run; the interpreter is unchanged.
    #[error("{0}")]
    InvalidCode(String),
}

/// What the agent knows about the driver, shared with [`Signaller`]s.
#[derive(Debug)]
struct Shared {
    /// Process group id (= the interpreter's pid).
    pgid: Pid,
    state: Mutex<SigState>,
}

#[derive(Debug, Default)]
struct SigState {
    /// The interpreter was reaped (or is being killed for good): its pid may
    /// be reused, never signal it again.
    reaped: bool,
    phase: Phase,
    /// `interrupt` was called before the running cell's `started`.
    pending_interrupt: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No cell is running (or complete() is being answered).
    #[default]
    Idle,
    /// `run` was called and waits for the driver (start-up, or the answer
    /// to a cancelled request) before it sends its request.
    Queued,
    /// Run request `id` is queued, not started yet.
    Sent(u64),
    /// Run `id` is executing user code.
    Running(u64),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SigState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signal_group(&self, sig: Signal) {
        // ESRCH (all gone) is fine: there is nothing left to signal.
        let _ = rustix::process::kill_process_group(self.pgid, sig);
    }
}

/// A cheap handle (clone it freely) that interrupts or kills an
/// interpreter while a `run` future borrows it.
#[derive(Debug, Clone)]
pub struct Signaller {
    shared: Arc<Shared>,
}

impl Signaller {
    /// Interrupts the running cell: `SIGINT` to the interpreter's process
    /// group. Called during a `run` before its cell started, it is delivered
    /// when the cell starts; called when no `run` is under way, it does
    /// nothing.
    pub fn interrupt(&self) {
        let mut st = self.shared.lock();
        if st.reaped {
            return;
        }
        match st.phase {
            Phase::Running(_) => self.shared.signal_group(Signal::INT),
            Phase::Queued | Phase::Sent(_) => st.pending_interrupt = true,
            Phase::Idle => {}
        }
    }

    /// `SIGKILL` to the interpreter's process group. The pending or next
    /// `run` fails with [`InterpError::Died`].
    pub fn kill(&self) {
        let st = self.shared.lock();
        if !st.reaped {
            self.shared.signal_group(Signal::KILL);
        }
    }
}

/// A message from a driver.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Msg {
    Hello,
    Started {
        id: u64,
    },
    Reply {
        id: u64,
        #[serde(default)]
        result: Option<String>,
        #[serde(default)]
        error: Option<ErrorInfo>,
    },
    Completeness {
        id: u64,
        status: Completeness,
    },
}

/// A request to a python or javascript driver.
#[derive(Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Request<'a> {
    Run { id: u64, code: &'a str },
    Complete { id: u64, code: &'a str },
}

/// Bytes waiting to be written to a non-blocking fd.
#[derive(Debug, Default)]
struct Outbox {
    buf: Vec<u8>,
    pos: usize,
}

impl Outbox {
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.is_empty() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.is_empty() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }
}

/// One interpreter process hosting one code context.
///
/// Must be created and used inside a Tokio runtime (it registers its fds
/// with the runtime's reactor).
pub struct Interpreter {
    lang: Language,
    shared: Arc<Shared>,
    /// Readable once the process has exited (not yet reaped).
    pidfd: AsyncFd<OwnedFd>,
    /// Our end of the control socket (fd 3 in the child).
    ctl: AsyncFd<OwnedFd>,
    /// Bash only: our end of the socket that is bash's stdin.
    cmd: Option<AsyncFd<OwnedFd>>,
    stdout: Option<AsyncFd<OwnedFd>>,
    stderr: Option<AsyncFd<OwnedFd>>,
    ctl_out: Outbox,
    cmd_out: Outbox,
    /// Control bytes received and not yet parsed.
    rbuf: Vec<u8>,
    /// Scratch buffer for reads.
    buf: Box<[u8]>,
    /// The control socket is still open (no EOF, no write error).
    ctl_open: bool,
    /// When the control socket was seen closed.
    ctl_closed_at: Option<tokio::time::Instant>,
    /// The process has exited (pidfd readable); not necessarily reaped.
    dead: bool,
    /// Set once reaped.
    exit: Option<Exit>,
    /// Set when the driver broke the protocol; the control socket is no
    /// longer read.
    broken: Option<String>,
    /// The driver said hello.
    ready: bool,
    /// Id of the request whose answer has not been read yet.
    inflight: Option<u64>,
    next_id: u64,
}

impl fmt::Debug for Interpreter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interpreter")
            .field("lang", &self.lang)
            .field("pid", &self.pid())
            .field("exit", &self.exit)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// What the child does between fork and exec: only async-signal-safe,
/// allocation-free system calls.
fn child_setup(control: RawFd) -> io::Result<()> {
    // dup2 clears close-on-exec on the new fd 3 (control is >= 10, so they
    // differ).
    paddock_sys::dup2(control, CONTROL_FD)?;
    // Nothing else the agent holds may reach the interpreter, even an fd
    // someone forgot to open close-on-exec (the agent's own channel to the
    // host, for one). Marking instead of closing keeps std's exec-error
    // pipe working.
    // SAFETY: close_range takes only integers and touches no memory.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            CONTROL_FD + 1,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        return Err(io::Error::last_os_error());
    }
    // Best effort: prefer interpreters to the agent when memory runs out.
    if let Ok(fd) = rustix::fs::open(
        c"/proc/self/oom_score_adj",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        let _ = rustix::io::write(&fd, b"500");
    }
    Ok(())
}

/// Registers `fd` with the runtime's reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` owns its descriptor until it is dropped, which
    // happens only when the `AsyncFd` drops it, and its `as_raw_fd` always
    // returns that same descriptor.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

fn nonblocking_async(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    register(fd, interest)
}

/// Waits for readability of an optional fd; never resolves for `None`.
async fn readable_opt(fd: Option<&AsyncFd<OwnedFd>>) -> io::Result<AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// Waits for writability of an optional fd; never resolves for `None`.
async fn writable_opt(fd: Option<&AsyncFd<OwnedFd>>) -> io::Result<AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.writable().await,
        None => std::future::pending().await,
    }
}

fn exit_of(status: &WaitIdStatus) -> Exit {
    if let Some(code) = status.exit_status() {
        Exit::Code(code)
    } else if let Some(sig) = status.terminating_signal() {
        Exit::Signal(sig)
    } else {
        Exit::Code(-1)
    }
}

/// Result of reading one output chunk.
enum OutRead {
    Data(usize),
    Again,
    Closed,
}

fn read_output(fd: &OwnedFd, buf: &mut [u8]) -> OutRead {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return OutRead::Closed,
            Ok(n) => return OutRead::Data(n),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return OutRead::Again,
            // Any other error on a pipe we only read: treat as closed.
            Err(_) => return OutRead::Closed,
        }
    }
}

/// Output sink that drops everything (between runs).
fn discard(_: Stream, _: &[u8]) {}

impl Interpreter {
    /// Spawns the interpreter for `lang`: working directory `cwd`, exactly
    /// the environment `env` (nothing inherited), stdin `/dev/null`,
    /// stdout/stderr pipes, its own process group (leader), the control
    /// socket at fd 3, `oom_score_adj` 500. Returns at once; the driver's
    /// start-up (≈ 15–50 ms) overlaps with whatever the caller does next,
    /// and the first [`run`](Self::run) waits for it.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn spawn(
        lang: Language,
        cwd: &Path,
        env: &[(String, String)],
    ) -> Result<Interpreter, InterpError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(InterpError::Spawn(io::Error::other(
                "Interpreter::spawn needs a Tokio runtime",
            )));
        }
        if !cwd.is_dir() {
            return Err(InterpError::Spawn(io::Error::new(
                io::ErrorKind::NotFound,
                format!("working directory {} is not a directory", cwd.display()),
            )));
        }
        let spawn_err = |what: &str, e: io::Error| {
            InterpError::Spawn(io::Error::new(e.kind(), format!("{what}: {e}")))
        };
        let (ctl, low) = StdUnixStream::pair().map_err(|e| spawn_err("control socket", e))?;
        let ctl_child = rustix::io::fcntl_dupfd_cloexec(&low, CHILD_FD_MIN)
            .map_err(|e| spawn_err("control socket", e.into()))?;
        drop(low);
        let child_fd = ctl_child.as_raw_fd();

        let mut command = Command::new(lang.program());
        command
            .args(lang.args())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let cmd_socket = if lang == Language::Bash {
            let (ours, theirs) =
                StdUnixStream::pair().map_err(|e| spawn_err("command socket", e))?;
            command.stdin(Stdio::from(OwnedFd::from(theirs)));
            Some(ours)
        } else {
            command.stdin(Stdio::null());
            None
        };
        // SAFETY: `child_setup` runs between fork and exec and only makes
        // async-signal-safe system calls (dup2, close_range, open, write,
        // close) on plain integers and a static C string: it allocates
        // nothing and takes no lock, so it is sound even if the parent has
        // other threads.
        unsafe {
            command.pre_exec(move || child_setup(child_fd));
        }
        let mut child = command.spawn().map_err(|e| spawn_err(lang.program(), e))?;
        // The child has its copies now.
        drop(command);
        drop(ctl_child);
        // From here on, a failure must not leave the child behind.
        let setup = |child: &mut std::process::Child| -> io::Result<Interpreter> {
            let raw_pid = i32::try_from(child.id()).map_err(io::Error::other)?;
            let pgid = Pid::from_raw(raw_pid).ok_or_else(|| io::Error::other("pid 0"))?;
            let pidfd = rustix::process::pidfd_open(pgid, PidfdFlags::empty())?;
            let out = |fd: Option<OwnedFd>| -> io::Result<AsyncFd<OwnedFd>> {
                let fd = fd.ok_or_else(|| io::Error::other("missing output pipe"))?;
                nonblocking_async(fd, Interest::READABLE)
            };
            let stdout = out(child.stdout.take().map(OwnedFd::from))?;
            let stderr = out(child.stderr.take().map(OwnedFd::from))?;
            let mut cmd_out = Outbox::default();
            let cmd = match cmd_socket {
                Some(sock) => {
                    cmd_out.push(BASH_DRIVER.as_bytes());
                    cmd_out.push(b"\n");
                    Some(nonblocking_async(OwnedFd::from(sock), Interest::WRITABLE)?)
                }
                None => None,
            };
            Ok(Interpreter {
                lang,
                shared: Arc::new(Shared {
                    pgid,
                    state: Mutex::new(SigState::default()),
                }),
                pidfd: register(pidfd, Interest::READABLE)?,
                ctl: nonblocking_async(
                    OwnedFd::from(ctl),
                    Interest::READABLE | Interest::WRITABLE,
                )?,
                cmd,
                stdout: Some(stdout),
                stderr: Some(stderr),
                ctl_out: Outbox::default(),
                cmd_out,
                rbuf: Vec::new(),
                buf: vec![0; READ_CHUNK].into_boxed_slice(),
                ctl_open: true,
                ctl_closed_at: None,
                dead: false,
                exit: None,
                broken: None,
                ready: false,
                inflight: None,
                next_id: 1,
            })
        };
        match setup(&mut child) {
            Ok(interp) => Ok(interp),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(spawn_err("set up the interpreter", e))
            }
        }
    }

    /// The language this interpreter runs.
    pub fn language(&self) -> Language {
        self.lang
    }

    /// The interpreter's pid (also its process group id).
    pub fn pid(&self) -> i32 {
        self.shared.pgid.as_raw_nonzero().get()
    }

    /// A handle that can interrupt or kill the interpreter while a
    /// [`run`](Self::run) future borrows it mutably.
    pub fn signaller(&self) -> Signaller {
        Signaller {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs `code` as one cell. Output chunks go to `on_output` as the
    /// interpreter writes them; every byte written before the driver's
    /// reply has been delivered when this returns. An exception in the code
    /// is an `Ok` reply with `error` set; `Err(Died)` means the process
    /// ended before replying.
    ///
    /// Cancel-safe in the sense that dropping the future leaves the
    /// interpreter consistent: the cell keeps running, and the next call
    /// waits for it to finish (discarding its output and reply) first.
    pub async fn run(
        &mut self,
        code: &str,
        on_output: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<RunReply, InterpError> {
        self.usable()?;
        {
            // From now on an interrupt is meant for this run. (A cancelled
            // run still executing keeps its phase: interrupts go to it.)
            let mut st = self.shared.lock();
            if matches!(st.phase, Phase::Idle | Phase::Queued) {
                st.phase = Phase::Queued;
                st.pending_interrupt = false;
            }
        }
        self.settle().await?;
        let id = self.send_request(true, code)?;
        loop {
            let msg = self.pump(on_output).await?;
            self.bookkeep(&msg);
            if let Msg::Reply {
                id: rid,
                result,
                error,
            } = msg
                && rid == id
            {
                self.drain(on_output);
                return Ok(RunReply { result, error });
            }
        }
    }

    /// Asks the driver whether `code` is a complete cell, for a REPL that
    /// must decide whether to read more lines. Runs nothing.
    pub async fn complete(&mut self, code: &str) -> Result<Completeness, InterpError> {
        self.usable()?;
        self.settle().await?;
        let id = self.send_request(false, code)?;
        let mut sink = discard;
        loop {
            let msg = self.pump(&mut sink).await?;
            self.bookkeep(&msg);
            if let Msg::Completeness { id: rid, status } = msg
                && rid == id
            {
                return Ok(status);
            }
        }
    }

    /// Non-blocking: `Some(exit)` if the process has exited (it is reaped).
    pub fn try_exit(&mut self) -> Option<Exit> {
        if let Some(exit) = self.exit {
            return Some(exit);
        }
        let peek = rustix::process::waitid(
            WaitId::PidFd(self.pidfd.get_ref().as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        );
        match peek {
            Ok(Some(_)) => Some(self.reap()),
            // ECHILD: someone else reaped it; reap() records that.
            Err(Errno::CHILD) => Some(self.reap()),
            _ => None,
        }
    }

    /// Waits until the process exits and returns how (cancel-safe). Output
    /// and control messages arriving meanwhile are read and discarded, so
    /// an idle interpreter never blocks on a full pipe. Meant to be
    /// `select!`ed between runs to notice a death at once.
    pub async fn exited(&mut self) -> Exit {
        let mut sink = discard;
        loop {
            match self.pump(&mut sink).await {
                Ok(msg) => self.bookkeep(&msg),
                Err(InterpError::Died(exit)) => return exit,
                Err(InterpError::Protocol(_)) => {
                    // `broken` is set: the control socket is no longer read.
                }
                Err(_) => {
                    // Reactor trouble (runtime shutting down): do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Kills the process group with `SIGKILL`, reaps the interpreter and
    /// returns how it ended.
    pub async fn kill(mut self) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        {
            let st = self.shared.lock();
            if !st.reaped {
                self.shared.signal_group(Signal::KILL);
            }
        }
        let _ = self.pidfd.readable().await;
        self.reap()
    }

    /// Fails fast when nothing can be sent anymore.
    fn usable(&self) -> Result<(), InterpError> {
        if let Some(exit) = self.exit {
            return Err(InterpError::Died(exit));
        }
        if let Some(why) = &self.broken {
            return Err(InterpError::Protocol(why.clone()));
        }
        Ok(())
    }

    /// Waits for the driver's hello and for the answer to a request left by
    /// a cancelled call, then drops output written since the last run.
    async fn settle(&mut self) -> Result<(), InterpError> {
        let mut sink = discard;
        while !self.ready || self.inflight.is_some() {
            let msg = self.pump(&mut sink).await?;
            self.bookkeep(&msg);
        }
        self.drain(&mut sink);
        Ok(())
    }

    /// Queues a run (`run = true`) or complete request; returns its id.
    fn send_request(&mut self, run: bool, code: &str) -> Result<u64, InterpError> {
        let id = self.next_id;
        match self.lang {
            Language::Bash => {
                if code.contains('\0') {
                    return Err(InterpError::InvalidCode(
                        "bash code cannot contain NUL bytes".into(),
                    ));
                }
                if code.len() > MAX_FRAME {
                    return Err(too_large(code.len()));
                }
                let line = if run {
                    format!(
                        "\\__paddock_begin {id}; \\builtin eval \"$__paddock_code\" </dev/null 3>&-\n"
                    )
                } else {
                    format!("\\__paddock_complete {id}\n")
                };
                self.cmd_out.push(line.as_bytes());
                self.ctl_out.push(code.as_bytes());
                self.ctl_out.push(b"\0");
            }
            Language::Python | Language::Javascript => {
                let request = if run {
                    Request::Run { id, code }
                } else {
                    Request::Complete { id, code }
                };
                let body = serde_json::to_vec(&request)
                    .map_err(|e| InterpError::InvalidCode(format!("cannot encode code: {e}")))?;
                let len = u32::try_from(body.len())
                    .ok()
                    .filter(|&n| n as usize <= MAX_FRAME)
                    .ok_or_else(|| too_large(code.len()))?;
                self.ctl_out.push(&len.to_le_bytes());
                self.ctl_out.push(&body);
            }
        }
        self.next_id += 1;
        self.inflight = Some(id);
        if run {
            let mut st = self.shared.lock();
            if st.phase != Phase::Queued {
                st.pending_interrupt = false;
            }
            st.phase = Phase::Sent(id);
        }
        Ok(id)
    }

    /// Updates what we know from a driver message.
    fn bookkeep(&mut self, msg: &Msg) {
        match *msg {
            Msg::Hello => self.ready = true,
            Msg::Started { id } => {
                let mut st = self.shared.lock();
                if st.phase == Phase::Sent(id) {
                    st.phase = Phase::Running(id);
                    if std::mem::take(&mut st.pending_interrupt) && !st.reaped {
                        self.shared.signal_group(Signal::INT);
                    }
                }
            }
            Msg::Reply { id, .. } | Msg::Completeness { id, .. } => {
                if self.inflight == Some(id) {
                    self.inflight = None;
                }
                let mut st = self.shared.lock();
                if matches!(st.phase, Phase::Sent(x) | Phase::Running(x) if x == id) {
                    st.phase = Phase::Idle;
                    st.pending_interrupt = false;
                }
            }
        }
    }

    /// Marks the protocol as broken and returns the error.
    fn break_protocol(&mut self, why: String) -> InterpError {
        self.broken = Some(why.clone());
        self.rbuf.clear();
        InterpError::Protocol(why)
    }

    /// Takes one complete message out of `rbuf`, if there is one.
    fn parse(&mut self) -> Result<Option<Msg>, InterpError> {
        if self.broken.is_some() {
            return Ok(None);
        }
        match self.lang {
            Language::Bash => {
                let Some(end) = self.rbuf.iter().position(|&b| b == b'\n') else {
                    if self.rbuf.len() > MAX_LINE {
                        return Err(self.break_protocol("control line too long".into()));
                    }
                    return Ok(None);
                };
                let line: Vec<u8> = self.rbuf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                match parse_bash_line(&line) {
                    Some(msg) => Ok(Some(msg)),
                    None => Err(self.break_protocol(format!(
                        "unexpected control line {:?}",
                        shorten(&line, 80)
                    ))),
                }
            }
            Language::Python | Language::Javascript => {
                let Some(header) = self.rbuf.first_chunk::<4>() else {
                    return Ok(None);
                };
                let len = u32::from_le_bytes(*header) as usize;
                if len > MAX_FRAME {
                    return Err(self.break_protocol(format!("frame of {len} bytes")));
                }
                if self.rbuf.len() < 4 + len {
                    return Ok(None);
                }
                let parsed = serde_json::from_slice::<Msg>(&self.rbuf[4..4 + len]);
                self.rbuf.drain(..4 + len);
                match parsed {
                    Ok(msg) => Ok(Some(msg)),
                    Err(e) => Err(self.break_protocol(format!("bad frame: {e}"))),
                }
            }
        }
    }

    /// Reads what is immediately available on the control socket.
    fn read_ctl_now(&mut self) {
        while self.ctl_open && self.broken.is_none() {
            match rustix::io::read(self.ctl.get_ref(), &mut self.buf[..]) {
                Ok(0) => {
                    self.ctl_open = false;
                    break;
                }
                Ok(n) => self.rbuf.extend_from_slice(&self.buf[..n]),
                Err(Errno::INTR) => continue,
                Err(_) => break,
            }
            if self.rbuf.len() > MAX_FRAME + 8 {
                break;
            }
        }
    }

    /// Reads whatever output is already in the pipes, without waiting, up
    /// to one pipe's capacity per stream (a background writer cannot keep
    /// us here).
    fn drain(&mut self, sink: &mut (dyn FnMut(Stream, &[u8]) + Send)) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let slot = match stream {
                Stream::Stdout => &mut self.stdout,
                Stream::Stderr => &mut self.stderr,
            };
            let Some(fd) = slot.as_ref() else { continue };
            let cap = rustix::pipe::fcntl_getpipe_size(fd.get_ref()).unwrap_or(1 << 20);
            let mut got = 0;
            while got < cap {
                match read_output(fd.get_ref(), &mut self.buf) {
                    OutRead::Data(n) => {
                        got += n;
                        sink(stream, &self.buf[..n]);
                    }
                    OutRead::Again => break,
                    OutRead::Closed => {
                        *slot = None;
                        break;
                    }
                }
            }
        }
    }

    /// Reaps the exited interpreter after killing what is left of its
    /// process group. Blocks only if the process has not exited yet.
    fn reap(&mut self) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let mut st = self.shared.lock();
        if !st.reaped {
            // The leader is a zombie, so the group id is still ours.
            self.shared.signal_group(Signal::KILL);
        }
        let exit = loop {
            match rustix::process::waitid(
                WaitId::PidFd(self.pidfd.get_ref().as_fd()),
                WaitIdOptions::EXITED,
            ) {
                Ok(Some(status)) => break exit_of(&status),
                Err(Errno::INTR) => continue,
                // Reaped by someone else: the status is lost.
                _ => break Exit::Code(-1),
            }
        };
        st.reaped = true;
        st.phase = Phase::Idle;
        drop(st);
        self.exit = Some(exit);
        self.dead = true;
        exit
    }

    /// The event loop: writes queued requests, forwards output to `sink`,
    /// and returns the next control message, or `Died` once the process
    /// has exited (after delivering its last output).
    async fn pump(
        &mut self,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<Msg, InterpError> {
        loop {
            if let Some(msg) = self.parse()? {
                return Ok(msg);
            }
            if let Some(exit) = self.exit {
                return Err(InterpError::Died(exit));
            }
            if self.dead {
                // It has exited: what it wrote is all there is.
                self.read_ctl_now();
                if let Some(msg) = self.parse()? {
                    return Ok(msg);
                }
                self.drain(sink);
                return Err(InterpError::Died(self.reap()));
            }
            let read_ctl = self.ctl_open && self.broken.is_none();
            let write_ctl = self.ctl_open && !self.ctl_out.is_empty();
            let write_cmd = self.cmd.is_some() && !self.cmd_out.is_empty();
            let closed_deadline = self
                .ctl_closed_at
                .filter(|_| self.broken.is_none())
                .map(|t| t + CLOSED_GRACE);
            let mut close_stdout = false;
            let mut close_stderr = false;
            let mut close_cmd = false;
            tokio::select! {
                r = self.pidfd.readable() => {
                    // Stays readable: the guard's readiness is kept.
                    let _guard = r.map_err(InterpError::Io)?;
                    self.dead = true;
                }
                r = self.ctl.readable(), if read_ctl => {
                    let mut guard = r.map_err(InterpError::Io)?;
                    match rustix::io::read(self.ctl.get_ref(), &mut self.buf[..]) {
                        Ok(0) => {
                            self.ctl_open = false;
                            self.ctl_closed_at = Some(tokio::time::Instant::now());
                        }
                        Ok(n) => self.rbuf.extend_from_slice(&self.buf[..n]),
                        Err(Errno::AGAIN) => guard.clear_ready(),
                        Err(Errno::INTR) => {}
                        Err(_) => {
                            // ECONNRESET and the like: the driver's end is gone.
                            self.ctl_open = false;
                            self.ctl_closed_at = Some(tokio::time::Instant::now());
                        }
                    }
                }
                r = self.ctl.writable(), if write_ctl => {
                    let mut guard = r.map_err(InterpError::Io)?;
                    match rustix::net::send(self.ctl.get_ref(), self.ctl_out.pending(), SendFlags::NOSIGNAL) {
                        Ok(n) => self.ctl_out.advance(n),
                        Err(Errno::AGAIN) => guard.clear_ready(),
                        Err(Errno::INTR) => {}
                        Err(_) => {
                            // The driver closed its end: it is dying.
                            self.ctl_out.clear();
                            self.ctl_open = false;
                            self.ctl_closed_at = Some(tokio::time::Instant::now());
                        }
                    }
                }
                r = writable_opt(self.cmd.as_ref()), if write_cmd => {
                    match r {
                        Ok(mut guard) => match rustix::net::send(guard.get_inner(), self.cmd_out.pending(), SendFlags::NOSIGNAL) {
                            Ok(n) => self.cmd_out.advance(n),
                            Err(Errno::AGAIN) => guard.clear_ready(),
                            Err(Errno::INTR) => {}
                            Err(_) => close_cmd = true,
                        },
                        Err(_) => close_cmd = true,
                    }
                }
                r = readable_opt(self.stdout.as_ref()) => {
                    match r {
                        Ok(mut guard) => match read_output(guard.get_inner(), &mut self.buf) {
                            OutRead::Data(n) => sink(Stream::Stdout, &self.buf[..n]),
                            OutRead::Again => guard.clear_ready(),
                            OutRead::Closed => close_stdout = true,
                        },
                        Err(_) => close_stdout = true,
                    }
                }
                r = readable_opt(self.stderr.as_ref()) => {
                    match r {
                        Ok(mut guard) => match read_output(guard.get_inner(), &mut self.buf) {
                            OutRead::Data(n) => sink(Stream::Stderr, &self.buf[..n]),
                            OutRead::Again => guard.clear_ready(),
                            OutRead::Closed => close_stderr = true,
                        },
                        Err(_) => close_stderr = true,
                    }
                }
                _ = tokio::time::sleep_until(closed_deadline.unwrap_or_else(tokio::time::Instant::now)), if closed_deadline.is_some() => {
                    return Err(self.break_protocol("the driver closed its control channel".into()));
                }
            }
            if close_stdout {
                self.stdout = None;
            }
            if close_stderr {
                self.stderr = None;
            }
            if close_cmd {
                self.cmd = None;
                self.cmd_out.clear();
            }
        }
    }
}

fn too_large(len: usize) -> InterpError {
    InterpError::InvalidCode(format!(
        "code of {len} bytes is too large (at most {} MiB)",
        MAX_FRAME >> 20
    ))
}

/// Parses one line from the bash driver (without its newline).
fn parse_bash_line(line: &str) -> Option<Msg> {
    let mut words = line.split(' ');
    let kind = words.next()?;
    let mut id = || words.next()?.parse::<u64>().ok();
    let msg = match kind {
        "H" => Msg::Hello,
        "S" => Msg::Started { id: id()? },
        "R" => {
            let rid = id()?;
            let status: i32 = words.next()?.parse().ok()?;
            Msg::Reply {
                id: rid,
                result: None,
                error: (status != 0).then(|| ErrorInfo {
                    name: "ExitStatus".into(),
                    value: status.to_string(),
                    traceback: String::new(),
                }),
            }
        }
        "C" => {
            let rid = id()?;
            let status = match words.next()? {
                "complete" => Completeness::Complete,
                "incomplete" => Completeness::Incomplete,
                "invalid" => Completeness::Invalid,
                _ => return None,
            };
            Msg::Completeness { id: rid, status }
        }
        _ => return None,
    };
    words.next().is_none().then_some(msg)
}

impl Drop for Interpreter {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        {
            let mut st = self.shared.lock();
            if st.reaped {
                return;
            }
            self.shared.signal_group(Signal::KILL);
            // No signal may follow: the pid can be reused once reaped below
            // or in the background.
            st.reaped = true;
        }
        let pidfd = self.pidfd.get_ref();
        if let Ok(Some(_)) = rustix::process::waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            return;
        }
        // Not gone yet (SIGKILL takes a moment): reap it in the background
        // rather than block the runtime's thread.
        if let Ok(handle) = tokio::runtime::Handle::try_current()
            && let Ok(fd) = pidfd.try_clone()
        {
            handle.spawn(async move {
                if let Ok(fd) = register(fd, Interest::READABLE) {
                    let _ = fd.readable().await;
                    let _ = rustix::process::waitid(
                        WaitId::PidFd(fd.get_ref().as_fd()),
                        WaitIdOptions::EXITED,
                    );
                }
            });
            return;
        }
        let _ = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_names() {
        for (s, l) in [
            ("python", Language::Python),
            ("py", Language::Python),
            ("Python3", Language::Python),
            ("javascript", Language::Javascript),
            ("js", Language::Javascript),
            ("node", Language::Javascript),
            ("bash", Language::Bash),
            ("sh", Language::Bash),
        ] {
            assert_eq!(s.parse::<Language>(), Ok(l), "{s}");
        }
        for name in LANGUAGES {
            assert_eq!(
                name.parse::<Language>().map(|l| l.to_string()).as_deref(),
                Ok(*name)
            );
        }
        let err = "ruby".parse::<Language>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown language "ruby" (known: python, javascript, bash)"#
        );
        let long = "x".repeat(1000);
        assert!(long.parse::<Language>().unwrap_err().to_string().len() < 150);
        assert_eq!(
            serde_json::from_str::<Language>(r#""js""#).unwrap(),
            Language::Javascript
        );
    }

    #[test]
    fn exit_display() {
        assert_eq!(Exit::Code(1).to_string(), "exit code 1");
        assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(2).to_string(), "signal 2 (SIGINT)");
        assert_eq!(Exit::Signal(64).to_string(), "signal 64");
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(31), Some("SIGSYS"));
    }

    #[test]
    fn bash_lines() {
        assert!(matches!(parse_bash_line("H"), Some(Msg::Hello)));
        assert!(matches!(
            parse_bash_line("S 7"),
            Some(Msg::Started { id: 7 })
        ));
        match parse_bash_line("R 7 130") {
            Some(Msg::Reply {
                id: 7,
                result: None,
                error: Some(e),
            }) => {
                assert_eq!(e.name, "ExitStatus");
                assert_eq!(e.value, "130");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_bash_line("R 8 0"),
            Some(Msg::Reply {
                id: 8,
                error: None,
                ..
            })
        ));
        assert!(matches!(
            parse_bash_line("C 9 incomplete"),
            Some(Msg::Completeness {
                id: 9,
                status: Completeness::Incomplete
            })
        ));
        for bad in [
            "",
            "R",
            "R x 1",
            "R 1",
            "R 1 2 3",
            "C 1 maybe",
            "Z 1",
            "S -1",
        ] {
            assert!(parse_bash_line(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn frames_decode() {
        let msg: Msg = serde_json::from_str(
            r#"{"t":"reply","id":3,"result":"2","error":{"name":"E","value":"v","traceback":"t"}}"#,
        )
        .unwrap();
        assert!(
            matches!(msg, Msg::Reply { id: 3, result: Some(ref r), error: Some(_) } if r == "2")
        );
        let req = serde_json::to_string(&Request::Run { id: 1, code: "1+1" }).unwrap();
        assert_eq!(req, r#"{"t":"run","id":1,"code":"1+1"}"#);
        let c = serde_json::to_string(&Completeness::Incomplete).unwrap();
        assert_eq!(c, r#""incomplete""#);
    }
}
