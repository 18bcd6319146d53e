//! Running the paddock binary itself inside a sandbox (the in-sandbox agent
//! of persistent sandboxes, function workers).
//!
//! The binary is bound read-only at [`INSIDE`]; the host talks to it over
//! the channel passed in [`crate::Stdio::channel`] (fd 3 inside).

use std::path::Path;

use paddock_types::{Mount, SandboxSpec};

/// Where the paddock binary appears inside a sandbox that runs it.
pub const INSIDE: &str = "/run/paddock/paddock";

/// Makes `spec` run `exe` (a paddock binary on the host) with `args`:
/// binds it read-only at [`INSIDE`] and sets the argv.
pub fn reexec(spec: &mut SandboxSpec, exe: &Path, args: &[&str]) {
    spec.mounts.push(Mount {
        source: exe.to_path_buf(),
        target: INSIDE.into(),
        writable: false,
    });
    spec.argv = std::iter::once(INSIDE)
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect();
}
