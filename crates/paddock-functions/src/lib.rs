//! Functions: `output = f(input)` in JavaScript at isolate speed, inside a
//! sandbox.
//!
//! - [`engine`]: QuickJS (quickjs-ng, through `rquickjs`) with a fresh
//!   runtime and context per call, an exact heap limit, an interrupt-based
//!   deadline, a stack limit and a bytecode [`cache`]. Usable on its own,
//!   in-process ([`Engine`]).
//! - [`pool`]: a pool of worker processes (the paddock binary re-executed as
//!   `paddock fn-worker`), each inside a sandbox of the isolation core
//!   (`paddock-jail`) and, once started, confined further by a seccomp
//!   allow-list ([`worker`]); a bounded priority queue in front of them
//!   ([`Pool`]).
//! - [`result`]: the result object ([`FnResult`]).
//!
//! ```no_run
//! use paddock_functions::{Call, Pool, PoolConfig};
//! let exe = std::env::current_exe().unwrap();
//! let pool = Pool::new(PoolConfig::new(exe)).unwrap();
//! let r = pool.run(Call::new("return input.a + 1", r#"{"a": 41}"#)).unwrap();
//! assert_eq!(r.output, serde_json::json!(42));
//! ```

pub mod cache;
pub mod engine;
pub mod pool;
mod protocol;
pub mod result;
mod snapshot;
pub mod worker;

pub use cache::{CacheStats, CompileCache};
pub use engine::{BatchMode, Engine, EngineInitError, Options};
pub use pool::{
    Batch, Call, FunctionsError, Pool, PoolConfig, PoolStats, Priority, WAIT_BUCKETS, WorkerInfo,
};
pub use protocol::ProtocolError;
pub use result::{ConsoleEntry, FnError, FnResult, Level, Status};
