//! The manager: a registry of live sandboxes per tenant, quotas, get-or-create
//! by key, TTL / idle expiry, health checks, and one pre-warmed pool per
//! template.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paddock_sandbox::{Sandbox, SandboxConfig, SandboxError};
use paddock_types::{Limits, SandboxSpec};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{ServerConfig, Template, Tenant, hex};
use crate::error::ApiError;
use crate::metrics::Metrics;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a new sandbox asks for (already validated against sanity bounds).
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// The template's name (it exists).
    pub template: String,
    /// Limits.
    pub limits: Limits,
    /// Default exec / run timeout.
    pub timeout: Duration,
    /// Time to live.
    pub ttl: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Get-or-create key.
    pub key: Option<String>,
}

/// Why a sandbox was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// `DELETE` by its tenant.
    Deleted,
    /// Its TTL ran out.
    Ttl,
    /// Unused for longer than its idle timeout.
    Idle,
    /// Its agent died.
    Died,
    /// Its agent stopped answering pings.
    Unresponsive,
    /// The server is shutting down.
    Shutdown,
}

impl KillReason {
    /// Label of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Deleted => "deleted",
            KillReason::Ttl => "ttl",
            KillReason::Idle => "idle",
            KillReason::Died => "died",
            KillReason::Unresponsive => "unresponsive",
            KillReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug)]
struct Times {
    expires: Instant,
    ttl: Duration,
    last_used: Instant,
    active: usize,
    failed_pings: u32,
}

/// One live sandbox in the registry.
#[derive(Debug)]
pub struct Entry {
    /// Its id.
    pub id: String,
    /// Its tenant's name.
    pub tenant: String,
    /// The template it was built from.
    pub template: String,
    /// Get-or-create key.
    pub key: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Limits it was created with.
    pub limits: Limits,
    /// Default exec / run timeout.
    pub timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Wall-clock creation time.
    pub created_at: SystemTime,
    /// The sandbox.
    pub sandbox: Sandbox,
    times: Mutex<Times>,
    /// Code contexts: id → language.
    contexts: Mutex<BTreeMap<u64, String>>,
}

/// Marks a sandbox in use; when dropped, its idle clock restarts.
#[derive(Debug)]
pub struct Active(Arc<Entry>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut t = lock(&self.0.times);
        t.active = t.active.saturating_sub(1);
        t.last_used = Instant::now();
    }
}

impl Entry {
    /// Marks the sandbox in use until the guard is dropped.
    pub fn activate(self: &Arc<Self>) -> Active {
        let mut t = lock(&self.times);
        t.active += 1;
        t.last_used = Instant::now();
        Active(self.clone())
    }

    /// Records a new context.
    pub fn add_context(&self, id: u64, language: &str) {
        lock(&self.contexts).insert(id, language.to_string());
    }

    /// The language of a context, if it exists.
    pub fn context_language(&self, id: u64) -> Option<String> {
        lock(&self.contexts).get(&id).cloned()
    }

    /// Forgets a context.
    pub fn remove_context(&self, id: u64) {
        lock(&self.contexts).remove(&id);
    }

    /// The JSON description.
    pub fn info(&self) -> SandboxInfo {
        let now = Instant::now();
        let t = lock(&self.times);
        SandboxInfo {
            id: self.id.clone(),
            template: self.template.clone(),
            key: self.key.clone(),
            labels: self.labels.clone(),
            limits: LimitsInfo {
                memory_bytes: self.limits.memory_bytes,
                cpus: self.limits.cpu_millicores as f64 / 1000.0,
                pids: self.limits.pids,
                disk_bytes: self.limits.disk_bytes,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            },
            ttl_s: t.ttl.as_secs_f64(),
            idle_timeout_s: self.idle_timeout.as_secs_f64(),
            created_at: self
                .created_at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            expires_in_s: t.expires.saturating_duration_since(now).as_secs_f64(),
            idle_s: if t.active > 0 {
                0.0
            } else {
                now.saturating_duration_since(t.last_used).as_secs_f64()
            },
            active_requests: t.active,
            contexts: lock(&self.contexts)
                .iter()
                .map(|(id, language)| ContextSummary {
                    id: *id,
                    language: language.clone(),
                })
                .collect(),
            pid: self.sandbox.pid(),
        }
    }
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    /// Id.
    pub id: String,
    /// The template it was built from.
    pub template: String,
    /// Get-or-create key.
    pub key: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Limits.
    pub limits: LimitsInfo,
    /// Time to live it was given (or last extended to).
    pub ttl_s: f64,
    /// Idle timeout.
    pub idle_timeout_s: f64,
    /// Creation time, seconds since the epoch.
    pub created_at: f64,
    /// Seconds until its TTL runs out.
    pub expires_in_s: f64,
    /// Seconds since it was last used.
    pub idle_s: f64,
    /// Requests in progress.
    pub active_requests: usize,
    /// Code contexts.
    pub contexts: Vec<ContextSummary>,
    /// Pid of its init on the host.
    pub pid: Option<i32>,
}

