//! The fast path: a snapshot of a freshly made runtime and context, copied
//! back before every call instead of building them again.
//!
//! Creating a QuickJS context (the built-in objects) and freeing a runtime
//! (a garbage collection over all of them) are most of the cost of a call.
//! Both are avoided here without giving up a fresh heap per call:
//!
//! - every allocation of the template runtime comes from one [`Arena`], a
//!   private anonymous mapping whose allocator keeps all of its own state
//!   (bump offset, free lists, byte counts, the heap limit) in the arena's
//!   first bytes;
//! - after the template is built (runtime, context with the built-ins, the
//!   prelude), the used part of the arena is saved;
//! - each call first copies the saved bytes back: the runtime, its context,
//!   the allocator's state, and every refcount are exactly as they were
//!   when the template was made, so nothing of an earlier call survives
//!   (not even garbage); then the call runs as usual; nothing is freed
//!   afterwards, the next restore overwrites it.
//!
//! This is sound because everything the runtime points to is either in the
//! arena (restored with it), static data of the binary, or Rust heap objects
//! that rquickjs made for the template and that live as long as it does
//! (its runtime "opaque", the allocator handle, the interrupt and rejection
//! callbacks). No object made during a call may own memory outside the
//! arena, since its finalizer would never run (or would run and free
//! something the restored template still points to): so calls on this path
//! create no Rust-backed functions (debug mode, whose console is made of
//! Rust closures, uses the ordinary path), and the template contains none.
//!
//! Math.random: QuickJS seeds its generator when a context is made, so a
//! restored context would repeat the same numbers in every call. The
//! template replaces it with a JavaScript xorshift128 generator that the
//! host reseeds before each call.

use std::cell::Cell;
use std::ptr::NonNull;
use std::rc::Rc;

use rquickjs::allocator::Allocator;
use rquickjs::{Context, Function, Persistent, Runtime};

use crate::engine::{Builtins, Heap, Shared, load};

/// Bytes in front of every block (holding its size class); keeps payloads
/// 16-byte aligned.
const PREFIX: usize = 16;
/// Size classes: 16-byte steps up to 1 KiB, then four per power of two.
const SMALL_MAX: usize = 1024;
/// (Classes stop at 2^50 bytes; larger requests fail.)
const NCLASSES: usize = 64 + 4 * 40;

/// Size class of an allocation of `size` bytes: (index, bytes).
fn class_of(size: usize) -> Option<(usize, usize)> {
    let size = size.max(1);
    if size <= SMALL_MAX {
        let c = size.div_ceil(16) - 1;
        return Some((c, (c + 1) * 16));
    }
    let s = size - 1;
    let b = (usize::BITS - 1 - s.leading_zeros()) as usize; // floor(log2(s)), >= 10
    let sub = (s >> (b - 2)) & 3;
    let index = 64 + (b - 10) * 4 + sub;
    if index >= NCLASSES {
        return None;
    }
    Some((index, (4 + sub + 1) << (b - 2)))
}

fn class_size(index: usize) -> usize {
    if index < 64 {
        (index + 1) * 16
    } else {
        let b = (index - 64) / 4 + 10;
        let sub = (index - 64) % 4;
        (4 + sub + 1) << (b - 2)
    }
}

/// The allocator's state, at the start of the arena.
#[repr(C)]
struct Header {
    /// Offset of the first byte never handed out.
    bump: usize,
    /// Size of the arena.
    cap: usize,
    /// Highest `bump` since the last restore.
    high_water: usize,
    /// Bytes handed out now (by size class), and the peak since restore.
    current: usize,
    peak: usize,
    /// The heap limit of the running call.
    limit: usize,
    /// An allocation was refused since the last restore.
    failed: bool,
    /// Free blocks of each class: address of the first payload, 0 if none;
    /// each free payload starts with the address of the next.
    free: [usize; NCLASSES],
}

/// A private anonymous mapping that holds one runtime.
pub(crate) struct Arena {
    base: NonNull<u8>,
    cap: usize,
}

