//! The host side: turn a [`SandboxSpec`] into a running sandbox and tear it
//! down again.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use paddock_cgroups::{Cgroup, Hierarchy, Stats};
use paddock_init::{Report, report::REPORT_LEN};
use paddock_sys::{Cloned, ExecImage};
use paddock_types::SandboxSpec;

use crate::child::{self, ChildFds, ChildPlan};
use crate::rootfs;
use crate::uid::{RANGE, UidLease};
use crate::{JailError, seccomp};

/// Where the program's standard streams come from and go to.
#[derive(Debug, Default)]
pub struct Stdio {
    /// The program's stdin; `None` gives it the host's `/dev/null`.
    pub stdin: Option<OwnedFd>,
    /// Whether to capture stdout and stderr in pipes (read them with
    /// [`Sandbox::take_stdout`]); otherwise the sandbox writes to
    /// `/dev/null`.
    pub capture: bool,
    /// A channel for the program (typically one end of a socketpair): the
    /// program finds it at fd 3. Nothing else of the host reaches it.
    pub channel: Option<OwnedFd>,
    /// The program lives long (an agent, a worker): once it runs, init
    /// releases its copies of this process's memory (see `lean.rs`).
    pub lean_init: bool,
}

/// Namespaces the clone creates. The child adds the others: the network
/// namespace (made by a helper alongside the rest of the set-up, see
/// `child.rs`) and the cgroup namespace (once it is inside its cgroup).
const NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS) as u64;

/// Most `--mount`s one sandbox may have.
pub const MAX_MOUNTS: usize = 24;

static HIERARCHY: OnceLock<Result<Hierarchy, String>> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The cgroup hierarchy of this host, detected once per process.
pub fn hierarchy() -> Result<&'static Hierarchy, JailError> {
    HIERARCHY
        .get_or_init(|| Hierarchy::detect().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| JailError::Privileges(format!("no usable cgroup: {e}")))
}

/// Kills and removes what sandboxes of paddock processes that died without
/// tearing down (e.g. a server killed with SIGKILL) left behind: their
/// cgroups, and with them every process still inside. Best effort; done at
/// most once per process (it also happens before the first sandbox).
pub fn clean_leftovers() -> Result<(), JailError> {
    clean_stale_cgroups(hierarchy()?);
    Ok(())
}

/// Removes the cgroups of `paddock run` processes that died without tearing
/// down (e.g. killed with SIGKILL): names `run-<pid>-<n>` whose pid is gone.
/// Best effort, once per process.
fn clean_stale_cgroups(hierarchy: &Hierarchy) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(dirs) = hierarchy.leftovers() else {
            return;
        };
        let mut names: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.file_name()?.to_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let owner = name
                .strip_prefix("run-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = owner
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                && let Ok(cgroup) = hierarchy.open(&name)
            {
                let _ = cgroup.remove();
            }
        }
    });
}

/// A running sandbox: its init process, its cgroup, its pipes.
///
/// Dropping it kills everything inside and removes the cgroup; call
/// [`Sandbox::teardown`] to see errors.
#[derive(Debug)]
pub struct Sandbox {
    pid: i32,
    pidfd: OwnedFd,
    status: File,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    cgroup: Box<dyn Cgroup>,
    rootfs_steps: Vec<String>,
    /// Held (never read) while the sandbox lives: the lease's lock keeps the
    /// uid range from going to another sandbox.
    _uids: UidLease,
    started: Instant,
    reaped: bool,
    removed: bool,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| JailError::host("create a pipe", e.into()))
}

/// Places `fd` at 10 or above (so the child's `dup2`s to 0–5 never collide).
fn high(fd: BorrowedFd<'_>) -> Result<OwnedFd, JailError> {
    paddock_sys::dup_at_least(fd, 10).map_err(|e| JailError::host("duplicate an fd", e.into()))
}

fn check_root() -> Result<(), JailError> {
    if !rustix::process::geteuid().is_root() {
        return Err(JailError::Privileges(
            "paddock must run as root to create sandboxes (user namespaces with a uid range, \
             cgroups); running without root is not supported yet"
                .into(),
        ));
    }
    Ok(())
}

