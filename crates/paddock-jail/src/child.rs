//! The child side of sandbox creation: what the cloned process does, in
//! order, from its first instruction until it becomes the sandbox's init.
//!
//! Everything here is allocation-free (see `paddock-sys`): the child only
//! reads the prepared [`ChildPlan`] and issues system calls. A failed step is
//! reported to the host as `(step number, errno)` on the status pipe; the host
//! turns the number back into words with [`describe_step`].

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};

use paddock_init::{Lingering, Program, Report};
use paddock_sys::{Errno, ExecImage};
use paddock_types::{SANDBOX_GID, SANDBOX_UID};

use crate::rootfs::{RootfsPlan, Step};

/// fd numbers inside the child (fixed so that nothing else can collide).
/// The program inherits 0–2 and, when the host passed one, the channel at 3.
pub(crate) const FD_CHANNEL: i32 = 3;
const FD_GO: i32 = 4;
/// Where the host's tree is until it is detached (relative: from the new
/// root before the pivot; absolute: after it).
const OLD_ROOT_REL: &CStr = c".oldroot";
const OLD_ROOT: &CStr = c"/.oldroot";
/// Stack of each set-up helper (they make a few system calls).
const HELPER_STACK: usize = 64 * 1024;

/// A helper process that must be gone before its stack goes away, also when
/// the set-up fails half-way: reaped on drop.
struct Helper {
    pid: Option<i32>,
}

