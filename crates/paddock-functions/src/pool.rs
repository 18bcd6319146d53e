//! The pool: worker processes in sandboxes, a bounded priority queue in
//! front of them.
//!
//! - Each worker is the paddock binary re-executed as `paddock fn-worker`
//!   ([`crate::worker`]) in its own sandbox (`paddock_jail::Sandbox`: user,
//!   pid, mount, net, ipc, uts namespaces, a tmpfs root with read-only
//!   `/usr`, uid 1000 without capabilities, Landlock, the jail's seccomp
//!   deny-list, rlimits and a cgroup), confined further by the worker's own
//!   seccomp allow-list once started. The host talks to it over a socket
//!   pair.
//! - One host thread per worker slot takes jobs from the queue, sends them,
//!   waits for the reply (bounded by the call's timeout plus
//!   [`PoolConfig::grace`]; past that the worker is killed and the call
//!   reported as `timeout`). A blocking caller ([`Pool::run`],
//!   [`Pool::run_batch`]) that finds the queue empty and a worker free uses
//!   that worker itself, saving two thread hand-offs; a slot is used by one
//!   party at a time (its `busy` flag), so jobs stay queued, in order,
//!   until a worker is really free.
//! - A worker is replaced after [`PoolConfig::max_calls_per_worker`] calls
//!   or when its RSS has grown more than [`PoolConfig::max_rss_growth_bytes`]
//!   over its first figure (a leak in the engine); a worker that dies is
//!   restarted, and only the call it was running fails
//!   ([`FunctionsError::WorkerCrashed`]). A worker found dead while idle is
//!   replaced before the next call is sent, so that call does not fail.
//! - The queue holds at most [`PoolConfig::queue_capacity`] jobs; first in,
//!   first out within a [`Priority`], higher priorities first. A full queue
//!   refuses at once with [`FunctionsError::Busy`].
//! - [`Pool::stats`] gives counters and gauges (queue depth, wait times as
//!   a histogram, outcomes, worker starts, crashes and recycles).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use paddock_init::ReportKind;
use paddock_jail::Sandbox;
use paddock_types::SandboxSpec;

use crate::engine::{BatchMode, Options, RawResult, human_bytes};
use crate::protocol::{Reply, Request, read_frame, write_frame};
use crate::result::{FnError, FnResult, Status};

/// Why a call was not run (the function's own failures are results, not
/// errors: see [`FnResult::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionsError {
    /// Every worker is busy and the queue is full.
    #[error(
        "busy: all {workers} workers are busy and {queued} calls are already queued; try again later"
    )]
    Busy {
        /// Workers of the pool.
        workers: usize,
        /// Calls waiting (the queue's capacity).
        queued: usize,
    },
    /// The call asks for something the pool does not allow.
    #[error("invalid call: {0}")]
    InvalidCall(String),
    /// The worker running the call died (it was restarted; other calls
    /// were not affected).
    #[error("the worker running this call died: {0}")]
    WorkerCrashed(String),
    /// No worker could be started.
    #[error("could not start a function worker: {0}")]
    WorkerStart(String),
    /// The pool is shutting down.
    #[error("the function pool is shutting down")]
    ShutDown,
}

/// Queue priority of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub enum Priority {
    /// Served before everything else.
    High = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Served when nothing else waits.
    Low = 2,
}

/// One function call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The JavaScript code (see [`crate::engine`] for the forms accepted).
    pub code: String,
    /// The input, as JSON text.
    pub input: String,
    /// Limits and switches.
    pub options: Options,
    /// Queue priority.
    pub priority: Priority,
}

impl Call {
    /// A call with default options and priority.
    pub fn new(code: impl Into<String>, input: impl Into<String>) -> Call {
        Call {
            code: code.into(),
            input: input.into(),
            options: Options::default(),
            priority: Priority::Normal,
        }
    }
}

/// Many inputs, one compiled function, one trip to a worker.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The JavaScript code.
    pub code: String,
    /// The inputs, as JSON texts.
    pub inputs: Vec<String>,
    /// Limits and switches (per input).
    pub options: Options,
    /// Fresh context per input, or one shared context.
    pub mode: BatchMode,
    /// Queue priority.
    pub priority: Priority,
}

