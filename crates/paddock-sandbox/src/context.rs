//! Code contexts on the host side: handles to interpreters in the agent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use paddock_agent::interp::{Completeness, ErrorInfo};
use paddock_agent::proto::{
    ContextId, ContextInfo, ErrorKind, ExitInfo, Request, RunReply, RunStatus,
};
use serde::Serialize;

use crate::channel::Chunk;
use crate::sandbox::Streamed;
use crate::{ContextDeath, Sandbox, SandboxError};

/// Bytes of each output stream a run keeps by default.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 1 << 20;

/// One code context: a dedicated interpreter process inside the sandbox.
///
/// The handle keeps the sandbox alive. Deleting it ([`Context::delete`])
/// ends the interpreter; merely dropping the handle does not (the context
/// lives as long as the sandbox, like a notebook kernel).
#[derive(Debug)]
pub struct Context {
    sandbox: Sandbox,
    id: ContextId,
    language: String,
    /// The cgroup's OOM count when this context last ran fine; a later
    /// SIGKILL death with a higher count is the memory limit's doing.
    oom_seen: AtomicU64,
}

/// The result of running code in a context.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeResult {
    /// `ok`, `error` or `timeout`.
    pub status: RunStatus,
    /// Everything printed to stdout (lossy UTF-8, up to the limit).
    pub stdout: String,
    /// Everything printed to stderr.
    pub stderr: String,
    /// Text form of the last expression's value, if any.
    pub result: Option<String>,
    /// The exception, if any: name, value, traceback.
    pub error: Option<ErrorInfo>,
    /// The interpreter could not be interrupted at the timeout and was
    /// replaced: the context's state is gone.
    pub restarted: bool,
    /// Whether stdout went over the limit.
    pub stdout_truncated: bool,
    /// Whether stderr went over the limit.
    pub stderr_truncated: bool,
    /// From start to end of the run, inside the sandbox.
    pub wall_time_ms: f64,
}

impl Sandbox {
    /// Creates a code context for `language` (`python`, `javascript` or
    /// `bash`); an unknown language is refused with the list of known ones.
    pub async fn create_context(&self, language: &str) -> Result<Context, SandboxError> {
        let mut call = self
            .call(&Request::ContextCreate {
                language: language.to_string(),
                cwd: None,
                env: None,
            })
            .await?;
        let info: ContextInfo = self.finish(&mut call).await?;
        Ok(Context {
            sandbox: self.clone(),
            id: info.id,
            language: info.language,
            oom_seen: AtomicU64::new(self.oom_kills()),
        })
    }

    /// Every context of the sandbox.
    pub async fn contexts(&self) -> Result<Vec<ContextInfo>, SandboxError> {
        let mut call = self.call(&Request::ContextList).await?;
        self.finish(&mut call).await
    }

    /// A handle to an existing context by id (e.g. from [`Sandbox::contexts`]).
    pub fn context(&self, id: ContextId, language: &str) -> Context {
        Context {
            sandbox: self.clone(),
            id,
            language: language.to_string(),
            oom_seen: AtomicU64::new(self.oom_kills()),
        }
    }
}

impl Context {
    /// The context's id within its sandbox.
    pub fn id(&self) -> ContextId {
        self.id
    }

    /// Its language.
    pub fn language(&self) -> &str {
        &self.language
    }

    /// The sandbox it lives in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Runs `code`, waiting at most `timeout`. Runs on one context are
    /// serialised in the order they were sent.
    pub async fn run(&self, code: &str, timeout: Duration) -> Result<CodeResult, SandboxError> {
        let mut run = self.run_stream(code, timeout, DEFAULT_OUTPUT_LIMIT).await?;
        while run.next_chunk().await?.is_some() {}
        run.result().await
    }

