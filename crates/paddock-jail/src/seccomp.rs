//! The sandbox's seccomp-bpf policy: a deny-list, kept as data in [`POLICY`].
//!
//! Every system call is allowed except the rows of [`POLICY`], which fail with
//! `EPERM` (or `ENOSYS` for `clone3`). Failing with an errno rather than
//! killing the process matters: programs probe for features (glibc tries
//! `clone3` and falls back to `clone`, Python's `os` module and many runtimes
//! try a call and handle the error), and a probe must get an error it
//! understands, not a `SIGSYS`. `docs/SECURITY.md` carries the same table, one
//! line per row; a unit test keeps the two in sync.
//!
//! # Use
//!
//! The sandbox's final program is started from a process forked from a
//! possibly multi-threaded parent, so everything between `fork` and `execve`
//! must be allocation-free:
//!
//! 1. in the parent, [`sandbox_filter`] compiles the policy into a
//!    [`BpfProgram`] (this allocates);
//! 2. in the child, right before `execve` and after every set-up step that
//!    needs a denied call (`mount`, `pivot_root`, …), [`apply`] sets
//!    `no_new_privs` and installs the program. It does not allocate.
//!
//! # Layout of the program
//!
//! 1. Architecture: a call made with another audit architecture than
//!    `AUDIT_ARCH_X86_64` (the i386 ABI through `int 0x80`, which has other
//!    syscall numbers) goes straight to seccompiler's own architecture check,
//!    which kills the process (`SECCOMP_RET_KILL_PROCESS`). A deny-list keyed
//!    on x86_64 numbers means nothing for another ABI, so killing is the only
//!    safe answer there.
//! 2. x32: syscall numbers with the x32 bit (`0x4000_0000`) report the
//!    x86_64 audit architecture, so on a kernel built with
//!    `CONFIG_X86_X32_ABI` they would slip past a per-number deny-list. They
//!    get `ENOSYS`, which is what a kernel without x32 (like ours) answers.
//! 3. A binary search over the numbers of every row, written here rather
//!    than by seccompiler: its leaves jump to a shared `RET ERRNO(EPERM)`
//!    (or `ENOSYS`) for the unconditional rows, to step 4 for the rows with
//!    argument rules, and return `ALLOW` for every other number. seccompiler
//!    gives a filter a single match action (it cannot return `ENOSYS` for
//!    `clone3` and `EPERM` for the rest) and tests the numbers one after
//!    another; the search walks about eight instructions, which matters
//!    because the kernel runs the filter for every syscall number when it
//!    installs it (see `jump_table`).
//! 4. The argument-conditional rows (`clone`, `socket`, `ioctl`,
//!    `personality`), compiled by seccompiler (`SeccompFilter`), with the
//!    match action `ERRNO(EPERM)` and the mismatch action `ALLOW`.
//!
//! Only the number and the architecture are read before step 4, so the
//! kernel's seccomp action cache (Linux 5.11+) can prove that every allowed
//! syscall without argument rules is always allowed and skips the filter for
//! it entirely; the filter really runs only for denied calls and for the four
//! syscalls with argument rules.
//!
//! # Argument comparisons are 32-bit on purpose
//!
//! Every argument the policy inspects is an `int` or `unsigned int` in the
//! kernel (`socket`'s domain and type, `ioctl`'s request, `personality`), or,
//! for `clone`'s flags, an `unsigned long` of which the kernel only uses the
//! low 32 bits. The conditions therefore compare the low 32 bits only
//! (`SeccompCmpArgLen::Dword`). A 64-bit comparison would be *wrong*: a caller
//! could set a high bit (`ioctl(fd, 0x1_0000_5412, …)`) to dodge the rule
//! while the kernel still sees `TIOCSTI`.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("the seccomp policy is written for Linux on x86_64");

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, BpfProgramRef, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