/// How the pool is set up.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The paddock binary to run as `paddock fn-worker` (production:
    /// `std::env::current_exe()`; tests: the binary under test).
    pub exe: PathBuf,
    /// Worker processes (default: the number of CPUs).
    pub workers: usize,
    /// Calls that may wait when every worker is busy.
    pub queue_capacity: usize,
    /// A worker is replaced after this many calls (batch inputs count one
    /// each).
    pub max_calls_per_worker: u64,
    /// A worker is replaced when its RSS grows this much over its first
    /// figure.
    pub max_rss_growth_bytes: u64,
    /// Largest heap limit a call may ask for; sizes the worker's cgroup
    /// (this plus 64 MiB).
    pub max_memory_bytes: usize,
    /// Longest timeout a call may ask for.
    pub max_timeout: Duration,
    /// Most inputs in one batch.
    pub max_batch: usize,
    /// How long past a call's own deadline the host waits for the worker
    /// before killing it.
    pub grace: Duration,
    /// How long a new worker may take to say it is ready.
    pub startup_timeout: Duration,
}

impl PoolConfig {
    /// Defaults for running `exe` as the workers.
    pub fn new(exe: impl Into<PathBuf>) -> PoolConfig {
        PoolConfig {
            exe: exe.into(),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            queue_capacity: 1024,
            max_calls_per_worker: 100_000,
            max_rss_growth_bytes: 64 << 20,
            max_memory_bytes: 256 << 20,
            max_timeout: Duration::from_secs(60),
            max_batch: 100_000,
            grace: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(20),
        }
    }
}

/// Upper bounds (seconds) of the queue-wait histogram buckets.
pub const WAIT_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0,
];

/// A snapshot of the pool's counters and gauges (shaped for Prometheus:
/// counters only grow; `wait_buckets` are cumulative).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolStats {
    /// Worker slots.
    pub workers: usize,
    /// Workers running a call now.
    pub workers_busy: usize,
    /// Calls waiting now (gauge).
    pub queue_depth: usize,
    /// Most calls that may wait.
    pub queue_capacity: usize,
    /// Calls and batches accepted into the queue.
    pub submitted: u64,
    /// Calls refused because the queue was full.
    pub rejected_busy: u64,
    /// Results by status (a batch counts each input).
    pub ok: u64,
    /// Results with status `error`.
    pub error: u64,
    /// Results with status `timeout`.
    pub timeout: u64,
    /// Results with status `oom`.
    pub oom: u64,
    /// Calls failed because their worker died.
    pub worker_crashes: u64,
    /// Workers started (initial ones, replacements).
    pub worker_starts: u64,
    /// Worker starts that failed.
    pub worker_start_failures: u64,
    /// Workers replaced after `max_calls_per_worker`.
    pub recycled_calls: u64,
    /// Workers replaced because their RSS grew.
    pub recycled_rss: u64,
    /// Workers replaced because they were found dead while idle.
    pub replaced_dead_idle: u64,
    /// Workers killed because they did not answer past the deadline.
    pub killed_unresponsive: u64,
    /// Queue wait: cumulative counts at the bounds of [`WAIT_BUCKETS`].
    pub wait_buckets: Vec<(f64, u64)>,
    /// Queue wait: number of observations.
    pub wait_count: u64,
    /// Queue wait: sum, in seconds.
    pub wait_sum_seconds: f64,
    /// Queue wait: longest so far, in seconds.
    pub wait_max_seconds: f64,
}

/// What one worker slot is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Slot number.
    pub slot: usize,
    /// Host pid of the sandbox's init, when a worker runs.
    pub init_pid: Option<i32>,
    /// Host pid of the worker process itself (init's child).
    pub worker_pid: Option<i32>,
    /// Running a call now.
    pub busy: bool,
    /// Calls this worker has run.
    pub calls: u64,
    /// Its RSS after its last call.
    pub rss_bytes: u64,
}

type Done = Box<dyn FnOnce(Result<Vec<RawResult>, FunctionsError>) + Send>;

struct Job {
    request: Request,
    enqueued: Instant,
    done: Done,
}

enum Task {
    Job(Job),
    Repair,
}

struct Queue {
    levels: [VecDeque<Job>; 3],
    len: usize,
    closed: bool,
    /// Someone (the slot's thread, or a blocking caller using the worker
    /// directly) is using slot `i`'s worker; only they touch it.
    busy: Vec<bool>,
    /// Slot `i` lost its worker (or has not started one): its thread should
    /// start one even without a job.
    repair: Vec<bool>,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    rejected_busy: AtomicU64,
    ok: AtomicU64,
    error: AtomicU64,
    timeout: AtomicU64,
    oom: AtomicU64,
    worker_crashes: AtomicU64,
    worker_starts: AtomicU64,
    worker_start_failures: AtomicU64,
    recycled_calls: AtomicU64,
    recycled_rss: AtomicU64,
    worker_restarts_idle: AtomicU64,
    killed_unresponsive: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS.len()],
    wait_count: AtomicU64,
    wait_sum_ns: AtomicU64,
    wait_max_ns: AtomicU64,
}