impl Arena {
    /// Reserves `cap` bytes of address space (pages are only backed once
    /// touched).
    fn new(cap: usize) -> Option<Arena> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let base = NonNull::new(p.cast::<u8>())?;
        let first = std::mem::size_of::<Header>().next_multiple_of(PREFIX);
        // SAFETY: the mapping is at least a page, larger than the header,
        // writable, 16-byte aligned (page aligned) and ours alone.
        unsafe {
            base.as_ptr().cast::<Header>().write(Header {
                bump: first,
                cap,
                high_water: first,
                current: 0,
                peak: 0,
                limit: cap,
                failed: false,
                free: [0; NCLASSES],
            });
        }
        Some(Arena { base, cap })
    }

    fn header(&self) -> *mut Header {
        self.base.as_ptr().cast::<Header>()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the template's
        // runtime that lived in it is gone by now (see `Template`'s fields).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.cap) };
    }
}

/// The allocator QuickJS uses for the template runtime: all state in the
/// arena's [`Header`].
struct ArenaAllocator {
    base: *mut u8,
}

impl ArenaAllocator {
    fn header(&mut self) -> &mut Header {
        // SAFETY: `base` is the start of a live arena (the allocator lives
        // in the template's runtime, which the arena outlives), and only
        // this single-threaded allocator touches the header while QuickJS
        // runs.
        unsafe { &mut *self.base.cast::<Header>() }
    }

    fn take(&mut self, size: usize, freed: usize) -> *mut u8 {
        let base = self.base;
        let h = self.header();
        let Some((class, bytes)) = class_of(size) else {
            h.failed = true;
            return std::ptr::null_mut();
        };
        if h.current.saturating_sub(freed).saturating_add(bytes) > h.limit {
            h.failed = true;
            return std::ptr::null_mut();
        }
        let p = if h.free[class] != 0 {
            let p = h.free[class] as *mut u8;
            // SAFETY: a free payload of this arena starts with the address
            // of the next free payload of its class.
            h.free[class] = unsafe { p.cast::<usize>().read() };
            p
        } else {
            let need = PREFIX + bytes;
            if h.bump.checked_add(need).is_none_or(|end| end > h.cap) {
                h.failed = true;
                return std::ptr::null_mut();
            }
            // SAFETY: `bump + need <= cap`: the block is inside the arena.
            let p = unsafe { base.add(h.bump + PREFIX) };
            // SAFETY: the prefix is the 16 bytes before the payload, inside
            // the arena; it records the block's class for good.
            unsafe { p.sub(PREFIX).cast::<usize>().write(class) };
            h.bump += need;
            h.high_water = h.high_water.max(h.bump);
            p
        };
        h.current += bytes;
        h.peak = h.peak.max(h.current);
        p
    }

    /// # Safety
    /// `p` is a live payload of this arena.
    unsafe fn class(p: *mut u8) -> usize {
        // SAFETY: by the caller's contract the prefix exists.
        unsafe { p.sub(PREFIX).cast::<usize>().read() }
    }

    /// # Safety
    /// `p` is a live payload of this arena, released once.
    unsafe fn give(&mut self, p: *mut u8) {
        // SAFETY: by the caller's contract.
        let class = unsafe { Self::class(p) };
        let h = self.header();
        h.current = h.current.saturating_sub(class_size(class));
        // SAFETY: payloads are at least 16 bytes: room for the link.
        unsafe { p.cast::<usize>().write(h.free[class]) };
        h.free[class] = p as usize;
    }
}

