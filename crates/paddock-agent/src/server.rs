//! The agent's main loop: read frames, start one task per request, route
//! streamed data and cancels to it, and write every answer back.
//!
//! One reader (this loop) and one writer task own the two halves of the
//! channel. Requests run concurrently as tasks; what they send goes through
//! a bounded queue to the writer, so a slow host slows producers down
//! instead of growing memory. The table of requests in flight holds only
//! live requests: each task removes its own entry when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};

use crate::contexts::Contexts;
use crate::proto::{self, AgentError, ErrorKind, Frame, Kind, Pong, ProtoError, Reply, Request};
use crate::{exec, files};

/// Where a request task sends its chunks.
#[derive(Clone, Debug)]
pub(crate) struct Output {
    id: u32,
    tx: mpsc::Sender<Frame>,
}

impl Output {
    /// Queues one chunk for the host (waits while the queue is full). A gone
    /// host is noticed by the reader; here it is ignored.
    pub(crate) async fn send(&self, kind: Kind, payload: Vec<u8>) {
        let _ = self
            .tx
            .send(Frame {
                id: self.id,
                kind,
                payload,
            })
            .await;
    }
}

/// What the reader keeps about a request in flight.
struct InFlight {
    /// Where its `Data` frames go (until the empty one).
    data: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Woken by a `Cancel` frame.
    cancel: Arc<Notify>,
}

type Table = Arc<Mutex<HashMap<u32, InFlight>>>;

fn lock(table: &Table) -> std::sync::MutexGuard<'_, HashMap<u32, InFlight>> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a request's entry when its task ends, however it ends.
struct Done {
    id: u32,
    table: Table,
}

impl Drop for Done {
    fn drop(&mut self) {
        lock(&self.table).remove(&self.id);
    }
}

/// Runs the agent on the channel the host passed at fd 3, until the host
/// closes it. This is what `paddock agent` does inside a sandbox.
pub fn run_on_inherited_channel() -> Result<(), std::io::Error> {
    let fd = paddock_sys::take_inherited_fd(3).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no channel at fd 3 ({e}); `paddock agent` runs only inside a sandbox"),
        )
    })?;
    // Code running next to us has our uid: keep it out of our memory
    // (/proc/<pid>/mem needs a dumpable target).
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let (r, w) = stream.into_split();
        match serve(r, w).await {
            Ok(()) | Err(ProtoError::Closed) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    })
}

/// Serves requests read from `r`, answering on `w`, until `r` ends.
pub async fn serve<R, W>(mut r: R, w: W) -> Result<(), ProtoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(write_loop(w, rx));
    let table: Table = Arc::default();
    let contexts = Arc::new(Contexts::default());
    let result = loop {
        let frame = match proto::read_frame(&mut r).await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        match frame.kind {
            Kind::Request => {
                let id = frame.id;
                if lock(&table).contains_key(&id) {
                    eprintln!("paddock agent: request id {id} reused while in flight; ignored");
                    continue;
                }
                let out = Output { id, tx: tx.clone() };
                let request = match frame.parse::<Request>() {
                    Ok(r) => r,
                    Err(e) => {
                        let reply =
                            Reply::Err(AgentError::new(ErrorKind::InvalidRequest, e.to_string()));
                        let _ = tx.send(Frame::json(id, Kind::Reply, &reply)).await;
                        continue;
                    }
                };
                let cancel = Arc::new(Notify::new());
                let (data_tx, data_rx) = if takes_data(&request) {
                    let (t, r) = mpsc::unbounded_channel();
                    (Some(t), Some(r))
                } else {
                    (None, None)
                };
                lock(&table).insert(
                    id,
                    InFlight {
                        data: data_tx,
                        cancel: cancel.clone(),
                    },
                );
                let done = Done {
                    id,
                    table: table.clone(),
                };
                let in_flight = lock(&table).len();
                let contexts = contexts.clone();
                tokio::spawn(async move {
                    let reply =
                        match handle(request, data_rx, cancel, out.clone(), &contexts, in_flight)
                            .await
                        {
                            Ok(v) => Reply::Ok(v),
                            Err(e) => Reply::Err(e),
                        };
                    // ORDER: leave the table before answering, so that the
                    // host may reuse the id as soon as it has the reply.
                    drop(done);
                    let _ = out.tx.send(Frame::json(out.id, Kind::Reply, &reply)).await;
                });
            }
            Kind::Data => {
                let mut table = lock(&table);
                if let Some(entry) = table.get_mut(&frame.id) {
                    if frame.payload.is_empty() {
                        entry.data = None;
                    } else if let Some(data) = &entry.data {
                        let _ = data.send(frame.payload);
                    }
                }
            }
            Kind::Cancel => {
                if let Some(entry) = lock(&table).get(&frame.id) {
                    entry.cancel.notify_one();
                }
            }
            Kind::Stdout | Kind::Stderr | Kind::Reply => {
                eprintln!(
                    "paddock agent: ignoring a {:?} frame from the host",
                    frame.kind
                );
            }
        }
    };
    // The host is gone: end every context and command with us.
    contexts.shutdown().await;
    drop(tx);
    let _ = writer.await;
    result
}

fn takes_data(request: &Request) -> bool {
    match request {
        Request::Exec(e) => e.stdin,
        Request::FileWrite { .. } => true,
        _ => false,
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        if proto::write_frame(&mut w, &frame).await.is_err() {
            // The host is gone; the reader sees it too and ends the agent.
            return;
        }
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<serde_json::Value, AgentError> {
    serde_json::to_value(v).map_err(|e| AgentError::new(ErrorKind::Io, e.to_string()))
}

async fn handle(
    request: Request,
    data: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    cancel: Arc<Notify>,
    out: Output,
    contexts: &Contexts,
    in_flight: usize,
) -> Result<serde_json::Value, AgentError> {
    match request {
        Request::Ping => to_value(Pong {
            contexts: contexts.len(),
            in_flight,
        }),
        Request::Exec(req) => to_value(exec::exec(req, data, cancel, out).await?),
        Request::ContextCreate { language, cwd, env } => {
            to_value(contexts.create(&language, cwd, env)?)
        }
        Request::ContextRun {
            context,
            code,
            timeout_ms,
            output_limit,
        } => to_value(
            contexts
                .run(context, code, timeout_ms, output_limit, cancel, out)
                .await?,
        ),
        Request::ContextComplete { context, code } => {
            to_value(contexts.complete(context, code).await?)
        }
        Request::ContextInterrupt { context } => to_value(contexts.interrupt(context)?),
        Request::ContextRestart { context } => to_value(contexts.restart(context).await?),
        Request::ContextDelete { context } => to_value(contexts.delete(context).await?),
        Request::ContextList => to_value(contexts.list().await),
        Request::FileRead { path, max_bytes } => {
            to_value(files::read(&path, max_bytes, &out).await?)
        }
        Request::FileWrite { path, mode, size } => {
            let Some(data) = data else {
                return Err(AgentError::new(ErrorKind::InvalidRequest, "no data stream"));
            };
            to_value(files::write(&path, mode, size, data, cancel).await?)
        }
        Request::FileList { path } => to_value(files::list(&path)?),
        Request::FileStat { path } => to_value(files::stat(&path)?),
        Request::Mkdir { path, parents } => to_value(files::mkdir(&path, parents)?),
        Request::Remove { path, recursive } => to_value(files::remove(&path, recursive)?),
        Request::Rename { from, to } => to_value(files::rename(&from, &to)?),
    }
}
