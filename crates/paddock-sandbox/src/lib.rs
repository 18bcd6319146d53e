//! Persistent sandboxes: create once, then exec commands, run code in
//! contexts and move files, any number of times and concurrently.
//!
//! A [`Sandbox`] is an isolation-layer sandbox ([`paddock_jail`]) whose
//! program is the paddock binary itself running as the agent
//! ([`paddock_agent`]). The host talks to the agent over a socketpair with
//! the framed protocol of [`paddock_agent::proto`]; many requests share the
//! one channel (see `channel.rs`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), paddock_sandbox::SandboxError> {
//! use std::time::Duration;
//! use paddock_sandbox::{ExecRequest, Sandbox, SandboxConfig};
//! use paddock_types::SandboxSpec;
//!
//! let sandbox = Sandbox::create(SandboxConfig::new(SandboxSpec::new(vec![]))?).await?;
//! let out = sandbox.exec(ExecRequest::new(["echo", "hi"])).await?;
//! assert_eq!(out.stdout, "hi\n");
//! let py = sandbox.create_context("python").await?;
//! py.run("x = 41", Duration::from_secs(5)).await?;
//! assert_eq!(py.run("x + 1", Duration::from_secs(5)).await?.result.as_deref(), Some("42"));
//! sandbox.kill().await?;
//! # Ok(()) }
//! ```

mod channel;
mod context;
mod error;
mod files;
mod sandbox;

pub use channel::Chunk;

/// Output that arrives in chunks before a final result: a running command
/// ([`Execution`]) or a run of code ([`CodeRun`]).
pub trait ChunkStream {
    /// The next chunk, in the order produced; `None` at the end.
    fn next_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Chunk>, SandboxError>> + Send;
}

impl ChunkStream for Execution {
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SandboxError> {
        Execution::next_chunk(self).await
    }
}

impl ChunkStream for CodeRun<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, SandboxError> {
        CodeRun::next_chunk(self).await
    }
}
pub use context::{CodeResult, CodeRun, Context, DEFAULT_OUTPUT_LIMIT};
pub use error::{ContextDeath, Death, SandboxError};
pub use paddock_agent::interp::{Completeness, ErrorInfo};
pub use paddock_agent::proto::{
    AgentError, ContextId, ContextInfo, ErrorKind, FileInfo, RunStatus,
};
pub use sandbox::{ExecRequest, Execution, MAX_STDIN, START_TIMEOUT, Sandbox, SandboxConfig};
