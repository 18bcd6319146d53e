//! The only crate of paddock with `unsafe`: thin, documented wrappers around the
//! Linux system calls the sandbox needs, written against `libc` so that each is
//! one visible syscall.
//!
//! Everything here that can run in a freshly cloned child is allocation-free:
//! it takes borrowed, prepared data (`&CStr`, slices, [`ExecImage`]) and returns
//! an [`Errno`]. That is what makes it sound to call these functions between
//! `clone` and `execve` even when the parent had other threads.

pub mod landlock;

use std::ffi::{CStr, CString, c_char, c_int};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub use rustix::io::Errno;

/// Result of a system call wrapper.
pub type SysResult<T> = Result<T, Errno>;

fn errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn check(ret: c_int) -> SysResult<c_int> {
    if ret < 0 { Err(errno()) } else { Ok(ret) }
}

fn check_long(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 { Err(errno()) } else { Ok(ret) }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// What [`clone_into_namespaces`] returned on each side.
#[derive(Debug)]
pub enum Cloned {
    /// We are the new child.
    Child,
    /// We are the parent; the child has this pid and pidfd.
    Parent {
        /// Pid of the child in our pid namespace.
        pid: i32,
        /// A pidfd for the child (close-on-exec).
        pidfd: OwnedFd,
    },
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3` without a new stack (fork semantics) with the given `CLONE_*`
/// namespace flags, returning a pidfd, optionally straight into the cgroup v2
/// directory `cgroup_dir`.
///
/// # Safety
/// The child is a copy of the calling thread only. If the caller has other
/// threads, the child must restrict itself to async-signal-safe work (no
/// allocation, no locks) until it calls `execve` or `_exit`.
pub unsafe fn clone_into_namespaces(
    namespace_flags: u64,
    cgroup_dir: Option<BorrowedFd<'_>>,
) -> SysResult<Cloned> {
    let mut pidfd: c_int = -1;
    let mut args = CloneArgs {
        flags: namespace_flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup_dir {
        args.flags |= 0x2_0000_0000; // CLONE_INTO_CGROUP
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size we pass; stack 0 gives
    // fork semantics, so the child continues on a copy of this stack. The
    // caller upholds the async-signal-safety contract documented above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check_long(ret)? {
        0 => Ok(Cloned::Child),
        pid => Ok(Cloned::Parent {
            pid: pid as i32,
            // SAFETY: with CLONE_PIDFD the kernel stored a new, owned fd.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// A fork through the raw `clone` syscall: no `pthread_atfork` handlers, no
/// libc locks. Returns `None` in the child and the child's pid in the parent.
///
/// # Safety
/// As for [`clone_into_namespaces`]: the child may only do async-signal-safe
/// work if the address space came from a multi-threaded process.
pub unsafe fn raw_fork() -> SysResult<Option<i32>> {
    // SAFETY: clone with only SIGCHLD and a null stack is fork(2).
    let ret = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    match check_long(ret)? {
        0 => Ok(None),
        pid => Ok(Some(pid as i32)),
    }
}

/// The stack of a child started with [`spawn_shared`]: an anonymous mapping
/// whose lowest page is a guard. Unmapped on drop.
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Maps `len` bytes (a multiple of the page size, more than one page).
    pub fn new(len: usize) -> SysResult<ChildStack> {
        let page = 4096;
        if len <= page || !len.is_multiple_of(page) {
            return Err(Errno::INVAL);
        }
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(errno());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page of our own mapping becomes the guard.
        check(unsafe { libc::mprotect(base, page, libc::PROT_NONE) })?;
        Ok(stack)
    }
}

impl ChildStack {
    /// Gives the mapping up without unmapping it, as `(start, len)`: for a
    /// stack whose process outlives its owner; whoever reaps that process
    /// unmaps it ([`release_ranges`]).
    pub fn into_range(self) -> (usize, usize) {
        let range = (self.base as usize, self.len);
        std::mem::forget(self);
        range
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the child that used it has exec'd or
        // exited (spawn_shared returns only then).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

extern "C" fn shared_child_entry(arg: *mut libc::c_void) -> c_int {
    // SAFETY: `arg` is the `&mut &mut dyn FnMut()` that `spawn_shared`
    // passed; the parent is suspended (CLONE_VFORK), so it is alive.
    let child = unsafe { &mut *arg.cast::<&mut dyn FnMut()>() };
    child();
    exit_now(127)
}

/// Starts `child` in a new process that shares this process's memory
/// (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does) and returns its pid once
/// it has called `execve` or exited. Nothing is copied: no page tables, no
/// copy-on-write faults afterwards, which makes starting a program from a
/// large process several times cheaper than `fork`. All signals are blocked
/// around the clone (the child starts with them blocked).
///
/// # Safety
/// `child` runs on `stack` in this process's memory while this thread
/// waits: it may only make system calls and write to its own locals (no
/// allocation, no locks, nothing a signal handler of this process uses), it
/// must reset the signal dispositions it may receive before unblocking
/// them (see [`reset_signals`]), and it should end in `execve` or
/// [`exit_now`] (returning exits with 127).
pub unsafe fn spawn_shared(stack: &mut ChildStack, child: &mut dyn FnMut()) -> SysResult<i32> {
    let mut child = child;
    // SAFETY: the entry point only reads `child`, which outlives the call
    // because CLONE_VFORK suspends us until the child execs or exits.
    unsafe { clone_vm(stack, libc::CLONE_VFORK, (&raw mut child).cast()) }
}

/// Starts `child` in a new process that shares this process's memory
/// (`CLONE_VM`) and runs *alongside* it; returns its pid at once. Unlike
/// [`spawn_shared`] nothing waits for an `execve`: the caller must keep
/// `stack` and `child` alive, and untouched, until it has reaped the child
/// (see [`wait_child`]). All signals are blocked in the child. With
/// `share_files` the child also shares the fd table (`CLONE_FILES`): fds it
/// opens are the caller's.
///
/// # Safety
/// As for [`spawn_shared`], and the child must not write anything the
/// caller reads or writes while it runs: it should make a few system calls
/// on its own stack and [`exit_now`].
pub unsafe fn spawn_concurrent(
    stack: &mut ChildStack,
    share_files: bool,
    child: &mut dyn FnMut(),
) -> SysResult<i32> {
    // The entry point receives a pointer to the (fat) closure pointer. This
    // frame is gone by the time the child reads it, so it is kept in the
    // child's stack mapping, which lives until the child is reaped.
    let slot = stack.base.cast::<&mut dyn FnMut()>();
    // SAFETY: the lowest page is the guard (PROT_NONE); the slot goes in
    // the second page, which the child's stack (growing down from the top)
    // does not reach in the few calls it makes.
    let slot = unsafe { slot.byte_add(4096) };
    // SAFETY: `slot` is inside our mapping, aligned, and not yet used.
    unsafe { slot.write(child) };
    // SAFETY: `slot` lives as long as `stack`, which the caller keeps until
    // the child is reaped.
    let extra = if share_files { libc::CLONE_FILES } else { 0 };
    // SAFETY: as above.
    unsafe { clone_vm(stack, extra, slot.cast()) }
}

/// `clone(CLONE_VM | extra | SIGCHLD)` into [`shared_child_entry`] on
/// `stack` with `arg`, every signal blocked around it (so the child starts
/// with them blocked).
///
/// # Safety
/// `arg` must point to a `&mut dyn FnMut()` that stays valid for as long as
/// the child may read it; the caller's contract covers the rest (see
/// [`spawn_shared`]).
unsafe fn clone_vm(stack: &mut ChildStack, extra: c_int, arg: *mut libc::c_void) -> SysResult<i32> {
    let mut all: libc::sigset_t = {
        // SAFETY: sigset_t is plain data; sigfillset initialises it.
        let mut set = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a local set.
        unsafe { libc::sigfillset(&mut set) };
        set
    };
    // SAFETY: plain data, filled by the kernel below.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to local sets.
    check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old) })?;
    // SAFETY: the stack is ours and large enough (the guard page catches an
    // overflow); `arg` is valid by the caller's contract.
    let ret = unsafe {
        libc::clone(
            shared_child_entry,
            stack.base.cast::<u8>().add(stack.len).cast(),
            libc::CLONE_VM | extra | libc::SIGCHLD,
            arg,
        )
    };
    // Read before the next call can change it (and only on failure: on
    // success errno holds whatever an earlier call left, possibly 0).
    let err = (ret < 0).then(errno);
    // SAFETY: restores the mask saved above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, &mut all) };
    match err {
        Some(e) => Err(e),
        None => Ok(ret),
    }
}

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// How a wait status says the process ended (`None`: stopped/continued).
fn exit_kind(status: c_int) -> Option<ExitKind> {
    if libc::WIFEXITED(status) {
        Some(ExitKind::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitKind::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// `waitpid(pid, 0)`: blocks until a child (or any child for `-1`) ends;
/// returns its pid and how it ended; `Err(ECHILD)` when none are left.
pub fn wait_child(pid: i32) -> SysResult<(i32, ExitKind)> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: `status` is a valid out pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        match check(ret) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
            Ok(p) => match exit_kind(status) {
                Some(kind) => return Ok((p, kind)),
                None => continue,
            },
        }
    }
}

/// Resources a reaped child used (from `wait4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildUsage {
    /// User plus system CPU time, in microseconds.
    pub cpu_us: u64,
    /// Peak resident set size of the child (or its largest waited-for
    /// descendant), in bytes.
    pub max_rss_bytes: u64,
}

/// `wait4(pid, WNOHANG)`: reaps `pid` if it has ended, with its resource
/// usage; `Ok(None)` while it runs.
pub fn try_wait_usage(pid: i32) -> SysResult<Option<(ExitKind, ChildUsage)>> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: all-zero is a valid `rusage`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid out pointers.
        let ret = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        match check(ret) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
            Ok(0) => return Ok(None),
            Ok(_) => {
                let Some(kind) = exit_kind(status) else {
                    continue;
                };
                let micros = |tv: libc::timeval| {
                    (tv.tv_sec.max(0) as u64) * 1_000_000 + tv.tv_usec.max(0) as u64
                };
                let usage = ChildUsage {
                    cpu_us: micros(usage.ru_utime) + micros(usage.ru_stime),
                    max_rss_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
                };
                return Ok(Some((kind, usage)));
            }
        }
    }
}

