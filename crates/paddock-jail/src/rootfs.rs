//! The sandbox's root filesystem, planned on the host and built by the child.
//!
//! The parent turns a [`SandboxSpec`] into a list of [`Step`]s with every path
//! already a `CString`; the child (see `child.rs`) executes them without
//! allocating. The resulting tree:
//!
//! | path | what |
//! |---|---|
//! | `/` | a tmpfs of `--disk` size: the writable layer; everything written in the sandbox stays here |
//! | `/usr` | the base's `/usr`, read-only (recursively), nosuid, nodev |
//! | `/bin`, `/lib`, … | the base's top-level links into `/usr` (or read-only binds on non-merged trees) |
//! | `/etc` | generated: passwd, group, hosts, hostname, nsswitch.conf, resolv.conf; read-only binds of the base's ld.so.cache, ssl/certs, ssl/openssl.cnf, alternatives |
//! | `/proc` | a fresh procfs of the sandbox's pid namespace |
//! | `/dev` | null, zero, full, random, urandom, tty (binds of the host nodes), pts (new devpts instance), ptmx, shm, fd, stdin/out/err |
//! | `/tmp`, `/dev/shm` | `1777` directories on the writable layer |
//! | `/home/user` | the user's home, owned by uid 1000 |
//! | `--mount` targets | binds of host paths, read-only unless `rw` |
//!
//! The base is the host's own tree, or the directory given as
//! [`SandboxSpec::rootfs`] (a template: e.g. a debootstrap result).
//!
//! Nothing else of the host exists inside: no `/root`, `/home`, `/sys`, `/run`,
//! `/var`, or the directory paddock was started from.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

use paddock_sys::mount_attr;
use paddock_types::{SANDBOX_GID, SANDBOX_UID, SandboxSpec};

use crate::JailError;

/// The host directory the child mounts its root tmpfs on (inside its own
/// mount namespace only, so the host never sees that mount).
pub const STAGING: &str = "/run/paddock/root";

/// One action of the child's filesystem setup.
#[derive(Debug)]
pub enum Step {
    /// `mkdir` with exactly this mode (the child builds the tree with umask 0).
    Mkdir { path: CString, mode: u32 },
    /// A symbolic link.
    Symlink { target: CString, link: CString },
    /// A file with fixed contents.
    WriteFile {
        path: CString,
        contents: Vec<u8>,
        mode: u32,
    },
    /// `lchown` to the sandbox user (uid/gid inside the sandbox).
    Chown { path: CString, uid: u32, gid: u32 },
    /// A recursive bind of a host path with mount attributes.
    Bind {
        source: CString,
        target: CString,
        attrs: u64,
    },
    /// A new procfs.
    Proc { target: CString },
    /// A new devpts instance.
    Devpts { target: CString },
}

/// A step plus the words that describe it in an error message.
#[derive(Debug)]
pub struct PlannedStep {
    /// What to do.
    pub step: Step,
    /// The step in words ("bind /usr read-only").
    pub what: String,
}

/// The whole filesystem plan.
#[derive(Debug)]
pub struct RootfsPlan {
    /// Where the root tmpfs goes.
    pub staging: CString,
    /// `size=…,mode=755` for the root tmpfs.
    pub tmpfs_data: CString,
    /// The steps, in order.
    pub steps: Vec<PlannedStep>,
}

const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\n\
user:x:1000:1000:user:/home/user:/bin/bash\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nuser:x:1000:\ntty:x:5:\nnogroup:x:65534:\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n";

/// Host files bound read-only into `/etc` when they exist.
const ETC_BINDS: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/alternatives",
];

/// Host device nodes bound into `/dev`.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Top-level entries that merged-/usr hosts make links into `/usr`.
const TOP_LEVEL: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Directories every sandbox has.
const STANDARD_DIRS: &[&str] = &["/home", "/home/user", "/tmp", "/sys", "/dev/shm"];

