//! The host ↔ worker protocol over the worker's channel (a stream socket at
//! fd 3 inside the sandbox).
//!
//! Every message is a frame: a little-endian `u32` length, then that many
//! bytes. Integers inside are little-endian; a string is a `u32` length and
//! UTF-8 bytes. The host never trusts a worker: every read is bounds-checked
//! and a malformed reply is an error, never a panic.
//!
//! Host → worker, one per call or batch:
//!
//! ```text
//! u8 kind = 1 (run) | u8 mode (0 fresh, 1 shared context) | u8 debug
//! u64 memory_bytes | u64 timeout_us | u64 max_input | u64 max_output
//! u64 max_console | u64 max_code | str code | u32 n | n × str input
//! ```
//!
//! Worker → host: once at start `u8 kind = 0 (ready) | u64 rss_bytes`, then
//! one reply per request:
//!
//! ```text
//! u8 kind = 1 (results) | u64 rss_bytes | u32 n | n × result
//! result: u8 status | u64 duration_us | u64 memory_used
//!         | u8 has_output [str output_json]
//!         | u8 has_error [str name | str message | u8 has_stack [str stack] | u32 line (0 = none)]
//!         | u8 console_truncated | u32 m | m × (u8 level | str message)
//! ```

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::engine::{BatchMode, Options, RawResult};
use crate::result::{ConsoleEntry, FnError, Level, Status};

/// Request kind: run code on inputs.
const KIND_RUN: u8 = 1;
/// Reply kind: the worker is up and confined.
const KIND_READY: u8 = 0;
/// Reply kind: results.
const KIND_RESULTS: u8 = 1;

/// A malformed message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed message: {0}")]
pub struct ProtocolError(pub String);

fn bad(what: &str) -> ProtocolError {
    ProtocolError(what.to_string())
}

/// One call or batch, as sent to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub code: String,
    pub inputs: Vec<String>,
    pub opts: Options,
    pub mode: BatchMode,
}

/// What a worker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Ready {
        rss_bytes: u64,
    },
    Results {
        rss_bytes: u64,
        results: Vec<RawResult>,
    },
}

struct Out(Vec<u8>);

impl Out {
    fn frame() -> Out {
        Out(vec![0; 4])
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s.as_bytes());
    }
    /// Fills in the length header.
    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len() - 4).unwrap_or(u32::MAX);
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn usize(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.u64()?).map_err(|_| bad("size out of range"))
    }
    fn str(&mut self) -> Result<String, ProtocolError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }
    fn bool(&mut self) -> Result<bool, ProtocolError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("bad flag")),
        }
    }
    /// A count of items of at least `min_size` bytes each that must fit in
    /// what is left (so a hostile count cannot make us allocate).
    fn count(&mut self, min_size: usize) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size) > self.0.len() {
            return Err(bad("count larger than the message"));
        }
        Ok(n)
    }
    fn end(&self) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes"))
        }
    }
}

impl Request {
    /// The request as one frame (header included).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut o = Out::frame();
        o.u8(KIND_RUN);
        o.u8(match self.mode {
            BatchMode::Fresh => 0,
            BatchMode::SharedContext => 1,
        });
        o.u8(u8::from(self.opts.debug));
        o.u64(self.opts.memory_bytes as u64);
        o.u64(u64::try_from(self.opts.timeout.as_micros()).unwrap_or(u64::MAX));
        o.u64(self.opts.max_input_bytes as u64);
        o.u64(self.opts.max_output_bytes as u64);
        o.u64(self.opts.max_console_bytes as u64);
        o.u64(self.opts.max_code_bytes as u64);
        o.str(&self.code);
        o.u32(u32::try_from(self.inputs.len()).unwrap_or(u32::MAX));
        for input in &self.inputs {
            o.str(input);
        }
        o.finish()
    }

    /// Decodes a frame's payload.
    pub(crate) fn decode(payload: &[u8]) -> Result<Request, ProtocolError> {
        let mut i = In(payload);
        if i.u8()? != KIND_RUN {
            return Err(bad("unknown request kind"));
        }
        let mode = match i.u8()? {
            0 => BatchMode::Fresh,
            1 => BatchMode::SharedContext,
            _ => return Err(bad("unknown batch mode")),
        };
        let debug = i.bool()?;
        let opts = Options {
            memory_bytes: i.usize()?,
            timeout: Duration::from_micros(i.u64()?),
            debug,
            max_input_bytes: i.usize()?,
            max_output_bytes: i.usize()?,
            max_console_bytes: i.usize()?,
            max_code_bytes: i.usize()?,
        };
        let code = i.str()?;
        let n = i.count(4)?;
        let mut inputs = Vec::with_capacity(n);
        for _ in 0..n {
            inputs.push(i.str()?);
        }
        i.end()?;
        Ok(Request {
            code,
            inputs,
            opts,
            mode,
        })
    }
}