/// Takes ownership of an fd this process inherited (e.g. the channel at
/// fd 3 that the host passes to a sandboxed paddock). Fails with `EBADF` if
/// it is not open; marks it close-on-exec so no child inherits it.
pub fn take_inherited_fd(fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: F_GETFD only reads the flags of `fd`.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    set_cloexec(fd)?;
    // SAFETY: `fd` is open (checked above) and, by the caller's contract,
    // owned by nobody else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unmaps the given address ranges. For a process forked from a large one
/// (a sandbox's init), to give back the copies of its parent's memory, and
/// the page tables that map them, that it will never touch again. Errors
/// are ignored (a range that is gone needs no release). Allocation-free.
///
/// # Safety
/// Nothing the caller still uses (its stack, its thread block, data it
/// will read) may lie in the ranges.
pub unsafe fn release_ranges(ranges: &[(usize, usize)]) {
    for &(start, len) in ranges {
        if len == 0 {
            continue;
        }
        // SAFETY: by the caller's contract the ranges hold nothing it uses.
        unsafe { libc::munmap(start as *mut libc::c_void, len) };
    }
}

/// `kill(pid, sig)`. `pid == -1` inside a pid namespace's init reaches every
/// other process of the namespace.
pub fn kill(pid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sends `sig` through a pidfd.
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: i32) -> SysResult<()> {
    // SAFETY: plain syscall; null siginfo means "as kill(2)".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check_long(ret).map(drop)
}

/// Ends the calling process immediately, without running destructors or
/// `atexit` handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// `prctl(PR_SET_PDEATHSIG, sig)`: the kernel sends `sig` to us when the
/// thread that created us exits.
pub fn set_parent_death_signal(sig: i32) -> SysResult<()> {
    // SAFETY: plain prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// `setsid()`.
pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Makes sure fds 0, 1 and 2 are open, opening `/dev/null` on any that is
/// closed (as std's runtime does before `main`): a file opened later must
/// never become a process's stdout by accident.
pub fn open_standard_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfds; timeout 0.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for pfd in fds {
        if pfd.revents & libc::POLLNVAL != 0 {
            // SAFETY: NUL-terminated path; the lowest free fd is the closed
            // one (all lower ones are open), and it stays open for good.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Ignores `SIGPIPE`, so that writing to a closed pipe fails with `EPIPE`
/// (as under std's runtime, which does this before `main`).
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN is always a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// `unshare(flags)`.
pub fn unshare(flags: c_int) -> SysResult<()> {
    // SAFETY: plain syscall with an integer argument.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// Prepares the signal state a freshly exec'd program expects: every
/// signal with a handler or ignored (Rust ignores `SIGPIPE`, and an ignored
/// signal survives `execve`) back to its default, then an empty signal mask.
/// Resetting the handlers also makes it safe to unblock signals in a child
/// of [`spawn_shared`], whose memory is still its parent's.
pub fn reset_signals() {
    for sig in 1..libc::SIGRTMIN() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction with a null new action only reads the current
        // one into a local.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above: a valid pointer to a local.
        let ok = unsafe { libc::sigaction(sig, std::ptr::null(), &mut current) } == 0;
        if ok && current.sa_sigaction != libc::SIG_DFL {
            // SAFETY: SIG_DFL is always a valid disposition.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty, initialised set passed by pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

// ---------------------------------------------------------------------------
// CPU placement
// ---------------------------------------------------------------------------

pub use rustix::thread::CpuSet;

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> SysResult<CpuSet> {
    rustix::thread::sched_getaffinity(None)
}

/// Lets process `pid` (0: the calling thread) run on `cpus` only.
pub fn set_allowed_cpus(pid: i32, cpus: &CpuSet) -> SysResult<()> {
    rustix::thread::sched_setaffinity(rustix::process::Pid::from_raw(pid), cpus)
}

/// The CPUs of `allowed` other than the one the calling thread runs on, or
/// `None` when there is no other.
///
/// A new process often starts on its parent's CPU (on a kernel that packs
/// tasks onto few vCPUs, as here, nearly always) and then, without
/// preemption, waits there until the parent blocks, or preempts it.
/// Restricted to these CPUs for a while (see [`set_allowed_cpus`]), the two
/// run side by side; the process must restore its set before anything it
/// starts inherits this one.
pub fn other_cpus(allowed: &CpuSet) -> Option<CpuSet> {
    let here = rustix::thread::sched_getcpu();
    let mut elsewhere = *allowed;
    if here < CpuSet::MAX_CPU {
        elsewhere.unset(here);
    }
    (elsewhere.count() > 0).then_some(elsewhere)
}

// ---------------------------------------------------------------------------
// File descriptors and plain I/O
// ---------------------------------------------------------------------------

/// `dup2(old, new)` (clears close-on-exec on `new`).
pub fn dup2(old: RawFd, new: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::dup2(old, new) }).map(drop)
}

/// Duplicates `fd` to the lowest free number `>= min`, close-on-exec.
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: plain fcntl; the result is a new fd we own.
    let ret = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: `ret` is a fresh fd returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Closes every fd from `first` upwards.
pub fn close_from(first: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall; closing fds we don't use afterwards.
    check(unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) } as c_int)
        .map(drop)
}

/// Closes one raw fd, ignoring errors.
pub fn close(fd: RawFd) {
    // SAFETY: the caller no longer uses `fd`.
    unsafe { libc::close(fd) };
}

/// Sets close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd) -> SysResult<()> {
    // SAFETY: plain fcntl with integer arguments.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// Writes all of `buf` to `fd`, retrying on `EINTR` and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice of the given length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == Errno::INTR {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads into `buf`, retrying on `EINTR`; returns the count (0 at end of file).
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    loop {
        // SAFETY: `buf` is a valid writable slice of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == Errno::INTR {
                continue;
            }
            return Err(e);
        }
        return Ok(n as usize);
    }
}

