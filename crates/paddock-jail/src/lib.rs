//! The isolation layer: turn a [`SandboxSpec`] into a running, contained
//! PID 1 and tear it down without leaving a mount, a cgroup, a process or a
//! file behind.
//!
//! Setup order (host side in `sandbox.rs`, child side in `child.rs`):
//!
//! 1. host: check the spec and mounts, plan the root filesystem, compile the
//!    seccomp filter, take a uid range, create the cgroup with its limits;
//! 2. host: `clone3` into new user, pid, mount, net, ipc and uts namespaces
//!    (straight into the cgroup on v2);
//! 3. host: write the uid/gid maps, attach the child to its cgroup (v1), make
//!    init unkillable by the OOM killer, release the child;
//! 4. child: new cgroup namespace, private mounts, root tmpfs, the tree (see
//!    [`rootfs`]), `pivot_root`, hostname, loopback, rlimits;
//! 5. child becomes init (`paddock-init`), forks the program, which drops to
//!    uid 1000 with no capabilities, applies Landlock, then seccomp, and execs.
//!
//! Use [`Sandbox::spawn`] for a handle, or [`run`] to run a program to
//! completion and get the contract's result object.

mod child;
mod error;
mod lean;
pub mod reexec;
pub mod rootfs;
mod runner;
mod sandbox;
pub mod seccomp;
pub mod uid;

pub use error::JailError;
pub use runner::{RunOptions, RunOutcome, run};
pub use sandbox::{MAX_MOUNTS, Sandbox, Stdio, clean_leftovers, hierarchy};
