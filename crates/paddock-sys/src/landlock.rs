//! Landlock, with the raw system calls: `landlock_create_ruleset`,
//! `landlock_add_rule` and `landlock_restrict_self`.
//!
//! [`restrict_self`] runs in the sandbox's own process between `fork` and
//! `execve`, so it is allocation-free: it takes borrowed, prepared paths, its
//! structs live on the stack and its errors are plain [`Errno`] values.
//!
//! The ruleset handles every filesystem right the running kernel knows
//! (the ABI is read with [`abi_version`]), so whatever is not granted below a
//! listed path is denied. Network rights (ABI 4) are left unhandled on
//! purpose: the sandbox has its own network namespace, and programs must be
//! able to listen on and connect to its loopback.
//!
//! Uapi reference: `include/uapi/linux/landlock.h`. libc 0.2 has the syscall
//! numbers but not the structs and constants, which are defined here.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

/// `LANDLOCK_CREATE_RULESET_VERSION`: ask for the ABI version.
const CREATE_RULESET_VERSION: u32 = 1 << 0;
/// `LANDLOCK_RULE_PATH_BENEATH`.
const RULE_PATH_BENEATH: u32 = 1;

/// Execute a file (ABI 1).
pub const ACCESS_FS_EXECUTE: u64 = 1 << 0;
/// Open a file with write access (ABI 1).
pub const ACCESS_FS_WRITE_FILE: u64 = 1 << 1;
/// Open a file with read access (ABI 1).
pub const ACCESS_FS_READ_FILE: u64 = 1 << 2;
/// Open a directory or list its content (ABI 1).
pub const ACCESS_FS_READ_DIR: u64 = 1 << 3;
/// Remove an empty directory or rename one (ABI 1).
pub const ACCESS_FS_REMOVE_DIR: u64 = 1 << 4;
/// Unlink or rename a file (ABI 1).
pub const ACCESS_FS_REMOVE_FILE: u64 = 1 << 5;
/// Create, rename or link a character device (ABI 1).
pub const ACCESS_FS_MAKE_CHAR: u64 = 1 << 6;
/// Create or rename a directory (ABI 1).
pub const ACCESS_FS_MAKE_DIR: u64 = 1 << 7;
/// Create, rename or link a regular file (ABI 1).
pub const ACCESS_FS_MAKE_REG: u64 = 1 << 8;
/// Create, rename or link a UNIX domain socket (ABI 1).
pub const ACCESS_FS_MAKE_SOCK: u64 = 1 << 9;
/// Create, rename or link a named pipe (ABI 1).
pub const ACCESS_FS_MAKE_FIFO: u64 = 1 << 10;
/// Create, rename or link a block device (ABI 1).
pub const ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
/// Create, rename or link a symbolic link (ABI 1).
pub const ACCESS_FS_MAKE_SYM: u64 = 1 << 12;
/// Link or rename a file from or to a different directory (ABI 2).
pub const ACCESS_FS_REFER: u64 = 1 << 13;
/// Truncate a file (ABI 3).
pub const ACCESS_FS_TRUNCATE: u64 = 1 << 14;
/// `ioctl` on a character or block device opened after the restriction (ABI 5).
pub const ACCESS_FS_IOCTL_DEV: u64 = 1 << 15;

/// Deny connecting to abstract UNIX sockets created outside the domain (ABI 6).
pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
/// Deny sending signals to processes outside the domain (ABI 6).
pub const SCOPE_SIGNAL: u64 = 1 << 1;

/// The rights that apply to a file that is not a directory; a rule on such a
/// file may only grant these.
const ACCESS_FILE: u64 = ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV;

/// What `read_exec` paths get.
pub const READ_EXEC: u64 = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR;

/// `struct landlock_ruleset_attr`. Its size grew with the ABI: 8 bytes (1–3),
/// 16 with `handled_access_net` (4–5), 24 with `scoped` (6+).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr`, packed in the uapi header.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The outcome of [`restrict_self`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The calling thread is now restricted.
    Enforced {
        /// The kernel's Landlock ABI version.
        abi: u32,
        /// Whether the signal and abstract-socket scopes were applied (asked
        /// for and ABI >= 6).
        scoped: bool,
    },
    /// The kernel has no Landlock, or it is disabled at boot: nothing was
    /// restricted (`no_new_privs` is set all the same).
    NotSupported,
}

/// The Landlock ABI version of the running kernel, or `None` when the
/// kernel lacks Landlock (`ENOSYS`) or has it disabled (`EOPNOTSUPP`).
pub fn abi_version() -> Option<u32> {
    // SAFETY: with a null attribute, a zero size and the VERSION flag the
    // kernel reads no memory and only returns the version.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION as libc::c_ulong,
        )
    };
    u32::try_from(rc).ok().filter(|&abi| abi > 0)
}