/// Most fds [`send_with_fds`] and [`recv_with_fds`] carry in one message.
pub const MAX_PASSED_FDS: usize = 8;

/// Room for a `SCM_RIGHTS` control message of [`MAX_PASSED_FDS`] fds
/// (`CMSG_SPACE`), as u64s for its alignment.
const FD_CMSG_WORDS: usize = 8;

/// Sends `byte` on the stream socket `sock`, with `fds` attached
/// (`SCM_RIGHTS`, at most [`MAX_PASSED_FDS`]).
pub fn send_with_fds(sock: BorrowedFd<'_>, byte: u8, fds: &[BorrowedFd<'_>]) -> SysResult<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(Errno::INVAL);
    }
    let mut data = [byte];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; FD_CMSG_WORDS];
    // SAFETY: msghdr is plain data; every field used is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = (fds.len() * std::mem::size_of::<c_int>()) as u32;
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&control));
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is large enough for one header with
        // `payload` bytes (checked above) and suitably aligned (u64s), so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA points inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
            let out = libc::CMSG_DATA(cmsg).cast::<c_int>();
            for (i, fd) in fds.iter().enumerate() {
                out.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers set up above.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match n {
            1 => return Ok(()),
            n if n < 0 && errno() == Errno::INTR => continue,
            n if n < 0 => return Err(errno()),
            _ => return Err(Errno::IO),
        }
    }
}

