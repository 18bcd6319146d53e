//! The framed protocol between the host and the agent.
//!
//! One stream socket (a socketpair; the agent's end is fd 3) carries frames
//! in both directions:
//!
//! ```text
//! u32 LE  length of what follows (id + kind + payload), at most MAX_FRAME
//! u32 LE  request id, chosen by the host; every frame belongs to one request
//! u8      kind (see [`Kind`])
//! ...     payload
//! ```
//!
//! The host opens a request with a `Request` frame (JSON, [`Request`]),
//! optionally follows it with `Data` frames (stdin of an exec, the contents
//! of a file being written; an empty `Data` frame is end-of-data) and may
//! send `Cancel` (empty payload) to give up on it. The agent answers with any
//! number of `Stdout`/`Stderr` chunks (raw bytes, in the order produced) or
//! `Data` chunks (a file being read; empty = end), then exactly one `Reply`
//! (JSON, [`Reply`]), after which the id is free again.
//!
//! The agent runs as the sandbox's unprivileged user, so the host treats
//! everything it sends as untrusted input: frame sizes are bounded, unknown
//! ids are ignored, and malformed JSON ends the sandbox.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame (id + kind + payload) either side accepts.
pub const MAX_FRAME: usize = 1 << 20;
/// Size of the chunks streamed data is cut into.
pub const CHUNK: usize = 256 << 10;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host → agent: a new request (JSON [`Request`]).
    Request = 1,
    /// Both ways: a chunk of streamed data; empty means end of data.
    Data = 2,
    /// Host → agent: give up on the request (kill the command, interrupt
    /// the code).
    Cancel = 3,
    /// Agent → host: a chunk of standard output.
    Stdout = 16,
    /// Agent → host: a chunk of standard error.
    Stderr = 17,
    /// Agent → host: the final answer (JSON [`Reply`]).
    Reply = 18,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Request,
            2 => Kind::Data,
            3 => Kind::Cancel,
            16 => Kind::Stdout,
            17 => Kind::Stderr,
            18 => Kind::Reply,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The request it belongs to.
    pub id: u32,
    /// What it carries.
    pub kind: Kind,
    /// The bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame with a JSON payload.
    pub fn json<T: Serialize>(id: u32, kind: Kind, value: &T) -> Frame {
        // Serialising our own plain data types cannot fail.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        Frame { id, kind, payload }
    }

    /// Decodes the JSON payload.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ProtoError> {
        serde_json::from_slice(&self.payload).map_err(|e| ProtoError::Json(e.to_string()))
    }
}

/// A broken channel.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The other side closed the channel.
    #[error("channel closed")]
    Closed,
    /// A frame larger than [`MAX_FRAME`] or shorter than its header.
    #[error("bad frame length {0}")]
    Length(usize),
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A JSON payload that does not parse.
    #[error("malformed message: {0}")]
    Json(String),
    /// The socket failed.
    #[error("channel: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame; `Err(Closed)` on a clean EOF between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(5..=MAX_FRAME).contains(&len) {
        return Err(ProtoError::Length(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            e.into()
        }
    })?;
    let id = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let kind = Kind::from_u8(buf[4]).ok_or(ProtoError::Kind(buf[4]))?;
    buf.drain(..5);
    Ok(Frame {
        id,
        kind,
        payload: buf,
    })
}

/// Writes one frame (header and payload in one write).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), ProtoError> {
    let len = frame.payload.len() + 5;
    if len > MAX_FRAME {
        return Err(ProtoError::Length(len));
    }
    let mut buf = Vec::with_capacity(len + 4);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&frame.id.to_le_bytes());
    buf.push(frame.kind as u8);
    buf.extend_from_slice(&frame.payload);
    w.write_all(&buf).await?;
    Ok(())
}

