//! Integration tests of `paddock run`: real sandboxes, as root.
//!
//! Every test runs the built binary (`CARGO_BIN_EXE_paddock`) and checks the
//! contract of `../shared/BRIEF.md` ("Interface contract", "Security and
//! reliability bar") and issue 2 from outside. They fail, never skip, when
//! not run as root or when the kernel lacks what paddock needs.
//!
//! Tests run in parallel; each holds the shared side of a global lock, and the
//! leak test (which compares global host state before and after) holds it
//! exclusively.

mod common;

#[path = "run/basics.rs"]
mod basics;
#[path = "run/env_fds.rs"]
mod env_fds;
#[path = "run/filesystem.rs"]
mod filesystem;
#[path = "run/identity.rs"]
mod identity;
#[path = "run/leak.rs"]
mod leak;
#[path = "run/limits.rs"]
mod limits;
#[path = "run/mounts.rs"]
mod mounts;
#[path = "run/network.rs"]
mod network;
#[path = "run/output.rs"]
mod output;
#[path = "run/processes.rs"]
mod processes;
#[path = "run/rootfs.rs"]
mod rootfs;
#[path = "run/signals.rs"]
mod signals;
#[path = "run/syscalls.rs"]
mod syscalls;
#[path = "run/usage.rs"]
mod usage;
