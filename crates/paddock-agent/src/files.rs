//! Files: read, write, list, stat, mkdir, remove, rename.
//!
//! The agent runs inside the sandbox as its user, so every path — relative
//! (to `/home/user`), absolute, with `..` or through symlinks — resolves in
//! the sandbox's own mount namespace: the host's files are simply not
//! there. What the user may not write (Landlock, read-only binds) fails
//! with "permission denied". Only regular files are read or written, opened
//! non-blocking, so a FIFO cannot wedge the agent. Writes go to a temporary
//! file renamed over the target at the end: a reader never sees half a file
//! and a failed write leaves the old one.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::exec::DEFAULT_CWD;
use crate::proto::{AgentError, CHUNK, ErrorKind, FileInfo, Kind};
use crate::server::Output;

/// Most entries one listing returns.
pub const MAX_LIST: usize = 100_000;

fn resolve(path: &str) -> Result<PathBuf, AgentError> {
    if path.is_empty() {
        return Err(AgentError::new(ErrorKind::InvalidRequest, "empty path"));
    }
    if path.contains('\0') {
        return Err(AgentError::new(
            ErrorKind::InvalidRequest,
            "path contains a NUL byte",
        ));
    }
    Ok(Path::new(DEFAULT_CWD).join(path))
}

/// Maps an I/O error to the protocol's categories, naming the path.
fn fail(path: &Path, e: std::io::Error) -> AgentError {
    use std::io::ErrorKind as K;
    let p = path.display();
    let (kind, msg) = match e.kind() {
        K::NotFound => (
            ErrorKind::NotFound,
            format!("{p}: no such file or directory"),
        ),
        K::AlreadyExists => (ErrorKind::AlreadyExists, format!("{p}: already exists")),
        K::PermissionDenied => (
            ErrorKind::PermissionDenied,
            format!(
                "{p}: permission denied (the sandbox's user may write only under /home/user, /tmp and writable mounts)"
            ),
        ),
        K::ReadOnlyFilesystem => (
            ErrorKind::PermissionDenied,
            format!("{p}: read-only file system"),
        ),
        K::StorageFull | K::QuotaExceeded => (
            ErrorKind::TooLarge,
            format!("{p}: no space left on the sandbox's disk (see its disk limit)"),
        ),
        K::FileTooLarge => (
            ErrorKind::TooLarge,
            format!("{p}: file too large for the sandbox's disk limit"),
        ),
        K::DirectoryNotEmpty => (
            ErrorKind::InvalidRequest,
            format!("{p}: directory not empty (remove it recursively)"),
        ),
        K::IsADirectory => (ErrorKind::InvalidRequest, format!("{p}: is a directory")),
        K::NotADirectory => (ErrorKind::InvalidRequest, format!("{p}: not a directory")),
        _ => (ErrorKind::Io, format!("{p}: {e}")),
    };
    AgentError::new(kind, msg)
}

fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "other"
    }
}

fn info(name: String, meta: &Metadata) -> FileInfo {
    FileInfo {
        name,
        kind: kind_of(meta).to_string(),
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        mtime: meta.mtime(),
    }
}

fn open_regular(path: &Path, opts: &mut OpenOptions) -> Result<(File, Metadata), AgentError> {
    let file = opts
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(path, e))?;
    let meta = file.metadata().map_err(|e| fail(path, e))?;
    if meta.is_dir() {
        return Err(fail(path, std::io::ErrorKind::IsADirectory.into()));
    }
    if !meta.is_file() {
        return Err(AgentError::new(
            ErrorKind::InvalidRequest,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok((file, meta))
}

/// Streams the file at `path` to the host as `Data` frames, then an empty
/// one; answers with its [`FileInfo`].
pub(crate) async fn read(path: &str, max_bytes: u64, out: &Output) -> Result<FileInfo, AgentError> {
    let path = resolve(path)?;
    let (mut file, meta) = open_regular(&path, OpenOptions::new().read(true))?;
    if meta.len() > max_bytes {
        return Err(AgentError::new(
            ErrorKind::TooLarge,
            format!(
                "{}: {} bytes is more than the {max_bytes} bytes allowed for one read",
                path.display(),
                meta.len()
            ),
        ));
    }
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).map_err(|e| fail(&path, e))?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        if sent > max_bytes {
            return Err(AgentError::new(
                ErrorKind::TooLarge,
                format!(
                    "{}: grew past {max_bytes} bytes while being read",
                    path.display()
                ),
            ));
        }
        buf.truncate(n);
        out.send(Kind::Data, buf).await;
    }
    out.send(Kind::Data, Vec::new()).await;
    Ok(info(path.display().to_string(), &meta))
}

fn fsize_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Fsize)
        .current
        .unwrap_or(u64::MAX)
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

