//! The fixed-size records init writes to the host over the status pipe.
//!
//! A record is 12 bytes (`kind`, `a`, `b` as little-endian `i32`), below
//! `PIPE_BUF`, so writes from init and from the program's process before its
//! `execve` never interleave.

use std::os::fd::RawFd;

use paddock_sys::Errno;

/// What a [`Report`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// A setup step failed: `a` = step number, `b` = errno.
    SetupFailed,
    /// The program's process exists: `a` = its pid inside the sandbox.
    Started,
    /// `execve` failed: `a` = errno.
    ExecFailed,
    /// The program exited: `a` = exit code.
    Exited,
    /// A signal killed the program: `a` = signal number.
    Signaled,
}

impl ReportKind {
    fn code(self) -> i32 {
        match self {
            ReportKind::SetupFailed => 1,
            ReportKind::Started => 2,
            ReportKind::ExecFailed => 3,
            ReportKind::Exited => 4,
            ReportKind::Signaled => 5,
        }
    }

    fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => ReportKind::SetupFailed,
            2 => ReportKind::Started,
            3 => ReportKind::ExecFailed,
            4 => ReportKind::Exited,
            5 => ReportKind::Signaled,
            _ => return None,
        })
    }
}

/// One record from init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// What happened.
    pub kind: ReportKind,
    /// First value (see [`ReportKind`]).
    pub a: i32,
    /// Second value (see [`ReportKind`]).
    pub b: i32,
}

/// Size of one encoded record.
pub const REPORT_LEN: usize = 12;

impl Report {
    /// A record.
    pub fn new(kind: ReportKind, a: i32, b: i32) -> Self {
        Report { kind, a, b }
    }

    /// A `SetupFailed` record for `step` and `errno`.
    pub fn setup_failed(step: u32, errno: Errno) -> Self {
        Report::new(ReportKind::SetupFailed, step as i32, errno.raw_os_error())
    }

    /// Encodes the record.
    pub fn encode(&self) -> [u8; REPORT_LEN] {
        let mut out = [0u8; REPORT_LEN];
        out[0..4].copy_from_slice(&self.kind.code().to_le_bytes());
        out[4..8].copy_from_slice(&self.a.to_le_bytes());
        out[8..12].copy_from_slice(&self.b.to_le_bytes());
        out
    }

    /// Decodes a record; `None` for an unknown kind.
    pub fn decode(buf: &[u8; REPORT_LEN]) -> Option<Self> {
        let int = |i: usize| i32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        Some(Report {
            kind: ReportKind::from_code(int(0))?,
            a: int(4),
            b: int(8),
        })
    }

    /// Writes the record (best effort: if the host is gone there is nobody
    /// to tell).
    pub fn send(&self, fd: RawFd) {
        let _ = paddock_sys::write_all(fd, &self.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for kind in [
            ReportKind::SetupFailed,
            ReportKind::Started,
            ReportKind::ExecFailed,
            ReportKind::Exited,
            ReportKind::Signaled,
        ] {
            let r = Report::new(kind, -7, 1 << 20);
            assert_eq!(Report::decode(&r.encode()), Some(r));
        }
        let mut bad = Report::new(ReportKind::Exited, 0, 0).encode();
        bad[0] = 99;
        assert_eq!(Report::decode(&bad), None);
    }
}
