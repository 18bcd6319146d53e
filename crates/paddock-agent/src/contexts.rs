//! Code contexts: one interpreter process per context, owned by one task.
//!
//! The table maps a context id to a handle holding the sending end of the
//! context's command queue. The context's task owns the [`Interpreter`] and
//! takes commands one at a time, so runs on one context are serialised in
//! the order the host sent them, while different contexts (different tasks)
//! run in parallel. Deleting a context removes its table entry and ends its
//! task, which kills the interpreter: nothing is left behind.
//!
//! Between runs the task also watches the interpreter, so a death (`exit`,
//! a signal, the OOM killer) is known before the next run arrives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::exec::{DEFAULT_CWD, environment};
use crate::interp::{Completeness, Exit, InterpError, Interpreter, Language, Signaller, Stream};
use crate::proto::{
    AgentError, ContextId, ContextInfo, ErrorKind, ExitInfo, Kind, RunReply, RunStatus,
};
use crate::server::Output;

/// How long an interrupted run may take to stop before its interpreter is
/// killed and replaced.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Most contexts one sandbox may have at once.
pub const MAX_CONTEXTS: usize = 1024;

enum Command {
    Run {
        code: String,
        timeout: Duration,
        output_limit: u64,
        cancel: Arc<Notify>,
        out: Output,
        reply: oneshot::Sender<Result<RunReply, AgentError>>,
    },
    Complete {
        code: String,
        reply: oneshot::Sender<Result<Completeness, AgentError>>,
    },
    Restart {
        reply: oneshot::Sender<Result<ContextInfo, AgentError>>,
    },
    Info {
        reply: oneshot::Sender<ContextInfo>,
    },
}

struct Handle {
    language: Language,
    queue: mpsc::UnboundedSender<Command>,
    /// Signals the current interpreter, if alive (replaced on restart).
    signaller: Arc<Mutex<Option<Signaller>>>,
    /// The task ends when this is set and the queue closes.
    deleted: Arc<AtomicBool>,
    /// Fires when the task has ended and the interpreter is gone.
    gone: Option<oneshot::Receiver<()>>,
}

/// All contexts of this sandbox.
#[derive(Default)]
pub struct Contexts {
    table: Mutex<HashMap<ContextId, Handle>>,
    next: AtomicU64,
}

fn exit_info(exit: Exit) -> ExitInfo {
    match exit {
        Exit::Code(c) => ExitInfo {
            code: Some(c),
            signal: None,
        },
        Exit::Signal(s) => ExitInfo {
            code: None,
            signal: Some(s),
        },
    }
}

fn died(id: ContextId, exit: Exit) -> AgentError {
    AgentError {
        kind: ErrorKind::ContextDied,
        message: format!(
            "context {id}: the interpreter died ({exit}); restart the context or create a new one"
        ),
        exit: Some(exit_info(exit)),
    }
}

fn not_found(id: ContextId) -> AgentError {
    AgentError::new(ErrorKind::NotFound, format!("no context {id}"))
}

