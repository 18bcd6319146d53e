//! The agent: the paddock binary re-executed inside a persistent sandbox.
//!
//! It serves the host over the channel at fd 3 (see [`proto`] for the
//! frames): runs commands ([`exec`]), hosts one interpreter process per
//! code context ([`contexts`], [`interp`]), and reads and writes files
//! ([`files`]), all as the sandbox's unprivileged user. [`server`] is the
//! loop that ties them together.

pub mod contexts;
pub mod exec;
pub mod files;
pub mod interp;
pub mod proto;
pub mod server;

pub use server::{run_on_inherited_channel, serve};
