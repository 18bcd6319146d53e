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
    /// A create served from a template's pool.
    CreatePoolHit,
    /// A create that could have been served from a pool but was built on
    /// demand (the pool was empty).
    CreatePoolMiss,
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
            Latency::CreatePoolHit => "create_pool_hit",
            Latency::CreatePoolMiss => "create_pool_miss",
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
    memory_peak: Histogram,
    pool_ready: Family<Labels, Gauge>,
    pool_size: Family<Labels, Gauge>,
    pool: Family<Labels, Counter>,
    json: Mutex<JsonStats>,
}

#[derive(Debug, Default)]
struct JsonStats {
    created: u64,
    killed: BTreeMap<String, u64>,
    executions: BTreeMap<String, BTreeMap<String, u64>>,
    by_language: BTreeMap<String, BTreeMap<String, u64>>,
    memory_peak: Option<hdrhistogram::Histogram<u64>>,
    quota: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    latency: BTreeMap<&'static str, hdrhistogram::Histogram<u64>>,
    pool: BTreeMap<String, PoolStats>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct PoolStats {
    size: usize,
    ready: usize,
    hit: u64,
    miss: u64,
    failure: u64,
    /// Refills that failed in a row, and the last error, while they fail.
    consecutive_failures: u64,
    last_error: Option<String>,
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
        // 1 MiB to 32 GiB.
        let memory_peak = Histogram::new(exponential_buckets(1_048_576.0, 2.0, 16));
        registry.register(
            "memory_peak_bytes",
            "Peak memory of execs (their largest process), distribution",
            memory_peak.clone(),
        );
        registry.register(
            "latency_seconds",
            "Latency of create, exec, run and function calls",
            latency.clone(),
        );
        let pool_ready = Family::<Labels, Gauge>::default();
        let pool_size = Family::<Labels, Gauge>::default();
        let pool = Family::<Labels, Counter>::default();
        registry.register(
            "pool_ready",
            "Pre-warmed sandboxes ready to be handed out, by template",
            pool_ready.clone(),
        );
        registry.register(
            "pool_size",
            "Configured size of each template's pool",
            pool_size.clone(),
        );
        registry.register(
            "pool",
            "By template: creates served from its pool (hit), created on demand with its default limits (miss), and failed pool refills (failure)",
            pool.clone(),
        );
        Metrics {
            memory_peak,
            registry,
            pool_ready,
            pool_size,
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

    /// A sandbox was created in `took`; `pooled` says whether it came from
    /// its template's pool (`None`: it could not, its limits differ).
    pub fn created(&self, took: Duration, pooled: Option<bool>) {
        self.created.inc();
        self.json().created += 1;
        self.latency(Latency::Create, took);
        match pooled {
            Some(true) => self.latency(Latency::CreatePoolHit, took),
            Some(false) => self.latency(Latency::CreatePoolMiss, took),
            None => {}
        }
    }

    /// A sandbox was removed.
    pub fn killed(&self, reason: &str) {
        self.killed
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
        *self.json().killed.entry(reason.to_string()).or_default() += 1;
    }

    /// An exec, run or function call ended with `status`. `language` is the
    /// context's language for runs, `javascript` for functions and
    /// `command` for execs.
    pub fn execution(&self, kind: Latency, language: &str, status: &str, took: Duration) {
        self.executions
            .get_or_create(&labels(&[
                ("kind", kind.name()),
                ("language", language),
                ("status", status),
            ]))
            .inc();
        let mut json = self.json();
        *json
            .executions
            .entry(kind.name().to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
        *json
            .by_language
            .entry(language.to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
        drop(json);
        self.latency(kind, took);
    }

    /// The peak memory an exec reported (its largest process's RSS).
    pub fn memory_peak(&self, bytes: u64) {
        self.memory_peak.observe(bytes as f64);
        let mut json = self.json();
        if json.memory_peak.is_none() {
            // 1 KiB to 1 TiB, fixed bounds (see `latency`).
            json.memory_peak = hdrhistogram::Histogram::new_with_bounds(1024, 1 << 40, 2).ok();
        }
        if let Some(h) = json.memory_peak.as_mut() {
            h.saturating_record(bytes.max(1024));
        }
    }

    fn latency(&self, kind: Latency, took: Duration) {
        self.latency
            .get_or_create(&labels(&[("op", kind.name())]))
            .observe(took.as_secs_f64());
        let mut json = self.json();
        if !json.latency.contains_key(kind.name()) {
            // Fixed bounds (1 µs to 1 h): `saturating_record` clamps to the
            // current range instead of growing an auto-resizing histogram,
            // so one created by `new` would squash every later, larger
            // value into its first value's range.
            match hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3) {
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

    /// Declares a template's pool and its configured size (so that every
    /// template shows in the figures, even before its first event).
    pub fn pool_declared(&self, template: &str, size: usize) {
        let l = labels(&[("template", template)]);
        self.pool_size
            .get_or_create(&l)
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        drop(self.pool_ready.get_or_create(&l));
        for what in ["hit", "miss", "failure"] {
            drop(
                self.pool
                    .get_or_create(&labels(&[("template", template), ("result", what)])),
            );
        }
        self.json()
            .pool
            .entry(template.to_string())
            .or_default()
            .size = size;
    }

    /// Sets the number of ready sandboxes in a template's pool.
    pub fn set_pool_ready(&self, template: &str, n: usize) {
        self.pool_ready
            .get_or_create(&labels(&[("template", template)]))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        self.json()
            .pool
            .entry(template.to_string())
            .or_default()
            .ready = n;
    }

    /// A pool event of a template: `hit`, `miss` or `failure` (with its
    /// error); a successful refill clears the failure streak.
    pub fn pool(&self, template: &str, what: &str) {
        self.pool
            .get_or_create(&labels(&[("template", template), ("result", what)]))
            .inc();
        let mut json = self.json();
        let p = json.pool.entry(template.to_string()).or_default();
        match what {
            "hit" => p.hit += 1,
            "miss" => p.miss += 1,
            _ => p.failure += 1,
        }
    }

    /// A refill of a template's pool failed (`Some(error)`) or succeeded.
    pub fn pool_refill(&self, template: &str, error: Option<String>) {
        if error.is_some() {
            self.pool(template, "failure");
        }
        let mut json = self.json();
        let p = json.pool.entry(template.to_string()).or_default();
        match error {
            Some(e) => {
                p.consecutive_failures += 1;
                p.last_error = Some(e);
            }
            None => {
                p.consecutive_failures = 0;
                p.last_error = None;
            }
        }
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
            "executions_by_language": json.by_language,
            "memory_peak_bytes": json.memory_peak.as_ref().map(|h| json!({
                "count": h.len(),
                "p50": h.value_at_quantile(0.5),
                "p95": h.value_at_quantile(0.95),
                "max": h.max(),
            })),
            "latency": latency,
            "pool": {
                "ready": json.pool.values().map(|p| p.ready).sum::<usize>(),
                "hit": json.pool.values().map(|p| p.hit).sum::<u64>(),
                "miss": json.pool.values().map(|p| p.miss).sum::<u64>(),
                "failure": json.pool.values().map(|p| p.failure).sum::<u64>(),
                "templates": json.pool,
            },
            "quota_rejections": json.quota,
            "errors": json.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_keep_large_values_after_small_ones() {
        let m = Metrics::new();
        for _ in 0..10 {
            m.created(Duration::from_micros(40), Some(true));
        }
        for _ in 0..10 {
            m.created(Duration::from_millis(20), Some(false));
        }
        let j = m.to_json();
        let create = &j["latency"]["create"];
        assert_eq!(create["count"], 20);
        let max = create["max_ms"].as_f64().unwrap_or(0.0);
        assert!((19.9..20.1).contains(&max), "{create}");
        let hit = j["latency"]["create_pool_hit"]["p95_ms"]
            .as_f64()
            .unwrap_or(0.0);
        assert!((0.039..0.041).contains(&hit), "{j}");
        let miss = j["latency"]["create_pool_miss"]["p50_ms"]
            .as_f64()
            .unwrap_or(0.0);
        assert!((19.9..20.1).contains(&miss), "{j}");
    }

    #[test]
    fn pool_figures_are_per_template_and_summed() {
        let m = Metrics::new();
        m.pool_declared("default", 2);
        m.pool_declared("tiny", 1);
        m.set_pool_ready("default", 2);
        m.set_pool_ready("tiny", 1);
        m.pool("tiny", "hit");
        m.pool("default", "miss");
        m.pool_refill("tiny", Some("boom".into()));
        let j = m.to_json();
        assert_eq!(j["pool"]["ready"], 3);
        assert_eq!(j["pool"]["hit"], 1);
        assert_eq!(j["pool"]["failure"], 1);
        assert_eq!(j["pool"]["templates"]["tiny"]["last_error"], "boom");
        assert_eq!(j["pool"]["templates"]["tiny"]["consecutive_failures"], 1);
        m.pool_refill("tiny", None);
        assert_eq!(
            m.to_json()["pool"]["templates"]["tiny"]["consecutive_failures"],
            0
        );
        let text = m.render();
        assert!(
            text.contains("paddock_pool_size{template=\"tiny\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("paddock_pool_total{template=\"tiny\",result=\"failure\"} 1"),
            "{text}"
        );
    }
}