/// Errors while compiling the policy. They come from the table itself, so
/// they are programming errors, caught by the unit tests.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A row's conditions were rejected by seccompiler.
    #[error("seccomp policy row `{syscall}` is invalid: {source}")]
    Rule {
        /// The row's syscall.
        syscall: &'static str,
        /// seccompiler's reason.
        #[source]
        source: seccompiler::BackendError,
    },
    /// seccompiler could not compile the conditional rows.
    #[error("compiling the seccomp filter failed: {0}")]
    Compile(#[source] seccompiler::BackendError),
    /// A syscall appears in two rows.
    #[error("seccomp policy lists `{0}` twice")]
    Duplicate(&'static str),
    /// A row combines things the compiler does not support (a conditional
    /// `ENOSYS` row, a syscall number out of range, an empty condition list).
    #[error("seccomp policy row `{0}` is not supported by the compiler")]
    Unsupported(&'static str),
    /// The program would not fit the kernel's limits (4096 instructions,
    /// 255-instruction jumps).
    #[error("the seccomp filter is too large ({0} instructions)")]
    TooLarge(usize),
}

/// What a denied call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail with `EPERM`, as the kernel does for a missing capability.
    Eperm,
    /// Fail with `ENOSYS`, as a kernel without the syscall does; callers fall
    /// back to an older call. Only for unconditional rows.
    Enosys,
}

impl Action {
    /// The errno value the caller sees.
    pub const fn errno(self) -> i32 {
        match self {
            Action::Eperm => libc::EPERM,
            Action::Enosys => libc::ENOSYS,
        }
    }
}

/// One test on the low 32 bits of a syscall argument (see the module docs
/// for why 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgTest {
    /// `args[arg] == value`.
    Eq {
        /// Argument index, 0 to 5.
        arg: u8,
        /// Value compared with.
        value: u32,
    },
    /// `args[arg] != value`.
    Ne {
        /// Argument index, 0 to 5.
        arg: u8,
        /// Value compared with.
        value: u32,
    },
    /// `args[arg] & mask == value`.
    MaskedEq {
        /// Argument index, 0 to 5.
        arg: u8,
        /// Bits kept before comparing.
        mask: u32,
        /// Value compared with (already within `mask`).
        value: u32,
    },
}

/// When a row denies its syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every call.
    Always,
    /// When any alternative matches (OR); an alternative matches when all of
    /// its tests do (AND). This is seccompiler's rule model.
    Any(&'static [&'static [ArgTest]]),
}

/// One row of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The syscall's name, as in `docs/SECURITY.md`.
    pub syscall: &'static str,
    /// Its x86_64 number.
    pub nr: i64,
    /// Which calls are denied.
    pub when: When,
    /// What a denied call returns.
    pub action: Action,
    /// Why; the same sentence is in `docs/SECURITY.md`.
    pub reason: &'static str,
}

/// Syscall numbers: libc's, plus the ones newer than it.
mod nr {
    pub use libc::*;

    /// `open_tree_attr(2)`, Linux 6.15; not in libc 0.2.191 yet.
    #[allow(non_upper_case_globals)]
    pub const SYS_open_tree_attr: libc::c_long = 467;
}