impl Helper {
    fn reap(&mut self) -> Option<paddock_sys::ExitKind> {
        let pid = self.pid.take()?;
        paddock_sys::wait_child(pid).ok().map(|(_, kind)| kind)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Messages on the go socket (see `sandbox.rs`).
const GO: u8 = b'g';
const CGROUP_READY: u8 = b'c';
pub(crate) const FD_STATUS: i32 = 5;

/// The fds the child receives, already duplicated above 10 by the parent.
pub(crate) struct ChildFds {
    pub stdin: i32,
    pub stdout: i32,
    pub stderr: i32,
    pub status: i32,
    /// A socket: the host sends "go" on it, with the cgroup v1 `tasks`
    /// files attached.
    pub go: i32,
    /// The program's channel to the host (a socket), or -1.
    pub channel: i32,
}

/// Everything the child needs, prepared by the parent.
pub(crate) struct ChildPlan {
    pub rootfs: RootfsPlan,
    pub hostname: Vec<u8>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub image: ExecImage,
    pub workdir: CString,
    pub landlock_ro: Vec<CString>,
    pub landlock_rw: Vec<CString>,
    pub seccomp: seccompiler::BpfProgram,
    /// What init releases once the program runs (empty: nothing).
    pub release: Vec<(usize, usize)>,
    /// The CPUs the host may use, restored once the host has moved the
    /// child off its own CPU (`None`: unknown, nothing to restore).
    pub cpus: Option<paddock_sys::CpuSet>,
    /// Those CPUs but the host's, where the child builds the sandbox while
    /// the host works on (`None`: the host has only one).
    pub elsewhere: Option<paddock_sys::CpuSet>,
}

// Step numbers of the fixed steps; plan steps are numbered from PLAN_BASE.
const STEP_FDS: u32 = 1;
const STEP_GO: u32 = 2;
const STEP_DEATHSIG: u32 = 3;
const STEP_CGROUPNS: u32 = 4;
const STEP_PRIVATE: u32 = 5;
const STEP_TMPFS: u32 = 6;
const STEP_PIVOT: u32 = 7;
const STEP_DETACH: u32 = 13;
const STEP_NETNS: u32 = 14;
const STEP_HOSTNAME: u32 = 8;
const STEP_LOOPBACK: u32 = 9;
const STEP_RLIMIT: u32 = 10;
const STEP_IDS: u32 = 11;
const STEP_CGROUP: u32 = 12;
const STEP_CPUS: u32 = 15;
const PLAN_BASE: u32 = 100;
/// Most bind mounts one sandbox can have (system binds plus `--mount`s).
const MAX_BINDS: usize = 64;
const STEP_IDENTITY: u32 = 900;
const STEP_LANDLOCK: u32 = 901;
const STEP_SECCOMP: u32 = 902;

/// Describes a step number reported by the child.
pub(crate) fn describe_step(plan_steps: &[String], step: u32) -> String {
    match step {
        STEP_FDS => "arranging file descriptors".into(),
        STEP_GO => "waiting for the host".into(),
        STEP_DEATHSIG => "setting the parent-death signal".into(),
        STEP_CGROUPNS => "entering a new cgroup namespace".into(),
        STEP_PRIVATE => "making mounts private".into(),
        STEP_TMPFS => "mounting the root tmpfs".into(),
        STEP_PIVOT => "pivot_root into the new root".into(),
        STEP_DETACH => "detaching the host's tree".into(),
        STEP_NETNS => "creating the network namespace".into(),
        STEP_HOSTNAME => "setting the hostname".into(),
        STEP_LOOPBACK => "bringing up loopback".into(),
        STEP_RLIMIT => "setting rlimits".into(),
        STEP_IDS => "becoming root of the user namespace".into(),
        STEP_CGROUP => "entering the sandbox's cgroup".into(),
        STEP_CPUS => "restoring the set of CPUs".into(),
        STEP_IDENTITY => "dropping to uid 1000 without capabilities".into(),
        STEP_LANDLOCK => "applying landlock".into(),
        STEP_SECCOMP => "applying the seccomp filter".into(),
        paddock_init::STEP_WORKDIR => "entering the working directory".into(),
        paddock_init::STEP_FORK => "starting the program".into(),
        n if n >= PLAN_BASE => plan_steps
            .get((n - PLAN_BASE) as usize)
            .map_or_else(|| format!("step {n}"), |s| s.clone()),
        n => format!("step {n}"),
    }
}

/// Runs in the cloned child; never returns.
pub(crate) fn main(plan: &ChildPlan, fds: &ChildFds) -> ! {
    // Until the fds are arranged we can only report on the original status fd.
    if let Err(e) = arrange_fds(fds) {
        Report::setup_failed(STEP_FDS, e).send(fds.status);
        paddock_sys::exit_now(1);
    }
    let lingering = match setup(plan) {
        Ok(lingering) => lingering,
        Err((step, e)) => {
            Report::setup_failed(step, e).send(FD_STATUS);
            paddock_sys::exit_now(1);
        }
    };
    let confine = || confine(plan);
    let program = Program {
        image: &plan.image,
        workdir: &plan.workdir,
        confine: &confine,
        channel: (fds.channel >= 0).then_some(FD_CHANNEL),
        release: &plan.release,
        lingering,
    };
    paddock_init::run_pid1(&program, FD_STATUS)
}

fn arrange_fds(fds: &ChildFds) -> Result<(), Errno> {
    // The parent placed every fd at 10 or above, so these dup2s never clobber
    // one another.
    paddock_sys::dup2(fds.stdin, 0)?;
    paddock_sys::dup2(fds.stdout, 1)?;
    paddock_sys::dup2(fds.stderr, 2)?;
    paddock_sys::dup2(fds.status, FD_STATUS)?;
    paddock_sys::dup2(fds.go, FD_GO)?;
    if fds.channel >= 0 {
        paddock_sys::dup2(fds.channel, FD_CHANNEL)?;
    }
    // No fd of the parent leaks into the sandbox.
    paddock_sys::close_from(FD_STATUS + 1)
}

fn at(step: u32) -> impl Fn(Errno) -> (u32, Errno) {
    move |e| (step, e)
}

// ORDER: this is the sequence of the sandbox's setup; each step relies on
// the ones before it. Returns the helper left running, if any, for init.
fn setup(plan: &ChildPlan) -> Result<Option<Lingering>, (u32, Errno)> {
    let rootfs = &plan.rootfs;
    // Off the host's CPU at once. The host moves us too, right after the
    // clone, for when we have not run yet; this is for when we run first,
    // having preempted it. Best effort: staying costs only time.
    if let Some(elsewhere) = &plan.elsewhere {
        let _ = paddock_sys::set_allowed_cpus(0, elsewhere);
    }
    // 0a. The network namespace, with its loopback up. Creating one is the
    //     slowest single step of a start (~0.5 ms here); it comes first, on
    //     a CPU of its own (the host moved us off its CPU, see `sandbox.rs`),
    //     while the host writes our id maps and makes the cgroup. Nothing
    //     before it touches the network.
    paddock_sys::unshare(libc::CLONE_NEWNET).map_err(at(STEP_NETNS))?;
    paddock_sys::loopback_up().map_err(at(STEP_LOOPBACK))?;
    // 0. Take the bind sources now, while we still carry the host's root
    //    ids: a source inside a root-only directory (e.g. under /root) can
    //    only be reached as the host's uid 0, not as the sandbox's range.
    let mut trees: [Option<OwnedFd>; MAX_BINDS] = [const { None }; MAX_BINDS];
    let mut ntrees = 0;
    for (i, planned) in rootfs.steps.iter().enumerate() {
        if let Step::Bind { source, .. } = &planned.step {
            let step = PLAN_BASE + i as u32;
            let slot = trees.get_mut(ntrees).ok_or((step, Errno::NOSPC))?;
            *slot = Some(paddock_sys::clone_mount(source, true).map_err(at(step))?);
            ntrees += 1;
        }
    }
    // 1. Wait until the host has written our uid/gid maps; EOF means the
    //    host gave up.
    wait_for(GO, &mut []).map_err(at(STEP_GO))?;
    // Back to every CPU the host may use: init and the program inherit
    // this set. The host moved us before it sent "go".
    if let (Some(cpus), Some(_)) = (&plan.cpus, &plan.elsewhere) {
        paddock_sys::set_allowed_cpus(0, cpus).map_err(at(STEP_CPUS))?;
    }
    paddock_sys::become_namespace_root().map_err(at(STEP_IDS))?;
    // 2. Die with the host process.
    paddock_sys::set_parent_death_signal(libc::SIGKILL).map_err(at(STEP_DEATHSIG))?;
    // The plan's modes are exact (no umask) until the tree is built.
    paddock_sys::umask(0);
    // 3. Nothing we mount propagates back to the host.
    paddock_sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(at(STEP_PRIVATE))?;
    // 4. The writable layer, made the root at once; the host's tree goes
    //    to /.oldroot, from where a helper detaches it while this process
    //    builds the sandbox's tree (below). Detaching waits for an RCU grace
    //    period (~0.7 ms here), as long as building the tree: side by side,
    //    neither waits for the other.
    paddock_sys::mount(
        Some(c"paddock"),
        &rootfs.staging,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&rootfs.tmpfs_data),
    )
    .map_err(at(STEP_TMPFS))?;
    paddock_sys::chdir(&rootfs.staging).map_err(at(STEP_PIVOT))?;
    paddock_sys::mkdir(OLD_ROOT_REL, 0o700).map_err(at(STEP_PIVOT))?;
    paddock_sys::pivot_root(c".", OLD_ROOT_REL).map_err(at(STEP_PIVOT))?;
    paddock_sys::chdir(c"/").map_err(at(STEP_PIVOT))?;
    // ORDER: the steps up to the proc mount run while the host's tree is
    // still attached (the kernel allows a new proc in a user namespace only
    // next to a fully visible one); the plan puts /proc first.
    let early = rootfs
        .steps
        .iter()
        .position(|planned| matches!(planned.step, Step::Proc { .. }))
        .map_or(0, |i| i + 1);
    let mut trees = trees.iter_mut();
    let mut run = |range: std::ops::Range<usize>| -> Result<(), (u32, Errno)> {
        for i in range {
            let Some(planned) = rootfs.steps.get(i) else {
                break;
            };
            let tree = match planned.step {
                Step::Bind { .. } => trees.next().and_then(Option::take),
                _ => None,
            };
            run_step(&planned.step, tree).map_err(at(PLAN_BASE + i as u32))?;
        }
        Ok(())
    };
    run(0..early)?;
    let mut stack = paddock_sys::ChildStack::new(HELPER_STACK).map_err(at(STEP_DETACH))?;
    let mut detach = || {
        let code = match paddock_sys::umount_detach(OLD_ROOT) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error(),
        };
        paddock_sys::exit_now(code)
    };
    debug_assert_eq!(std::mem::size_of_val(&detach), 0, "detach captures nothing");
    // SAFETY: `detach` makes one system call on its own stack and exits.
    // It captures nothing, so it reads nothing of this frame, which may be
    // gone before it ends; `stack` stays mapped until it is reaped (the
    // guard below reaps it first, or init does, and unmaps `stack` then).
    let helper = unsafe { paddock_sys::spawn_concurrent(&mut stack, false, &mut detach) }
        .map_err(at(STEP_DETACH))?;
    let mut helper = Helper { pid: Some(helper) };
    // 5. The rest of the tree.
    run(early..rootfs.steps.len())?;
    paddock_sys::umask(0o022);
    // The host's tree is out of reach once its mount point can be removed
    // (a mount point cannot be: EBUSY). The kernel detaches the tree first
    // and then waits for a grace period before it frees it; when the helper
    // is in that wait already, nothing needs to wait with it: init reaps it
    // like any orphan, and unmaps its stack then.
    let mut lingering = None;
    match paddock_sys::rmdir(OLD_ROOT) {
        Ok(()) => {
            lingering = helper.pid.take().map(|pid| Lingering {
                pid,
                stack: stack.into_range(),
            });
        }
        Err(Errno::BUSY) => {
            match helper.reap() {
                Some(paddock_sys::ExitKind::Exited(0)) => {}
                Some(paddock_sys::ExitKind::Exited(errno)) => {
                    return Err((STEP_DETACH, Errno::from_raw_os_error(errno)));
                }
                _ => return Err((STEP_DETACH, Errno::CHILD)),
            }
            paddock_sys::rmdir(OLD_ROOT).map_err(at(STEP_DETACH))?;
        }
        Err(e) => return Err((STEP_DETACH, e)),
    }
    // 6. Identity of the machine.
    paddock_sys::sethostname(&plan.hostname).map_err(at(STEP_HOSTNAME))?;
    // 7. Join the cgroup the host made meanwhile (before anything of the
    //    program runs), then a cgroup namespace rooted at it.
    let mut tasks = [-1; paddock_sys::MAX_PASSED_FDS];
    let n = wait_for(CGROUP_READY, &mut tasks).map_err(at(STEP_GO))?;
    join_cgroup(&tasks[..n]).map_err(at(STEP_CGROUP))?;
    paddock_sys::close(FD_GO);
    paddock_sys::unshare(libc::CLONE_NEWCGROUP).map_err(at(STEP_CGROUPNS))?;
    // 8. rlimits, inherited by the program (last: a low open-files limit
    //    must not stop the fds above from arriving).
    for &(res, value) in &plan.rlimits {
        paddock_sys::setrlimit(res, value, value).map_err(at(STEP_RLIMIT))?;
    }
    Ok(lingering)
}