/// Receives one byte from the stream socket `sock` and the fds attached to
/// it into `fds`; returns the byte (`None` at end of stream) and how many
/// fds arrived (close-on-exec). Allocation-free, for a cloned child.
pub fn recv_with_fds(
    sock: RawFd,
    fds: &mut [RawFd; MAX_PASSED_FDS],
) -> SysResult<(Option<u8>, usize)> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; FD_CMSG_WORDS];
    // SAFETY: msghdr is plain data; every field used is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: `msg` points at live, writable buffers of the given sizes.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && errno() == Errno::INTR {
            continue;
        }
        break check_long(n as libc::c_long)?;
    };
    let mut count = 0;
    // SAFETY: the kernel filled `msg_control`/`msg_controllen`; the CMSG_*
    // helpers walk only within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let got = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<c_int>();
                let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
                for i in 0..got {
                    let fd = data.add(i).read_unaligned();
                    if count < MAX_PASSED_FDS {
                        fds[count] = fd;
                        count += 1;
                    } else {
                        libc::close(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        for &fd in &fds[..count] {
            close(fd);
        }
        return Err(Errno::MSGSIZE);
    }
    Ok(((n == 1).then_some(data[0]), count))
}

/// A connected pair of stream sockets, close-on-exec.
pub fn socketpair() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both are fresh fds the kernel just returned to us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets a pipe's capacity (best effort; returns the new size).
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> SysResult<usize> {
    // SAFETY: plain fcntl with integer arguments.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as c_int) })
        .map(|n| n as usize)
}

// ---------------------------------------------------------------------------
// Filesystem and mounts
// ---------------------------------------------------------------------------

/// `mount(2)` with optional source, fstype and data.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is either null or a NUL-terminated string that
    // outlives the call.
    check(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) })
        .map(drop)
}

