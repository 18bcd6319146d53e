//! A persistent sandbox: created once, then talked to many times.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use paddock_agent::proto::{ExecReply, ExecRequest as WireExec, Kind, Pong, Request};
use paddock_init::{Report, ReportKind, report::REPORT_LEN};
use paddock_types::{RunResult, SandboxSpec, Status};
use tokio::io::AsyncReadExt;

use crate::channel::{Call, Channel, Chunk, Event, decode};
use crate::{Death, SandboxError};

/// How long a new sandbox's agent may take to answer its first ping.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest stdin an `exec` may send (it is buffered inside the sandbox).
pub const MAX_STDIN: usize = 64 << 20;

/// How to make a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Limits, mounts, network, environment (its `argv` is ignored: the
    /// sandbox runs the agent).
    pub spec: SandboxSpec,
    /// The paddock binary to run inside as the agent (default: this
    /// process's own executable).
    pub agent_exe: PathBuf,
}

impl SandboxConfig {
    /// A config for `spec`, running this process's own binary as the agent.
    pub fn new(spec: SandboxSpec) -> Result<SandboxConfig, SandboxError> {
        Ok(SandboxConfig {
            spec,
            agent_exe: std::env::current_exe()?,
        })
    }
}

/// A command to run with [`Sandbox::exec`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory (default `/home/user`).
    pub cwd: Option<String>,
    /// The complete environment (default: the sandbox's).
    pub env: Option<Vec<(String, String)>>,
    /// Bytes for stdin (default: `/dev/null`).
    pub stdin: Option<Vec<u8>>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Bytes kept per output stream.
    pub output_limit: u64,
}

impl ExecRequest {
    /// `argv` with the defaults: 30 s, 1 MiB per stream.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ExecRequest {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: None,
            stdin: None,
            timeout: Duration::from_secs(30),
            output_limit: 1 << 20,
        }
    }
}

/// Handle to a live sandbox. Clones share it; when the last clone is
/// dropped (or [`Sandbox::kill`] is called) everything inside is killed and
/// the cgroup removed.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) channel: Arc<Channel>,
    jail: Mutex<Option<paddock_jail::Sandbox>>,
    /// The last report of init (how the agent ended), once known.
    last_report: Arc<Mutex<Option<Report>>>,
    /// The last bytes the agent wrote to stdout/stderr (its diagnostics).
    agent_log: Arc<Mutex<Vec<u8>>>,
    killed: Mutex<bool>,
    pub(crate) spec: SandboxSpec,
    created: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Threads that clone sandboxes.
const SPAWNER_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

static SPAWNERS: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> =
    std::sync::OnceLock::new();

/// Runs `f` (a sandbox's clone) on one of a few threads that live as long as
/// the process. Init's parent-death signal (`PR_SET_PDEATHSIG`) fires when
/// the *thread* that cloned it ends, not the process: a sandbox cloned from
/// tokio's blocking pool was killed when that thread retired after 10 s
/// without work.
async fn on_spawner_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let jobs = SPAWNERS.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..SPAWNER_THREADS {
            let queue = queue.clone();
            let _ = std::thread::Builder::new()
                .name(format!("paddock-spawn-{i}"))
                .spawn(move || {
                    loop {
                        let job = lock(&queue).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
        }
        Mutex::new(jobs)
    });
    let gone = || SandboxError::Io(std::io::Error::other("no thread to create the sandbox on"));
    lock(jobs).send(job).map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(mut jail) = lock(&self.jail).take() {
            let _ = jail.teardown();
        }
    }
}