/// Limits as the API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsInfo {
    /// Memory limit.
    pub memory_bytes: u64,
    /// CPU cores.
    pub cpus: f64,
    /// Processes and threads.
    pub pids: u64,
    /// Writable layer.
    pub disk_bytes: u64,
    /// Default exec / run timeout.
    pub timeout_ms: u64,
}

/// A context in a sandbox's description.
#[derive(Debug, Clone, Serialize)]
pub struct ContextSummary {
    /// Id.
    pub id: u64,
    /// Language.
    pub language: String,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    sandboxes: usize,
    memory: u64,
}

impl Usage {
    fn add(&mut self, memory: u64) {
        self.sandboxes += 1;
        self.memory = self.memory.saturating_add(memory);
    }
    fn sub(&mut self, memory: u64) {
        self.sandboxes = self.sandboxes.saturating_sub(1);
        self.memory = self.memory.saturating_sub(memory);
    }
}

/// How long a pool waits after a create took one of its sandboxes before
/// it builds the replacement.
const REFILL_DELAY: Duration = Duration::from_millis(5);

/// Most tombstones (ids of sandboxes that died or expired) remembered.
const TOMBSTONES: usize = 4096;

#[derive(Debug, Default)]
struct State {
    sandboxes: HashMap<String, Arc<Entry>>,
    by_key: HashMap<(String, String), String>,
    usage: HashMap<String, Usage>,
    total: Usage,
    tombstones: HashMap<String, (String, String)>,
    tombstone_order: VecDeque<String>,
}

/// Per-(tenant, key) locks; an entry lives only while someone holds or
/// waits for it.
type KeyLocks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// The manager. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ServerConfig,
    state: Mutex<State>,
    key_locks: KeyLocks,
    metrics: Arc<Metrics>,
    shutting_down: AtomicBool,
    stop: CancellationToken,
    creating: AtomicUsize,
    /// Token buckets per tenant (one entry per configured tenant at most).
    buckets: Mutex<HashMap<String, Bucket>>,
    /// One pool per template, in the configuration's order.
    pools: Vec<Pool>,
}

/// A template's pre-warmed sandboxes (built with its default limits).
#[derive(Debug)]
struct Pool {
    template: Template,
    ready: Mutex<VecDeque<Sandbox>>,
    /// Refills in progress (counted against the global caps).
    pending: AtomicUsize,
    /// Wakes the refill task.
    refill: tokio::sync::Notify,
}

impl Pool {
    fn memory(&self) -> u64 {
        self.template.limits.memory_bytes
    }

    /// Whether a create with these limits may take one of this pool's.
    fn serves(&self, limits: &Limits) -> bool {
        self.template.pool_size > 0 && *limits == self.template.limits
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Holds a key lock; frees the map entry when nobody else wants it.
struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: (String, String),
    mutex: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = lock(self.locks);
        if let Some(mine) = self.mutex.take() {
            // The map's reference and ours: nobody else holds or waits.
            if Arc::strong_count(&mine) == 2 {
                map.remove(&self.key);
            }
        }
    }
}

/// A new random id: 24 hex digits.
fn new_id() -> Result<String, ApiError> {
    let mut buf = [0u8; 12];
    getrandom::fill(&mut buf).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(hex(&buf))
}