impl Sandbox {
    /// Creates a sandbox for `spec` and starts its program.
    ///
    /// The call returns once the child exists, its cgroup exists and it has
    /// been released to join the cgroup (its first step, before anything it
    /// runs) and build its filesystem; setup errors inside the child, and
    /// exec errors, arrive as the first report (see [`Sandbox::next_report`]).
    pub fn spawn(spec: &SandboxSpec, stdio: Stdio) -> Result<Sandbox, JailError> {
        check_root()?;
        if spec.argv.is_empty() {
            return Err(JailError::InvalidSpec("no program given".into()));
        }
        if !spec.workdir.is_absolute() {
            return Err(JailError::InvalidSpec(format!(
                "working directory {} must be absolute",
                spec.workdir.display()
            )));
        }
        if spec.mounts.len() > MAX_MOUNTS {
            return Err(JailError::InvalidSpec(format!(
                "at most {MAX_MOUNTS} mounts"
            )));
        }
        let mounts = rootfs::resolve_mounts(spec)?;
        let name = format!(
            "run-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let limits = paddock_cgroups::Limits {
            memory_bytes: Some(spec.limits.memory_bytes),
            cpu_millicores: Some(spec.limits.cpu_millicores),
            pids: Some(spec.limits.pids),
        };
        let plan = prepare(spec, &mounts)?;
        std::fs::create_dir_all(rootfs::STAGING)
            .map_err(|e| JailError::host(format!("create {}", rootfs::STAGING), e))?;
        let uids = UidLease::acquire()?;
        Self::start(plan, &name, &limits, uids, stdio)
    }