impl Sandbox {
    /// Creates a sandbox and waits until its agent answers.
    pub async fn create(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let (host_end, agent_end) = std::os::unix::net::UnixStream::pair()?;
        let mut spec = config.spec.clone();
        paddock_jail::reexec::reexec(&mut spec, &config.agent_exe, &["agent"]);
        let jail = on_spawner_thread(move || {
            paddock_jail::Sandbox::spawn(
                &spec,
                paddock_jail::Stdio {
                    stdin: None,
                    capture: true,
                    channel: Some(OwnedFd::from(agent_end)),
                    lean_init: true,
                },
            )
        })
        .await??;
        let mut jail = jail;
        let status = jail.status_fd().try_clone_to_owned()?;
        let agent_log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [jail.take_stdout(), jail.take_stderr()]
            .into_iter()
            .flatten()
        {
            tokio::spawn(keep_log(pipe, agent_log.clone()));
        }
        host_end.set_nonblocking(true)?;
        let channel = Channel::start(tokio::net::UnixStream::from_std(host_end)?);
        let last_report = Arc::new(Mutex::new(None));
        tokio::spawn(watch_reports(status, last_report.clone()));
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                channel,
                jail: Mutex::new(Some(jail)),
                last_report,
                agent_log,
                killed: Mutex::new(false),
                spec: config.spec,
                created: Instant::now(),
            }),
        };
        match sandbox.ping(START_TIMEOUT).await {
            Ok(_) => Ok(sandbox),
            Err(SandboxError::Dead(Death::SetupFailed(why))) => {
                Err(SandboxError::Dead(Death::SetupFailed(why)))
            }
            Err(SandboxError::Dead(death)) => Err(SandboxError::Dead(Death::SetupFailed(format!(
                "the agent did not start: {death}{}",
                sandbox.log_suffix()
            )))),
            Err(SandboxError::Unresponsive(t)) => {
                Err(SandboxError::Dead(Death::SetupFailed(format!(
                    "the agent did not answer within {t:?}{}",
                    sandbox.log_suffix()
                ))))
            }
            Err(e) => Err(e),
        }
    }

    /// What the agent last wrote to its stdout/stderr (diagnostics; the
    /// last 8 KiB).
    pub fn agent_log(&self) -> String {
        String::from_utf8_lossy(&lock(&self.inner.agent_log)).into_owned()
    }

    fn log_suffix(&self) -> String {
        let log = self.agent_log();
        if log.trim().is_empty() {
            String::new()
        } else {
            format!("; the agent said: {}", log.trim())
        }
    }

    /// The spec the sandbox was created from.
    pub fn spec(&self) -> &SandboxSpec {
        &self.inner.spec
    }

    /// When it was created.
    pub fn created(&self) -> Instant {
        self.inner.created
    }

    /// Pid of the sandbox's init on the host (`None` once killed).
    pub fn pid(&self) -> Option<i32> {
        lock(&self.inner.jail)
            .as_ref()
            .map(paddock_jail::Sandbox::pid)
    }

    /// Whether the sandbox is alive as far as the host knows (its channel
    /// is open).
    pub fn is_alive(&self) -> bool {
        !self.inner.channel.is_closed()
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.inner.channel.in_flight()
    }

    /// Round trip to the agent: fails if the sandbox is dead, or if the
    /// agent does not answer within `timeout` (wedged).
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, SandboxError> {
        let started = Instant::now();
        let answer = tokio::time::timeout(timeout, async {
            let mut call = self.call(&Request::Ping).await?;
            let _: Pong = self.finish(&mut call).await?;
            Ok::<_, SandboxError>(())
        })
        .await;
        match answer {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SandboxError::Unresponsive(timeout)),
        }
    }

    pub(crate) async fn call(&self, request: &Request) -> Result<Call, SandboxError> {
        match self.inner.channel.call(request).await {
            Err(SandboxError::ChannelClosed) => Err(SandboxError::Dead(self.death().await)),
            other => other,
        }
    }

    /// Waits for the reply of `call`, turning a closed channel into the
    /// reason the sandbox died.
    pub(crate) async fn finish<T: serde::de::DeserializeOwned>(
        &self,
        call: &mut Call,
    ) -> Result<T, SandboxError> {
        match call.reply().await {
            Err(SandboxError::ChannelClosed) => Err(SandboxError::Dead(self.death().await)),
            other => other,
        }
    }

    /// The next event of `call`, with a closed channel explained.
    pub(crate) async fn next_event(&self, call: &mut Call) -> Result<Event, SandboxError> {
        match call.next().await {
            Err(SandboxError::ChannelClosed) => Err(SandboxError::Dead(self.death().await)),
            other => other,
        }
    }

    /// Why the sandbox is gone (waits briefly for init's last report).
    pub(crate) async fn death(&self) -> Death {
        if *lock(&self.inner.killed) {
            return Death::Killed;
        }
        // The report and the channel's end race; give init a moment.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let report = *lock(&self.inner.last_report);
            if let Some(r) = report {
                return match r.kind {
                    ReportKind::Exited => Death::AgentExited(r.a),
                    ReportKind::Signaled => Death::AgentSignaled {
                        signal: r.a,
                        oom: self.oom_kills() > 0,
                    },
                    ReportKind::SetupFailed => Death::SetupFailed(self.describe_step(r.a, r.b)),
                    ReportKind::ExecFailed => Death::SetupFailed(format!(
                        "cannot execute the agent inside the sandbox: {}",
                        std::io::Error::from_raw_os_error(r.a)
                    )),
                    ReportKind::Started => Death::Lost,
                };
            }
            if Instant::now() > deadline {
                return Death::Lost;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn describe_step(&self, step: i32, errno: i32) -> String {
        let what = lock(&self.inner.jail)
            .as_ref()
            .map_or_else(|| format!("step {step}"), |j| j.describe_step(step as u32));
        format!("{what}: {}", std::io::Error::from_raw_os_error(errno))
    }

    /// OOM kills recorded by the sandbox's cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        lock(&self.inner.jail)
            .as_ref()
            .and_then(|j| j.stats().ok())
            .map_or(0, |s| s.oom_kills)
    }

    /// Peak memory, CPU time and OOM kills of the whole sandbox.
    pub fn stats(&self) -> Result<paddock_cgroups::Stats, SandboxError> {
        let jail = lock(&self.inner.jail);
        let jail = jail.as_ref().ok_or(SandboxError::Dead(Death::Killed))?;
        Ok(jail.stats()?)
    }

    /// Kills everything inside and removes the sandbox. Idempotent; every
    /// later request fails with [`Death::Killed`].
    pub async fn kill(&self) -> Result<(), SandboxError> {
        *lock(&self.inner.killed) = true;
        let jail = lock(&self.inner.jail).take();
        if let Some(mut jail) = jail {
            tokio::task::spawn_blocking(move || jail.teardown())
                .await
                .map_err(|e| SandboxError::Io(std::io::Error::other(e.to_string())))??;
        }
        // Everything inside is dead, so the agent's end is closed; the reader
        // notices at once (bounded, in case the reader task is gone).
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.inner.channel.wait_closed()).await;
        Ok(())
    }

    /// Runs a command and returns the contract's result object.
    pub async fn exec(&self, req: ExecRequest) -> Result<RunResult, SandboxError> {
        let mut exec = self.exec_stream(req).await?;
        while exec.next_chunk().await?.is_some() {}
        exec.result().await
    }

    /// Starts a command; read its output with [`Execution::next_chunk`] as
    /// it is produced, then [`Execution::result`]. Dropping the execution
    /// early kills the command.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<Execution, SandboxError> {
        if let Some(stdin) = &req.stdin
            && stdin.len() > MAX_STDIN
        {
            return Err(SandboxError::Agent(paddock_agent::proto::AgentError::new(
                paddock_agent::proto::ErrorKind::TooLarge,
                format!(
                    "stdin of {} bytes is over the {MAX_STDIN}-byte limit",
                    stdin.len()
                ),
            )));
        }
        let oom_before = self.oom_kills();
        let wire = WireExec {
            argv: req.argv,
            cwd: req.cwd,
            env: req.env,
            stdin: req.stdin.is_some(),
            timeout_ms: req.timeout.as_millis().min(u64::MAX as u128) as u64,
            output_limit: req.output_limit,
        };
        let limit = wire.output_limit;
        let call = self.call(&Request::Exec(wire)).await?;
        if let Some(stdin) = req.stdin {
            for chunk in stdin.chunks(paddock_agent::proto::CHUNK) {
                call.send(Kind::Data, chunk.to_vec()).await?;
            }
            call.send(Kind::Data, Vec::new()).await?;
        }
        Ok(Execution {
            sandbox: self.clone(),
            stream: Streamed::new(call, limit),
            oom_before,
        })
    }
}

