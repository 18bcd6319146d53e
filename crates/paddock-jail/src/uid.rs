//! Unprivileged host uid/gid ranges, one per live sandbox.
//!
//! Each sandbox maps its uids `0..65536` onto a host range that no other live
//! sandbox uses. A range is held by an exclusive `flock` on its slot file in
//! [`LEASE_DIR`]; the kernel drops the lock when the holder exits, so a crashed
//! paddock never leaves a range taken.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;

use rustix::fs::{FlockOperation, flock};

use crate::JailError;

/// Where the slot lock files live.
pub const LEASE_DIR: &str = "/run/paddock/uids";
/// First host uid handed to sandboxes (far above any distribution's ranges).
pub const BASE_UID: u32 = 0x4000_0000;
/// Size of one sandbox's range.
pub const RANGE: u32 = 65536;
/// Number of slots (so the highest host uid is below 2^31 + 2^30).
pub const SLOTS: u32 = 16384;

/// A held uid/gid range; released on drop.
#[derive(Debug)]
pub struct UidLease {
    slot: u32,
    _lock: File,
}

impl UidLease {
    /// Takes a free range.
    pub fn acquire() -> Result<UidLease, JailError> {
        std::fs::create_dir_all(LEASE_DIR)
            .map_err(|e| JailError::host(format!("create {LEASE_DIR}"), e))?;
        let start = (std::process::id().wrapping_mul(2_654_435_761)) % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let path = format!("{LEASE_DIR}/{slot}");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| JailError::host(format!("open {path}"), e))?;
            if flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).is_ok() {
                return Ok(UidLease { slot, _lock: file });
            }
        }
        Err(JailError::UidRange(format!(
            "all {SLOTS} uid ranges are in use by live sandboxes"
        )))
    }

    /// First host uid (and gid) of the range; sandbox uid `n` is host `base + n`.
    pub fn base(&self) -> u32 {
        BASE_UID + self.slot * RANGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_leases_are_distinct_and_released() {
        let a = UidLease::acquire().expect("lease a");
        let b = UidLease::acquire().expect("lease b");
        assert_ne!(a.base(), b.base());
        assert!(a.base() >= BASE_UID && a.base().is_multiple_of(RANGE));
        let freed = a.base();
        drop(a);
        // The freed slot can be taken again (flock released on close).
        let mut found = false;
        let mut held = Vec::new();
        for _ in 0..4 {
            let l = UidLease::acquire().expect("lease");
            found |= l.base() == freed;
            held.push(l);
        }
        assert!(found, "released range {freed} was not reused");
    }
}