    /// Starts a run whose output can be read as it is produced.
    pub async fn run_stream(
        &self,
        code: &str,
        timeout: Duration,
        output_limit: u64,
    ) -> Result<CodeRun<'_>, SandboxError> {
        let call = self
            .sandbox
            .call(&Request::ContextRun {
                context: self.id,
                code: code.to_string(),
                timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
                output_limit,
            })
            .await?;
        Ok(CodeRun {
            context: self,
            stream: Streamed::new(call, output_limit),
        })
    }

    /// Whether `code` is a complete cell (a REPL asks before running).
    pub async fn complete(&self, code: &str) -> Result<Completeness, SandboxError> {
        let mut call = self
            .sandbox
            .call(&Request::ContextComplete {
                context: self.id,
                code: code.to_string(),
            })
            .await?;
        let r = self.sandbox.finish(&mut call).await;
        self.explain(r)
    }

    /// Interrupts the running code (SIGINT; Python raises
    /// KeyboardInterrupt and keeps its state).
    pub async fn interrupt(&self) -> Result<(), SandboxError> {
        let mut call = self
            .sandbox
            .call(&Request::ContextInterrupt { context: self.id })
            .await?;
        self.sandbox.finish(&mut call).await
    }

    /// Replaces the interpreter by a fresh one (all state is lost); this
    /// also revives a context whose interpreter died.
    pub async fn restart(&self) -> Result<(), SandboxError> {
        let mut call = self
            .sandbox
            .call(&Request::ContextRestart { context: self.id })
            .await?;
        let _: ContextInfo = self.sandbox.finish(&mut call).await?;
        self.oom_seen
            .store(self.sandbox.oom_kills(), Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the context and waits until its interpreter is gone.
    pub async fn delete(self) -> Result<(), SandboxError> {
        let mut call = self
            .sandbox
            .call(&Request::ContextDelete { context: self.id })
            .await?;
        self.sandbox.finish(&mut call).await
    }

    /// Turns the agent's "context died" into [`SandboxError::ContextDied`]
    /// with the cause, telling an OOM kill apart by the cgroup's count.
    fn explain<T>(&self, r: Result<T, SandboxError>) -> Result<T, SandboxError> {
        match r {
            Err(SandboxError::Agent(e)) if e.kind == ErrorKind::ContextDied => {
                let exit = e.exit.unwrap_or(ExitInfo {
                    code: None,
                    signal: None,
                });
                let oom_now = self.sandbox.oom_kills();
                let death = match (exit.code, exit.signal) {
                    (_, Some(libc::SIGKILL)) if oom_now > self.oom_seen.load(Ordering::Relaxed) => {
                        ContextDeath::Oom
                    }
                    (_, Some(s)) => ContextDeath::Signaled(s),
                    (Some(c), None) => ContextDeath::Exited(c),
                    (None, None) => ContextDeath::Exited(-1),
                };
                Err(SandboxError::ContextDied {
                    context: self.id,
                    death,
                })
            }
            other => other,
        }
    }
}

/// A run of code in progress.
#[derive(Debug)]
pub struct CodeRun<'a> {
    context: &'a Context,
    stream: Streamed<RunReply>,
}

impl CodeRun<'_> {
    /// The next chunk of output; `None` at the end of the run.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, SandboxError> {
        self.stream.next_chunk(&self.context.sandbox).await
    }

    /// Waits for the end of the run.
    pub async fn result(self) -> Result<CodeResult, SandboxError> {
        let context = self.context;
        let (reply, stdout, stderr) =
            context.explain(self.stream.finish(&context.sandbox).await)?;
        context
            .oom_seen
            .store(context.sandbox.oom_kills(), Ordering::Relaxed);
        Ok(CodeResult {
            status: reply.status,
            stdout,
            stderr,
            result: reply.result,
            error: reply.error,
            restarted: reply.restarted,
            stdout_truncated: reply.stdout_truncated,
            stderr_truncated: reply.stderr_truncated,
            wall_time_ms: reply.wall_time_ms,
        })
    }
}
