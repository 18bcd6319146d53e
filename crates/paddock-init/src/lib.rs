//! PID 1 inside a sandbox.
//!
//! After the isolation layer has built the sandbox (namespaces, root
//! filesystem, limits), the process it cloned becomes the sandbox's init and
//! calls [`run_pid1`]. Init:
//!
//! 1. starts the program (a `CLONE_VM | CLONE_VFORK` child, as `posix_spawn`
//!    does, so nothing of init is copied); the child starts a new session, resets signals,
//!    enters the working directory, applies the final confinement (identity,
//!    capabilities, Landlock, seccomp — given by the caller as `confine`) and
//!    `execve`s the prepared image;
//! 2. reaps every process of the sandbox (orphans are re-parented to it);
//! 3. when the program ends, reports how, kills whatever it left behind
//!    (`kill(-1, SIGKILL)` reaches the whole pid namespace) and exits.
//!
//! Everything here is allocation-free, because init's address space is a copy
//! of a parent that may have had other threads. Reports travel to the host
//! over the status pipe as fixed-size [`Report`] records.

pub mod report;

pub use report::{Report, ReportKind};

use std::ffi::CStr;
use std::os::fd::RawFd;

use paddock_sys::{Errno, ExecImage, ExitKind};

/// What init starts.
pub struct Program<'a> {
    /// The prepared program.
    pub image: &'a ExecImage,
    /// Working directory inside the sandbox.
    pub workdir: &'a CStr,
    /// The last confinement steps, run in the program's process right before
    /// `execve`. On failure it returns the number of the failed step (echoed
    /// back to the host in a [`ReportKind::SetupFailed`] report) and the errno.
    pub confine: &'a dyn Fn() -> Result<(), (u32, Errno)>,
    /// An fd meant for the program alone (its channel to the host): the
    /// program inherits it, init closes its own copy after the fork so that
    /// the host sees EOF as soon as the program is gone.
    pub channel: Option<RawFd>,
    /// Address ranges of the parent's memory init never touches once the
    /// program runs (other threads' stacks, the heap): released then, so
    /// that a long-lived init does not keep copies of a busy parent's pages.
    pub release: &'a [(usize, usize)],
    /// A set-up helper still running when init starts (see [`Lingering`]).
    pub lingering: Option<Lingering>,
}

/// A set-up helper that shares init's memory and may still be running when
/// the program starts: init reaps it like any orphan, and then unmaps the
/// stack it ran on.
#[derive(Debug, Clone, Copy)]
pub struct Lingering {
    /// Its pid.
    pub pid: i32,
    /// Its stack, `(start, len)`.
    pub stack: (usize, usize),
}

/// Most ranges [`Program::release`] may hold.
pub const MAX_RELEASE: usize = 128;

/// Step number reported when `chdir` to the working directory fails.
pub const STEP_WORKDIR: u32 = 1000;
/// Step number reported when init cannot fork the program.
pub const STEP_FORK: u32 = 1001;

/// Runs init: starts `program`, reaps, reports on `status_fd`, never returns.
pub fn run_pid1(program: &Program<'_>, status_fd: RawFd) -> ! {
    let main_pid = match start(program, status_fd) {
        Ok(pid) => pid,
        Err(e) => {
            Report::setup_failed(STEP_FORK, e).send(status_fd);
            paddock_sys::exit_now(1);
        }
    };
    if let Some(fd) = program.channel {
        paddock_sys::close(fd);
    }
    Report::new(ReportKind::Started, main_pid, 0).send(status_fd);
    // ORDER: copy the ranges onto our stack first: the list itself lives in
    // memory being released. Nothing below touches `program` again.
    let mut release = [(0usize, 0usize); MAX_RELEASE];
    let n = program.release.len().min(MAX_RELEASE);
    release[..n].copy_from_slice(&program.release[..n]);
    let mut lingering = program.lingering;
    // SAFETY: the ranges come from the host's `lean.rs`, which leaves out
    // this thread's stack and thread block; from here init runs on those
    // alone (no heap, no `program`).
    unsafe { paddock_sys::release_ranges(&release[..n]) };
    loop {
        match paddock_sys::wait_child(-1) {
            Ok((pid, kind)) if pid == main_pid => {
                let report = match kind {
                    ExitKind::Exited(code) => Report::new(ReportKind::Exited, code, 0),
                    ExitKind::Signaled(sig) => Report::new(ReportKind::Signaled, sig, 0),
                };
                report.send(status_fd);
                // The program is done: end everything it left behind.
                let _ = paddock_sys::kill(-1, libc::SIGKILL);
                drain_children();
                paddock_sys::exit_now(0);
            }
            Ok((pid, _)) => {
                // An orphan, reaped; a set-up helper's stack goes with it.
                if let Some(helper) = lingering.filter(|h| h.pid == pid) {
                    // SAFETY: the helper has exited, and nothing else runs
                    // on or refers to its stack.
                    unsafe { paddock_sys::release_ranges(&[helper.stack]) };
                    lingering = None;
                }
            }
            Err(_) => paddock_sys::exit_now(0),
        }
    }
}

fn drain_children() {
    while paddock_sys::wait_child(-1).is_ok() {}
}

/// Starts the program in a child that shares init's memory until its
/// `execve` (no copy of init's address space, which is a copy of the host
/// process's); returns its pid once it has exec'd or failed.
fn start(program: &Program<'_>, status_fd: RawFd) -> Result<i32, Errno> {
    let mut stack = paddock_sys::ChildStack::new(CHILD_STACK)?;
    let mut child = || start_program(program, status_fd);
    // SAFETY: `start_program` is allocation-free and only makes system
    // calls; it resets the signal dispositions before unblocking signals,
    // and ends in execve or _exit.
    unsafe { paddock_sys::spawn_shared(&mut stack, &mut child) }
}

/// Stack of the program's process until its `execve`.
const CHILD_STACK: usize = 256 * 1024;

/// The program's side of the clone: never returns.
fn start_program(program: &Program<'_>, status_fd: RawFd) -> ! {
    let fail = |step: u32, e: Errno| -> ! {
        Report::setup_failed(step, e).send(status_fd);
        paddock_sys::exit_now(127);
    };
    if let Err(e) = paddock_sys::setsid() {
        fail(STEP_FORK, e);
    }
    paddock_sys::reset_signals();
    if let Err(e) = paddock_sys::chdir(program.workdir) {
        fail(STEP_WORKDIR, e);
    }
    if let Err((step, e)) = (program.confine)() {
        fail(step, e);
    }
    // The status pipe must not survive a successful exec (the program would
    // hold it open and could forge reports).
    if let Err(e) = paddock_sys::set_cloexec(status_fd) {
        fail(STEP_FORK, e);
    }
    let e = program.image.exec();
    Report::new(ReportKind::ExecFailed, e.raw_os_error(), 0).send(status_fd);
    paddock_sys::exit_now(127);
}