/// Waits for the host's message `expected` on the go socket, receiving up
/// to `fds.len()` fds with it; returns how many came. At EOF (the host gave
/// up) the child just exits.
fn wait_for(expected: u8, fds: &mut [i32]) -> Result<usize, Errno> {
    let mut got = [-1; paddock_sys::MAX_PASSED_FDS];
    let (byte, n) = paddock_sys::recv_with_fds(FD_GO, &mut got)?;
    let Some(byte) = byte else {
        paddock_sys::exit_now(1);
    };
    let keep = if byte == expected {
        n.min(fds.len())
    } else {
        0
    };
    fds[..keep].copy_from_slice(&got[..keep]);
    for &fd in &got[keep..n] {
        paddock_sys::close(fd);
    }
    if byte != expected {
        return Err(Errno::PROTO);
    }
    Ok(keep)
}

/// Moves us into the cgroup (v1) by writing "0" to each `tasks` file the
/// host opened, then closes them. Writing "0" moves only the calling thread,
/// which the kernel does without the global threadgroup lock that makes
/// writing a pid to `cgroup.procs` wait for an RCU grace period (~8 ms
/// here); the host's credentials, from the open, authorise the move.
fn join_cgroup(tasks: &[i32]) -> Result<(), Errno> {
    let mut result = Ok(());
    for &fd in tasks {
        if result.is_ok() {
            result = paddock_sys::write_all(fd, b"0");
        }
        paddock_sys::close(fd);
    }
    result
}