impl Manager {
    /// A manager for `config`; its background tasks start with
    /// [`Manager::start_background`].
    pub fn new(config: ServerConfig, metrics: Arc<Metrics>) -> Manager {
        let pools = config
            .templates
            .iter()
            .map(|t| {
                metrics.pool_declared(&t.name, t.pool_size);
                metrics.set_pool_ready(&t.name, 0);
                Pool {
                    template: t.clone(),
                    ready: Mutex::new(VecDeque::new()),
                    pending: AtomicUsize::new(0),
                    refill: tokio::sync::Notify::new(),
                }
            })
            .collect();
        Manager {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                key_locks: Mutex::new(HashMap::new()),
                metrics,
                shutting_down: AtomicBool::new(false),
                stop: CancellationToken::new(),
                creating: AtomicUsize::new(0),
                buckets: Mutex::new(HashMap::new()),
                pools,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Live sandboxes.
    pub fn live(&self) -> usize {
        lock(&self.inner.state).sandboxes.len()
    }

    /// Key locks in the map right now (0 when no get-or-create is running).
    pub fn key_locks(&self) -> usize {
        lock(&self.inner.key_locks).len()
    }

    /// Takes one request from the tenant's token bucket; when it is empty,
    /// 429 saying how long to wait.
    pub fn admit(&self, tenant: &Tenant) -> Result<(), (ApiError, Duration)> {
        let now = Instant::now();
        let mut buckets = lock(&self.inner.buckets);
        let b = buckets.entry(tenant.name.clone()).or_insert(Bucket {
            tokens: tenant.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * tenant.rate;
        b.tokens = (b.tokens + refill).min(tenant.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64(((1.0 - b.tokens) / tenant.rate).min(3600.0));
        drop(buckets);
        self.inner.metrics.quota_rejected("rate");
        Err((
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "tenant {} is over its rate of {} requests/s (burst {}); retry in {} ms",
                    tenant.name,
                    tenant.rate,
                    tenant.burst,
                    wait.as_millis().max(1)
                ),
            ),
            wait,
        ))
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// A tenant's usage: (sandboxes, memory).
    pub fn usage(&self, tenant: &str) -> (usize, u64) {
        let st = lock(&self.inner.state);
        st.usage
            .get(tenant)
            .map_or((0, 0), |u| (u.sandboxes, u.memory))
    }

    async fn lock_key(&self, tenant: &str, key: &str) -> KeyGuard<'_> {
        let k = (tenant.to_string(), key.to_string());
        let mutex = lock(&self.inner.key_locks)
            .entry(k.clone())
            .or_default()
            .clone();
        let mut g = KeyGuard {
            locks: &self.inner.key_locks,
            key: k,
            mutex: Some(mutex.clone()),
            guard: None,
        };
        g.guard = Some(mutex.lock_owned().await);
        g
    }

    /// Creates a sandbox, or with a key returns the tenant's live sandbox
    /// of that key. The bool is `true` when it was created.
    pub async fn create(
        &self,
        tenant: &Tenant,
        spec: CreateSpec,
    ) -> Result<(Arc<Entry>, bool), ApiError> {
        if self.shutting_down() {
            return Err(ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
            ));
        }
        let Some(key) = spec.key.clone() else {
            return self.create_new(tenant, spec).await.map(|e| (e, true));
        };
        let _guard = self.lock_key(&tenant.name, &key).await;
        let existing = {
            let st = lock(&self.inner.state);
            st.by_key
                .get(&(tenant.name.clone(), key.clone()))
                .and_then(|id| st.sandboxes.get(id).cloned())
        };
        if let Some(e) = existing {
            if e.sandbox.is_alive() {
                if e.template != spec.template {
                    return Err(ApiError::conflict(format!(
                        "key {key:?} names sandbox {} of template {:?}, not {:?}; use its template or another key",
                        e.id, e.template, spec.template
                    )));
                }
                drop(e.activate());
                return Ok((e, false));
            }
            self.remove(&e.id, KillReason::Died, None).await;
        }
        self.create_new(tenant, spec).await.map(|e| (e, true))
    }

    /// Reserves quota, then takes a sandbox from the template's pool when
    /// the limits are the template's, or else creates one (in a task of its
    /// own, so that a client that goes away does not cut it short), and
    /// registers it.
    async fn create_new(&self, tenant: &Tenant, spec: CreateSpec) -> Result<Arc<Entry>, ApiError> {
        let pool = self.pool(&spec.template).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown template {:?}; known templates: {}",
                spec.template,
                self.inner.config.template_names()
            ))
        })?;
        let memory = spec.limits.memory_bytes;
        if memory > tenant.max_memory {
            self.inner.metrics.quota_rejected("tenant_memory");
            return Err(ApiError::quota(format!(
                "a memory limit of {} is more than tenant {}'s quota of {}",
                paddock_types::format_size(memory),
                tenant.name,
                paddock_types::format_size(tenant.max_memory)
            )));
        }
        {
            let mut st = lock(&self.inner.state);
            let u = st.usage.get(&tenant.name).copied().unwrap_or_default();
            if u.sandboxes >= tenant.max_sandboxes {
                drop(st);
                self.inner.metrics.quota_rejected("tenant_sandboxes");
                return Err(ApiError::quota(format!(
                    "tenant {} has {} live sandboxes, its quota; delete one or wait for one to expire",
                    tenant.name, u.sandboxes
                )));
            }
            if u.memory.saturating_add(memory) > tenant.max_memory {
                drop(st);
                self.inner.metrics.quota_rejected("tenant_memory");
                return Err(ApiError::quota(format!(
                    "tenant {}'s sandboxes hold {} of memory limits; {} more would pass its quota of {}",
                    tenant.name,
                    paddock_types::format_size(u.memory),
                    paddock_types::format_size(memory),
                    paddock_types::format_size(tenant.max_memory)
                )));
            }
            let cfg = &self.inner.config;
            if st.total.sandboxes >= cfg.max_sandboxes
                || st.total.memory.saturating_add(memory) > cfg.max_memory
            {
                drop(st);
                self.inner.metrics.quota_rejected("global");
                return Err(ApiError::capacity(
                    "the server is at its capacity (global sandbox or memory cap); try again later",
                ));
            }
            st.usage.entry(tenant.name.clone()).or_default().add(memory);
            st.total.add(memory);
            // Pooled sandboxes give way to real ones at the global caps.
            // (A create its template's pool serves will take one of them:
            // it is already counted in the reservation.)
            self.evict_pooled(&st, &spec);
        }
        // A pool hit is served right here: no await until it is registered,
        // so a client that goes away cannot cut it short, and no task hop.
        let started = Instant::now();
        let poolable = pool.serves(&spec.limits);
        if poolable {
            // Counted as a creation, so that a shutdown in between waits for
            // the sandbox taken here to be registered or killed.
            self.inner.creating.fetch_add(1, Ordering::SeqCst);
            let pooled = self.take_pooled(pool);
            self.inner.metrics.pool(
                &pool.template.name,
                if pooled.is_some() { "hit" } else { "miss" },
            );
            pool.refill.notify_one();
            if let Some(sandbox) = pooled {
                let r = new_id().and_then(|id| {
                    self.register(&tenant.name, spec, id, sandbox, started, Some(true))
                });
                if r.is_err() {
                    self.release(&tenant.name, memory);
                }
                self.inner.creating.fetch_sub(1, Ordering::SeqCst);
                return r;
            }
            self.inner.creating.fetch_sub(1, Ordering::SeqCst);
        }
        let from_pool = poolable.then_some(false);
        let this = self.clone();
        let tenant_name = tenant.name.clone();
        let task = tokio::spawn(async move {
            this.inner.creating.fetch_add(1, Ordering::SeqCst);
            let r = this.build(&tenant_name, spec, started, from_pool).await;
            this.inner.creating.fetch_sub(1, Ordering::SeqCst);
            if r.is_err() {
                this.release(&tenant_name, memory);
            }
            r
        });
        task.await
            .map_err(|e| ApiError::internal(format!("sandbox creation failed: {e}")))?
    }

    /// Gives back a reservation of `create_new` whose creation failed.
    fn release(&self, tenant: &str, memory: u64) {
        let mut st = lock(&self.inner.state);
        if let Some(u) = st.usage.get_mut(tenant) {
            u.sub(memory);
        }
        st.total.sub(memory);
    }

    /// Builds a sandbox on demand (not from a pool) and registers it.
    async fn build(
        &self,
        tenant: &str,
        spec: CreateSpec,
        started: Instant,
        from_pool: Option<bool>,
    ) -> Result<Arc<Entry>, ApiError> {
        let id = new_id()?;
        let mut sspec = SandboxSpec::new(Vec::new());
        sspec.limits = spec.limits.clone();
        sspec.rootfs = self
            .pool(&spec.template)
            .and_then(|p| p.template.rootfs.clone());
        let sandbox = Sandbox::create(SandboxConfig {
            spec: sspec,
            agent_exe: self.inner.config.agent_exe.clone(),
        })
        .await
        .map_err(|e| {
            tracing::warn!(tenant, template = %spec.template, error = %e, "sandbox creation failed");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "create_failed",
                format!("could not create the sandbox: {e}"),
            )
        })?;
        self.register(tenant, spec, id, sandbox, started, from_pool)
    }

    /// Puts a new sandbox in the registry; during shutdown it is killed
    /// instead (in a task the shutdown waits for) and the answer is 503.
    fn register(
        &self,
        tenant: &str,
        spec: CreateSpec,
        id: String,
        sandbox: Sandbox,
        started: Instant,
        from_pool: Option<bool>,
    ) -> Result<Arc<Entry>, ApiError> {
        let took = started.elapsed();
        let now = Instant::now();
        let entry = Arc::new(Entry {
            id: id.clone(),
            tenant: tenant.to_string(),
            template: spec.template.clone(),
            key: spec.key.clone(),
            labels: spec.labels,
            limits: spec.limits,
            timeout: spec.timeout,
            idle_timeout: spec.idle_timeout,
            created_at: SystemTime::now(),
            sandbox,
            times: Mutex::new(Times {
                expires: now + spec.ttl,
                ttl: spec.ttl,
                last_used: now,
                active: 0,
                failed_pings: 0,
            }),
            contexts: Mutex::new(BTreeMap::new()),
        });
        let live = {
            let mut st = lock(&self.inner.state);
            if self.shutting_down() {
                None
            } else {
                st.sandboxes.insert(id.clone(), entry.clone());
                if let Some(k) = &spec.key {
                    st.by_key
                        .insert((tenant.to_string(), k.clone()), id.clone());
                }
                Some(st.sandboxes.len())
            }
        };
        let Some(live) = live else {
            self.inner.creating.fetch_add(1, Ordering::SeqCst);
            let this = self.clone();
            tokio::spawn(async move {
                let _ = entry.sandbox.kill().await;
                this.inner.creating.fetch_sub(1, Ordering::SeqCst);
            });
            return Err(ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
            ));
        };
        self.inner.metrics.set_live(live);
        self.inner.metrics.created(took, from_pool);
        tracing::info!(
            tenant,
            id = %id,
            template = %spec.template,
            pooled = from_pool == Some(true),
            ms = took.as_secs_f64() * 1000.0,
            "sandbox created"
        );
        Ok(entry)
    }

    /// The pool of a template.
    fn pool(&self, template: &str) -> Option<&Pool> {
        self.inner
            .pools
            .iter()
            .find(|p| p.template.name == template)
    }

    /// A live sandbox from the pool, if one is ready (dead ones are dropped).
    /// No round trip to the agent: its channel being open is enough, and
    /// the health checks catch a wedged one later.
    fn take_pooled(&self, pool: &Pool) -> Option<Sandbox> {
        let mut ready = lock(&pool.ready);
        let mut found = None;
        while let Some(s) = ready.pop_front() {
            if s.is_alive() {
                found = Some(s);
                break;
            }
            tokio::spawn(async move {
                let _ = s.kill().await;
            });
        }
        let n = ready.len();
        drop(ready);
        self.inner.metrics.set_pool_ready(&pool.template.name, n);
        found
    }

    /// Pooled sandboxes ready now, all templates together.
    pub fn pool_ready(&self) -> usize {
        self.inner.pools.iter().map(|p| lock(&p.ready).len()).sum()
    }

    /// Sandboxes held or being built by the pools: (count, memory).
    fn pooled_usage(&self) -> (usize, u64) {
        self.inner.pools.iter().fold((0, 0), |(n, mem), p| {
            let k = lock(&p.ready).len() + p.pending.load(Ordering::SeqCst);
            (
                n + k,
                mem.saturating_add(p.memory().saturating_mul(k as u64)),
            )
        })
    }

    /// With the state locked (and the new sandbox already reserved in it):
    /// kills pooled sandboxes until the live ones and the pools together
    /// fit the global caps again. One sandbox of the pool that will serve
    /// `spec` is spared (the create takes it).
    fn evict_pooled(&self, st: &State, spec: &CreateSpec) {
        let cfg = &self.inner.config;
        let mine = self
            .pool(&spec.template)
            .filter(|p| p.serves(&spec.limits))
            .map(|p| p.template.name.as_str());
        loop {
            let (mut n, mut mem) = self.pooled_usage();
            let spared = mine
                .and_then(|m| self.pool(m))
                .filter(|p| !lock(&p.ready).is_empty());
            if let Some(p) = spared {
                n = n.saturating_sub(1);
                mem = mem.saturating_sub(p.memory());
            }
            if st.total.sandboxes + n <= cfg.max_sandboxes
                && st.total.memory.saturating_add(mem) <= cfg.max_memory
            {
                return;
            }
            // The fullest pool (not counting the spared one) gives one up.
            let victim = self
                .inner
                .pools
                .iter()
                .map(|p| {
                    let len = lock(&p.ready).len();
                    let keep = usize::from(Some(p.template.name.as_str()) == mine && len > 0);
                    (len - keep, p)
                })
                .filter(|(avail, _)| *avail > 0)
                .max_by_key(|(avail, _)| *avail)
                .map(|(_, p)| p);
            let Some(p) = victim else { return };
            let (s, left) = {
                let mut ready = lock(&p.ready);
                (ready.pop_back(), ready.len())
            };
            self.inner.metrics.set_pool_ready(&p.template.name, left);
            if let Some(s) = s {
                tracing::debug!(template = %p.template.name, "a pooled sandbox gives way to a real one");
                tokio::spawn(async move {
                    let _ = s.kill().await;
                });
            }
        }
    }

    /// Whether a pool may grow: below its size and, counting every pool's
    /// sandboxes (ready or being built), within the global caps.
    fn pool_wants_more(&self, pool: &Pool) -> bool {
        let cfg = &self.inner.config;
        let ready = {
            let mut ready = lock(&pool.ready);
            ready.retain(Sandbox::is_alive);
            ready.len()
        };
        self.inner
            .metrics
            .set_pool_ready(&pool.template.name, ready);
        if ready >= pool.template.pool_size || self.shutting_down() {
            return false;
        }
        let st = lock(&self.inner.state);
        let (n, mem) = self.pooled_usage();
        st.total.sandboxes + n < cfg.max_sandboxes
            && st
                .total
                .memory
                .saturating_add(mem)
                .saturating_add(pool.memory())
                <= cfg.max_memory
    }

    /// Keeps a template's pool filled; failures are retried with
    /// exponential backoff (100 ms to 30 s), counted, and logged (as an
    /// error once they persist).
    async fn refill_pool(&self, index: usize) {
        let Some(pool) = self.inner.pools.get(index) else {
            return;
        };
        let name = pool.template.name.as_str();
        let mut backoff = Duration::from_millis(100);
        let mut failures: u32 = 0;
        loop {
            if self.pool_wants_more(pool) {
                self.inner.creating.fetch_add(1, Ordering::SeqCst);
                pool.pending.fetch_add(1, Ordering::SeqCst);
                let mut spec = SandboxSpec::new(Vec::new());
                spec.limits = pool.template.limits.clone();
                spec.rootfs = pool.template.rootfs.clone();
                let r = Sandbox::create(SandboxConfig {
                    spec,
                    agent_exe: self.inner.config.agent_exe.clone(),
                })
                .await;
                match r {
                    Ok(s) => {
                        if self.shutting_down() {
                            let _ = s.kill().await;
                        } else {
                            let n = {
                                let mut ready = lock(&pool.ready);
                                ready.push_back(s);
                                ready.len()
                            };
                            self.inner.metrics.set_pool_ready(name, n);
                        }
                        pool.pending.fetch_sub(1, Ordering::SeqCst);
                        self.inner.creating.fetch_sub(1, Ordering::SeqCst);
                        if failures > 0 {
                            tracing::info!(
                                template = name,
                                after = failures,
                                "the pool refills again"
                            );
                            self.inner.metrics.pool_refill(name, None);
                        }
                        failures = 0;
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        pool.pending.fetch_sub(1, Ordering::SeqCst);
                        self.inner.creating.fetch_sub(1, Ordering::SeqCst);
                        failures += 1;
                        self.inner.metrics.pool_refill(name, Some(e.to_string()));
                        if failures >= 5 {
                            tracing::error!(template = name, failures, error = %e, retry_in = ?backoff, "the pool keeps failing to create sandboxes");
                        } else {
                            tracing::warn!(template = name, error = %e, retry_in = ?backoff, "could not fill the sandbox pool");
                        }
                        tokio::select! {
                            _ = self.inner.stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
                continue;
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = pool.refill.notified() => {
                    // A create just took a sandbox: let its response go
                    // out before forking (a fork stalls the whole process
                    // for a moment).
                    tokio::time::sleep(REFILL_DELAY).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The tenant's sandbox `id`: 404 for an unknown id or another tenant's,
    /// 410 for one that died or expired.
    pub fn get(&self, tenant: &str, id: &str) -> Result<Arc<Entry>, ApiError> {
        let st = lock(&self.inner.state);
        if let Some(e) = st.sandboxes.get(id)
            && e.tenant == tenant
        {
            return Ok(e.clone());
        }
        if let Some((owner, why)) = st.tombstones.get(id)
            && owner == tenant
        {
            return Err(ApiError::gone(format!("sandbox {id} is gone: {why}")));
        }
        Err(ApiError::not_found(format!("no sandbox {id}")))
    }

    /// The tenant's sandboxes whose labels include every `filter` pair
    /// (and of `template`, when given).
    pub fn list(
        &self,
        tenant: &str,
        filter: &[(String, String)],
        template: Option<&str>,
    ) -> Vec<Arc<Entry>> {
        let st = lock(&self.inner.state);
        let mut v: Vec<Arc<Entry>> = st
            .sandboxes
            .values()
            .filter(|e| e.tenant == tenant)
            .filter(|e| template.is_none_or(|t| e.template == t))
            .filter(|e| filter.iter().all(|(k, val)| e.labels.get(k) == Some(val)))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Sets the sandbox to expire `ttl` from now.
    pub fn extend(&self, entry: &Entry, ttl: Duration) -> Result<(), ApiError> {
        if ttl > self.inner.config.max_ttl {
            return Err(ApiError::bad_request(format!(
                "ttl_s {} is more than the server's maximum of {}",
                ttl.as_secs(),
                self.inner.config.max_ttl.as_secs()
            )));
        }
        let mut t = lock(&entry.times);
        t.ttl = ttl;
        t.expires = Instant::now() + ttl;
        Ok(())
    }

    /// Deletes the tenant's sandbox.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), ApiError> {
        let e = self.get(tenant, id)?;
        self.remove(&e.id, KillReason::Deleted, None).await;
        Ok(())
    }

    /// Takes a sandbox out of the registry and kills it. `why` is kept as
    /// its tombstone (what a later request is told).
    pub async fn remove(&self, id: &str, reason: KillReason, why: Option<String>) {
        let (entry, live) = {
            let mut st = lock(&self.inner.state);
            let Some(entry) = st.sandboxes.remove(id) else {
                return;
            };
            if let Some(k) = &entry.key {
                let kk = (entry.tenant.clone(), k.clone());
                if st.by_key.get(&kk).map(String::as_str) == Some(id) {
                    st.by_key.remove(&kk);
                }
            }
            let mem = entry.limits.memory_bytes;
            if let Some(u) = st.usage.get_mut(&entry.tenant) {
                u.sub(mem);
                if u.sandboxes == 0 {
                    st.usage.remove(&entry.tenant);
                }
            }
            st.total.sub(mem);
            if reason != KillReason::Deleted && reason != KillReason::Shutdown {
                let why = why.unwrap_or_else(|| match reason {
                    KillReason::Ttl => "its TTL ran out".to_string(),
                    KillReason::Idle => "it was idle for longer than its idle timeout".into(),
                    KillReason::Unresponsive => "its agent stopped answering".into(),
                    _ => "its agent died".into(),
                });
                st.tombstones
                    .insert(id.to_string(), (entry.tenant.clone(), why));
                st.tombstone_order.push_back(id.to_string());
                while st.tombstone_order.len() > TOMBSTONES {
                    if let Some(old) = st.tombstone_order.pop_front() {
                        st.tombstones.remove(&old);
                    }
                }
            }
            (entry, st.sandboxes.len())
        };
        self.inner.metrics.set_live(live);
        self.inner.metrics.killed(reason.as_str());
        tracing::info!(tenant = %entry.tenant, id, reason = reason.as_str(), "sandbox removed");
        if let Err(e) = entry.sandbox.kill().await {
            tracing::warn!(id, error = %e, "tearing the sandbox down failed");
        }
    }

    /// Turns a sandbox error into the API's, removing the sandbox from the
    /// registry when the error says it is dead.
    pub async fn sandbox_error(&self, entry: &Entry, e: SandboxError) -> ApiError {
        let dead = matches!(e, SandboxError::Dead(_) | SandboxError::ChannelClosed)
            || !entry.sandbox.is_alive();
        if dead {
            let why = match &e {
                SandboxError::Dead(d) => d.to_string(),
                _ => "its agent went away".to_string(),
            };
            self.remove(&entry.id, KillReason::Died, Some(why.clone()))
                .await;
            return ApiError::gone(format!("sandbox {} is gone: {why}", entry.id));
        }
        ApiError::from_sandbox(&e)
    }

    /// Starts the reaper and the health checker.
    pub fn start_background(&self) {
        let this = self.clone();
        tokio::spawn(async move { this.reaper().await });
        let this = self.clone();
        tokio::spawn(async move { this.health().await });
        for (i, p) in self.inner.pools.iter().enumerate() {
            if p.template.pool_size > 0 {
                let this = self.clone();
                tokio::spawn(async move { this.refill_pool(i).await });
            }
        }
    }

    async fn reaper(&self) {
        let mut tick = tokio::time::interval(self.inner.config.reaper_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let entries: Vec<Arc<Entry>> = lock(&self.inner.state)
                .sandboxes
                .values()
                .cloned()
                .collect();
            for e in entries {
                let reason = {
                    let t = lock(&e.times);
                    if now >= t.expires {
                        Some(KillReason::Ttl)
                    } else if t.active == 0
                        && now.saturating_duration_since(t.last_used) >= e.idle_timeout
                    {
                        Some(KillReason::Idle)
                    } else {
                        None
                    }
                };
                if let Some(r) = reason {
                    self.remove(&e.id, r, None).await;
                } else if !e.sandbox.is_alive() {
                    self.reap_dead(&e).await;
                }
            }
        }
    }

    async fn reap_dead(&self, e: &Entry) {
        let why = match e.sandbox.ping(Duration::from_secs(1)).await {
            Err(SandboxError::Dead(d)) => d.to_string(),
            _ => "its agent went away".to_string(),
        };
        tracing::warn!(tenant = %e.tenant, id = %e.id, why, "sandbox died");
        self.remove(&e.id, KillReason::Died, Some(why)).await;
    }

    async fn health(&self) {
        let mut tick = tokio::time::interval(self.inner.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let entries: Vec<Arc<Entry>> = lock(&self.inner.state)
                .sandboxes
                .values()
                .cloned()
                .collect();
            let checks = entries.into_iter().map(|e| async move {
                match e.sandbox.ping(Duration::from_secs(5)).await {
                    Ok(_) => lock(&e.times).failed_pings = 0,
                    Err(SandboxError::Unresponsive(_)) => {
                        let n = {
                            let mut t = lock(&e.times);
                            t.failed_pings += 1;
                            t.failed_pings
                        };
                        tracing::warn!(id = %e.id, failed = n, "sandbox did not answer a ping");
                        if n >= 3 {
                            self.remove(&e.id, KillReason::Unresponsive, None).await;
                        }
                    }
                    Err(_) => self.reap_dead(&e).await,
                }
            });
            futures_util::future::join_all(checks).await;
        }
    }

    /// Stops the background tasks and kills every sandbox.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.stop.cancel();
        // Creations in flight register (and are killed) or see the flag.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ids: Vec<String> = lock(&self.inner.state).sandboxes.keys().cloned().collect();
            let kills = ids
                .iter()
                .map(|id| self.remove(id, KillReason::Shutdown, None));
            futures_util::future::join_all(kills).await;
            let mut pooled: Vec<Sandbox> = Vec::new();
            for p in &self.inner.pools {
                pooled.extend(lock(&p.ready).drain(..));
                self.inner.metrics.set_pool_ready(&p.template.name, 0);
            }
            futures_util::future::join_all(pooled.iter().map(Sandbox::kill)).await;
            if self.inner.creating.load(Ordering::SeqCst) == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