/// `open_tree(path, OPEN_TREE_CLONE [| AT_RECURSIVE])`: a detached copy of the
/// mount at `path`, ready to be moved elsewhere.
pub fn clone_mount(path: &CStr, recursive: bool) -> SysResult<OwnedFd> {
    const OPEN_TREE_CLONE: u32 = 1;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: `path` is NUL-terminated; the result is a new fd we own.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    let fd = check_long(ret)?;
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Mount attributes for [`set_mount_attrs`].
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// No set-uid/set-gid.
    pub const NOSUID: u64 = 0x2;
    /// No device files.
    pub const NODEV: u64 = 0x4;
    /// No execution.
    pub const NOEXEC: u64 = 0x8;
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr` on a detached tree fd (recursively): sets `attrs` and makes
/// the tree private.
pub fn set_mount_attrs(tree: BorrowedFd<'_>, attrs: u64) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: `attr` is a valid mount_attr of the size passed; empty path with
    // AT_EMPTY_PATH refers to `tree` itself.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as u32,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check_long(ret).map(drop)
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`.
pub fn move_mount(tree: BorrowedFd<'_>, target: &CStr) -> SysResult<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
    let empty = c"";
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check_long(ret).map(drop)
}

/// `umount2(target, MNT_DETACH)`.
pub fn umount_detach(target: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated paths.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `chdir(path)`.
pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// `mkdir(path, mode)`; an existing directory is not an error.
pub fn mkdir(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    match check(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
        Err(Errno::EXIST) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `rmdir(path)`.
pub fn rmdir(path: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::rmdir(path.as_ptr()) }).map(drop)
}

/// `symlink(target, link)`.
pub fn symlink(target: &CStr, link: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated paths.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
}

/// `lchown(path, uid, gid)`.
pub fn chown(path: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::lchown(path.as_ptr(), uid, gid) }).map(drop)
}

