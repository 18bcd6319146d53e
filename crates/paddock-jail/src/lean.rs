//! Keeping a long-lived init small.
//!
//! Init is a fork of the process that made the sandbox. It shares that
//! process's pages copy-on-write, and every page the parent writes later
//! (a busy server writes many) leaves init holding the old copy as its own
//! private memory. Once init has started the program it needs only its
//! stack, its thread block and the binary's code, so it gives the rest back
//! (see `paddock_init::Program::release`).

/// The parent's private anonymous mappings that init may release: the heap,
/// anonymous mappings (other threads' stacks, malloc arenas), the
/// inaccessible reservations and guard pages around them, and the main
/// thread's stack; but not the mapping of the calling thread's stack or of
/// its thread control block and `errno`, and not anonymous mappings that
/// directly follow a file mapping (a binary's or library's `.bss`). Read
/// from `/proc/self/maps` right before the clone.
///
/// Releasing the inaccessible ones matters for page tables: an arena's
/// reservation keeps alive the page-table pages of the part that was used
/// (~70 KiB of page tables per idle sandbox on a busy server).
pub(crate) fn releasable_ranges() -> Vec<(usize, usize)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let marker = 0u8;
    let stack = std::ptr::addr_of!(marker) as usize;
    // SAFETY: both return pointers into this thread's own TLS block and
    // have no preconditions.
    let (tcb, errno) = unsafe {
        (
            libc::pthread_self() as usize,
            libc::__errno_location() as usize,
        )
    };
    let keep = [stack, tcb, errno];
    let mut out = Vec::new();
    let mut prev_end_of_file = None;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = fields.next().unwrap_or("");
        let Some((start, end)) = range.split_once('-').and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        }) else {
            continue;
        };
        let file_backed = inode != "0";
        let follows_file = prev_end_of_file == Some(start);
        prev_end_of_file = file_backed.then_some(end);
        let anonymous = !file_backed && (path.is_empty() || path == "[heap]" || path == "[stack]");
        if !(perms == "rw-p" || perms == "---p") || !anonymous || follows_file {
            continue;
        }
        if keep.iter().any(|&a| (start..end).contains(&a)) {
            continue;
        }
        out.push((start, end - start));
        if out.len() == paddock_init::MAX_RELEASE {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_stack_and_thread_block_are_never_released() {
        let heap = Box::new(42u64);
        let here = 0u8;
        let ranges = releasable_ranges();
        let inside = |a: usize| ranges.iter().any(|&(s, l)| (s..s + l).contains(&a));
        assert!(!inside(std::ptr::addr_of!(here) as usize), "{ranges:x?}");
        // SAFETY: no preconditions.
        assert!(!inside(unsafe { libc::pthread_self() } as usize));
        // The heap is released (this small box lives in the brk heap).
        assert!(inside(&*heap as *const u64 as usize), "{ranges:x?}");
    }
}