/// Paths inside the sandbox that `--mount` may not cover.
const RESERVED: &[&str] = &["/proc", "/dev", "/usr", "/etc"];

struct Planner {
    steps: Vec<PlannedStep>,
}

fn cstr(p: impl AsRef<Path>) -> Result<CString, JailError> {
    let p = p.as_ref();
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| JailError::InvalidSpec(format!("path {} contains a NUL byte", p.display())))
}

impl Planner {
    fn push(&mut self, step: Step, what: String) {
        self.steps.push(PlannedStep { step, what });
    }

    /// A path of the sandbox's tree as the child sees it while building it:
    /// the tmpfs is already its root then (see `child.rs`).
    fn inside(path: &str) -> String {
        path.to_string()
    }

    fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), JailError> {
        let p = cstr(Self::inside(path))?;
        self.push(Step::Mkdir { path: p, mode }, format!("mkdir {path}"));
        Ok(())
    }

    fn mkdir_all(&mut self, path: &Path) -> Result<(), JailError> {
        let mut cur = PathBuf::from("/");
        for c in path.components() {
            if let Component::Normal(name) = c {
                cur.push(name);
                let s = cur.to_string_lossy().into_owned();
                self.mkdir(&s, 0o755)?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &str, contents: &str) -> Result<(), JailError> {
        let p = cstr(Self::inside(path))?;
        self.push(
            Step::WriteFile {
                path: p,
                contents: contents.as_bytes().to_vec(),
                mode: 0o644,
            },
            format!("write {path}"),
        );
        Ok(())
    }

    fn bind(&mut self, host: &Path, inside: &str, writable: bool) -> Result<(), JailError> {
        self.bind_with(
            host,
            inside,
            writable,
            mount_attr::NOSUID | mount_attr::NODEV,
        )
    }

    fn bind_with(
        &mut self,
        host: &Path,
        inside: &str,
        writable: bool,
        mut attrs: u64,
    ) -> Result<(), JailError> {
        if !writable {
            attrs |= mount_attr::RDONLY;
        }
        self.push(
            Step::Bind {
                source: cstr(host)?,
                target: cstr(Self::inside(inside))?,
                attrs,
            },
            format!(
                "bind {} to {inside} ({})",
                host.display(),
                if writable { "rw" } else { "ro" }
            ),
        );
        Ok(())
    }

    /// Creates the mount point for `host` at `inside`: a directory for a
    /// directory, an empty file otherwise.
    fn mount_point(&mut self, host: &Path, inside: &str) -> Result<(), JailError> {
        if host.is_dir() {
            self.mkdir(inside, 0o755)
        } else {
            self.file(inside, "")
        }
    }
}

/// Builds the plan for `spec`. `mounts` are the user's binds with their
/// sources already canonicalised.
pub fn plan(
    spec: &SandboxSpec,
    mounts: &[(PathBuf, PathBuf, bool)],
) -> Result<RootfsPlan, JailError> {
    let mut p = Planner { steps: Vec::new() };
    let (uid, gid) = (SANDBOX_UID, SANDBOX_GID);
    let base = base_tree(spec)?;

    // /proc first: the kernel lets a user namespace mount a new proc only
    // while a fully visible one is in its mount namespace, i.e. before the
    // host's tree is detached (`child.rs` does that alongside the rest).
    p.mkdir("/proc", 0o555)?;
    p.push(
        Step::Proc {
            target: cstr(Planner::inside("/proc"))?,
        },
        "mount proc on /proc".into(),
    );

    // /usr and the top-level links into it.
    p.mkdir("/usr", 0o755)?;
    p.bind(&base.join("usr"), "/usr", false)?;
    for name in TOP_LEVEL {
        let host = base.join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host)
                    .map_err(|e| JailError::host(format!("readlink {}", host.display()), e))?;
                p.push(
                    Step::Symlink {
                        target: cstr(&target)?,
                        link: cstr(Planner::inside(&format!("/{name}")))?,
                    },
                    format!("link /{name}"),
                );
            }
            Ok(m) if m.is_dir() => {
                let inside = format!("/{name}");
                p.mkdir(&inside, 0o755)?;
                p.bind(&host, &inside, false)?;
            }
            _ => {}
        }
    }

    // /etc: generated files, plus a few read-only host files programs need.
    p.mkdir("/etc", 0o755)?;
    p.mkdir("/etc/ssl", 0o755)?;
    p.file("/etc/passwd", PASSWD)?;
    p.file("/etc/group", GROUP)?;
    p.file("/etc/nsswitch.conf", NSSWITCH)?;
    p.file("/etc/hostname", &format!("{}\n", spec.hostname))?;
    p.file(
        "/etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            spec.hostname
        ),
    )?;
    p.file("/etc/resolv.conf", "")?;
    for inside in ETC_BINDS {
        let host = base.join(inside.trim_start_matches('/'));
        if host.exists() {
            p.mount_point(&host, inside)?;
            p.bind(&host, inside, false)?;
        }
    }

    // /dev
    p.mkdir("/dev", 0o755)?;
    for node in DEV_NODES {
        let host = PathBuf::from("/dev").join(node);
        if host.exists() {
            let inside = format!("/dev/{node}");
            p.file(&inside, "")?;
            // A device node needs a mount without `nodev` to be usable.
            p.bind_with(
                &host,
                &inside,
                true,
                mount_attr::NOSUID | mount_attr::NOEXEC,
            )?;
        }
    }
    p.mkdir("/dev/pts", 0o755)?;
    p.push(
        Step::Devpts {
            target: cstr(Planner::inside("/dev/pts"))?,
        },
        "mount devpts on /dev/pts".into(),
    );
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        p.push(
            Step::Symlink {
                target: cstr(target)?,
                link: cstr(Planner::inside(link))?,
            },
            format!("link {link}"),
        );
    }
    p.mkdir("/dev/shm", 0o1777)?;

    // Writable places.
    p.mkdir("/tmp", 0o1777)?;
    p.mkdir("/sys", 0o555)?;
    p.mkdir("/home", 0o755)?;
    p.mkdir("/home/user", 0o755)?;
    p.push(
        Step::Chown {
            path: cstr(Planner::inside("/home/user"))?,
            uid,
            gid,
        },
        "chown /home/user".into(),
    );

    // The user's mounts.
    for (source, target, writable) in mounts {
        if let Some(parent) = target.parent() {
            p.mkdir_all(parent)?;
        }
        let inside = target.to_string_lossy().into_owned();
        p.mount_point(source, &inside)?;
        p.bind(source, &inside, *writable)?;
    }

    // The working directory, created for the user when it does not exist yet.
    let under_mount = mounts.iter().any(|(_, t, _)| spec.workdir.starts_with(t));
    if spec.workdir != Path::new("/home/user") && !under_mount {
        let mut cur = PathBuf::from("/");
        for c in spec.workdir.components() {
            let Component::Normal(name) = c else { continue };
            cur.push(name);
            let s = cur.to_string_lossy().into_owned();
            if STANDARD_DIRS.contains(&s.as_str()) {
                continue;
            }
            if RESERVED.iter().any(|r| cur.starts_with(r)) {
                break; // cannot be created there; chdir will say so
            }
            p.mkdir(&s, 0o755)?;
            p.push(
                Step::Chown {
                    path: cstr(Planner::inside(&s))?,
                    uid,
                    gid,
                },
                format!("chown {s}"),
            );
        }
    }

    Ok(RootfsPlan {
        staging: cstr(STAGING)?,
        tmpfs_data: cstr(format!("size={},mode=755", spec.limits.disk_bytes))?,
        steps: p.steps,
    })
}

