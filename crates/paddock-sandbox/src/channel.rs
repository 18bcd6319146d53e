//! The host's end of the agent channel: many requests in flight at once
//! over one socket.
//!
//! A writer task owns the socket's write half and sends what the request
//! [`Call`]s queue. A reader task owns the read half and hands each frame to
//! the call it belongs to (by id). The table of calls in flight holds only
//! live calls: a call removes its entry when it gets its reply or is
//! dropped (a dropped call that had no reply yet also sends `Cancel`, so an
//! abandoned command is killed rather than left running).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use paddock_agent::proto::{self, Frame, Kind, ProtoError, Reply, Request};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use crate::SandboxError;

/// State shared by the handles and the reader task.
#[derive(Debug)]
pub(crate) struct Channel {
    out: mpsc::Sender<Frame>,
    calls: Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>,
    next_id: AtomicU32,
    /// Becomes `true` when the agent's end has closed.
    closed: watch::Sender<bool>,
}

impl Channel {
    /// Starts the reader and writer tasks on `stream`.
    pub(crate) fn start(stream: tokio::net::UnixStream) -> Arc<Channel> {
        let (r, w) = stream.into_split();
        let (out, rx) = mpsc::channel(64);
        let channel = Arc::new(Channel {
            out,
            calls: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: watch::Sender::new(false),
        });
        tokio::spawn(write_loop(w, rx));
        tokio::spawn(read_loop(r, channel.clone()));
        channel
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::UnboundedSender<Frame>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the agent's end has closed.
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the agent's end closes.
    pub(crate) async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Number of calls in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.calls().len()
    }

    /// Sends `request` and returns the call that receives its frames.
    pub(crate) async fn call(self: &Arc<Self>, request: &Request) -> Result<Call, SandboxError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut calls = self.calls();
            if self.is_closed() {
                return Err(SandboxError::ChannelClosed);
            }
            // Ids wrap; skip any still in use.
            let mut id;
            loop {
                id = self.next_id.fetch_add(1, Ordering::Relaxed);
                if id != 0 && !calls.contains_key(&id) {
                    break;
                }
            }
            calls.insert(id, tx);
            id
        };
        let call = Call {
            channel: self.clone(),
            id,
            rx,
            replied: false,
        };
        call.send(
            Kind::Request,
            serde_json::to_vec(request).unwrap_or_default(),
        )
        .await?;
        Ok(call)
    }
}

async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        if proto::write_frame(&mut w, &frame).await.is_err() {
            return;
        }
    }
}

async fn read_loop(mut r: OwnedReadHalf, channel: Arc<Channel>) {
    loop {
        let frame = match proto::read_frame(&mut r).await {
            Ok(f) => f,
            Err(ProtoError::Closed) => break,
            Err(e) => {
                // The agent is as untrusted as the code beside it: a garbled
                // frame ends the conversation (the sandbox is then killed).
                eprintln!("paddock: sandbox channel: {e}");
                break;
            }
        };
        let mut calls = channel.calls();
        let target = if frame.kind == Kind::Reply {
            calls.remove(&frame.id)
        } else {
            calls.get(&frame.id).cloned()
        };
        drop(calls);
        if let Some(tx) = target {
            let _ = tx.send(frame);
        }
    }
    // Every call still waiting sees its queue end.
    channel.closed.send_replace(true);
    channel.calls().clear();
}

/// What a call receives before its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Standard output of the command or code.
    Stdout(Vec<u8>),
    /// Standard error.
    Stderr(Vec<u8>),
    /// Streamed data (a file being read); empty at the end.
    Data(Vec<u8>),
}

/// One request in flight.
#[derive(Debug)]
pub(crate) struct Call {
    channel: Arc<Channel>,
    id: u32,
    rx: mpsc::UnboundedReceiver<Frame>,
    replied: bool,
}

/// A chunk or the final answer.
pub(crate) enum Event {
    Chunk(Chunk),
    Reply(Reply),
}

impl Call {
    /// Sends a frame of this call.
    pub(crate) async fn send(&self, kind: Kind, payload: Vec<u8>) -> Result<(), SandboxError> {
        self.channel
            .out
            .send(Frame {
                id: self.id,
                kind,
                payload,
            })
            .await
            .map_err(|_| SandboxError::ChannelClosed)
    }

    /// The next chunk or the reply; `Err(ChannelClosed)` if the agent went
    /// away first.
    pub(crate) async fn next(&mut self) -> Result<Event, SandboxError> {
        if self.replied {
            return Err(SandboxError::Protocol("reply already taken".into()));
        }
        let frame = self.rx.recv().await.ok_or(SandboxError::ChannelClosed)?;
        Ok(match frame.kind {
            Kind::Reply => {
                self.replied = true;
                Event::Reply(
                    frame
                        .parse::<Reply>()
                        .map_err(|e| SandboxError::Protocol(e.to_string()))?,
                )
            }
            Kind::Stdout => Event::Chunk(Chunk::Stdout(frame.payload)),
            Kind::Stderr => Event::Chunk(Chunk::Stderr(frame.payload)),
            Kind::Data => Event::Chunk(Chunk::Data(frame.payload)),
            other => {
                return Err(SandboxError::Protocol(format!(
                    "unexpected {other:?} frame from the agent"
                )));
            }
        })
    }

    /// Skips chunks until the reply and decodes it.
    pub(crate) async fn reply<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<T, SandboxError> {
        loop {
            if let Event::Reply(r) = self.next().await? {
                return decode(r);
            }
        }
    }
}

/// Turns a reply into the expected value or the agent's error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(reply: Reply) -> Result<T, SandboxError> {
    match reply {
        Reply::Ok(v) => {
            serde_json::from_value(v).map_err(|e| SandboxError::Protocol(e.to_string()))
        }
        Reply::Err(e) => Err(SandboxError::Agent(e)),
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.replied {
            return;
        }
        if self.channel.calls().remove(&self.id).is_some() {
            // Abandoned before its reply: tell the agent to stop the work.
            // The agent answers, and the reader drops the answer.
            let cancel = Frame {
                id: self.id,
                kind: Kind::Cancel,
                payload: Vec::new(),
            };
            if let Err(mpsc::error::TrySendError::Full(cancel)) = self.channel.out.try_send(cancel)
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let out = self.channel.out.clone();
                rt.spawn(async move { out.send(cancel).await });
            }
        }
    }
}
