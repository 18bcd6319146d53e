//! Counters and latency histograms: exposed in Prometheus text (`/metrics`)
//! and as JSON (`/v1/stats`), from the same calls.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

type Labels = Vec<(String, String)>;

/// Latency kinds with a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Creating a sandbox.
    Create,
    /// An exec in a sandbox.
    Exec,
    /// A run in a code context.
    Run,
    /// A function call.
    Function,
}

impl Latency {
    fn name(self) -> &'static str {
        match self {
            Latency::Create => "create",
            Latency::Exec => "exec",
            Latency::Run => "run",
            Latency::Function => "function",
        }
    }
}

/// Every figure the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    live: Gauge,
    created: Counter,
    killed: Family<Labels, Counter>,
    executions: Family<Labels, Counter>,
    quota: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    pool_ready: Gauge,
    pool: Family<Labels, Counter>,
    json: Mutex<JsonStats>,
}

#[derive(Debug, Default)]
struct JsonStats {
    created: u64,
    killed: BTreeMap<String, u64>,
    executions: BTreeMap<String, BTreeMap<String, u64>>,
    quota: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    latency: BTreeMap<&'static str, hdrhistogram::Histogram<u64>>,
    pool: BTreeMap<String, u64>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set, registered in its own registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("paddock");
        let live = Gauge::default();
        let created = Counter::default();
        let killed = Family::<Labels, Counter>::default();
        let executions = Family::<Labels, Counter>::default();
        let quota = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 18))) as fn() -> Histogram,
        );
        registry.register("sandboxes_live", "Sandboxes alive now", live.clone());
        registry.register("sandboxes_created", "Sandboxes created", created.clone());
        registry.register(
            "sandboxes_killed",
            "Sandboxes removed, by reason (deleted, ttl, idle, died, unresponsive, shutdown)",
            killed.clone(),
        );
        registry.register(
            "executions",
            "Execs and context runs, by kind and status",
            executions.clone(),
        );
        registry.register(
            "quota_rejections",
            "Requests refused by a tenant quota or a global cap, by limit",
            quota.clone(),
        );
        registry.register("errors", "Error responses, by code", errors.clone());
        registry.register(
            "latency_seconds",
            "Latency of create, exec, run and function calls",
            latency.clone(),
        );
        let pool_ready = Gauge::default();
        let pool = Family::<Labels, Counter>::default();
        registry.register(
            "pool_ready",
            "Pre-warmed sandboxes ready to be handed out",
            pool_ready.clone(),
        );
        registry.register(
            "pool",
            "Creates served from the pool (hit), created on demand with default limits (miss), and failed pool refills (failure)",
            pool.clone(),
        );
        Metrics {
            registry,
            pool_ready,
            pool,
            live,
            created,
            killed,
            executions,
            quota,
            errors,
            latency,
            json: Mutex::new(JsonStats::default()),
        }
    }

    fn json(&self) -> std::sync::MutexGuard<'_, JsonStats> {
        self.json
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the number of live sandboxes.
    pub fn set_live(&self, n: usize) {
        self.live.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A sandbox was created in `took`.
    pub fn created(&self, took: Duration) {
        self.created.inc();
        self.json().created += 1;
        self.latency(Latency::Create, took);
    }

    /// A sandbox was removed.
    pub fn killed(&self, reason: &str) {
        self.killed
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
        *self.json().killed.entry(reason.to_string()).or_default() += 1;
    }

    /// An exec, run or function call ended with `status`.
    pub fn execution(&self, kind: Latency, status: &str, took: Duration) {
        self.executions
            .get_or_create(&labels(&[("kind", kind.name()), ("status", status)]))
            .inc();
        *self
            .json()
            .executions
            .entry(kind.name().to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
        self.latency(kind, took);
    }

    fn latency(&self, kind: Latency, took: Duration) {
        self.latency
            .get_or_create(&labels(&[("op", kind.name())]))
            .observe(took.as_secs_f64());
        let mut json = self.json();
        if !json.latency.contains_key(kind.name()) {
            match hdrhistogram::Histogram::new(3) {
                Ok(h) => {
                    json.latency.insert(kind.name(), h);
                }
                Err(_) => return,
            }
        }
        if let Some(h) = json.latency.get_mut(kind.name()) {
            h.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// Sets the number of ready pooled sandboxes.
    pub fn set_pool_ready(&self, n: usize) {
        self.pool_ready.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A pool event: `hit`, `miss` or `failure`.
    pub fn pool(&self, what: &str) {
        self.pool.get_or_create(&labels(&[("result", what)])).inc();
        *self.json().pool.entry(what.to_string()).or_default() += 1;
    }

    /// A request was refused by `limit`.
    pub fn quota_rejected(&self, limit: &str) {
        self.quota.get_or_create(&labels(&[("limit", limit)])).inc();
        *self.json().quota.entry(limit.to_string()).or_default() += 1;
    }

    /// An error response of `code` was sent.
    pub fn error(&self, code: &str) {
        self.errors.get_or_create(&labels(&[("code", code)])).inc();
        *self.json().errors.entry(code.to_string()).or_default() += 1;
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The same figures as JSON.
    pub fn to_json(&self) -> Value {
        let json = self.json();
        let latency: BTreeMap<&str, Value> = json
            .latency
            .iter()
            .map(|(k, h)| {
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                (
                    *k,
                    json!({
                        "count": h.len(),
                        "p50_ms": ms(0.5),
                        "p95_ms": ms(0.95),
                        "p99_ms": ms(0.99),
                        "max_ms": h.max() as f64 / 1000.0,
                        "mean_ms": h.mean() / 1000.0,
                    }),
                )
            })
            .collect();
        json!({
            "sandboxes": {
                "live": self.live.get(),
                "created": json.created,
                "killed": json.killed,
            },
            "executions": json.executions,
            "latency": latency,
            "pool": {
                "ready": self.pool_ready.get(),
                "hit": json.pool.get("hit").copied().unwrap_or(0),
                "miss": json.pool.get("miss").copied().unwrap_or(0),
                "failure": json.pool.get("failure").copied().unwrap_or(0),
            },
            "quota_rejections": json.quota,
            "errors": json.errors,
        })
    }
}