/// The tree the sandbox's `/usr`, top-level links and `/etc` essentials
/// come from: `/`, or the spec's `rootfs`, which must be an absolute path to
/// a directory with a `usr` directory in it.
fn base_tree(spec: &SandboxSpec) -> Result<PathBuf, JailError> {
    let Some(dir) = &spec.rootfs else {
        return Ok(PathBuf::from("/"));
    };
    let invalid =
        |why: &str| JailError::InvalidSpec(format!("root filesystem {}: {why}", dir.display()));
    if !dir.is_absolute() {
        return Err(invalid("must be an absolute path"));
    }
    let dir = std::fs::canonicalize(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid("does not exist")
        } else {
            invalid(&e.to_string())
        }
    })?;
    if !dir.is_dir() {
        return Err(invalid("is not a directory"));
    }
    if !dir.join("usr").is_dir() {
        return Err(invalid(
            "has no usr/ directory (expected a Linux tree such as a debootstrap result)",
        ));
    }
    Ok(dir)
}

/// Checks the user's mounts: absolute, existing sources (canonicalised, so
/// a symlinked source binds what it points to on the host), and targets that
/// are absolute, free of `..`, and not inside paddock's own trees.
pub fn resolve_mounts(spec: &SandboxSpec) -> Result<Vec<(PathBuf, PathBuf, bool)>, JailError> {
    let mut out = Vec::with_capacity(spec.mounts.len());
    for m in &spec.mounts {
        if !m.source.is_absolute() {
            return Err(JailError::MountSource {
                path: m.source.clone(),
                reason: "must be an absolute path".into(),
            });
        }
        let source = std::fs::canonicalize(&m.source).map_err(|e| JailError::MountSource {
            path: m.source.clone(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist".into()
            } else {
                e.to_string()
            },
        })?;
        let t = &m.target;
        if !t.is_absolute()
            || t.components().any(|c| matches!(c, Component::ParentDir))
            || t == Path::new("/")
        {
            return Err(JailError::InvalidSpec(format!(
                "mount target {} must be an absolute path without '..' and not /",
                t.display()
            )));
        }
        if let Some(r) = RESERVED.iter().find(|r| t.starts_with(r)) {
            return Err(JailError::InvalidSpec(format!(
                "mount target {} is inside {r}, which paddock manages",
                t.display()
            )));
        }
        out.push((source, t.clone(), m.writable));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_types::Mount;

    #[test]
    fn plan_has_the_tree_and_no_host_etc() {
        let spec = SandboxSpec::new(vec!["true".into()]);
        let plan = plan(&spec, &[]).expect("plan");
        let whats: Vec<&str> = plan.steps.iter().map(|s| s.what.as_str()).collect();
        for expected in [
            "bind /usr to /usr (ro)",
            "write /etc/passwd",
            "mount proc on /proc",
            "mount devpts on /dev/pts",
            "mkdir /tmp",
            "chown /home/user",
        ] {
            assert!(whats.contains(&expected), "missing {expected}: {whats:?}");
        }
        assert!(
            !whats
                .iter()
                .any(|w| w.contains("/etc/shadow") || w.contains("bind /etc to"))
        );
        assert!(
            plan.tmpfs_data
                .to_str()
                .expect("utf8")
                .starts_with("size=268435456,")
        );
    }

    #[test]
    fn mounts_are_checked() {
        let mut spec = SandboxSpec::new(vec!["true".into()]);
        spec.mounts.push(Mount {
            source: "/definitely/not/here".into(),
            target: "/data".into(),
            writable: false,
        });
        let err = resolve_mounts(&spec).expect_err("missing source");
        assert!(err.to_string().contains("does not exist"), "{err}");
        spec.mounts[0].source = "relative".into();
        assert!(resolve_mounts(&spec).is_err());
        spec.mounts[0].source = "/tmp".into();
        spec.mounts[0].target = "/proc/x".into();
        assert!(resolve_mounts(&spec).is_err());
        spec.mounts[0].target = "/data".into();
        assert_eq!(resolve_mounts(&spec).expect("ok").len(), 1);
    }
}