/// Creates (or truncates) `path` with `mode` and writes `contents`.
pub fn write_file(path: &CStr, contents: &[u8], mode: u32) -> SysResult<()> {
    // SAFETY: NUL-terminated path; the fd is closed below.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    })?;
    let res = write_all(fd, contents);
    close(fd);
    res
}

// ---------------------------------------------------------------------------
// Identity, capabilities, limits
// ---------------------------------------------------------------------------

/// `sethostname(name)`.
pub fn sethostname(name: &[u8]) -> SysResult<()> {
    // SAFETY: pointer and length describe a valid slice.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `setrlimit(resource, {soft, hard})`.
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> SysResult<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Becomes `uid`/`gid` with no supplementary groups and no capabilities in
/// any set: bounding (every cap the kernel knows dropped), ambient cleared,
/// then effective, permitted and inheritable emptied; then `no_new_privs`.
pub fn drop_privileges(uid: u32, gid: u32) -> SysResult<()> {
    // ORDER: the bounding set can only be changed while we hold CAP_SETPCAP,
    // i.e. before the uid change empties our capabilities.
    // The kernel refuses (EINVAL) the first number past its last capability,
    // which ends the loop without reading /proc/sys/kernel/cap_last_cap.
    for cap in 0..64 {
        // SAFETY: plain prctl with integer arguments.
        match check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }) {
            Ok(_) => {}
            Err(Errno::INVAL) => break,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: plain prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    // Raw syscalls, not glibc's wrappers: those broadcast the change to
    // every thread glibc knows of, and a process cloned from a threaded
    // parent inherits the parent's thread list; a thread that was being
    // created at clone time is waited for forever (seen as a hung sandbox).
    // SAFETY: an empty group list (null pointer, zero length).
    check_long(unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) })?;
    // SAFETY: plain syscalls with integer arguments.
    check_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: as above.
    check_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array as capset(2) v3 expects.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    set_no_new_privs()
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> SysResult<()> {
    // SAFETY: plain prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

// ---------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------

/// Brings the loopback interface of the current network namespace up.
/// Allocation-free.
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: plain socket(2); closed below.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    let result = set_loopback_up(sock);
    close(sock);
    result
}

fn set_loopback_up(sock: RawFd) -> SysResult<()> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS takes a pointer to an initialised ifreq.
    check(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) }).map(drop)
}

// ---------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------