fn interp_error(id: ContextId, e: InterpError) -> AgentError {
    match e {
        InterpError::Died(exit) => died(id, exit),
        other => AgentError::new(ErrorKind::Io, format!("context {id}: {other}")),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Contexts {
    /// Number of live contexts.
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn queue(&self, id: ContextId) -> Result<mpsc::UnboundedSender<Command>, AgentError> {
        lock(&self.table)
            .get(&id)
            .map(|h| h.queue.clone())
            .ok_or_else(|| not_found(id))
    }

    /// Starts an interpreter for `language` and a task to own it.
    pub fn create(
        &self,
        language: &str,
        cwd: Option<String>,
        env: Option<Vec<(String, String)>>,
    ) -> Result<ContextInfo, AgentError> {
        let lang: Language = language
            .parse()
            .map_err(|e: crate::interp::UnknownLanguage| {
                AgentError::new(ErrorKind::UnknownLanguage, e.to_string())
            })?;
        if self.len() >= MAX_CONTEXTS {
            return Err(AgentError::new(
                ErrorKind::TooLarge,
                format!("at most {MAX_CONTEXTS} contexts per sandbox"),
            ));
        }
        let spawn = Spawn {
            lang,
            cwd: PathBuf::from(cwd.unwrap_or_else(|| DEFAULT_CWD.to_string())),
            env: environment(env),
        };
        let interp = spawn.start()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let info = ContextInfo {
            id,
            language: lang.to_string(),
            pid: Some(interp.pid()),
            exit: None,
        };
        let (queue, rx) = mpsc::unbounded_channel();
        let signaller = Arc::new(Mutex::new(Some(interp.signaller())));
        let deleted = Arc::new(AtomicBool::new(false));
        let (gone_tx, gone_rx) = oneshot::channel();
        let task = Task {
            id,
            spawn,
            interp: Some(interp),
            dead: None,
            signaller: signaller.clone(),
            deleted: deleted.clone(),
        };
        tokio::spawn(async move {
            task.run(rx).await;
            let _ = gone_tx.send(());
        });
        lock(&self.table).insert(
            id,
            Handle {
                language: lang,
                queue,
                signaller,
                deleted,
                gone: Some(gone_rx),
            },
        );
        Ok(info)
    }

    /// Queues a run of `code` and waits for its answer.
    pub(crate) async fn run(
        &self,
        id: ContextId,
        code: String,
        timeout_ms: u64,
        output_limit: u64,
        cancel: Arc<Notify>,
        out: Output,
    ) -> Result<RunReply, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.queue(id)?
            .send(Command::Run {
                code,
                timeout: Duration::from_millis(timeout_ms),
                output_limit,
                cancel,
                out,
                reply,
            })
            .map_err(|_| not_found(id))?;
        rx.await.map_err(|_| not_found(id))?
    }

    /// Asks the interpreter whether `code` is a complete cell.
    pub async fn complete(&self, id: ContextId, code: String) -> Result<Completeness, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.queue(id)?
            .send(Command::Complete { code, reply })
            .map_err(|_| not_found(id))?;
        rx.await.map_err(|_| not_found(id))?
    }

    /// Sends SIGINT to the context's interpreter right away (not queued).
    pub fn interrupt(&self, id: ContextId) -> Result<(), AgentError> {
        let table = lock(&self.table);
        let handle = table.get(&id).ok_or_else(|| not_found(id))?;
        if let Some(s) = lock(&handle.signaller).as_ref() {
            s.interrupt();
        }
        Ok(())
    }

    /// Replaces the interpreter by a fresh one (after queued runs).
    pub async fn restart(&self, id: ContextId) -> Result<ContextInfo, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.queue(id)?
            .send(Command::Restart { reply })
            .map_err(|_| not_found(id))?;
        rx.await.map_err(|_| not_found(id))?
    }

    /// Deletes the context: kills its interpreter at once (a running or
    /// queued run answers "not found") and waits until it is gone.
    pub async fn delete(&self, id: ContextId) -> Result<(), AgentError> {
        let handle = lock(&self.table).remove(&id).ok_or_else(|| not_found(id))?;
        Self::end(handle).await;
        Ok(())
    }

    async fn end(mut handle: Handle) {
        handle.deleted.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&handle.signaller).as_ref() {
            s.kill();
        }
        let gone = handle.gone.take();
        drop(handle);
        if let Some(gone) = gone {
            let _ = gone.await;
        }
    }

    /// Describes every context.
    pub async fn list(&self) -> Vec<ContextInfo> {
        let queues: Vec<(ContextId, Language, mpsc::UnboundedSender<Command>)> = lock(&self.table)
            .iter()
            .map(|(id, h)| (*id, h.language, h.queue.clone()))
            .collect();
        let mut out = Vec::with_capacity(queues.len());
        for (id, language, queue) in queues {
            let (reply, rx) = oneshot::channel();
            let info = match queue.send(Command::Info { reply }) {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            out.push(info.unwrap_or(ContextInfo {
                id,
                language: language.to_string(),
                pid: None,
                exit: None,
            }));
        }
        out.sort_by_key(|c| c.id);
        out
    }

    /// Ends every context (the host has gone away).
    pub async fn shutdown(&self) {
        let handles: Vec<Handle> = lock(&self.table).drain().map(|(_, h)| h).collect();
        for h in handles {
            Self::end(h).await;
        }
    }
}

/// How to (re)start a context's interpreter.
struct Spawn {
    lang: Language,
    cwd: PathBuf,
    env: Vec<(String, String)>,
}

impl Spawn {
    fn start(&self) -> Result<Interpreter, AgentError> {
        Interpreter::spawn(self.lang, &self.cwd, &self.env).map_err(|e| {
            AgentError::new(
                ErrorKind::Io,
                format!("start the {} interpreter: {e}", self.lang),
            )
        })
    }
}