    // ORDER: the cgroup (and, the first time in a process, the detection of
    // the cgroup hierarchy and the clean-up of leftovers) is made while the
    // child builds its filesystem: the host has nothing else to do then, and
    // creating directories and limits in up to five v1 hierarchies is one of
    // the slower steps. The child joins it before it starts the program,
    // through the `tasks` files the host sends it. On v2 the child is cloned
    // straight into the cgroup instead (`CLONE_INTO_CGROUP`), so there it is
    // made first.
    fn start(
        plan: ChildPlan,
        name: &str,
        limits: &paddock_cgroups::Limits,
        uids: UidLease,
        stdio: Stdio,
    ) -> Result<Sandbox, JailError> {
        let started = Instant::now();
        let (status_r, status_w) = pipe()?;
        let (go_host, go_child) = paddock_sys::socketpair()
            .map_err(|e| JailError::host("create a socket pair", e.into()))?;
        let stdin = match stdio.stdin {
            Some(fd) => fd,
            None => File::open("/dev/null")
                .map_err(|e| JailError::host("open /dev/null", e))?
                .into(),
        };
        let (out_r, out_w, err_r, err_w) = if stdio.capture {
            let (or, ow) = pipe()?;
            let (er, ew) = pipe()?;
            for r in [&or, &er] {
                let _ = paddock_sys::set_pipe_size(r.as_fd(), 1 << 20);
            }
            (Some(or), ow, Some(er), ew)
        } else {
            let null: OwnedFd = File::options()
                .write(true)
                .open("/dev/null")
                .map_err(|e| JailError::host("open /dev/null", e))?
                .into();
            let null2 = null
                .try_clone()
                .map_err(|e| JailError::host("dup /dev/null", e))?;
            (None, null, None, null2)
        };
        let child_fds = [
            high(stdin.as_fd())?,
            high(out_w.as_fd())?,
            high(err_w.as_fd())?,
            high(status_w.as_fd())?,
            high(go_child.as_fd())?,
        ];
        let channel = match &stdio.channel {
            Some(fd) => Some(high(fd.as_fd())?),
            None => None,
        };
        let fds = ChildFds {
            stdin: child_fds[0].as_raw_fd(),
            stdout: child_fds[1].as_raw_fd(),
            stderr: child_fds[2].as_raw_fd(),
            status: child_fds[3].as_raw_fd(),
            go: child_fds[4].as_raw_fd(),
            channel: channel.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        };

        let mut plan = plan;
        if stdio.lean_init {
            plan.release = crate::lean::releasable_ranges();
        }
        plan.cpus = paddock_sys::allowed_cpus().ok();
        plan.elsewhere = plan.cpus.as_ref().and_then(paddock_sys::other_cpus);
        let early = if unified_expected()? {
            let hierarchy = hierarchy()?;
            clean_stale_cgroups(hierarchy);
            Some(new_cgroup(hierarchy, name, limits)?)
        } else {
            None
        };
        let into = early.as_ref().and_then(|m| m.cgroup.dir_fd());
        // SAFETY: the child runs only `child::main`, which is allocation-free
        // and ends in execve or _exit.
        let cloned = unsafe { paddock_sys::clone_into_namespaces(NAMESPACES, into) };
        let (pid, pidfd) = match cloned {
            Ok(Cloned::Child) => child::main(&plan, &fds),
            Ok(Cloned::Parent { pid, pidfd }) => {
                // ORDER: before "go", after which the child restores the
                // set. Off this CPU the child builds its tree while we write
                // its id maps and make its cgroup (below), instead of waiting
                // for us to block (~5-10% of a `paddock run` here). Best
                // effort: the child also moves itself when it runs first.
                if let Some(elsewhere) = &plan.elsewhere {
                    let _ = paddock_sys::set_allowed_cpus(pid, elsewhere);
                }
                (pid, pidfd)
            }
            Err(e) => {
                let msg = if e == paddock_sys::Errno::INVAL || e == paddock_sys::Errno::PERM {
                    format!(
                        "cannot create namespaces ({e}); user namespaces may be disabled \
                         (check /proc/sys/user/max_user_namespaces)"
                    )
                } else {
                    format!("clone into new namespaces: {e}")
                };
                if let Some(made) = early {
                    let _ = made.cgroup.remove();
                }
                return Err(JailError::Privileges(msg));
            }
        };
        drop(child_fds);
        drop(channel);
        drop(stdio.channel);
        drop((status_w, go_child, out_w, err_w, stdin));

        // Until the cgroup exists there is no `Sandbox` to tear down: on
        // error, kill and reap the child here (closing `go_host` alone
        // would end it too).
        let abandon = |e: JailError| {
            let _ = paddock_sys::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = paddock_sys::wait_child(pid);
            e
        };
        let released = write_id_maps(pid, uids.base()).and_then(|()| {
            paddock_sys::send_with_fds(go_host.as_fd(), GO, &[])
                .map_err(|e| JailError::host("release the sandbox child", e.into()))
        });
        if let Err(e) = released {
            if let Some(made) = &early {
                let _ = made.cgroup.remove();
            }
            return Err(abandon(e));
        }
        let made = match early {
            Some(made) => made,
            None => {
                let hierarchy = hierarchy().map_err(abandon)?;
                clean_stale_cgroups(hierarchy);
                let mut made = new_cgroup(hierarchy, name, limits).map_err(abandon)?;
                // v2 found only now (the first sandbox of a process, see
                // `unified_expected`): the child joins through
                // `cgroup.procs`, which is correct, only slower.
                if made.cgroup.dir_fd().is_some() {
                    match procs_file(&*made.cgroup) {
                        Ok(procs) => made.tasks.push(procs),
                        Err(e) => {
                            let _ = made.cgroup.remove();
                            return Err(abandon(e));
                        }
                    }
                }
                made
            }
        };
        let mut sandbox = Sandbox {
            pid,
            pidfd,
            status: File::from(status_r),
            stdout: out_r,
            stderr: err_r,
            cgroup: made.cgroup,
            rootfs_steps: plan.rootfs.steps.iter().map(|s| s.what.clone()).collect(),
            _uids: uids,
            started,
            reaped: false,
            removed: false,
        };
        let tasks: Vec<BorrowedFd<'_>> = made.tasks.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = paddock_sys::send_with_fds(go_host.as_fd(), CGROUP_READY, &tasks) {
            let _ = sandbox.teardown();
            return Err(JailError::host(
                "hand the cgroup to the sandbox child",
                e.into(),
            ));
        }
        Ok(sandbox)
    }

    /// Pid of the sandbox's init, in the host's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd of the sandbox's init (readable when it has exited).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The status pipe (readable when a report or EOF is there).
    pub fn status_fd(&self) -> BorrowedFd<'_> {
        self.status.as_fd()
    }

    /// The read end of the program's stdout, if captured and not yet taken.
    pub fn take_stdout(&mut self) -> Option<OwnedFd> {
        self.stdout.take()
    }

    /// The read end of the program's stderr, if captured and not yet taken.
    pub fn take_stderr(&mut self) -> Option<OwnedFd> {
        self.stderr.take()
    }

    /// When the sandbox was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The sandbox's cgroup.
    pub fn cgroup(&self) -> &dyn Cgroup {
        &*self.cgroup
    }

    /// Reads the next report from init; `None` at EOF (init is gone).
    /// Blocks if none is pending.
    pub fn next_report(&mut self) -> Result<Option<Report>, JailError> {
        let mut buf = [0u8; REPORT_LEN];
        let mut got = 0;
        while got < REPORT_LEN {
            let n = paddock_sys::read(self.status.as_raw_fd(), &mut buf[got..])
                .map_err(|e| JailError::host("read the status pipe", e.into()))?;
            if n == 0 {
                return Ok(None);
            }
            got += n;
        }
        Report::decode(&buf)
            .map(Some)
            .ok_or_else(|| JailError::InitDied("garbled report from init".into()))
    }

    /// Describes a step number from a `SetupFailed` report.
    pub fn describe_step(&self, step: u32) -> String {
        child::describe_step(&self.rootfs_steps, step)
    }

    /// Kills every process of the sandbox (the whole cgroup: also processes
    /// that double-forked and left their session).
    pub fn kill(&self) -> Result<(), JailError> {
        let _ = paddock_sys::pidfd_signal(self.pidfd.as_fd(), libc::SIGKILL);
        self.cgroup.kill_all()?;
        Ok(())
    }

    /// Waits for init to exit (blocking) and reaps it. Idempotent.
    pub fn reap(&mut self) -> Result<(), JailError> {
        if !self.reaped {
            match paddock_sys::wait_child(self.pid) {
                Ok(_) | Err(paddock_sys::Errno::CHILD) => self.reaped = true,
                Err(e) => return Err(JailError::host("wait for the sandbox init", e.into())),
            }
        }
        Ok(())
    }

    /// Peak memory, CPU time and OOM kills so far, from the cgroup.
    pub fn stats(&self) -> Result<Stats, JailError> {
        Ok(self.cgroup.stats()?)
    }

    /// Kills everything, reaps init and removes the cgroup. Idempotent.
    pub fn teardown(&mut self) -> Result<(), JailError> {
        if self.removed {
            return Ok(());
        }
        if !self.reaped {
            self.kill()?;
            self.reap()?;
        }
        self.cgroup.remove()?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// The child may go on: its uid/gid maps are written.
const GO: u8 = b'g';
/// The child's cgroup exists (its v1 `tasks` files come with this message).
const CGROUP_READY: u8 = b'c';

/// Writes the child's uid and gid maps (`0 <base> RANGE`). ORDER: before the
/// child may go on, which must never run unmapped.
fn write_id_maps(pid: i32, base: u32) -> Result<(), JailError> {
    let map = format!("0 {base} {RANGE}\n");
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, &map).map_err(|e| JailError::host(format!("write {path}"), e))?;
    }
    Ok(())
}