/// Most bytes of agent diagnostics kept.
const LOG_KEEP: usize = 8 << 10;

/// Keeps the tail of what the agent writes to `pipe`.
async fn keep_log(pipe: OwnedFd, log: Arc<Mutex<Vec<u8>>>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let mut log = lock(&log);
        log.extend_from_slice(&buf[..n]);
        if log.len() > LOG_KEEP {
            let cut = log.len() - LOG_KEEP;
            log.drain(..cut);
        }
    }
}

/// Reads init's reports until EOF and keeps the last one.
async fn watch_reports(status: OwnedFd, last: Arc<Mutex<Option<Report>>>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(status) else {
        return;
    };
    let mut buf = [0u8; REPORT_LEN];
    while pipe.read_exact(&mut buf).await.is_ok() {
        if let Some(r) = Report::decode(&buf)
            && r.kind != ReportKind::Started
        {
            *lock(&last) = Some(r);
        }
    }
}

/// A call whose reply follows output chunks: keeps up to `limit` bytes of
/// each stream while handing every chunk to the caller.
#[derive(Debug)]
pub(crate) struct Streamed<T> {
    call: Call,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    limit: u64,
    reply: Option<Result<T, SandboxError>>,
}

impl<T: serde::de::DeserializeOwned> Streamed<T> {
    pub(crate) fn new(call: Call, limit: u64) -> Streamed<T> {
        Streamed {
            call,
            stdout: Vec::new(),
            stderr: Vec::new(),
            limit,
            reply: None,
        }
    }