/// An id of a code context, unique within one sandbox.
pub type ContextId = u64;

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Pong`].
    Ping,
    /// Run a command; answered with [`ExecReply`] after the output chunks.
    Exec(ExecRequest),
    /// Start an interpreter; answered with [`ContextInfo`].
    ContextCreate {
        /// `python`, `javascript` or `bash`.
        language: String,
        /// Working directory (default `/home/user`).
        cwd: Option<String>,
        /// Environment (default: the sandbox's default environment).
        env: Option<Vec<(String, String)>>,
    },
    /// Run code in a context; answered with [`RunReply`].
    ContextRun {
        /// The context.
        context: ContextId,
        /// The code.
        code: String,
        /// Wall-clock limit in milliseconds.
        timeout_ms: u64,
        /// Bytes of each output stream forwarded; the rest is dropped.
        output_limit: u64,
    },
    /// Ask whether `code` is a complete cell; answered with
    /// [`crate::interp::Completeness`].
    ContextComplete {
        /// The context.
        context: ContextId,
        /// The code so far.
        code: String,
    },
    /// Interrupt whatever the context is running (SIGINT); answered with
    /// `null`.
    ContextInterrupt {
        /// The context.
        context: ContextId,
    },
    /// Replace the context's interpreter by a fresh one (state is lost);
    /// answered with [`ContextInfo`].
    ContextRestart {
        /// The context.
        context: ContextId,
    },
    /// Delete the context and end its interpreter; answered with `null`.
    ContextDelete {
        /// The context.
        context: ContextId,
    },
    /// List contexts; answered with a list of [`ContextInfo`].
    ContextList,
    /// Read a file; answered with `Data` chunks, then [`FileInfo`].
    FileRead {
        /// The path (relative paths start at `/home/user`).
        path: String,
        /// Refuse files larger than this.
        max_bytes: u64,
    },
    /// Write a file from the `Data` frames that follow (created or
    /// truncated); answered with [`FileInfo`].
    FileWrite {
        /// The path.
        path: String,
        /// Permission bits for a new file (default 0644).
        mode: Option<u32>,
        /// The size the host is about to send, if it knows it (checked
        /// against the free space first).
        size: Option<u64>,
    },
    /// List a directory; answered with a list of [`FileInfo`].
    FileList {
        /// The directory.
        path: String,
    },
    /// Describe one path (without following a final symlink); answered
    /// with [`FileInfo`].
    FileStat {
        /// The path.
        path: String,
    },
    /// Make a directory; answered with `null`.
    Mkdir {
        /// The directory.
        path: String,
        /// Also make missing parents, and accept an existing directory.
        parents: bool,
    },
    /// Remove a file or directory; answered with `null`.
    Remove {
        /// The path.
        path: String,
        /// Remove a non-empty directory with everything in it.
        recursive: bool,
    },
    /// Rename (move) a path; answered with `null`.
    Rename {
        /// Current path.
        from: String,
        /// New path.
        to: String,
    },
}

/// A command to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments (a program without `/` is looked up in `PATH`).
    pub argv: Vec<String>,
    /// Working directory (default `/home/user`).
    pub cwd: Option<String>,
    /// The complete environment (default: the sandbox's default one).
    pub env: Option<Vec<(String, String)>>,
    /// Whether `Data` frames with stdin follow (else stdin is `/dev/null`).
    pub stdin: bool,
    /// Wall-clock limit in milliseconds.
    pub timeout_ms: u64,
    /// Bytes of each output stream forwarded; the rest is dropped.
    pub output_limit: u64,
}

/// The agent's final answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Success; the value's shape depends on the request.
    Ok(serde_json::Value),
    /// Failure.
    Err(AgentError),
}

/// Why the agent could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// The category.
    pub kind: ErrorKind,
    /// What went wrong, in words.
    pub message: String,
    /// For [`ErrorKind::ContextDied`]: how the interpreter ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

impl AgentError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AgentError {
        AgentError {
            kind,
            message: message.into(),
            exit: None,
        }
    }
}

/// Categories of [`AgentError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or names something impossible.
    InvalidRequest,
    /// No such context, file or directory.
    NotFound,
    /// The path already exists.
    AlreadyExists,
    /// The sandbox's user may not do that.
    PermissionDenied,
    /// A size limit (disk, file size, output) was hit.
    TooLarge,
    /// The language is not one paddock knows.
    UnknownLanguage,
    /// The context's interpreter is dead (see `exit`); restart or delete it.
    ContextDied,
    /// The program to run does not exist.
    ProgramNotFound,
    /// The program exists but cannot be executed.
    NotExecutable,
    /// Any other I/O error.
    Io,
    /// The request was cancelled.
    Cancelled,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if a signal killed it.
    pub signal: Option<i32>,
}