/// A sandbox's new cgroup and, on v1, its `tasks` files opened for writing
/// (the child writes `0` to each to move itself in).
struct NewCgroup {
    cgroup: Box<dyn Cgroup>,
    tasks: Vec<OwnedFd>,
}

/// Creates the cgroup `name` with `limits`.
fn new_cgroup(
    hierarchy: &Hierarchy,
    name: &str,
    limits: &paddock_cgroups::Limits,
) -> Result<NewCgroup, JailError> {
    let cgroup = hierarchy.create(name, limits)?;
    if cgroup.dir_fd().is_some() {
        return Ok(NewCgroup {
            cgroup,
            tasks: Vec::new(),
        });
    }
    // ORDER: writing "0" to a v1 `tasks` file moves only the calling thread,
    // which the kernel does without the global threadgroup lock that makes
    // writing a pid to `cgroup.procs` wait for an RCU grace period (~8 ms
    // here). The host opens the files, so its credentials authorise the move.
    let opened = cgroup
        .paths()
        .iter()
        .map(|dir| open_for_writing(&dir.join("tasks")))
        .collect::<Result<Vec<OwnedFd>, JailError>>()
        .and_then(|tasks| {
            if tasks.len() > paddock_sys::MAX_PASSED_FDS {
                Err(JailError::InvalidSpec(format!(
                    "more than {} cgroup hierarchies",
                    paddock_sys::MAX_PASSED_FDS
                )))
            } else {
                Ok(tasks)
            }
        });
    match opened {
        Ok(tasks) => Ok(NewCgroup { cgroup, tasks }),
        Err(e) => {
            let _ = cgroup.remove();
            Err(e)
        }
    }
}