/// The task that owns one context's interpreter.
struct Task {
    id: ContextId,
    spawn: Spawn,
    interp: Option<Interpreter>,
    dead: Option<Exit>,
    signaller: Arc<Mutex<Option<Signaller>>>,
    deleted: Arc<AtomicBool>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let command = match self.interp.as_mut() {
                Some(interp) => tokio::select! {
                    c = rx.recv() => c,
                    exit = interp.exited() => {
                        self.set_dead(exit);
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(command) = command else { break };
            if self.deleted.load(Ordering::SeqCst) {
                break;
            }
            match command {
                Command::Run {
                    code,
                    timeout,
                    output_limit,
                    cancel,
                    out,
                    reply,
                } => {
                    let r = self
                        .run_code(&code, timeout, output_limit, cancel, out)
                        .await;
                    let r = if self.deleted.load(Ordering::SeqCst) {
                        Err(not_found(self.id))
                    } else {
                        r
                    };
                    let _ = reply.send(r);
                }
                Command::Complete { code, reply } => {
                    let r = match self.interp.as_mut() {
                        Some(i) => i
                            .complete(&code)
                            .await
                            .map_err(|e| interp_error(self.id, e)),
                        None => Err(self.dead_error()),
                    };
                    if let Err(e) = &r
                        && let Some(exit) = e.exit
                    {
                        self.set_dead(exit_from(exit));
                    }
                    let _ = reply.send(r);
                }
                Command::Restart { reply } => {
                    let _ = reply.send(self.restart().await);
                }
                Command::Info { reply } => {
                    let _ = reply.send(self.info());
                }
            }
        }
        *lock(&self.signaller) = None;
        if let Some(interp) = self.interp.take() {
            interp.kill().await;
        }
    }

    fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id,
            language: self.spawn.lang.to_string(),
            pid: self.interp.as_ref().map(Interpreter::pid),
            exit: self.dead.map(exit_info),
        }
    }

    fn set_dead(&mut self, exit: Exit) {
        self.dead = Some(exit);
        self.interp = None;
        *lock(&self.signaller) = None;
    }

    fn dead_error(&self) -> AgentError {
        match self.dead {
            Some(exit) => died(self.id, exit),
            None => not_found(self.id),
        }
    }

    async fn restart(&mut self) -> Result<ContextInfo, AgentError> {
        *lock(&self.signaller) = None;
        if let Some(old) = self.interp.take() {
            old.kill().await;
        }
        let fresh = self.spawn.start()?;
        *lock(&self.signaller) = Some(fresh.signaller());
        self.interp = Some(fresh);
        self.dead = None;
        Ok(self.info())
    }

    async fn run_code(
        &mut self,
        code: &str,
        timeout: Duration,
        limit: u64,
        cancel: Arc<Notify>,
        out: Output,
    ) -> Result<RunReply, AgentError> {
        let id = self.id;
        let Some(interp) = self.interp.as_mut() else {
            return Err(self.dead_error());
        };
        let started = Instant::now();
        // Output goes through an unbounded queue (bounded by `limit`) to a
        // forwarder, because the interpreter's callback cannot wait.
        let (chunks, mut chunk_rx) = mpsc::unbounded_channel::<(Kind, Vec<u8>)>();
        let forwarder = tokio::spawn(async move {
            while let Some((kind, data)) = chunk_rx.recv().await {
                out.send(kind, data).await;
            }
        });
        let mut totals = [0u64; 2];
        let mut on_output = |stream: Stream, data: &[u8]| {
            let (slot, kind) = match stream {
                Stream::Stdout => (0, Kind::Stdout),
                Stream::Stderr => (1, Kind::Stderr),
            };
            let room = limit.saturating_sub(totals[slot]);
            totals[slot] += data.len() as u64;
            let keep = (data.len() as u64).min(room) as usize;
            if keep > 0 {
                let _ = chunks.send((kind, data[..keep].to_vec()));
            }
        };
        let signaller = interp.signaller();
        let mut timed_out = false;
        let mut cancelled = false;
        let mut restarted = false;
        let outcome = {
            let run = interp.run(code, &mut on_output);
            tokio::pin!(run);
            let first = tokio::select! {
                r = &mut run => Some(r),
                _ = tokio::time::sleep(timeout) => { timed_out = true; None }
                _ = cancel.notified() => { cancelled = true; None }
            };
            match first {
                Some(r) => Some(r),
                None => {
                    signaller.interrupt();
                    tokio::time::timeout(INTERRUPT_GRACE, &mut run).await.ok()
                }
            }
        };
        let reply = match outcome {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(InterpError::Died(exit))) => {
                self.set_dead(exit);
                Err(died(id, exit))
            }
            Some(Err(e)) => Err(interp_error(id, e)),
            None => {
                // It would not stop: replace the interpreter.
                restarted = true;
                match self.restart().await {
                    Ok(_) => Ok(crate::interp::RunReply {
                        result: None,
                        error: None,
                    }),
                    Err(e) => Err(e),
                }
            }
        };
        drop(chunks);
        let _ = forwarder.await;
        if cancelled {
            return Err(AgentError::new(ErrorKind::Cancelled, "cancelled"));
        }
        let reply = reply?;
        let status = if timed_out {
            RunStatus::Timeout
        } else if reply.error.is_some() {
            RunStatus::Error
        } else {
            RunStatus::Ok
        };
        Ok(RunReply {
            status,
            result: if timed_out { None } else { reply.result },
            error: reply.error,
            restarted,
            stdout_truncated: totals[0] > limit,
            stderr_truncated: totals[1] > limit,
            wall_time_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

fn exit_from(info: ExitInfo) -> Exit {
    match (info.code, info.signal) {
        (_, Some(s)) => Exit::Signal(s),
        (Some(c), None) => Exit::Code(c),
        (None, None) => Exit::Code(-1),
    }
}