    /// The next chunk; `None` once the reply has come.
    pub(crate) async fn next_chunk(
        &mut self,
        sandbox: &Sandbox,
    ) -> Result<Option<Chunk>, SandboxError> {
        if self.reply.is_some() {
            return Ok(None);
        }
        match sandbox.next_event(&mut self.call).await? {
            Event::Chunk(chunk) => {
                let (buf, data) = match &chunk {
                    Chunk::Stdout(d) => (&mut self.stdout, d),
                    Chunk::Stderr(d) => (&mut self.stderr, d),
                    Chunk::Data(_) => return Ok(Some(chunk)),
                };
                let room = usize::try_from(self.limit)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
                Ok(Some(chunk))
            }
            Event::Reply(r) => {
                self.reply = Some(decode(r));
                Ok(None)
            }
        }
    }

    /// Waits for the reply; returns it with the kept stdout and stderr
    /// (lossy UTF-8).
    pub(crate) async fn finish(
        mut self,
        sandbox: &Sandbox,
    ) -> Result<(T, String, String), SandboxError> {
        while self.reply.is_none() {
            self.next_chunk(sandbox).await?;
        }
        let reply = self
            .reply
            .take()
            .unwrap_or_else(|| Err(SandboxError::Protocol("no reply".into())))?;
        Ok((
            reply,
            String::from_utf8_lossy(&self.stdout).into_owned(),
            String::from_utf8_lossy(&self.stderr).into_owned(),
        ))
    }
}

/// A command running in a sandbox.
#[derive(Debug)]
pub struct Execution {
    sandbox: Sandbox,
    stream: Streamed<ExecReply>,
    oom_before: u64,
}

impl Execution {
    /// The next chunk of output, in the order produced; `None` when the
    /// command has ended.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, SandboxError> {
        self.stream.next_chunk(&self.sandbox).await
    }

    /// Waits for the end and returns the result object.
    pub async fn result(self) -> Result<RunResult, SandboxError> {
        let (reply, stdout, stderr) = self.stream.finish(&self.sandbox).await?;
        let oom = reply.signal == Some(libc::SIGKILL)
            && reply.status == Status::Signaled
            && self.sandbox.oom_kills() > self.oom_before;
        Ok(RunResult {
            status: if oom { Status::Oom } else { reply.status },
            exit_code: reply.exit_code,
            signal: reply.signal,
            stdout,
            stderr,
            stdout_truncated: reply.stdout_truncated,
            stderr_truncated: reply.stderr_truncated,
            wall_time_ms: reply.wall_time_ms,
            cpu_time_ms: reply.cpu_time_ms,
            memory_peak_bytes: reply.memory_peak_bytes,
        })
    }
}