/// `"SYS_mount"` → `"mount"`, at compile time.
const fn strip_sys(name: &'static str) -> &'static str {
    let (prefix, rest) = name.as_bytes().split_at(4);
    assert!(
        prefix.len() == 4
            && prefix[0] == b'S'
            && prefix[1] == b'Y'
            && prefix[2] == b'S'
            && prefix[3] == b'_'
    );
    match core::str::from_utf8(rest) {
        Ok(rest) => rest,
        Err(_) => panic!("syscall names are ASCII"),
    }
}

macro_rules! row {
    ($sys:ident, $when:expr, $action:expr, $reason:expr $(,)?) => {
        Rule {
            syscall: strip_sys(stringify!($sys)),
            nr: nr::$sys as i64,
            when: $when,
            action: $action,
            reason: $reason,
        }
    };
}

macro_rules! deny {
    ($sys:ident, $reason:expr $(,)?) => {
        row!($sys, When::Always, Action::Eperm, $reason)
    };
}

const fn eq(arg: u8, value: u32) -> ArgTest {
    ArgTest::Eq { arg, value }
}

const fn ne(arg: u8, value: u32) -> ArgTest {
    ArgTest::Ne { arg, value }
}

/// All bits of `bits` are set in `args[arg]`.
const fn has_bits(arg: u8, bits: u32) -> ArgTest {
    ArgTest::MaskedEq {
        arg,
        mask: bits,
        value: bits,
    }
}

const fn masked_eq(arg: u8, mask: u32, value: u32) -> ArgTest {
    ArgTest::MaskedEq { arg, mask, value }
}

/// `SOCK_TYPE_MASK` in the kernel: the type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u32 = 0xf;

/// The namespace flags `clone(2)` accepts in its first argument.
/// `CLONE_NEWTIME` (0x80) is not one of them: in `clone(2)` that bit belongs
/// to the exit signal (`CSIGNAL`); only `clone3` and `unshare` can create a
/// time namespace, and both are denied outright.
const CLONE_NAMESPACES: &[&[ArgTest]] = &[
    &[has_bits(0, libc::CLONE_NEWNS as u32)],
    &[has_bits(0, libc::CLONE_NEWCGROUP as u32)],
    &[has_bits(0, libc::CLONE_NEWUTS as u32)],
    &[has_bits(0, libc::CLONE_NEWIPC as u32)],
    &[has_bits(0, libc::CLONE_NEWUSER as u32)],
    &[has_bits(0, libc::CLONE_NEWPID as u32)],
    &[has_bits(0, libc::CLONE_NEWNET as u32)],
];

const SOCKET_DENIED: &[&[ArgTest]] = &[
    &[eq(0, libc::AF_PACKET as u32)],
    &[eq(0, libc::AF_VSOCK as u32)],
    &[
        eq(0, libc::AF_INET as u32),
        masked_eq(1, SOCK_TYPE_MASK, libc::SOCK_RAW as u32),
    ],
    &[
        eq(0, libc::AF_INET6 as u32),
        masked_eq(1, SOCK_TYPE_MASK, libc::SOCK_RAW as u32),
    ],
];

const IOCTL_DENIED: &[&[ArgTest]] = &[
    &[eq(1, libc::TIOCSTI as u32)],
    &[eq(1, libc::TIOCLINUX as u32)],
];

/// `personality(2)`: anything but `PER_LINUX` (0) and the query (0xffffffff).
const PERSONALITY_DENIED: &[&[ArgTest]] = &[&[ne(0, 0), ne(0, 0xffff_ffff)]];

const NEW_MOUNT_API: &str = "New mount API: the same power as mount; the jail sets up every mount before the program starts.";
const MODULES: &str = "Loads or unloads kernel code.";
const KEYRINGS: &str = "Keyrings are shared with same-uid processes outside the sandbox (only user namespaces separate them), and the key code has had many bugs.";
const IO_URING: &str = "io_uring runs its operations without passing through seccomp, so it would bypass this filter; it is also a large attack surface.";
const CLOCK: &str =
    "Sets the system clock, which is shared with the host (the wall clock is not namespaced).";
const SWAP: &str = "Changes the host's swap devices.";
const QUOTA: &str = "Changes filesystem quotas.";
const OTHER_MEMORY: &str = "Reads or writes another process's memory directly.";
const KEXEC: &str = "Loads a new kernel to boot into.";
const HANDLES: &str = "Opens files by handle, bypassing path lookup and permission checks on the directories (the \"shocker\" container escape); the handle is made by name_to_handle_at.";
const IO_PORTS: &str = "Direct access to hardware I/O ports.";
const NUMA: &str = "Moves another process's pages between NUMA nodes and reveals where they live.";

/// The policy. `docs/SECURITY.md` has one table line per row, with the same
/// reason.
pub static POLICY: &[Rule] = &[
    // Mounts and the root directory: the jail's job, done before the program runs.
    deny!(
        SYS_mount,
        "Mounting would change the sandbox's filesystem view; the jail sets up every mount before the program starts."
    ),
    deny!(
        SYS_umount2,
        "Unmounting could uncover what the jail's mounts hide."
    ),
    deny!(
        SYS_pivot_root,
        "Changes the root mount; only the jail does that, before the program starts."
    ),
    deny!(
        SYS_chroot,
        "Changing the root directory, combined with a directory fd kept open, is a classic escape."
    ),
    deny!(SYS_fsopen, NEW_MOUNT_API),
    deny!(SYS_fsconfig, NEW_MOUNT_API),
    deny!(SYS_fsmount, NEW_MOUNT_API),
    deny!(SYS_fspick, NEW_MOUNT_API),
    deny!(SYS_open_tree, NEW_MOUNT_API),
    deny!(SYS_open_tree_attr, NEW_MOUNT_API),
    deny!(SYS_move_mount, NEW_MOUNT_API),
    deny!(SYS_mount_setattr, NEW_MOUNT_API),
    // Namespaces: the sandbox's namespaces are final.
    deny!(
        SYS_unshare,
        "New namespaces, a user namespace above all, open kernel code meant for privileged users; the sandbox's namespaces are final. All flags are denied, the harmless ones too."
    ),
    deny!(
        SYS_setns,
        "Joining another namespace through an fd would leave the sandbox's."
    ),
    row!(
        SYS_clone,
        When::Any(CLONE_NAMESPACES),
        Action::Eperm,
        "Any CLONE_NEW* flag would create namespaces (see unshare); plain fork, vfork and thread creation stay allowed."
    ),
    row!(
        SYS_clone3,
        When::Always,
        Action::Enosys,
        "Its flags live in memory, which seccomp cannot read; ENOSYS makes glibc (and others) fall back to clone, whose flags are checked."
    ),
    // Other processes.
    deny!(
        SYS_ptrace,
        "Tracing reads and rewrites other processes' memory and registers, and has a long history of kernel bugs; PTRACE_TRACEME is denied too."
    ),
    deny!(SYS_process_vm_readv, OTHER_MEMORY),
    deny!(SYS_process_vm_writev, OTHER_MEMORY),
    deny!(
        SYS_process_madvise,
        "Acts on another process's memory (reclaim, page-out) through a pidfd."
    ),
    deny!(SYS_move_pages, NUMA),
    deny!(SYS_migrate_pages, NUMA),
    deny!(
        SYS_pidfd_getfd,
        "Copies a file descriptor out of another process."
    ),
    deny!(
        SYS_kcmp,
        "Compares kernel objects of two processes, which leaks the order of kernel pointers."
    ),
    // The kernel itself.
    deny!(SYS_kexec_load, KEXEC),
    deny!(SYS_kexec_file_load, KEXEC),
    deny!(SYS_init_module, MODULES),
    deny!(SYS_finit_module, MODULES),
    deny!(SYS_delete_module, MODULES),
    deny!(
        SYS_bpf,
        "eBPF programs and maps are a large kernel attack surface that sandboxed programs have no use for."
    ),
    deny!(
        SYS_perf_event_open,
        "Performance counters give side channels and kernel addresses, and have had many bugs."
    ),
    deny!(
        SYS_userfaultfd,
        "Lets a process stall kernel page faults at will, the usual tool to win kernel race conditions."
    ),
    deny!(SYS_io_uring_setup, IO_URING),
    deny!(SYS_io_uring_enter, IO_URING),
    deny!(SYS_io_uring_register, IO_URING),
    deny!(
        SYS_modify_ldt,
        "Installs x86 segment descriptors; only 16-bit code and Wine need it, and it has had kernel bugs."
    ),
    deny!(SYS_iopl, IO_PORTS),
    deny!(SYS_ioperm, IO_PORTS),
    deny!(
        SYS_uselib,
        "Obsolete a.out library loader, an old source of kernel bugs."
    ),
    deny!(
        SYS_lookup_dcookie,
        "Obsolete profiling interface that turns cookies into path names."
    ),
    deny!(
        SYS_nfsservctl,
        "Obsolete NFS server control (gone since Linux 3.1)."
    ),
    // Keys.
    deny!(SYS_keyctl, KEYRINGS),
    deny!(SYS_add_key, KEYRINGS),
    deny!(SYS_request_key, KEYRINGS),
    // The machine.
    deny!(
        SYS_reboot,
        "Reboots or halts the machine (in a pid namespace, kills its init)."
    ),
    deny!(SYS_swapon, SWAP),
    deny!(SYS_swapoff, SWAP),
    deny!(SYS_acct, "Switches process accounting on the host."),
    deny!(
        SYS_syslog,
        "Reads or clears the kernel log, which leaks kernel addresses and host activity."
    ),
    deny!(SYS_quotactl, QUOTA),
    deny!(SYS_quotactl_fd, QUOTA),
    deny!(
        SYS_vhangup,
        "Hangs up the controlling terminal, which may be shared with the host."
    ),
    deny!(
        SYS_fanotify_init,
        "Filesystem-wide event monitoring, meant for privileged daemons."
    ),
    deny!(SYS_clock_settime, CLOCK),
    deny!(SYS_settimeofday, CLOCK),
    deny!(
        SYS_adjtimex,
        "Tunes the system clock, which is shared with the host; read-only queries (modes 0) are denied too, since seccomp cannot read the struct."
    ),
    deny!(SYS_clock_adjtime, CLOCK),
    // Files.
    deny!(SYS_open_by_handle_at, HANDLES),
    deny!(
        SYS_name_to_handle_at,
        "Makes the handles open_by_handle_at consumes; no use without it."
    ),
    // Arguments.
    row!(
        SYS_socket,
        When::Any(SOCKET_DENIED),
        Action::Eperm,
        "AF_PACKET and raw IPv4/IPv6 sockets sniff and forge packets; AF_VSOCK reaches the virtual machine's host, which no network namespace isolates. Raw netlink sockets stay allowed (getaddrinfo and getifaddrs use them)."
    ),
    row!(
        SYS_ioctl,
        When::Any(IOCTL_DENIED),
        Action::Eperm,
        "TIOCSTI fakes terminal input and TIOCLINUX drives the virtual console: either could type commands into a terminal shared with the host."
    ),
    row!(
        SYS_personality,
        When::Any(PERSONALITY_DENIED),
        Action::Eperm,
        "Only the default (PER_LINUX, 0) and the query (0xffffffff) are allowed: other flags turn off address-space randomisation or make data executable."
    ),
];

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

// Classic BPF opcodes (linux/filter.h) and the `struct seccomp_data` layout.
/// `BPF_LD | BPF_W | BPF_ABS`.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

/// [`POLICY`] compiled for x86_64, once per process (a server makes many
/// sandboxes). Call it in the parent: it allocates.
pub fn sandbox_filter() -> Result<BpfProgram, SeccompError> {
    static COMPILED: std::sync::OnceLock<BpfProgram> = std::sync::OnceLock::new();
    if let Some(program) = COMPILED.get() {
        return Ok(program.clone());
    }
    let program = compile(POLICY)?;
    Ok(COMPILED.get_or_init(|| program).clone())
}

/// Compiles a policy table (see the module docs for the program's layout).
pub fn compile(policy: &[Rule]) -> Result<BpfProgram, SeccompError> {
    let mut seen: Vec<i64> = Vec::with_capacity(policy.len());
    // (syscall number, where it leads) for the search tree.
    let mut table: Vec<(u32, Target)> = Vec::new();
    let mut conditional: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();

    for row in policy {
        if seen.contains(&row.nr) {
            return Err(SeccompError::Duplicate(row.syscall));
        }
        seen.push(row.nr);
        let nr = u32::try_from(row.nr)
            .ok()
            .filter(|nr| nr & X32_SYSCALL_BIT == 0)
            .ok_or(SeccompError::Unsupported(row.syscall))?;
        match (row.when, row.action) {
            (When::Always, Action::Eperm) => table.push((nr, Target::Eperm)),
            (When::Always, Action::Enosys) => table.push((nr, Target::Enosys)),
            (When::Any(alternatives), Action::Eperm) if !alternatives.is_empty() => {
                table.push((nr, Target::Body));
                let rules = alternatives
                    .iter()
                    .map(|tests| seccomp_rule(tests))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| SeccompError::Rule {
                        syscall: row.syscall,
                        source,
                    })?;
                conditional.insert(row.nr, rules);
            }
            (When::Any(_), _) => return Err(SeccompError::Unsupported(row.syscall)),
        }
    }

    let body: BpfProgram = SeccompFilter::new(
        conditional,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(SeccompError::Compile)?;

    let mut program = jump_table(&table, body.len())?;
    program.extend(body);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(program)
}

fn seccomp_rule(tests: &[ArgTest]) -> Result<SeccompRule, seccompiler::BackendError> {
    let conditions = tests
        .iter()
        .map(|test| {
            let (arg, op, value) = match *test {
                ArgTest::Eq { arg, value } => (arg, SeccompCmpOp::Eq, value),
                ArgTest::Ne { arg, value } => (arg, SeccompCmpOp::Ne, value),
                ArgTest::MaskedEq { arg, mask, value } => {
                    (arg, SeccompCmpOp::MaskedEq(u64::from(mask)), value)
                }
            };
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, u64::from(value))
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions)
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Where a syscall number leads in the search tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `RET ERRNO(EPERM)`.
    Eperm,
    /// `RET ERRNO(ENOSYS)`.
    Enosys,
    /// seccompiler's program, for the rows with argument rules.
    Body,
}

/// Largest leaf of the search tree: at most this many `JEQ`s in a row.
const LEAF: usize = 4;

/// The part before seccompiler's program (steps 1–3 of the module docs):
///
/// ```text
///      LD   arch
///      JEQ  AUDIT_ARCH_X86_64 ? next : BODY
///      LD   nr
///      JGE  X32_SYSCALL_BIT   ? ENOSYS : next
///      a binary search over the sorted numbers of every row:
///        inner node: JGE nr_mid ? right : left
///        leaf:       JEQ nr_i ? EPERM|ENOSYS|BODY : next   (up to LEAF)
///                    RET ALLOW
/// ENOSYS: RET ERRNO(ENOSYS)
/// EPERM:  RET ERRNO(EPERM)
/// BODY:   seccompiler's program (its own architecture check, then the
///         conditional rows, then RET ALLOW)
/// ```
///
/// A search rather than a list of `JEQ`s because the kernel, when it installs
/// a filter, runs it once for every syscall number of every architecture to
/// fill its action cache (with interrupts off): a 60-long list made that
/// about 30 000 instructions, a tenth of a millisecond per sandbox start. A
/// search walks about eight.
fn jump_table(rows: &[(u32, Target)], body_len: usize) -> Result<BpfProgram, SeccompError> {
    let mut rows = rows.to_vec();
    rows.sort_unstable_by_key(|&(nr, _)| nr);
    let mut tree = Vec::new();
    search_tree(&rows, &mut tree);
    let len = 4 + tree.len() + 2;
    let (enosys, eperm, body) = (len - 2, len - 1, len);
    let too_large = || SeccompError::TooLarge(len + body_len);
    // Offset of a jump at `from` to `to`: the kernel adds it to `from + 1`.
    let offset = |from: usize, to: usize| u8::try_from(to - from - 1).map_err(|_| too_large());

    let mut program = Vec::with_capacity(len + body_len);
    program.push(stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH));
    program.push(jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 0, offset(1, body)?));
    program.push(stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR));
    program.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, offset(3, enosys)?, 0));
    for node in tree {
        let at = program.len();
        program.push(match node {
            Node::Split { nr, right } => jump(
                BPF_JMP_JGE_K,
                nr,
                u8::try_from(right).map_err(|_| too_large())?,
                0,
            ),
            Node::Match { nr, target } => {
                let to = match target {
                    Target::Eperm => eperm,
                    Target::Enosys => enosys,
                    Target::Body => body,
                };
                jump(BPF_JMP_JEQ_K, nr, offset(at, to)?, 0)
            }
            Node::Allow => stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
        });
    }
    program.push(stmt(BPF_RET_K, ret_errno(libc::ENOSYS)));
    program.push(stmt(BPF_RET_K, ret_errno(libc::EPERM)));
    debug_assert_eq!(program.len(), len);
    Ok(program)
}

