//! Errors of persistent sandboxes.

use paddock_agent::proto::{AgentError, ContextId, ErrorKind};

/// Why a sandbox ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Death {
    /// [`crate::Sandbox::kill`] was called (or the last handle dropped).
    Killed,
    /// The agent (the sandbox's server process) exited with this code.
    AgentExited(i32),
    /// A signal killed the agent (the memory limit kills with SIGKILL; see
    /// `oom`).
    AgentSignaled {
        /// The signal.
        signal: i32,
        /// The cgroup recorded an OOM kill.
        oom: bool,
    },
    /// The sandbox never came up.
    SetupFailed(String),
    /// The agent closed the channel without its process ending (a protocol
    /// violation), or init vanished without a report.
    Lost,
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Death::Killed => f.write_str("it was killed"),
            Death::AgentExited(code) => write!(f, "its agent exited with code {code}"),
            Death::AgentSignaled { oom: true, .. } => {
                f.write_str("its agent was killed by the memory limit (OOM)")
            }
            Death::AgentSignaled { signal, .. } => {
                write!(f, "its agent was killed by signal {signal}")
            }
            Death::SetupFailed(why) => write!(f, "setup failed: {why}"),
            Death::Lost => f.write_str("its agent stopped answering"),
        }
    }
}

/// How a context's interpreter died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextDeath {
    /// It exited by itself (`exit()`, `os._exit`, `process.exit`).
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// The sandbox's memory limit killed it.
    Oom,
}

impl std::fmt::Display for ContextDeath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextDeath::Exited(c) => write!(f, "it exited with code {c}"),
            ContextDeath::Signaled(s) => write!(f, "it was killed by signal {s}"),
            ContextDeath::Oom => f.write_str("it was killed by the sandbox's memory limit (OOM)"),
        }
    }
}

/// What can go wrong with a persistent sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox could not be created (spec, privileges, setup).
    #[error(transparent)]
    Jail(#[from] paddock_jail::JailError),
    /// The agent refused or failed the request (the kind says why).
    #[error("{0}")]
    Agent(AgentError),
    /// A context's interpreter is dead; restart the context or create a
    /// new one.
    #[error("context {context} died: {death}; restart it or create a new one")]
    ContextDied {
        /// The context.
        context: ContextId,
        /// How.
        death: ContextDeath,
    },
    /// The sandbox is gone.
    #[error("the sandbox is gone: {0}")]
    Dead(Death),
    /// The channel closed while a request was in flight (the reason follows
    /// as [`SandboxError::Dead`] once known).
    #[error("the sandbox's agent went away")]
    ChannelClosed,
    /// The agent did not answer in time (wedged or overloaded).
    #[error("the sandbox's agent did not answer within {0:?}")]
    Unresponsive(std::time::Duration),
    /// The agent sent something that is not the protocol.
    #[error("protocol error from the sandbox's agent: {0}")]
    Protocol(String),
    /// A host-side I/O error (e.g. writing a downloaded file).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SandboxError {
    /// The agent's error kind, if the agent answered with an error.
    pub fn agent_kind(&self) -> Option<ErrorKind> {
        match self {
            SandboxError::Agent(e) => Some(e.kind),
            _ => None,
        }
    }
}