fn status_code(s: Status) -> u8 {
    match s {
        Status::Ok => 0,
        Status::Error => 1,
        Status::Timeout => 2,
        Status::Oom => 3,
    }
}

fn status_of(code: u8) -> Result<Status, ProtocolError> {
    Ok(match code {
        0 => Status::Ok,
        1 => Status::Error,
        2 => Status::Timeout,
        3 => Status::Oom,
        _ => return Err(bad("unknown status")),
    })
}

fn level_code(l: Level) -> u8 {
    match l {
        Level::Log => 0,
        Level::Info => 1,
        Level::Warn => 2,
        Level::Error => 3,
        Level::Debug => 4,
    }
}

impl Reply {
    /// The reply as one frame (header included).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut o = Out::frame();
        match self {
            Reply::Ready { rss_bytes } => {
                o.u8(KIND_READY);
                o.u64(*rss_bytes);
            }
            Reply::Results { rss_bytes, results } => {
                o.u8(KIND_RESULTS);
                o.u64(*rss_bytes);
                o.u32(u32::try_from(results.len()).unwrap_or(u32::MAX));
                for r in results {
                    o.u8(status_code(r.status));
                    o.u64(r.duration_us);
                    o.u64(r.memory_used_bytes);
                    match &r.output_json {
                        Some(s) => {
                            o.u8(1);
                            o.str(s);
                        }
                        None => o.u8(0),
                    }
                    match &r.error {
                        Some(e) => {
                            o.u8(1);
                            o.str(&e.name);
                            o.str(&e.message);
                            match &e.stack {
                                Some(s) => {
                                    o.u8(1);
                                    o.str(s);
                                }
                                None => o.u8(0),
                            }
                            o.u32(e.line.unwrap_or(0));
                        }
                        None => o.u8(0),
                    }
                    o.u8(u8::from(r.console_truncated));
                    o.u32(u32::try_from(r.console.len()).unwrap_or(u32::MAX));
                    for c in &r.console {
                        o.u8(level_code(c.level));
                        o.str(&c.message);
                    }
                }
            }
        }
        o.finish()
    }

    /// Decodes a frame's payload.
    pub(crate) fn decode(payload: &[u8]) -> Result<Reply, ProtocolError> {
        let mut i = In(payload);
        let reply = match i.u8()? {
            KIND_READY => Reply::Ready {
                rss_bytes: i.u64()?,
            },
            KIND_RESULTS => {
                let rss_bytes = i.u64()?;
                let n = i.count(24)?;
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    let status = status_of(i.u8()?)?;
                    let duration_us = i.u64()?;
                    let memory_used_bytes = i.u64()?;
                    let output_json = if i.bool()? { Some(i.str()?) } else { None };
                    let error = if i.bool()? {
                        let name = i.str()?;
                        let message = i.str()?;
                        let stack = if i.bool()? { Some(i.str()?) } else { None };
                        let line = Some(i.u32()?).filter(|&l| l > 0);
                        Some(FnError {
                            name,
                            message,
                            stack,
                            line,
                        })
                    } else {
                        None
                    };
                    let console_truncated = i.bool()?;
                    let m = i.count(5)?;
                    let mut console = Vec::with_capacity(m);
                    for _ in 0..m {
                        let level = *Level::ALL
                            .get(usize::from(i.u8()?))
                            .ok_or_else(|| bad("unknown console level"))?;
                        console.push(ConsoleEntry {
                            level,
                            message: i.str()?,
                        });
                    }
                    results.push(RawResult {
                        status,
                        output_json,
                        console,
                        console_truncated,
                        error,
                        duration_us,
                        memory_used_bytes,
                    });
                }
                Reply::Results { rss_bytes, results }
            }
            _ => return Err(bad("unknown reply kind")),
        };
        i.end()?;
        Ok(reply)
    }
}