/// Answer to [`Request::Ping`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// Contexts alive in the agent.
    pub contexts: usize,
    /// Requests in flight (this ping included).
    pub in_flight: usize,
}

/// Answer to [`Request::Exec`]. The output itself came as chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecReply {
    /// `exited`, `signaled` or `timeout` (the host turns a kill by the
    /// memory limit into `oom`).
    pub status: paddock_types::Status,
    /// Exit code when it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended it.
    pub signal: Option<i32>,
    /// Bytes of stdout produced (also those dropped over the limit).
    pub stdout_bytes: u64,
    /// Bytes of stderr produced.
    pub stderr_bytes: u64,
    /// Whether stdout went over the limit.
    pub stdout_truncated: bool,
    /// Whether stderr went over the limit.
    pub stderr_truncated: bool,
    /// From start to end of the process.
    pub wall_time_ms: f64,
    /// CPU time of the process and its waited-for children.
    pub cpu_time_ms: f64,
    /// Peak resident memory of the process (or its largest child).
    pub memory_peak_bytes: u64,
}

/// A context, as created, restarted or listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextInfo {
    /// Its id.
    pub id: ContextId,
    /// Its language.
    pub language: String,
    /// The interpreter's pid inside the sandbox (`None` when dead).
    pub pid: Option<i32>,
    /// How the interpreter ended, if it is dead.
    pub exit: Option<ExitInfo>,
}

/// How a run of code ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The code ran to the end.
    Ok,
    /// The code raised an exception (see `error`).
    Error,
    /// The time limit was hit; the code was interrupted (or the interpreter
    /// restarted, see `restarted`).
    Timeout,
}

/// Answer to [`Request::ContextRun`]. The output came as chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReply {
    /// How it ended.
    pub status: RunStatus,
    /// Text form of the last expression's value, if any.
    pub result: Option<String>,
    /// The exception, if any.
    pub error: Option<crate::interp::ErrorInfo>,
    /// The interpreter could not be interrupted and was replaced by a fresh
    /// one: every variable of the context is gone.
    pub restarted: bool,
    /// Whether stdout went over the limit.
    pub stdout_truncated: bool,
    /// Whether stderr went over the limit.
    pub stderr_truncated: bool,
    /// From start to end of the run.
    pub wall_time_ms: f64,
}

/// One entry of a directory listing (or a stat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    /// File name (the last component; the whole path for a stat).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let frame = Frame::json(7, Kind::Request, &Request::Ping);
        write_frame(&mut a, &frame).await.unwrap();
        write_frame(
            &mut a,
            &Frame {
                id: 8,
                kind: Kind::Data,
                payload: vec![],
            },
        )
        .await
        .unwrap();
        let got = read_frame(&mut b).await.unwrap();
        assert_eq!(got, frame);
        assert_eq!(got.parse::<Request>().unwrap(), Request::Ping);
        let empty = read_frame(&mut b).await.unwrap();
        assert_eq!(
            (empty.id, empty.kind, empty.payload.len()),
            (8, Kind::Data, 0)
        );

        a.write_all(&(MAX_FRAME as u32 + 1).to_le_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ProtoError::Length(_))
        ));
        drop(a);
    }

    #[tokio::test]
    async fn eof_between_frames_is_closed() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(ProtoError::Closed)));
    }

    #[test]
    fn requests_are_tagged_json() {
        let r = Request::Remove {
            path: "a".into(),
            recursive: true,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"remove","path":"a","recursive":true}"#);
        let reply = Reply::Err(AgentError::new(ErrorKind::NotFound, "no"));
        let s = serde_json::to_string(&reply).unwrap();
        assert_eq!(s, r#"{"err":{"kind":"not_found","message":"no"}}"#);
    }
}