fn run_step(step: &Step, tree: Option<OwnedFd>) -> Result<(), Errno> {
    match step {
        Step::Mkdir { path, mode } => paddock_sys::mkdir(path, *mode),
        Step::Symlink { target, link } => paddock_sys::symlink(target, link),
        Step::WriteFile {
            path,
            contents,
            mode,
        } => paddock_sys::write_file(path, contents, *mode),
        Step::Chown { path, uid, gid } => paddock_sys::chown(path, *uid, *gid),
        Step::Bind { target, attrs, .. } => {
            let tree = tree.ok_or(Errno::BADF)?;
            paddock_sys::set_mount_attrs(tree.as_fd(), *attrs)?;
            paddock_sys::move_mount(tree.as_fd(), target)
        }
        Step::Proc { target } => paddock_sys::mount(
            Some(c"proc"),
            target,
            Some(c"proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
        Step::Devpts { target } => paddock_sys::mount(
            Some(c"devpts"),
            target,
            Some(c"devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        ),
    }
}

/// The last steps, in the program's own process right before `execve`.
// ORDER: identity first (needs CAP_SETUID/CAP_SETPCAP, which it drops), then
// landlock, then seccomp last of all so that it filters nothing of our own.
fn confine(plan: &ChildPlan) -> Result<(), (u32, Errno)> {
    paddock_sys::drop_privileges(SANDBOX_UID, SANDBOX_GID).map_err(at(STEP_IDENTITY))?;
    let mut ro: [&CStr; 8] = [c""; 8];
    let mut rw: [&CStr; 32] = [c""; 32];
    let nro = fill(&mut ro, &plan.landlock_ro);
    let nrw = fill(&mut rw, &plan.landlock_rw);
    paddock_sys::landlock::restrict_self(&ro[..nro], &rw[..nrw], true)
        .map_err(at(STEP_LANDLOCK))?;
    crate::seccomp::apply(&plan.seccomp)
        .map_err(|e| (STEP_SECCOMP, Errno::from_raw_os_error(e)))?;
    Ok(())
}

fn fill<'a, const N: usize>(dst: &mut [&'a CStr; N], src: &'a [CString]) -> usize {
    let n = src.len().min(N);
    for (d, s) in dst.iter_mut().zip(src.iter()) {
        *d = s.as_c_str();
    }
    n
}