static TEMP: AtomicU64 = AtomicU64::new(0);

/// Writes the `data` chunks to `path` (created with `mode`, or replaced);
/// `size` is checked against the free space first when given.
pub(crate) async fn write(
    path: &str,
    mode: Option<u32>,
    size: Option<u64>,
    mut data: mpsc::UnboundedReceiver<Vec<u8>>,
    cancel: Arc<Notify>,
) -> Result<FileInfo, AgentError> {
    let path = resolve(path)?;
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = path
        .file_name()
        .ok_or_else(|| AgentError::new(ErrorKind::InvalidRequest, "path names no file"))?
        .to_string_lossy()
        .into_owned();
    let limit = fsize_limit();
    if let Some(size) = size {
        let free = free_bytes(&dir);
        if size > limit || free.is_some_and(|f| size > f) {
            return Err(AgentError::new(
                ErrorKind::TooLarge,
                format!(
                    "{}: {size} bytes do not fit (free on the sandbox's disk: {} bytes)",
                    path.display(),
                    free.map_or("unknown".to_string(), |f| f.to_string())
                ),
            ));
        }
    }
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        return Err(fail(&path, std::io::ErrorKind::IsADirectory.into()));
    }
    let temp = dir.join(format!(
        ".{name}.paddock-{}-{}",
        std::process::id(),
        TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    let result = async {
        let (mut file, _) = open_regular(
            &temp,
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode.unwrap_or(0o644) & 0o7777),
        )
        .map_err(|e| AgentError {
            message: e
                .message
                .replace(&temp.display().to_string(), &path.display().to_string()),
            ..e
        })?;
        let mut written = 0u64;
        loop {
            let chunk = tokio::select! {
                c = data.recv() => c,
                _ = cancel.notified() => {
                    return Err(AgentError::new(ErrorKind::Cancelled, "cancelled"));
                }
            };
            let Some(chunk) = chunk else { break };
            written += chunk.len() as u64;
            // Past RLIMIT_FSIZE the kernel would send us SIGXFSZ.
            if written > limit {
                return Err(fail(&path, std::io::ErrorKind::FileTooLarge.into()));
            }
            file.write_all(&chunk).map_err(|e| fail(&path, e))?;
        }
        if let Some(mode) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| fail(&path, e))?;
        }
        std::fs::rename(&temp, &path).map_err(|e| fail(&path, e))?;
        let meta = std::fs::metadata(&path).map_err(|e| fail(&path, e))?;
        Ok(info(path.display().to_string(), &meta))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Lists the directory at `path`, sorted by name.
pub(crate) fn list(path: &str) -> Result<Vec<FileInfo>, AgentError> {
    let path = resolve(path)?;
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(|e| fail(&path, e))? {
        let entry = entry.map_err(|e| fail(&path, e))?;
        if entries.len() == MAX_LIST {
            return Err(AgentError::new(
                ErrorKind::TooLarge,
                format!("{}: more than {MAX_LIST} entries", path.display()),
            ));
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        // An entry removed meanwhile is simply left out.
        if let Ok(meta) = entry.metadata() {
            entries.push(info(name, &meta));
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Describes `path` itself (a symlink is not followed).
pub(crate) fn stat(path: &str) -> Result<FileInfo, AgentError> {
    let path = resolve(path)?;
    let meta = std::fs::symlink_metadata(&path).map_err(|e| fail(&path, e))?;
    Ok(info(path.display().to_string(), &meta))
}

/// Makes a directory (and its parents when asked).
pub(crate) fn mkdir(path: &str, parents: bool) -> Result<(), AgentError> {
    let path = resolve(path)?;
    let made = if parents {
        std::fs::create_dir_all(&path)
    } else {
        std::fs::create_dir(&path)
    };
    made.map_err(|e| fail(&path, e))
}

/// Removes a file, a symlink (not its target) or a directory.
pub(crate) fn remove(path: &str, recursive: bool) -> Result<(), AgentError> {
    let path = resolve(path)?;
    if path == Path::new("/") {
        return Err(AgentError::new(
            ErrorKind::InvalidRequest,
            "refusing to remove /",
        ));
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|e| fail(&path, e))?;
    let removed = if meta.is_dir() && recursive {
        std::fs::remove_dir_all(&path)
    } else if meta.is_dir() {
        std::fs::remove_dir(&path)
    } else {
        std::fs::remove_file(&path)
    };
    removed.map_err(|e| fail(&path, e))
}

/// Renames `from` to `to` (replacing a file at `to`).
pub(crate) fn rename(from: &str, to: &str) -> Result<(), AgentError> {
    let (from, to) = (resolve(from)?, resolve(to)?);
    std::fs::rename(&from, &to).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && !from.exists() {
            fail(&from, e)
        } else {
            fail(&to, e)
        }
    })
}