/// Whether the cgroup hierarchy is expected to be v2, decided before the
/// clone: from the detected hierarchy once there is one, else from the type
/// of `/sys/fs/cgroup` (one `statfs`, so that detecting the hierarchy can
/// wait until the child is busy).
fn unified_expected() -> Result<bool, JailError> {
    if HIERARCHY.get().is_some() {
        return Ok(hierarchy()?.is_v2());
    }
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    Ok(rustix::fs::statfs("/sys/fs/cgroup")
        .map(|fs| fs.f_type == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false))
}

/// The `cgroup.procs` file of a v2 cgroup, opened for writing.
fn procs_file(cgroup: &dyn Cgroup) -> Result<OwnedFd, JailError> {
    let dir = cgroup
        .paths()
        .into_iter()
        .next()
        .ok_or_else(|| JailError::InvalidSpec("a cgroup without a directory".into()))?;
    open_for_writing(&dir.join("cgroup.procs"))
}

/// Opens a cgroup control file for the child to write to.
fn open_for_writing(path: &std::path::Path) -> Result<OwnedFd, JailError> {
    File::options()
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| JailError::host(format!("open {}", path.display()), e))
}

/// Compiles everything the child needs (paths, program, filter) on the host.
fn prepare(
    spec: &SandboxSpec,
    mounts: &[(std::path::PathBuf, std::path::PathBuf, bool)],
) -> Result<ChildPlan, JailError> {
    let rootfs = rootfs::plan(spec, mounts)?;
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(paddock_types::DEFAULT_PATH, |(_, v)| v.as_str());
    let image = ExecImage::new(&spec.argv, &spec.env, path)
        .map_err(|e| JailError::InvalidSpec(e.to_string()))?;
    let cs = |s: &std::path::Path| {
        CString::new(s.as_os_str().as_encoded_bytes())
            .map_err(|_| JailError::InvalidSpec(format!("{} contains a NUL byte", s.display())))
    };
    let workdir = cs(&spec.workdir)?;
    let mut landlock_rw = vec![
        CString::from(c"/tmp"),
        CString::from(c"/home/user"),
        CString::from(c"/dev"),
    ];
    if !spec.workdir.starts_with("/home/user") && !spec.workdir.starts_with("/tmp") {
        landlock_rw.push(workdir.clone());
    }
    for (_, target, writable) in mounts {
        if *writable {
            landlock_rw.push(cs(target)?);
        }
    }
    let limits = &spec.limits;
    Ok(ChildPlan {
        rootfs,
        hostname: spec.hostname.as_bytes().to_vec(),
        rlimits: vec![
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_NOFILE, limits.open_files),
            (libc::RLIMIT_FSIZE, limits.disk_bytes.max(1 << 20)),
        ],
        image,
        workdir,
        landlock_ro: vec![CString::from(c"/")],
        landlock_rw,
        seccomp: seccomp::sandbox_filter()?,
        release: Vec::new(),
        cpus: None,
        elsewhere: None,
    })
}