/// Writes one encoded frame.
pub(crate) fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)
}

/// Reads one frame's payload; `Ok(None)` on end of stream before a frame.
/// A frame longer than `max` is an error (nothing that large is read).
pub(crate) fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {max}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_results() -> Vec<RawResult> {
        vec![
            RawResult {
                status: Status::Ok,
                output_json: Some("{\"a\":[1,2]}".into()),
                console: vec![ConsoleEntry {
                    level: Level::Warn,
                    message: "wé".into(),
                }],
                console_truncated: true,
                error: None,
                duration_us: 123,
                memory_used_bytes: 456,
            },
            RawResult {
                status: Status::Timeout,
                output_json: None,
                console: vec![],
                console_truncated: false,
                error: Some(FnError {
                    name: "TimeoutError".into(),
                    message: "late".into(),
                    stack: Some("    at f (function.js:2:1)\n".into()),
                    line: Some(2),
                }),
                duration_us: 500_000,
                memory_used_bytes: 1,
            },
        ]
    }

    #[test]
    fn requests_round_trip() {
        let req = Request {
            code: "return input".into(),
            inputs: vec!["1".into(), "{\"x\":\"ü\"}".into(), String::new()],
            opts: Options {
                debug: true,
                ..Options::default()
            },
            mode: BatchMode::SharedContext,
        };
        let frame = req.encode();
        let payload = read_frame(&mut &frame[..], 1 << 20).unwrap().unwrap();
        assert_eq!(Request::decode(&payload).unwrap(), req);
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ready { rss_bytes: 99 },
            Reply::Results {
                rss_bytes: 7,
                results: sample_results(),
            },
        ] {
            let frame = reply.encode();
            let payload = read_frame(&mut &frame[..], 1 << 20).unwrap().unwrap();
            assert_eq!(Reply::decode(&payload).unwrap(), reply);
        }
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        let frame = Reply::Results {
            rss_bytes: 7,
            results: sample_results(),
        }
        .encode();
        let payload = &frame[4..];
        // Every truncation and every single-byte corruption decodes to an
        // error or to some value, never a panic.
        for cut in 0..payload.len() {
            assert!(Reply::decode(&payload[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..payload.len() {
            for byte in [0u8, 1, 0x7f, 0xff] {
                let mut p = payload.to_vec();
                p[at] = byte;
                let _ = Reply::decode(&p);
            }
        }
        // A huge count does not allocate.
        let mut p = vec![KIND_RESULTS];
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Reply::decode(&p).is_err());
        assert!(Reply::decode(&[9]).is_err());
        let mut trailing = Reply::Ready { rss_bytes: 1 }.encode()[4..].to_vec();
        trailing.push(0);
        assert!(Reply::decode(&trailing).is_err());
    }

    #[test]
    fn frames_over_the_limit_and_short_frames_are_refused() {
        let frame = Reply::Ready { rss_bytes: 1 }.encode();
        assert!(read_frame(&mut &frame[..], 3).is_err());
        assert!(read_frame(&mut &frame[..frame.len() - 1], 100).is_err());
        assert!(read_frame(&mut &frame[..2], 100).is_err());
        assert_eq!(read_frame(&mut &[][..], 100).unwrap(), None);
    }
}