struct Inner {
    config: PoolConfig,
    queue: Mutex<Queue>,
    ready: Condvar,
    counters: Counters,
    slots: Mutex<Vec<WorkerInfo>>,
    /// Each slot's worker: its thread holds the lock while it runs a job,
    /// and so does a blocking caller that uses an idle worker directly.
    workers: Vec<Mutex<Option<Worker>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn push(&self, job: Job, priority: Priority) -> Result<(), FunctionsError> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(FunctionsError::ShutDown);
        }
        if q.len >= self.config.queue_capacity {
            self.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
            return Err(FunctionsError::Busy {
                workers: self.config.workers,
                queued: q.len,
            });
        }
        q.levels[priority as usize].push_back(job);
        q.len += 1;
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        drop(q);
        // All: a woken slot thread whose worker is in use goes back to
        // sleep, and another must take the job.
        self.ready.notify_all();
        Ok(())
    }

    /// The slot thread's next task: a job when one is queued and the slot
    /// is free, a repair when the slot needs a worker; `None` when closing.
    /// Marks the slot busy.
    fn next_task(&self, slot: usize) -> Option<Task> {
        let mut q = lock(&self.queue);
        loop {
            if q.closed {
                return None;
            }
            if !q.busy[slot] {
                if q.len > 0
                    && let Some(job) = q.levels.iter_mut().find_map(VecDeque::pop_front)
                {
                    q.len -= 1;
                    q.busy[slot] = true;
                    return Some(Task::Job(job));
                }
                if q.repair[slot] {
                    q.repair[slot] = false;
                    q.busy[slot] = true;
                    return Some(Task::Repair);
                }
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Frees the slot; `lost`: it has no worker any more.
    fn release(&self, slot: usize, lost: bool) {
        let mut q = lock(&self.queue);
        q.busy[slot] = false;
        if lost {
            q.repair[slot] = true;
        }
        drop(q);
        self.ready.notify_all();
    }

    fn observe_wait(&self, waited: Duration) {
        let c = &self.counters;
        let secs = waited.as_secs_f64();
        for (bound, count) in WAIT_BUCKETS.iter().zip(&c.wait_buckets) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        c.wait_count.fetch_add(1, Ordering::Relaxed);
        c.wait_sum_ns.fetch_add(ns, Ordering::Relaxed);
        c.wait_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    fn count_results(&self, results: &[RawResult]) {
        for r in results {
            let counter = match r.status {
                Status::Ok => &self.counters.ok,
                Status::Error => &self.counters.error,
                Status::Timeout => &self.counters.timeout,
                Status::Oom => &self.counters.oom,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_slot(&self, slot: usize, f: impl FnOnce(&mut WorkerInfo)) {
        if let Some(info) = lock(&self.slots).get_mut(slot) {
            f(info);
        }
    }
}

/// A pool of sandboxed function workers.
pub struct Pool {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Pool {
    /// Starts the pool. The first worker is started before this returns, so
    /// that a host that cannot run workers (not root, no such binary) fails
    /// here with the reason; the others start in the background.
    pub fn new(mut config: PoolConfig) -> Result<Pool, FunctionsError> {
        config.workers = config.workers.max(1);
        let first = Worker::start(&config).map_err(FunctionsError::WorkerStart)?;
        let mut first = Some(first);
        let workers = (0..config.workers)
            .map(|_| Mutex::new(first.take()))
            .collect();
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                levels: Default::default(),
                len: 0,
                closed: false,
                busy: vec![false; config.workers],
                // Slot 0 has its worker; the others start theirs now.
                repair: (0..config.workers).map(|slot| slot > 0).collect(),
            }),
            ready: Condvar::new(),
            counters: Counters::default(),
            slots: Mutex::new(
                (0..config.workers)
                    .map(|slot| WorkerInfo {
                        slot,
                        init_pid: None,
                        worker_pid: None,
                        busy: false,
                        calls: 0,
                        rss_bytes: 0,
                    })
                    .collect(),
            ),
            workers,
            config,
        });
        inner.counters.worker_starts.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = lock(&inner.workers[0]).as_ref() {
            inner.set_slot(0, |s| {
                s.init_pid = Some(w.sandbox.pid());
                s.worker_pid = w.worker_pid();
                s.rss_bytes = w.rss_last;
            });
        }
        let mut threads = Vec::new();
        for slot in 0..inner.config.workers {
            let inner2 = Arc::clone(&inner);
            let spawned = std::thread::Builder::new()
                .name(format!("fn-slot-{slot}"))
                .spawn(move || slot_main(&inner2, slot));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let pool = Pool { inner, threads };
                    drop(pool);
                    return Err(FunctionsError::WorkerStart(format!(
                        "could not start a pool thread: {e}"
                    )));
                }
            }
        }
        Ok(Pool { inner, threads })
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    fn check(&self, code: &str, inputs: usize, opts: &Options) -> Result<(), FunctionsError> {
        let c = &self.inner.config;
        let invalid = |m: String| Err(FunctionsError::InvalidCall(m));
        if opts.memory_bytes < Options::MIN_MEMORY || opts.memory_bytes > c.max_memory_bytes {
            return invalid(format!(
                "memory limit {} is outside {}..={}",
                human_bytes(opts.memory_bytes),
                human_bytes(Options::MIN_MEMORY),
                human_bytes(c.max_memory_bytes)
            ));
        }
        if opts.timeout.is_zero() || opts.timeout > c.max_timeout {
            return invalid(format!(
                "timeout {} ms is outside 1..={} ms",
                opts.timeout.as_millis(),
                c.max_timeout.as_millis()
            ));
        }
        if inputs > c.max_batch {
            return invalid(format!(
                "{inputs} inputs in one batch, more than the limit of {}",
                c.max_batch
            ));
        }
        if code.len() > opts.max_code_bytes {
            return invalid(format!(
                "the code is {} bytes, more than the limit of {}",
                code.len(),
                human_bytes(opts.max_code_bytes)
            ));
        }
        Ok(())
    }

    fn enqueue(
        &self,
        request: Request,
        priority: Priority,
        done: Done,
    ) -> Result<(), FunctionsError> {
        let job = Job {
            request,
            enqueued: Instant::now(),
            done,
        };
        self.inner.push(job, priority)
    }

    /// Checks a call and turns it into a request.
    fn call_request(&self, call: Call) -> Result<(Request, Priority), FunctionsError> {
        self.check(&call.code, 1, &call.options)?;
        if call.input.len() > call.options.max_input_bytes {
            return Err(FunctionsError::InvalidCall(format!(
                "the input is {} bytes, more than the limit of {}",
                call.input.len(),
                human_bytes(call.options.max_input_bytes)
            )));
        }
        let request = Request {
            code: call.code,
            inputs: vec![call.input],
            opts: call.options,
            mode: BatchMode::Fresh,
        };
        Ok((request, call.priority))
    }

    /// The single result of a one-input request.
    fn single(r: Result<Vec<RawResult>, FunctionsError>) -> Result<FnResult, FunctionsError> {
        r.and_then(|mut v| {
            v.pop()
                .map(RawResult::into_result)
                .ok_or_else(|| FunctionsError::WorkerCrashed("the worker sent no result".into()))
        })
    }

    /// Queues a call; `done` is called from a pool thread with its result.
    /// Fails at once (without calling `done`) when the queue is full.
    pub fn submit(
        &self,
        call: Call,
        done: impl FnOnce(Result<FnResult, FunctionsError>) + Send + 'static,
    ) -> Result<(), FunctionsError> {
        let (request, priority) = self.call_request(call)?;
        self.enqueue(
            request,
            priority,
            Box::new(move |r: Result<Vec<RawResult>, FunctionsError>| done(Self::single(r))),
        )
    }

    /// Checks a batch and turns it into a request.
    fn batch_request(&self, batch: Batch) -> Result<(Request, Priority), FunctionsError> {
        self.check(&batch.code, batch.inputs.len(), &batch.options)?;
        if let Some(big) = batch
            .inputs
            .iter()
            .position(|i| i.len() > batch.options.max_input_bytes)
        {
            return Err(FunctionsError::InvalidCall(format!(
                "input {big} is {} bytes, more than the limit of {}",
                batch.inputs[big].len(),
                human_bytes(batch.options.max_input_bytes)
            )));
        }
        let total = batch
            .inputs
            .iter()
            .map(|i| i.len() + 4)
            .sum::<usize>()
            .saturating_add(batch.code.len() + 128);
        if total > crate::worker::MAX_REQUEST {
            return Err(FunctionsError::InvalidCall(format!(
                "the batch is {} in all, more than the limit of {}",
                human_bytes(total),
                human_bytes(crate::worker::MAX_REQUEST)
            )));
        }
        let request = Request {
            code: batch.code,
            inputs: batch.inputs,
            opts: batch.options,
            mode: batch.mode,
        };
        Ok((request, batch.priority))
    }

    /// The results of an `n`-input request.
    fn many(
        r: Result<Vec<RawResult>, FunctionsError>,
        n: usize,
    ) -> Result<Vec<FnResult>, FunctionsError> {
        r.and_then(|v| {
            if v.len() == n {
                Ok(v.into_iter().map(RawResult::into_result).collect())
            } else {
                Err(FunctionsError::WorkerCrashed(format!(
                    "the worker sent {} results for {n} inputs",
                    v.len()
                )))
            }
        })
    }

    /// Queues a batch; `done` gets one result per input, in order.
    pub fn submit_batch(
        &self,
        batch: Batch,
        done: impl FnOnce(Result<Vec<FnResult>, FunctionsError>) + Send + 'static,
    ) -> Result<(), FunctionsError> {
        let (request, priority) = self.batch_request(batch)?;
        let n = request.inputs.len();
        self.enqueue(
            request,
            priority,
            Box::new(move |r: Result<Vec<RawResult>, FunctionsError>| done(Self::many(r, n))),
        )
    }

    /// Runs a call and waits for its result. When nothing is queued and a
    /// worker is idle, the call runs on it from this thread (no hand-off
    /// to the pool's threads).
    pub fn run(&self, call: Call) -> Result<FnResult, FunctionsError> {
        let (request, priority) = self.call_request(call)?;
        if let Some(r) = self.inner.try_direct(&request) {
            return Self::single(r);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(
            request,
            priority,
            Box::new(move |r: Result<Vec<RawResult>, FunctionsError>| {
                let _ = tx.send(Self::single(r));
            }),
        )?;
        rx.recv().unwrap_or(Err(FunctionsError::ShutDown))
    }

    /// Runs a batch and waits for its results.
    /// (Like [`Pool::run`], it uses a free worker directly when nothing is
    /// queued.)
    pub fn run_batch(&self, batch: Batch) -> Result<Vec<FnResult>, FunctionsError> {
        let (request, priority) = self.batch_request(batch)?;
        let n = request.inputs.len();
        if let Some(r) = self.inner.try_direct(&request) {
            return Self::many(r, n);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(
            request,
            priority,
            Box::new(move |r: Result<Vec<RawResult>, FunctionsError>| {
                let _ = tx.send(Self::many(r, n));
            }),
        )?;
        rx.recv().unwrap_or(Err(FunctionsError::ShutDown))
    }

    /// Counters and gauges.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let queue_depth = lock(&self.inner.queue).len;
        let workers_busy = lock(&self.inner.slots).iter().filter(|s| s.busy).count();
        PoolStats {
            workers: self.inner.config.workers,
            workers_busy,
            queue_depth,
            queue_capacity: self.inner.config.queue_capacity,
            submitted: get(&c.submitted),
            rejected_busy: get(&c.rejected_busy),
            ok: get(&c.ok),
            error: get(&c.error),
            timeout: get(&c.timeout),
            oom: get(&c.oom),
            worker_crashes: get(&c.worker_crashes),
            worker_starts: get(&c.worker_starts),
            worker_start_failures: get(&c.worker_start_failures),
            recycled_calls: get(&c.recycled_calls),
            recycled_rss: get(&c.recycled_rss),
            replaced_dead_idle: get(&c.worker_restarts_idle),
            killed_unresponsive: get(&c.killed_unresponsive),
            wait_buckets: WAIT_BUCKETS
                .iter()
                .zip(&c.wait_buckets)
                .map(|(b, n)| (*b, get(n)))
                .collect(),
            wait_count: get(&c.wait_count),
            wait_sum_seconds: get(&c.wait_sum_ns) as f64 / 1e9,
            wait_max_seconds: get(&c.wait_max_ns) as f64 / 1e9,
        }
    }

    /// What each worker slot is doing.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        lock(&self.inner.slots).clone()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let waiting: Vec<Job> = {
            let mut q = lock(&self.inner.queue);
            q.closed = true;
            q.len = 0;
            q.levels.iter_mut().flat_map(|l| l.drain(..)).collect()
        };
        self.inner.ready.notify_all();
        for job in waiting {
            (job.done)(Err(FunctionsError::ShutDown));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Why a worker must be replaced before its next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// It ran `max_calls_per_worker` calls.
    Calls,
    /// Its RSS grew more than `max_rss_growth_bytes`.
    Rss,
    /// It died while idle (no call was running on it).
    Gone,
}

fn due(config: &PoolConfig, w: &Worker) -> Option<Due> {
    if w.calls >= config.max_calls_per_worker {
        Some(Due::Calls)
    } else if w.rss_last > w.rss_first.saturating_add(config.max_rss_growth_bytes) {
        Some(Due::Rss)
    } else if !w.idle_and_alive() {
        Some(Due::Gone)
    } else {
        None
    }
}

impl Inner {
    /// Replaces the slot's worker if it is due or gone, starting one if
    /// there is none. On failure the slot is left empty.
    fn maintain(&self, slot: usize, worker: &mut Option<Worker>) -> Result<(), String> {
        if let Some(why) = worker.as_ref().and_then(|w| due(&self.config, w)) {
            match why {
                Due::Calls => &self.counters.recycled_calls,
                Due::Rss => &self.counters.recycled_rss,
                Due::Gone => &self.counters.worker_restarts_idle,
            }
            .fetch_add(1, Ordering::Relaxed);
            *worker = None;
        }
        if worker.is_none() {
            self.set_slot(slot, |s| {
                s.init_pid = None;
                s.worker_pid = None;
            });
            match Worker::start(&self.config) {
                Ok(w) => {
                    self.counters.worker_starts.fetch_add(1, Ordering::Relaxed);
                    *worker = Some(w);
                }
                Err(e) => {
                    self.counters
                        .worker_start_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        if let Some(w) = worker.as_ref() {
            self.set_slot(slot, |s| {
                s.init_pid = Some(w.sandbox.pid());
                s.worker_pid = w.worker_pid();
                s.calls = w.calls;
                s.rss_bytes = w.rss_last;
            });
        }
        Ok(())
    }

    /// Runs `request` on the slot's (live) worker and turns the outcome
    /// into results; a worker that died or hung is dropped from the slot.
    fn execute(
        &self,
        slot: usize,
        worker: &mut Option<Worker>,
        request: &Request,
        enqueued: Instant,
    ) -> Result<Vec<RawResult>, FunctionsError> {
        let Some(w) = worker.as_mut() else {
            return Err(FunctionsError::WorkerStart("no worker".into()));
        };
        self.set_slot(slot, |s| s.busy = true);
        let n = request.inputs.len() as u64;
        let outcome = w.call(request, self.config.grace);
        self.set_slot(slot, |s| {
            s.busy = false;
            s.calls += n;
        });
        match outcome {
            Ok(results) => {
                w.calls += n;
                self.count_results(&results);
                Ok(results)
            }
            Err(CallError::Unresponsive(waited)) => {
                self.counters
                    .killed_unresponsive
                    .fetch_add(1, Ordering::Relaxed);
                *worker = None;
                let e = FnError {
                    name: "TimeoutError".into(),
                    message: format!(
                        "the worker did not answer within {} ms and was stopped",
                        waited.as_millis()
                    ),
                    stack: None,
                    line: None,
                };
                let results: Vec<RawResult> = (0..n)
                    .map(|_| RawResult::failed(Status::Timeout, e.clone(), enqueued))
                    .collect();
                self.count_results(&results);
                Ok(results)
            }
            Err(CallError::Died(why)) => {
                self.counters.worker_crashes.fetch_add(1, Ordering::Relaxed);
                *worker = None;
                Err(FunctionsError::WorkerCrashed(why))
            }
        }
    }

    /// The blocking callers' shortcut: when nothing is queued and a worker
    /// is free and healthy, run on it from the calling thread (two thread
    /// hand-offs fewer than through the queue). `None`: use the queue.
    fn try_direct(&self, request: &Request) -> Option<Result<Vec<RawResult>, FunctionsError>> {
        let slot = {
            let mut q = lock(&self.queue);
            if q.closed || q.len > 0 {
                return None;
            }
            let slot = q.busy.iter().position(|b| !b)?;
            q.busy[slot] = true;
            slot
        };
        let mut worker = lock(&self.workers[slot]);
        let usable = worker
            .as_ref()
            .is_some_and(|w| due(&self.config, w).is_none());
        if !usable {
            // Replacements are the slot thread's job.
            drop(worker);
            self.release(slot, true);
            return None;
        }
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        self.observe_wait(Duration::ZERO);
        let result = self.execute(slot, &mut worker, request, Instant::now());
        let lost = worker.is_none();
        drop(worker);
        self.release(slot, lost);
        Some(result)
    }
}

/// The loop of one worker slot.
fn slot_main(inner: &Inner, slot: usize) {
    let mut backoff = Duration::from_millis(50);
    while let Some(task) = inner.next_task(slot) {
        let mut worker = lock(&inner.workers[slot]);
        let ready = inner.maintain(slot, &mut worker);
        let lost = match (task, ready) {
            (Task::Job(job), Ok(())) => {
                backoff = Duration::from_millis(50);
                inner.observe_wait(job.enqueued.elapsed());
                let result = inner.execute(slot, &mut worker, &job.request, job.enqueued);
                let lost = worker.is_none();
                drop(worker);
                (job.done)(result);
                lost
            }
            (Task::Repair, Ok(())) => {
                backoff = Duration::from_millis(50);
                false
            }
            (task, Err(e)) => {
                drop(worker);
                // Fail the job it took rather than let callers wait forever
                // on a slot that cannot start; try again after a pause.
                if let Task::Job(job) = task {
                    inner.observe_wait(job.enqueued.elapsed());
                    (job.done)(Err(FunctionsError::WorkerStart(e)));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                true
            }
        };
        inner.release(slot, lost);
    }
}

enum CallError {
    /// No reply within the deadline plus grace; the worker was killed.
    Unresponsive(Duration),
    /// The worker died or sent garbage; it was killed.
    Died(String),
}

/// One running worker process.
struct Worker {
    sandbox: Sandbox,
    channel: UnixStream,
    stderr: Option<OwnedFd>,
    calls: u64,
    rss_first: u64,
    rss_last: u64,
}

/// Largest reply frame accepted from a worker: outputs and console of a
/// whole batch, bounded by the per-input limits the host itself sent.
fn max_reply(request: &Request) -> usize {
    let per = request.opts.max_output_bytes + request.opts.max_console_bytes + (64 << 10);
    per.saturating_mul(request.inputs.len().max(1))
        .saturating_add(1 << 20)
}

impl Worker {
    fn spec(config: &PoolConfig) -> SandboxSpec {
        let mut spec = SandboxSpec::new(Vec::new());
        paddock_jail::reexec::reexec(&mut spec, &config.exe, &["fn-worker"]);
        // A POSIX time zone string: glibc needs no file for it.
        spec.set_env("TZ", "UTC0");
        spec.limits.memory_bytes = config.max_memory_bytes as u64 + (64 << 20);
        spec.limits.cpu_millicores = 1000;
        spec.limits.pids = 8;
        spec.limits.disk_bytes = 4 << 20;
        spec.limits.open_files = 64;
        spec
    }

    fn start(config: &PoolConfig) -> Result<Worker, String> {
        let (host, inside) =
            UnixStream::pair().map_err(|e| format!("create a socket pair: {e}"))?;
        let mut sandbox = Sandbox::spawn(
            &Self::spec(config),
            paddock_jail::Stdio {
                stdin: None,
                capture: true,
                channel: Some(OwnedFd::from(inside)),
                lean_init: true,
            },
        )
        .map_err(|e| e.to_string())?;
        let stderr = sandbox.take_stderr();
        drop(sandbox.take_stdout());
        let mut worker = Worker {
            sandbox,
            channel: host,
            stderr,
            calls: 0,
            rss_first: 0,
            rss_last: 0,
        };
        let _ = worker
            .channel
            .set_read_timeout(Some(config.startup_timeout));
        match read_frame(&mut worker.channel, 1 << 10) {
            Ok(Some(payload)) => match Reply::decode(&payload) {
                Ok(Reply::Ready { rss_bytes }) => {
                    worker.rss_first = rss_bytes;
                    worker.rss_last = rss_bytes;
                    Ok(worker)
                }
                _ => Err("the worker sent something else than \"ready\"".into()),
            },
            Ok(None) => Err(format!(
                "the worker exited during start-up: {}",
                worker.death()
            )),
            Err(e) if is_timeout(&e) => Err(format!(
                "the worker did not become ready within {} s",
                config.startup_timeout.as_secs()
            )),
            Err(e) => Err(format!("reading from the worker: {e}; {}", worker.death())),
        }
    }

    fn worker_pid(&self) -> Option<i32> {
        let init = self.sandbox.pid();
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Whether the idle worker is still there (its channel has no EOF or
    /// error pending; a live idle worker never writes unasked).
    fn idle_and_alive(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.channel,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(0) => true,
            Ok(_) => false,
            Err(_) => false,
        }
    }

    fn call(&mut self, request: &Request, grace: Duration) -> Result<Vec<RawResult>, CallError> {
        let frame = request.encode();
        if let Err(e) = write_frame(&mut self.channel, &frame) {
            return Err(CallError::Died(format!(
                "sending the call failed ({e}); {}",
                self.death()
            )));
        }
        let n = u32::try_from(request.inputs.len().max(1)).unwrap_or(u32::MAX);
        let budget = request.opts.timeout.saturating_mul(n).saturating_add(grace);
        let _ = self.channel.set_read_timeout(Some(budget));
        let started = Instant::now();
        let reply = read_frame(&mut self.channel, max_reply(request));
        match reply {
            Ok(Some(payload)) => match Reply::decode(&payload) {
                Ok(Reply::Results { rss_bytes, results })
                    if results.len() == request.inputs.len() =>
                {
                    self.rss_last = rss_bytes;
                    Ok(results)
                }
                Ok(_) => {
                    let _ = self.sandbox.kill();
                    Err(CallError::Died(
                        "the worker sent an unexpected reply".into(),
                    ))
                }
                Err(e) => {
                    let _ = self.sandbox.kill();
                    Err(CallError::Died(format!("the worker sent a {e}")))
                }
            },
            Ok(None) => Err(CallError::Died(self.death())),
            Err(e) if is_timeout(&e) => {
                let _ = self.sandbox.kill();
                Err(CallError::Unresponsive(started.elapsed()))
            }
            Err(e) => Err(CallError::Died(format!("{e}; {}", self.death()))),
        }
    }

    /// How the worker ended, in words: init's report and the worker's last
    /// words on stderr. Kills the sandbox if it is somehow still there.
    fn death(&mut self) -> String {
        let mut how = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        while how.is_none() && Instant::now() < deadline {
            let readable = {
                let status = self.sandbox.status_fd();
                let mut fds = [rustix::event::PollFd::new(
                    &status,
                    rustix::event::PollFlags::IN,
                )];
                let ts = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
            };
            if !readable {
                continue;
            }
            match self.sandbox.next_report() {
                Ok(Some(r)) => match r.kind {
                    ReportKind::Exited => how = Some(format!("it exited with status {}", r.a)),
                    ReportKind::Signaled => {
                        how = Some(format!(
                            "it was killed by signal {}{}",
                            r.a,
                            signal_note(r.a)
                        ))
                    }
                    ReportKind::SetupFailed => {
                        how = Some(format!(
                            "its sandbox failed at {} ({})",
                            self.sandbox.describe_step(r.a as u32),
                            paddock_sys::Errno::from_raw_os_error(r.b)
                        ))
                    }
                    ReportKind::ExecFailed => {
                        how = Some(format!(
                            "it could not be executed ({})",
                            paddock_sys::Errno::from_raw_os_error(r.a)
                        ))
                    }
                    ReportKind::Started => {}
                },
                Ok(None) | Err(_) => break,
            }
        }
        let _ = self.sandbox.kill();
        let mut said = String::new();
        if let Some(fd) = &self.stderr {
            let mut buf = vec![0u8; 4096];
            let _ = rustix::io::ioctl_fionbio(fd.as_fd(), true);
            let mut f = std::fs::File::from(match fd.try_clone() {
                Ok(f) => f,
                Err(_) => return how.unwrap_or_else(|| "it is gone".into()),
            });
            if let Ok(n) = f.read(&mut buf) {
                said = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            }
        }
        let how = how.unwrap_or_else(|| "it is gone".to_string());
        if said.is_empty() {
            how
        } else {
            format!("{how}; it said: {said}")
        }
    }
}

fn signal_note(sig: i32) -> &'static str {
    match sig {
        libc::SIGSYS => " (SIGSYS: a system call outside the worker's seccomp allow-list)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV: a crash)",
        libc::SIGABRT => " (SIGABRT: an abort)",
        _ => "",
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop; the sandbox's own drop
        // kills whatever is left and removes its cgroup.
        let _ = self.channel.shutdown(std::net::Shutdown::Both);
        let _ = self.channel.flush();
    }
}