/// A program ready to `execve` without allocating: the candidate paths (from
/// a `PATH` search done in advance), argv and envp as NUL-terminated pointer
/// arrays.
pub struct ExecImage {
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same struct,
// which are never mutated; moving the struct between threads is fine.
unsafe impl Send for ExecImage {}

/// Why [`ExecImage::new`] refused its input.
#[derive(Debug, thiserror::Error)]
pub enum ExecImageError {
    /// An argument, variable or path contained a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which input.
        what: &'static str,
    },
    /// No program was given.
    #[error("no program given")]
    Empty,
}

impl ExecImage {
    /// Prepares `argv` with environment `env`. A program name without `/` is
    /// tried in each directory of `search_path` (colon-separated) in order.
    pub fn new(
        argv: &[String],
        env: &[(String, String)],
        search_path: &str,
    ) -> Result<ExecImage, ExecImageError> {
        let prog = argv.first().ok_or(ExecImageError::Empty)?;
        let cs = |s: String, what| CString::new(s).map_err(|_| ExecImageError::Nul { what });
        let candidates = if prog.contains('/') {
            vec![cs(prog.clone(), "program")?]
        } else if prog.is_empty() {
            return Err(ExecImageError::Empty);
        } else {
            search_path
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cs(format!("{}/{}", d.trim_end_matches('/'), prog), "PATH"))
                .collect::<Result<Vec<_>, _>>()?
        };
        let argv_c = argv
            .iter()
            .map(|a| cs(a.clone(), "argument"))
            .collect::<Result<Vec<_>, _>>()?;
        let env_c = env
            .iter()
            .map(|(k, v)| cs(format!("{k}={v}"), "environment variable"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<*const c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(ExecImage {
            candidates,
            _argv: argv_c,
            argv_ptrs,
            _envp: env_c,
            envp_ptrs,
        })
    }

    /// Tries each candidate path; returns only on failure, with the most
    /// telling errno (`EACCES` or `ENOEXEC` over `ENOENT`, as `execvp` does).
    pub fn exec(&self) -> Errno {
        let mut best = Errno::NOENT;
        for path in &self.candidates {
            // SAFETY: path, argv and envp are NUL-terminated and the arrays
            // are null-terminated; all are owned by `self`.
            unsafe {
                libc::execve(
                    path.as_ptr(),
                    self.argv_ptrs.as_ptr(),
                    self.envp_ptrs.as_ptr(),
                )
            };
            let e = errno();
            if e != Errno::NOENT && e != Errno::NOTDIR {
                best = e;
                if e != Errno::ACCESS {
                    return e;
                }
            }
        }
        best
    }
}

// ---------------------------------------------------------------------------
// Signals as file descriptors
// ---------------------------------------------------------------------------

/// Blocks `signals` for the calling thread and returns a signalfd that
/// becomes readable when one arrives (close-on-exec, non-blocking).
pub fn signalfd_for(signals: &[i32]) -> SysResult<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    // SAFETY: valid set pointer, null old-set pointer.
    check(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: valid set pointer; the result is a new fd we own.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal number from a signalfd, if any.
pub fn signalfd_read(fd: BorrowedFd<'_>) -> SysResult<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a writable buffer of `size` bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n < 0 {
        let e = errno();
        return if e == Errno::AGAIN { Ok(None) } else { Err(e) };
    }
    Ok((n as usize == size).then_some(info.ssi_signo as i32))
}

/// Sets the file mode creation mask.
pub fn umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

/// Takes uid/gid 0 of the current user namespace (all three ids) and no
/// supplementary groups; needed once the maps are written, because until
/// then the process still carries the host's ids, which are unmapped there.
pub fn become_namespace_root() -> SysResult<()> {
    // Raw syscalls: glibc's wrappers would wait for threads of the parent
    // that do not exist here (see `drop_privileges`).
    // SAFETY: plain syscalls with integer arguments / an empty group list.
    unsafe {
        check_long(libc::syscall(libc::SYS_setresgid, 0, 0, 0))?;
        check_long(libc::syscall(libc::SYS_setresuid, 0, 0, 0))?;
        check_long(libc::syscall(
            libc::SYS_setgroups,
            0,
            std::ptr::null::<libc::gid_t>(),
        ))?;
    }
    Ok(())
}
