//! Running the paddock binary itself inside a sandbox (the in-sandbox agent
//! of persistent sandboxes, function workers).
//!
//! The binary is bound read-only at [`INSIDE`]; the host talks to it over
//! the channel passed in [`crate::Stdio::channel`] (fd 3 inside).
//!
//! paddock is linked against the host's C library. In a sandbox built on the
//! host's own tree that library is there; on a template's tree
//! ([`SandboxSpec::rootfs`]) it may be missing or another version, so the
//! binary is then started through the host's dynamic loader, bound at
//! [`LOADER`], with the host's library directory bound at [`LIBS`]:
//! `LOADER --library-path LIBS INSIDE args…`.

use std::io::Read;
use std::path::{Path, PathBuf};

use paddock_types::{Mount, SandboxSpec};

/// Where the paddock binary appears inside a sandbox that runs it.
pub const INSIDE: &str = "/run/paddock/paddock";
/// Where the host's dynamic loader appears (template sandboxes only).
pub const LOADER: &str = "/run/paddock/ld.so";
/// Where the host's library directory appears (template sandboxes only).
pub const LIBS: &str = "/run/paddock/lib";

/// Makes `spec` run `exe` (a paddock binary on the host) with `args`:
/// binds it read-only at [`INSIDE`] and sets the argv. Call it after
/// setting the spec's `rootfs`.
pub fn reexec(spec: &mut SandboxSpec, exe: &Path, args: &[&str]) {
    let bind = |source: PathBuf, target: &str| Mount {
        source,
        target: target.into(),
        writable: false,
    };
    spec.mounts.push(bind(exe.to_path_buf(), INSIDE));
    let mut argv: Vec<String> = Vec::new();
    // A binary without an interpreter (static) needs no loader; one whose
    // interpreter cannot be found is started directly, and exec says why.
    if spec.rootfs.is_some()
        && let Some(loader) = interpreter(exe).and_then(|p| std::fs::canonicalize(p).ok())
        && let Some(libs) = loader.parent()
    {
        spec.mounts.push(bind(libs.to_path_buf(), LIBS));
        spec.mounts.push(bind(loader.clone(), LOADER));
        argv.extend([LOADER, "--library-path", LIBS].map(str::to_string));
    }
    argv.push(INSIDE.to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    spec.argv = argv;
}

/// The ELF interpreter (`PT_INTERP`) of a 64-bit little-endian executable.
fn interpreter(exe: &Path) -> Option<PathBuf> {
    let mut file = std::fs::File::open(exe).ok()?;
    let mut head = vec![0u8; 64 << 10];
    let n = file.read(&mut head).ok()?;
    let head = &head[..n];
    let u16_at = |o: usize| Some(u16::from_le_bytes(head.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(head.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(head.get(o..o + 8)?.try_into().ok()?));
    // "\x7fELF", 64-bit, little-endian.
    if head.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 3 {
            continue; // not PT_INTERP
        }
        let off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let len = usize::try_from(u64_at(ph + 32)?).ok()?;
        let raw = head.get(off..off.checked_add(len)?)?;
        let path = raw.split(|&b| b == 0).next()?;
        return Some(PathBuf::from(std::str::from_utf8(path).ok()?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_a_dynamic_binary() {
        let interp = interpreter(Path::new("/usr/bin/true")).expect("true is dynamic");
        assert!(interp.is_absolute(), "{}", interp.display());
        assert!(
            interp.to_string_lossy().contains("ld-linux"),
            "{}",
            interp.display()
        );
        assert_eq!(interpreter(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn host_trees_run_the_binary_directly_templates_through_the_loader() {
        let exe = Path::new("/usr/bin/true");
        let mut spec = SandboxSpec::new(Vec::new());
        reexec(&mut spec, exe, &["agent"]);
        assert_eq!(spec.argv, [INSIDE, "agent"]);
        assert_eq!(spec.mounts.len(), 1);

        let mut spec = SandboxSpec::new(Vec::new());
        spec.rootfs = Some("/some/template".into());
        reexec(&mut spec, exe, &["agent"]);
        assert_eq!(spec.argv, [LOADER, "--library-path", LIBS, INSIDE, "agent"]);
        let targets: Vec<_> = spec.mounts.iter().map(|m| m.target.clone()).collect();
        assert_eq!(targets, [PathBuf::from(INSIDE), LIBS.into(), LOADER.into()]);
    }
}
