//! Errors of the isolation layer.

use std::path::PathBuf;

use paddock_sys::Errno;

/// Why a sandbox could not be made, run or removed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The spec is unusable (the message says which part and why).
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// A `--mount` source is missing or not absolute.
    #[error("mount source {path}: {reason}")]
    MountSource {
        /// The source as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// paddock is not running with the privileges it needs.
    #[error("{0}")]
    Privileges(String),
    /// No cgroup hierarchy with the needed controllers.
    #[error("no usable cgroup: {0}")]
    Cgroup(#[from] paddock_cgroups::CgroupError),
    /// The syscall filter could not be compiled.
    #[error("seccomp filter: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// No free uid range for the sandbox's user namespace.
    #[error("uid range: {0}")]
    UidRange(String),
    /// A host-side step failed.
    #[error("{step}: {source}")]
    Host {
        /// What paddock was doing.
        step: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A step inside the new sandbox failed.
    #[error("sandbox setup failed at {step}: {errno}")]
    Setup {
        /// The step, in words.
        step: String,
        /// The OS error.
        errno: Errno,
    },
    /// The program does not exist inside the sandbox.
    #[error("program not found in the sandbox: {0}")]
    ProgramNotFound(String),
    /// The program exists but cannot be executed.
    #[error("program not executable in the sandbox: {program} ({errno})")]
    NotExecutable {
        /// The program.
        program: String,
        /// Why exec failed.
        errno: Errno,
    },
    /// The sandbox's init died without reporting (a bug or an external kill).
    #[error("sandbox init ended unexpectedly: {0}")]
    InitDied(String),
}

impl JailError {
    pub(crate) fn host(step: impl Into<String>, source: std::io::Error) -> Self {
        JailError::Host {
            step: step.into(),
            source,
        }
    }
}