// SAFETY: hands out disjoint 16-byte aligned blocks of the arena, each at
// least as large as asked, until it is released; `usable_size` reads the
// class recorded in front of a block it handed out.
unsafe impl Allocator for ArenaAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        self.take(size, 0)
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else {
            self.header().failed = true;
            return std::ptr::null_mut();
        };
        let p = self.take(total, 0);
        if !p.is_null() {
            // SAFETY: `p` has at least `total` bytes.
            unsafe { p.write_bytes(0, total) };
        }
        p
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        if !ptr.is_null() {
            // SAFETY: QuickJS releases each of our blocks once.
            unsafe { self.give(ptr) };
        }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.take(new_size, 0);
        }
        if new_size == 0 {
            // SAFETY: as in `dealloc`.
            unsafe { self.give(ptr) };
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` is a live block of ours.
        let old_class = unsafe { Self::class(ptr) };
        let old = class_size(old_class);
        if class_of(new_size).map(|c| c.0) == Some(old_class) {
            return ptr;
        }
        let q = self.take(new_size, old);
        if !q.is_null() {
            // SAFETY: both blocks are live and disjoint; the copy is within
            // the smaller of the two.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, q, old.min(new_size));
                self.give(ptr);
            }
        }
        q
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: QuickJS asks only about live blocks of ours.
        class_size(unsafe { Self::class(ptr) })
    }
}

/// The template and what each call needs from it.
///
/// Field order is drop order: the persistent values and the context go
/// before the runtime, the runtime before its arena.
pub(crate) struct Template {
    pub check: Persistent<Function<'static>>,
    seed: Persistent<Function<'static>>,
    pub context: Context,
    runtime: Runtime,
    arena: Arena,
    saved: Vec<u8>,
    rng: Cell<u64>,
}

/// Address space reserved per template.
const ARENA_BYTES: usize = 1 << 30;
/// A call that took the arena this far past the template gives the pages
/// back to the kernel afterwards.
const TRIM_ABOVE: usize = 8 << 20;

/// JavaScript Math.random with a host-seeded state (see the module docs).
pub(crate) const SEEDED_RANDOM: &str = r#"(function () {
"use strict";
let a = 1, b = 2, c = 3, d = 4;
const next = function () {
  let t = a ^ (a << 11);
  a = b; b = c; c = d;
  d = (d ^ (d >>> 19) ^ t ^ (t >>> 8)) | 0;
  return d >>> 0;
};
Object.defineProperty(Math, "random", {
  value: function random() { return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992; },
  writable: true, configurable: true, enumerable: false,
});
return function (x, y) { a = x | 0; b = y | 0; c = (x ^ 0x9e3779b9) | 0; d = (y ^ 0x7f4a7c15) | 1; };
})()
"#;

impl Template {
    /// Builds the template: runtime and context in a fresh arena, the
    /// prelude, the seeded Math.random. `None` if anything fails (the
    /// engine then uses the ordinary path for every call).
    pub(crate) fn new(prelude: &[u8], random: &[u8], shared: &Rc<Shared>) -> Option<Template> {
        let arena = Arena::new(ARENA_BYTES)?;
        let runtime = Runtime::new_with_alloc(ArenaAllocator {
            base: arena.base.as_ptr(),
        })
        .ok()?;
        runtime.set_max_stack_size(crate::engine::STACK_BYTES);
        crate::engine::wire(&runtime, shared);
        let context = Context::custom::<Builtins>(&runtime).ok()?;
        let (check, seed) = context.with(|ctx| -> Option<_> {
            let check = load(&ctx, prelude).ok()?;
            let seed = load(&ctx, random).ok()?;
            Some((Persistent::save(&ctx, check), Persistent::save(&ctx, seed)))
        })?;
        // SAFETY: the header is at the arena's start (see `Arena::new`).
        let used = unsafe { (*arena.header()).bump };
        // SAFETY: the first `used` bytes of the arena are initialised (the
        // header and every block handed out so far).
        let saved = unsafe { std::slice::from_raw_parts(arena.base.as_ptr(), used) }.to_vec();
        // The standard library's per-process random hash keys (from the
        // OS's random source), mixed with the time.
        let rng_seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        Some(Template {
            check,
            seed,
            context,
            runtime,
            arena,
            saved,
            rng: Cell::new(rng_seed | 1),
        })
    }

    /// Whether a call with this heap limit fits the arena with room for
    /// fragmentation.
    /// (A limit below what the template itself holds goes to the ordinary
    /// path too, which reports it as `oom` as it always did.)
    pub(crate) fn fits(&self, limit: usize) -> bool {
        limit >= self.saved.len()
            && limit.saturating_mul(2).saturating_add(self.saved.len()) <= ARENA_BYTES
    }

    /// Puts the template back and sets the call's heap limit.
    pub(crate) fn restore(&self, limit: usize) {
        // SAFETY: copies the saved bytes over the start of the arena, which
        // is at least that large; no Rust reference into the arena is live
        // (values of the previous call are dropped when its `with` ends).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.saved.as_ptr(),
                self.arena.base.as_ptr(),
                self.saved.len(),
            );
            let h = &mut *self.arena.header();
            h.limit = limit;
            h.failed = false;
            h.peak = h.current;
        }
    }

    /// A seed for the next call's Math.random.
    pub(crate) fn next_seed(&self) -> (i32, i32) {
        // splitmix64
        let mut z = self.rng.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.rng.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 32) as u32 as i32, z as u32 as i32)
    }

    /// The seed function of the template.
    pub(crate) fn seed(&self) -> &Persistent<Function<'static>> {
        &self.seed
    }

    /// Gives back pages a large call touched.
    pub(crate) fn trim(&self) {
        // SAFETY: reads the header of our live arena.
        let high = unsafe { (*self.arena.header()).high_water };
        let page = 4096;
        let from = self.saved.len().next_multiple_of(page);
        if high > from + TRIM_ABOVE {
            // SAFETY: the range is inside the arena and holds nothing the
            // next restore needs (it is past the saved bytes); it reads as
            // zeros afterwards.
            unsafe {
                libc::madvise(
                    self.arena.base.as_ptr().add(from).cast(),
                    high.next_multiple_of(page) - from,
                    libc::MADV_DONTNEED,
                );
                (*self.arena.header()).high_water = self.saved.len();
            }
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // Put the template back before its values, context and runtime are
        // freed (field drops run after this), so that QuickJS frees the
        // consistent heap it made, not whatever the last call left.
        self.restore(usize::MAX);
        let _ = &self.runtime;
    }
}

/// The heap counters of the running call.
pub(crate) struct ArenaHeap<'a>(pub &'a Template);

impl Heap for ArenaHeap<'_> {
    fn failed(&self) -> bool {
        // SAFETY: reads the header of the template's live arena.
        unsafe { (*self.0.arena.header()).failed }
    }
    fn peak(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.0.arena.header()).peak }
    }
    fn reset_peak(&self) {
        // SAFETY: as above; no other reference to the header is live.
        unsafe {
            let h = &mut *self.0.arena.header();
            h.peak = h.current;
            h.failed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_and_round_up_by_at_most_a_quarter() {
        for size in (1..5000).chain([65_536, 1 << 20, (1 << 20) + 1, 16 << 20]) {
            let (c, bytes) = class_of(size).expect("class");
            assert!(bytes >= size, "{size}");
            assert_eq!(class_size(c), bytes, "{size}");
            assert_eq!(bytes % 16, 0);
            if size > 64 {
                assert!(bytes <= size + size / 4 + 16, "{size} -> {bytes}");
            }
        }
        assert!(class_of(1 << 51).is_none());
        assert!(class_of(usize::MAX).is_none());
        assert!(class_of((1 << 50) - 1).is_some());
    }

    #[test]
    fn allocator_reuses_frees_and_enforces_the_limit() {
        let arena = Arena::new(1 << 24).expect("arena");
        let mut a = ArenaAllocator {
            base: arena.base.as_ptr(),
        };
        a.header().limit = 1 << 20;
        let p = a.alloc(100);
        let q = a.alloc(100);
        assert!(!p.is_null() && !q.is_null() && p != q);
        assert_eq!(p as usize % 16, 0);
        // SAFETY: p and q are live blocks of this allocator.
        unsafe {
            assert_eq!(ArenaAllocator::usable_size(p), 112);
            a.dealloc(p);
        }
        assert_eq!(a.alloc(97), p, "a freed block of the class is reused");
        // SAFETY: q is live; growing it moves it and keeps its bytes.
        unsafe {
            q.write_bytes(7, 100);
            let r = a.realloc(q, 5000);
            assert!(!r.is_null());
            assert_eq!(*r.add(99), 7);
            assert!(ArenaAllocator::usable_size(r) >= 5000);
        }
        assert!(a.alloc(2 << 20).is_null());
        assert!(a.header().failed);
        let c = a.calloc(10, 10);
        assert!(!c.is_null());
        // SAFETY: c has 100 initialised (zeroed) bytes.
        let bytes = unsafe { std::slice::from_raw_parts(c, 100) };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
