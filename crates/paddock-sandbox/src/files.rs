//! Files in a sandbox, from the host: streamed in and out in chunks.
//!
//! Paths are the sandbox's own (relative ones start at `/home/user`); the
//! agent resolves them inside the sandbox, so nothing of the host can be
//! named.

use paddock_agent::proto::{AgentError, CHUNK, ErrorKind, FileInfo, Kind, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::channel::{Chunk, Event, decode};
use crate::{Sandbox, SandboxError};

impl Sandbox {
    fn max_read(&self) -> u64 {
        // A file cannot be larger than the sandbox's disk.
        self.inner.spec.limits.disk_bytes.max(1)
    }

    /// Reads a whole file.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let mut buf = Vec::new();
        self.read_file_to(path, &mut buf).await?;
        Ok(buf)
    }

    /// Streams a file into `w` chunk by chunk; returns its description.
    pub async fn read_file_to<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        mut w: W,
    ) -> Result<FileInfo, SandboxError> {
        let mut call = self
            .call(&Request::FileRead {
                path: path.to_string(),
                max_bytes: self.max_read(),
            })
            .await?;
        loop {
            match self.next_event(&mut call).await? {
                Event::Chunk(Chunk::Data(d)) if !d.is_empty() => w.write_all(&d).await?,
                Event::Chunk(_) => {}
                Event::Reply(r) => {
                    w.flush().await?;
                    return decode(r);
                }
            }
        }
    }

    /// Writes `data` to `path` (created, or replaced as a whole).
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<FileInfo, SandboxError> {
        self.write_file_from(path, data, Some(data.len() as u64), None)
            .await
    }

    /// Streams `r` into `path`; `size`, when known, is checked against the
    /// sandbox's free disk space before anything is sent. `mode` defaults
    /// to 0644 for a new file.
    pub async fn write_file_from<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mut r: R,
        size: Option<u64>,
        mode: Option<u32>,
    ) -> Result<FileInfo, SandboxError> {
        let disk = self.inner.spec.limits.disk_bytes;
        if let Some(size) = size
            && size > disk
        {
            return Err(SandboxError::Agent(AgentError::new(
                ErrorKind::TooLarge,
                format!(
                    "{path}: {size} bytes is more than the sandbox's whole disk ({disk} bytes)"
                ),
            )));
        }
        let mut call = self
            .call(&Request::FileWrite {
                path: path.to_string(),
                mode,
                size,
            })
            .await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if call.send(Kind::Data, buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
        let _ = call.send(Kind::Data, Vec::new()).await;
        self.finish(&mut call).await
    }

    /// Lists a directory (name, type, size, mode, mtime), sorted by name.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileInfo>, SandboxError> {
        self.simple(Request::FileList {
            path: path.to_string(),
        })
        .await
    }

    /// Describes one path (a symlink itself, not its target).
    pub async fn stat(&self, path: &str) -> Result<FileInfo, SandboxError> {
        self.simple(Request::FileStat {
            path: path.to_string(),
        })
        .await
    }

    /// Makes a directory; with `parents`, also its missing parents.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), SandboxError> {
        self.simple(Request::Mkdir {
            path: path.to_string(),
            parents,
        })
        .await
    }

    /// Removes a file or an (empty, unless `recursive`) directory.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), SandboxError> {
        self.simple(Request::Remove {
            path: path.to_string(),
            recursive,
        })
        .await
    }

    /// Renames (moves) a path inside the sandbox.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), SandboxError> {
        self.simple(Request::Rename {
            from: from.to_string(),
            to: to.to_string(),
        })
        .await
    }

    async fn simple<T: serde::de::DeserializeOwned>(
        &self,
        request: Request,
    ) -> Result<T, SandboxError> {
        let mut call = self.call(&request).await?;
        self.finish(&mut call).await
    }
}