/// One instruction of the search tree, before its jumps are resolved.
enum Node {
    /// `JGE nr ? +right : next`: the right half starts `right` instructions
    /// after the next one.
    Split { nr: u32, right: usize },
    /// `JEQ nr ? target : next`.
    Match { nr: u32, target: Target },
    /// `RET ALLOW`: the number is none of the rows.
    Allow,
}

/// Appends the search over `rows` (sorted by number) to `out`.
fn search_tree(rows: &[(u32, Target)], out: &mut Vec<Node>) {
    if rows.len() <= LEAF {
        for &(nr, target) in rows {
            out.push(Node::Match { nr, target });
        }
        out.push(Node::Allow);
        return;
    }
    let (left, right) = rows.split_at(rows.len() / 2);
    let split = out.len();
    out.push(Node::Split {
        nr: right[0].0,
        right: 0,
    });
    search_tree(left, out);
    let left_len = out.len() - split - 1;
    out[split] = Node::Split {
        nr: right[0].0,
        right: left_len,
    };
    search_tree(right, out);
}

/// Sets `no_new_privs` and installs `program` on the calling thread, with
/// raw `prctl` and `seccomp` calls and no allocation: safe between `fork` and
/// `execve`. Returns the errno on failure.
///
/// Call it last before `execve`: from here on, the denied calls fail.
/// (seccompiler's `apply_filter` was read for this: it builds a
/// `sock_fprog` on the stack and reports errors as `io::Error` values built
/// from the raw errno, which do not allocate.)
pub fn apply(program: BpfProgramRef<'_>) -> Result<(), i32> {
    if program.is_empty() || program.len() > MAX_INSTRUCTIONS {
        return Err(libc::EINVAL);
    }
    match seccompiler::apply_filter(program) {
        Ok(()) => Ok(()),
        Err(seccompiler::Error::Prctl(error) | seccompiler::Error::Seccomp(error)) => {
            Err(error.raw_os_error().unwrap_or(libc::EINVAL))
        }
        Err(_) => Err(libc::EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = ret_errno(libc::EPERM);
    const ENOSYS: u32 = ret_errno(libc::ENOSYS);

    /// A classic-BPF interpreter for what seccompiler and `jump_table`
    /// emit. Returns the action and the number of instructions executed.
    fn run(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        // struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let (mut pc, mut a, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let insn = &program[pc];
            steps += 1;
            let k = insn.k;
            let cond = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            pc += 1 + match insn.code {
                0x20 => {
                    let k = k as usize;
                    a = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                    0
                }
                0x54 => {
                    a &= k;
                    0
                }
                0x05 => k as usize,
                0x15 => cond(a == k),
                0x25 => cond(a > k),
                0x35 => cond(a >= k),
                0x45 => cond(a & k != 0),
                0x06 => return (k, steps),
                code => panic!("unexpected BPF opcode {code:#x} at {pc}"),
            };
        }
    }

    fn decide(nr: i64, args: [u64; 6]) -> u32 {
        let program = sandbox_filter().unwrap();
        run(&program, AUDIT_ARCH_X86_64, nr as u32, args).0
    }

    #[test]
    fn compiles_small() {
        let program = sandbox_filter().unwrap();
        assert!(program.len() < 200, "{} instructions", program.len());
    }

    /// What the kernel runs when it installs the filter: the program once
    /// per syscall number, up to the first argument load (see `jump_table`).
    /// The search keeps each of those walks short.
    #[test]
    fn installing_is_cheap() {
        let program = sandbox_filter().unwrap();
        let conditional: Vec<i64> = POLICY
            .iter()
            .filter(|row| row.when != When::Always)
            .map(|row| row.nr)
            .collect();
        let mut total = 0;
        for nr in (0..=470).filter(|nr| !conditional.contains(nr)) {
            let steps = run(&program, AUDIT_ARCH_X86_64, nr as u32, [0; 6]).1;
            assert!(steps <= 14, "syscall {nr}: {steps} instructions");
            total += steps;
        }
        assert!(total < 6000, "{total} instructions over all numbers");
    }

    #[test]
    fn every_unconditional_row_is_denied_with_its_errno() {
        for row in POLICY.iter().filter(|row| row.when == When::Always) {
            let expected = ret_errno(row.action.errno());
            assert_eq!(decide(row.nr, [0; 6]), expected, "{}", row.syscall);
            assert_eq!(decide(row.nr, [u64::MAX; 6]), expected, "{}", row.syscall);
        }
        assert_eq!(decide(libc::SYS_clone3, [0; 6]), ENOSYS);
    }

    #[test]
    fn other_syscalls_are_allowed() {
        let denied: Vec<i64> = POLICY.iter().map(|row| row.nr).collect();
        for nr in 0..=470 {
            if !denied.contains(&nr) {
                assert_eq!(decide(nr, [0; 6]), ALLOW, "syscall {nr}");
            }
        }
    }

    #[test]
    fn foreign_architectures_are_killed_and_x32_gets_enosys() {
        let program = sandbox_filter().unwrap();
        const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
        for nr in [0, 1, 11, 21, 120, 500] {
            assert_eq!(run(&program, AUDIT_ARCH_I386, nr, [0; 6]).0, KILL);
        }
        // x32 mount and getpid.
        assert_eq!(decide(X32_SYSCALL_BIT as i64 | 165, [0; 6]), ENOSYS);
        assert_eq!(decide(X32_SYSCALL_BIT as i64 | 39, [0; 6]), ENOSYS);
        assert_eq!(decide(-1, [0; 6]), ENOSYS);
    }

    #[test]
    fn clone_namespaces_denied_fork_and_threads_allowed() {
        let sigchld = libc::SIGCHLD as u64;
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ] {
            let flags = flag as u64 | sigchld;
            assert_eq!(decide(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]), EPERM);
            // High bits do not hide it (the kernel ignores them).
            let flags = flags | 0xffff_ffff_0000_0000;
            assert_eq!(decide(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]), EPERM);
        }
        let all = (libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID) as u64;
        assert_eq!(decide(libc::SYS_clone, [all, 0, 0, 0, 0, 0]), EPERM);

        let fork = sigchld | (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
        let vfork = sigchld | (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        for flags in [0, sigchld, fork, vfork, thread] {
            assert_eq!(decide(libc::SYS_clone, [flags, 1, 2, 3, 4, 0]), ALLOW);
        }
    }

    #[test]
    fn sockets() {
        let raw = libc::SOCK_RAW as u64;
        let cloexec = libc::SOCK_CLOEXEC as u64;
        let nonblock = libc::SOCK_NONBLOCK as u64;
        let socket = |domain: i32, ty: u64, proto: u64| {
            decide(libc::SYS_socket, [domain as u64, ty, proto, 0, 0, 0])
        };
        assert_eq!(socket(libc::AF_PACKET, raw, 0), EPERM);
        assert_eq!(socket(libc::AF_PACKET, libc::SOCK_DGRAM as u64, 0), EPERM);
        assert_eq!(socket(libc::AF_VSOCK, libc::SOCK_STREAM as u64, 0), EPERM);
        assert_eq!(socket(libc::AF_INET, raw, 1), EPERM);
        assert_eq!(socket(libc::AF_INET, raw | cloexec | nonblock, 1), EPERM);
        assert_eq!(socket(libc::AF_INET6, raw | cloexec, 58), EPERM);
        // The kernel reads `int` arguments: high bits do not hide anything.
        assert_eq!(
            decide(libc::SYS_socket, [(1 << 32) | 17, raw, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            decide(libc::SYS_socket, [2, (1 << 40) | raw, 1, 0, 0, 0]),
            EPERM
        );

        assert_eq!(socket(libc::AF_INET, libc::SOCK_STREAM as u64, 0), ALLOW);
        assert_eq!(
            socket(libc::AF_INET, libc::SOCK_DGRAM as u64 | cloexec, 0),
            ALLOW
        );
        assert_eq!(socket(libc::AF_INET6, libc::SOCK_STREAM as u64, 0), ALLOW);
        assert_eq!(socket(libc::AF_UNIX, libc::SOCK_STREAM as u64, 0), ALLOW);
        assert_eq!(socket(libc::AF_NETLINK, raw | cloexec, 0), ALLOW);
    }

    #[test]
    fn ioctls() {
        let ioctl = |request: u64| decide(libc::SYS_ioctl, [0, request, 0, 0, 0, 0]);
        assert_eq!(ioctl(0x5412), EPERM);
        assert_eq!(ioctl(0x541c), EPERM);
        assert_eq!(ioctl(0x1_0000_5412), EPERM);
        assert_eq!(ioctl(libc::TCGETS), ALLOW);
        assert_eq!(ioctl(libc::TIOCGWINSZ), ALLOW);
        assert_eq!(ioctl(libc::FIONREAD), ALLOW);
    }

    #[test]
    fn personality() {
        let personality = |p: u64| decide(libc::SYS_personality, [p, 0, 0, 0, 0, 0]);
        assert_eq!(personality(0), ALLOW);
        assert_eq!(personality(0xffff_ffff), ALLOW);
        assert_eq!(personality(0x0040_0000), EPERM); // READ_IMPLIES_EXEC
        assert_eq!(personality(0x0004_0000), EPERM); // ADDR_NO_RANDOMIZE
        assert_eq!(personality(8), EPERM); // PER_LINUX32
    }

    /// Instructions executed per syscall. Allowed syscalls without argument
    /// rules are skipped entirely by the kernel's action cache; this bounds
    /// the rest.
    #[test]
    fn paths_are_short() {
        let program = sandbox_filter().unwrap();
        // Zero arguments fail every argument test (the longest path for
        // `clone`), all-ones ones match most.
        let worst = (0..=470)
            .flat_map(|nr| [[0; 6], [u64::MAX; 6]].map(|args| (nr, args)))
            .map(|(nr, args)| run(&program, AUDIT_ARCH_X86_64, nr, args).1)
            .max()
            .unwrap();
        assert!(worst < 120, "{worst} instructions on the longest path");
    }

    #[test]
    fn table_rows_are_sane() {
        for row in POLICY {
            assert!(!row.syscall.is_empty() && !row.reason.is_empty());
            assert!(
                !row.reason.contains('|'),
                "{}: breaks the markdown table",
                row.syscall
            );
            assert!(
                row.syscall
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                row.syscall
            );
        }
        let duplicated = [POLICY[0], POLICY[0]];
        assert!(matches!(
            compile(&duplicated),
            Err(SeccompError::Duplicate("mount"))
        ));
    }

    /// `docs/SECURITY.md` lists exactly the rows of [`POLICY`], each with the
    /// same reason.
    #[test]
    fn docs_match_the_table() {
        const DOC: &str = include_str!("../../../docs/SECURITY.md");
        let start = DOC
            .find("<!-- seccomp-table:start -->")
            .expect("start marker");
        let end = DOC.find("<!-- seccomp-table:end -->").expect("end marker");
        let table = &DOC[start..end];
        let mut documented: Vec<&str> = Vec::new();
        for line in table.lines().filter(|line| line.starts_with("| `")) {
            let name = line[3..].split('`').next().unwrap();
            documented.push(name);
            let row = POLICY
                .iter()
                .find(|row| row.syscall == name)
                .unwrap_or_else(|| panic!("docs/SECURITY.md lists `{name}`, the policy does not"));
            assert!(
                line.contains(row.reason),
                "docs/SECURITY.md: the line for `{name}` must contain the reason {:?}",
                row.reason
            );
        }
        for row in POLICY {
            assert!(
                documented.contains(&row.syscall),
                "docs/SECURITY.md does not list `{}`",
                row.syscall
            );
        }
        assert_eq!(documented.len(), POLICY.len(), "a syscall is listed twice");
    }
}
