//! Integration tests of persistent sandboxes (issue 3): the library API of
//! `paddock-sandbox` driving real sandboxes whose agent is the built paddock
//! binary, and `paddock repl`. They run as root and fail, never skip,
//! elsewhere.

mod common;

#[path = "sandbox/util.rs"]
mod util;

#[path = "sandbox/contexts.rs"]
mod contexts;
#[path = "sandbox/exec.rs"]
mod exec;
#[path = "sandbox/files.rs"]
mod files;
#[path = "sandbox/repl.rs"]
mod repl;