/// Every filesystem right that ABI `abi` knows.
pub const fn handled_access_fs(abi: u32) -> u64 {
    let mut rights = (1 << 13) - 1; // ABI 1: EXECUTE ..= MAKE_SYM
    if abi >= 2 {
        rights |= ACCESS_FS_REFER;
    }
    if abi >= 3 {
        rights |= ACCESS_FS_TRUNCATE;
    }
    if abi >= 5 {
        rights |= ACCESS_FS_IOCTL_DEV;
    }
    rights
}

/// The errno of the last failed `libc` call, without allocating.
fn last_errno() -> Errno {
    let code = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    Errno::from_raw_os_error(code)
}

/// Restricts the calling thread, and the processes it later starts, to the
/// listed paths: `read_exec` paths (and what is below them) can be read,
/// listed and executed; `read_write` paths get every right the ruleset
/// handles (create, write, remove, rename, truncate, device ioctls, …).
/// Everything else on the filesystem is denied (`EACCES`).
///
/// With `scope` and ABI >= 6 the thread also can no longer signal processes
/// outside its Landlock domain nor connect to abstract UNIX sockets created
/// outside it.
///
/// - Paths that do not exist (`ENOENT`, `ENOTDIR`) are skipped; other errors
///   opening a path are returned. Symbolic links are followed: the rule is
///   on the target.
/// - A path that is not a directory gets only the rights that apply to a
///   file.
/// - Sets `no_new_privs` first (Landlock requires it of an unprivileged
///   caller), even when Landlock turns out to be unsupported.
/// - With ABI 1, which cannot handle `REFER`, a file can never be renamed
///   or linked into another directory (a kernel rule).
///
/// Allocation-free: safe between `fork` and `execve`.
pub fn restrict_self(
    read_exec: &[&CStr],
    read_write: &[&CStr],
    scope: bool,
) -> Result<Status, Errno> {
    rustix::thread::set_no_new_privs(true)?;
    let Some(abi) = abi_version() else {
        return Ok(Status::NotSupported);
    };
    let handled = handled_access_fs(abi);
    let scoped = scope && abi >= 6;
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
        scoped: if scoped {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    let size: usize = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => 24,
    };
    // SAFETY: `attr` is a live, initialised `landlock_ruleset_attr` of at
    // least `size` bytes; the kernel copies `size` bytes from it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &raw const attr,
            size,
            0 as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::INVAL)?;
    // SAFETY: the kernel just returned this new file descriptor; nothing else
    // owns it.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd) };

    for path in read_exec {
        add_path(&ruleset, path, READ_EXEC & handled)?;
    }
    for path in read_write {
        add_path(&ruleset, path, handled)?;
    }

    // SAFETY: plain integer arguments; the kernel only reads the ruleset fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            ruleset.as_raw_fd() as libc::c_long,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(Status::Enforced { abi, scoped })
}

/// Adds a path-beneath rule granting `access` below `path`.
fn add_path(ruleset: &OwnedFd, path: &CStr, access: u64) -> Result<(), Errno> {
    let fd = match rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
        Err(e) => return Err(e),
    };
    let stat = rustix::fs::fstat(&fd)?;
    let access = if FileType::from_raw_mode(stat.st_mode).is_dir() {
        access
    } else {
        access & ACCESS_FILE
    };
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: fd.as_raw_fd(),
    };
    // SAFETY: `attr` is a live `landlock_path_beneath_attr` (packed, as the
    // kernel expects) holding an open fd; the kernel copies it and does not
    // keep the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd() as libc::c_long,
            RULE_PATH_BENEATH as libc::c_ulong,
            &raw const attr,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    // `fd` is closed here.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_layout() {
        assert_eq!(size_of::<RulesetAttr>(), 24);
        assert_eq!(size_of::<PathBeneathAttr>(), 12);
    }

    #[test]
    fn rights_per_abi() {
        assert_eq!(handled_access_fs(1), 0x1fff);
        assert_eq!(handled_access_fs(2), 0x3fff);
        assert_eq!(handled_access_fs(3), 0x7fff);
        assert_eq!(handled_access_fs(4), 0x7fff);
        assert_eq!(handled_access_fs(5), 0xffff);
        assert_eq!(handled_access_fs(7), 0xffff);
        assert_eq!(READ_EXEC & !ACCESS_FILE, ACCESS_FS_READ_DIR);
    }
}
