//! Server configuration: the TOML file, its defaults, and validation.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! max_sandboxes = 1000        # global cap on live sandboxes
//! max_memory = "64G"          # global cap on the sum of their memory limits
//! max_body = "64M"            # largest request body
//! shutdown_grace = "10s"      # how long in-flight requests may take at shutdown
//! reaper_interval = "1s"      # how often TTL / idle expiry is checked
//! health_interval = "5s"      # how often every sandbox's agent is pinged
//! function_workers = 2        # workers of the shared functions pool
//! pool_size = 0               # sandboxes kept ready for the default template
//!
//! [defaults]                  # limits of a sandbox that asks for none
//! memory = "512M"
//! cpus = 1.0
//! pids = 256
//! disk = "256M"
//! timeout = "30s"             # default exec / run timeout
//! ttl = "1h"
//! idle_timeout = "10m"
//!
//! [[templates]]              # a base tree plus default limits (and a pool)
//! name = "minimal"            # `default` (the host's tree) always exists
//! rootfs = "/srv/trees/bookworm" # a directory with a Linux tree (usr/ in it)
//! memory = "256M"             # limits not given come from [defaults]
//! cpus = 0.5
//! pids = 128
//! disk = "64M"
//! timeout = "10s"
//! pool_size = 2               # sandboxes kept ready for this template
//!
//! [[tenants]]
//! name = "alice"
//! api_key = "..."             # or api_key_sha256 = "<64 hex digits>"
//! max_sandboxes = 50
//! max_memory = "8G"
//! rate = 200                  # requests per second on average
//! burst = 400                 # requests at once above that
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_types::{Limits, parse_duration, parse_size};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown / mistyped keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A size written as `"512M"` or as a number of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Bytes.
    Bytes(u64),
    /// `64M`, `1G`, ...
    Text(String),
}

impl SizeValue {
    fn bytes(&self, what: &str) -> Result<u64, ConfigError> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(t) => {
                parse_size(t).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))
            }
        }
    }
}

/// A duration written as `"10s"` or as a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    /// Seconds.
    Seconds(u64),
    /// `500ms`, `10s`, `2m`, `1h`.
    Text(String),
}

impl DurationValue {
    fn duration(&self, what: &str) -> Result<Duration, ConfigError> {
        let d = match self {
            DurationValue::Seconds(s) => Duration::from_secs(*s),
            DurationValue::Text(t) => {
                parse_duration(t).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?
            }
        };
        if d.is_zero() {
            return Err(ConfigError::Invalid(format!(
                "{what} must be more than zero"
            )));
        }
        Ok(d)
    }
}

/// The TOML file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Global cap on live sandboxes.
    pub max_sandboxes: Option<usize>,
    /// Global cap on the sum of live sandboxes' memory limits.
    pub max_memory: Option<SizeValue>,
    /// Largest request body.
    pub max_body: Option<SizeValue>,
    /// Deadline for in-flight requests at shutdown.
    pub shutdown_grace: Option<DurationValue>,
    /// Period of the TTL / idle reaper.
    pub reaper_interval: Option<DurationValue>,
    /// Period of the agent health checks.
    pub health_interval: Option<DurationValue>,
    /// Longest TTL a sandbox may ask for.
    pub max_ttl: Option<DurationValue>,
    /// Workers of the functions pool.
    pub function_workers: Option<usize>,
    /// Sandboxes kept ready with the default limits (0: no pool).
    pub pool_size: Option<usize>,
    /// Default limits.
    #[serde(default)]
    pub defaults: DefaultsFile,
    /// Templates: base trees with default limits and pools.
    #[serde(default)]
    pub templates: Vec<TemplateFile>,
    /// Tenants and their keys.
    #[serde(default)]
    pub tenants: Vec<TenantFile>,
}

/// `[[templates]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    /// Name, used in requests (`{"template": NAME}`), logs and metrics.
    pub name: String,
    /// Base root filesystem (a directory with a Linux tree); the host's own
    /// when absent.
    pub rootfs: Option<PathBuf>,
    /// Memory limit.
    pub memory: Option<SizeValue>,
    /// CPU cores.
    pub cpus: Option<f64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Writable layer.
    pub disk: Option<SizeValue>,
    /// Default exec / run timeout.
    pub timeout: Option<DurationValue>,
    /// Sandboxes kept ready for this template.
    pub pool_size: Option<usize>,
}

/// `[defaults]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsFile {
    /// Memory limit.
    pub memory: Option<SizeValue>,
    /// CPU cores.
    pub cpus: Option<f64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Writable layer.
    pub disk: Option<SizeValue>,
    /// Default exec / run timeout.
    pub timeout: Option<DurationValue>,
    /// Default time to live.
    pub ttl: Option<DurationValue>,
    /// Default idle timeout.
    pub idle_timeout: Option<DurationValue>,
}

/// `[[tenants]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// Name (used in logs and stats, never a secret).
    pub name: String,
    /// The API key in clear.
    pub api_key: Option<String>,
    /// Or its SHA-256, 64 hex digits.
    pub api_key_sha256: Option<String>,
    /// Live sandboxes at most.
    pub max_sandboxes: Option<usize>,
    /// Sum of their memory limits at most.
    pub max_memory: Option<SizeValue>,
    /// Requests per second allowed on average.
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate (the bucket's size).
    pub burst: Option<f64>,
}

/// Limits and lifetimes of a sandbox that asks for nothing.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Memory, CPU, pids, disk.
    pub limits: Limits,
    /// Default exec / run timeout.
    pub timeout: Duration,
    /// Default time to live.
    pub ttl: Duration,
    /// Default idle timeout.
    pub idle_timeout: Duration,
}

/// Name of the template that always exists.
pub const DEFAULT_TEMPLATE: &str = "default";

/// A template: the tree new sandboxes are built on, their default limits,
/// and how many of them are kept ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Name.
    pub name: String,
    /// Base root filesystem (canonical); `None` is the host's own.
    pub rootfs: Option<PathBuf>,
    /// Default limits.
    pub limits: Limits,
    /// Default exec / run timeout.
    pub timeout: Duration,
    /// Pre-warmed sandboxes kept ready.
    pub pool_size: usize,
}

/// One tenant: a key (as its SHA-256) and quotas.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// SHA-256 of the API key.
    pub key_sha256: [u8; 32],
    /// Live sandboxes at most.
    pub max_sandboxes: usize,
    /// Sum of memory limits at most.
    pub max_memory: u64,
    /// Requests per second on average.
    pub rate: f64,
    /// Requests at once above the rate.
    pub burst: f64,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; `None` means 127.0.0.1:8080 or the next free port.
    pub listen: Option<SocketAddr>,
    /// Global cap on live sandboxes.
    pub max_sandboxes: usize,
    /// Global cap on the sum of memory limits.
    pub max_memory: u64,
    /// Largest request body.
    pub max_body: usize,
    /// Deadline for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Reaper period.
    pub reaper_interval: Duration,
    /// Health check period.
    pub health_interval: Duration,
    /// Longest TTL.
    pub max_ttl: Duration,
    /// Functions pool workers.
    pub function_workers: usize,
    /// Defaults of new sandboxes (the `default` template's limits may
    /// differ when the configuration overrides it).
    pub defaults: Defaults,
    /// Templates, `default` first; names are unique.
    pub templates: Vec<Template>,
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// The paddock binary to run as the agent and function worker.
    pub agent_exe: PathBuf,
}

/// Default tenant quota: live sandboxes.
pub const DEFAULT_TENANT_SANDBOXES: usize = 100;
/// Default tenant quota: memory.
pub const DEFAULT_TENANT_MEMORY: u64 = 64 << 30;
/// Default tenant request rate (per second).
pub const DEFAULT_RATE: f64 = 200.0;
/// Default tenant burst.
pub const DEFAULT_BURST: f64 = 400.0;

/// SHA-256 of a key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A key as it may appear in logs: its first characters only.
pub fn mask_key(key: &str) -> String {
    let shown: String = key.chars().take(6).collect();
    if key.chars().count() <= 10 {
        "****".to_string()
    } else {
        format!("{shown}****")
    }
}

/// A new random API key (`pdk_` and 32 hex digits).
pub fn generate_key() -> Result<String, ConfigError> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf)
        .map_err(|e| ConfigError::Invalid(format!("no randomness for a key: {e}")))?;
    Ok(format!("pdk_{}", hex(&buf)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Validates and resolves, filling in the defaults.
    pub fn resolve(&self, agent_exe: PathBuf) -> Result<ServerConfig, ConfigError> {
        let listen = match &self.listen {
            None => None,
            Some(s) => Some(parse_listen(s)?),
        };
        let d = &self.defaults;
        let base = Limits::default();
        let mut limits = base.clone();
        if let Some(m) = &d.memory {
            limits.memory_bytes = m.bytes("defaults.memory")?;
        }
        if let Some(c) = d.cpus {
            limits.cpu_millicores = cpus_to_millicores(c).ok_or_else(|| {
                ConfigError::Invalid(format!("defaults.cpus: {c} is not 0.01 to 1024"))
            })?;
        }
        if let Some(p) = d.pids {
            limits.pids = p;
        }
        if let Some(disk) = &d.disk {
            limits.disk_bytes = disk.bytes("defaults.disk")?;
        }
        check_limits(&limits).map_err(|e| ConfigError::Invalid(format!("defaults: {e}")))?;
        let dur = |v: &Option<DurationValue>, what: &str, default: Duration| match v {
            Some(v) => v.duration(what),
            None => Ok(default),
        };
        let defaults = Defaults {
            limits,
            timeout: dur(&d.timeout, "defaults.timeout", Duration::from_secs(30))?,
            ttl: dur(&d.ttl, "defaults.ttl", Duration::from_secs(3600))?,
            idle_timeout: dur(
                &d.idle_timeout,
                "defaults.idle_timeout",
                Duration::from_secs(600),
            )?,
        };
        let max_ttl = dur(&self.max_ttl, "max_ttl", Duration::from_secs(7 * 86400))?;
        if defaults.ttl > max_ttl {
            return Err(ConfigError::Invalid(
                "defaults.ttl is longer than max_ttl".to_string(),
            ));
        }
        let max_body = match &self.max_body {
            Some(v) => v.bytes("max_body")?,
            None => 64 << 20,
        };
        if max_body < 1024 {
            return Err(ConfigError::Invalid("max_body must be at least 1K".into()));
        }
        let mut tenants: Vec<Tenant> = Vec::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let what = format!("tenants[{i}] ({})", t.name);
            if t.name.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("tenants[{i}] has no name")));
            }
            let key_sha256 = match (&t.api_key, &t.api_key_sha256) {
                (Some(k), None) => {
                    if k.len() < 16 {
                        return Err(ConfigError::Invalid(format!(
                            "{what}: api_key is shorter than 16 characters"
                        )));
                    }
                    hash_key(k)
                }
                (None, Some(h)) => unhex32(h).ok_or_else(|| {
                    ConfigError::Invalid(format!("{what}: api_key_sha256 is not 64 hex digits"))
                })?,
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Invalid(format!(
                        "{what}: give api_key or api_key_sha256, not both"
                    )));
                }
                (None, None) => {
                    return Err(ConfigError::Invalid(format!(
                        "{what}: needs api_key or api_key_sha256"
                    )));
                }
            };
            if tenants.iter().any(|o| o.name == t.name) {
                return Err(ConfigError::Invalid(format!(
                    "{what}: the name is used twice"
                )));
            }
            if tenants.iter().any(|o| o.key_sha256 == key_sha256) {
                return Err(ConfigError::Invalid(format!(
                    "{what}: the same key is given to two tenants"
                )));
            }
            let rate = t.rate.unwrap_or(DEFAULT_RATE);
            let burst = t.burst.unwrap_or(rate.max(1.0) * 2.0);
            if !(rate.is_finite() && rate > 0.0 && burst.is_finite() && burst >= 1.0) {
                return Err(ConfigError::Invalid(format!(
                    "{what}: rate must be above 0 and burst at least 1"
                )));
            }
            tenants.push(Tenant {
                name: t.name.clone(),
                key_sha256,
                max_sandboxes: t.max_sandboxes.unwrap_or(DEFAULT_TENANT_SANDBOXES),
                max_memory: match &t.max_memory {
                    Some(m) => m.bytes(&format!("{what}.max_memory"))?,
                    None => DEFAULT_TENANT_MEMORY,
                },
                rate,
                burst,
            });
        }
        let function_workers = self.function_workers.unwrap_or(2);
        if !(1..=256).contains(&function_workers) {
            return Err(ConfigError::Invalid(
                "function_workers must be 1 to 256".into(),
            ));
        }
        let max_sandboxes = self.max_sandboxes.unwrap_or(1000);
        let templates = self.templates(&defaults)?;
        let pooled: usize = templates.iter().map(|t| t.pool_size).sum();
        if pooled > max_sandboxes {
            return Err(ConfigError::Invalid(format!(
                "the pools' sizes add up to {pooled}, more than max_sandboxes ({max_sandboxes})"
            )));
        }
        Ok(ServerConfig {
            listen,
            templates,
            max_sandboxes,
            max_memory: match &self.max_memory {
                Some(m) => m.bytes("max_memory")?,
                None => u64::MAX,
            },
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            shutdown_grace: dur(
                &self.shutdown_grace,
                "shutdown_grace",
                Duration::from_secs(10),
            )?,
            reaper_interval: dur(
                &self.reaper_interval,
                "reaper_interval",
                Duration::from_secs(1),
            )?,
            health_interval: dur(
                &self.health_interval,
                "health_interval",
                Duration::from_secs(5),
            )?,
            max_ttl,
            function_workers,
            defaults,
            tenants,
            agent_exe,
        })
    }
}

impl FileConfig {
    /// The templates: `default` (the host's tree, `[defaults]`, the top-level
    /// `pool_size`, each overridable by a `[[templates]]` entry of that
    /// name) first, then the others in file order.
    fn templates(&self, defaults: &Defaults) -> Result<Vec<Template>, ConfigError> {
        let mut out = vec![Template {
            name: DEFAULT_TEMPLATE.to_string(),
            rootfs: None,
            limits: defaults.limits.clone(),
            timeout: defaults.timeout,
            pool_size: self.pool_size.unwrap_or(0),
        }];
        let mut seen: Vec<&str> = Vec::new();
        for (i, t) in self.templates.iter().enumerate() {
            let name = t.name.trim();
            check_template_name(name)
                .map_err(|e| ConfigError::Invalid(format!("templates[{i}]: {e}")))?;
            if seen.contains(&name) {
                return Err(ConfigError::Invalid(format!(
                    "templates[{i}]: the name {name:?} is used twice"
                )));
            }
            seen.push(name);
            let what = format!("templates[{i}] ({name})");
            let base = if name == DEFAULT_TEMPLATE {
                out.remove(0)
            } else {
                Template {
                    name: name.to_string(),
                    rootfs: None,
                    limits: defaults.limits.clone(),
                    timeout: defaults.timeout,
                    pool_size: 0,
                }
            };
            let mut tpl = base;
            if let Some(dir) = &t.rootfs {
                tpl.rootfs = Some(
                    check_rootfs(dir).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?,
                );
            }
            if let Some(m) = &t.memory {
                tpl.limits.memory_bytes = m.bytes(&format!("{what}.memory"))?;
            }
            if let Some(c) = t.cpus {
                tpl.limits.cpu_millicores = cpus_to_millicores(c).ok_or_else(|| {
                    ConfigError::Invalid(format!("{what}.cpus: {c} is not 0.01 to 1024"))
                })?;
            }
            if let Some(p) = t.pids {
                tpl.limits.pids = p;
            }
            if let Some(disk) = &t.disk {
                tpl.limits.disk_bytes = disk.bytes(&format!("{what}.disk"))?;
            }
            if let Some(v) = &t.timeout {
                tpl.timeout = v.duration(&format!("{what}.timeout"))?;
            }
            if let Some(n) = t.pool_size {
                tpl.pool_size = n;
            }
            check_limits(&tpl.limits).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
            if name == DEFAULT_TEMPLATE {
                out.insert(0, tpl);
            } else {
                out.push(tpl);
            }
        }
        Ok(out)
    }
}

/// Checks a template's name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn check_template_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a template needs a non-empty name".into());
    }
    if name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "template name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Checks a template's base tree: it exists, is a directory and has a
/// `usr/` directory. Returns its canonical path (a relative one is taken
/// from the current directory).
pub fn check_rootfs(dir: &Path) -> Result<PathBuf, String> {
    let shown = dir.display();
    let canon = std::fs::canonicalize(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("rootfs {shown} does not exist")
        } else {
            format!("rootfs {shown}: {e}")
        }
    })?;
    if !canon.is_dir() {
        return Err(format!("rootfs {shown} is not a directory"));
    }
    if !canon.join("usr").is_dir() {
        return Err(format!(
            "rootfs {shown} has no usr/ directory (expected a Linux tree such as a debootstrap result)"
        ));
    }
    Ok(canon)
}

impl ServerConfig {
    /// The template of that name.
    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// Names of the templates, comma-separated.
    pub fn template_names(&self) -> String {
        self.templates
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Sets the `default` template's base tree (`paddock serve --rootfs`).
    pub fn set_default_rootfs(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let canon =
            check_rootfs(dir).map_err(|e| ConfigError::Invalid(format!("--rootfs: {e}")))?;
        if let Some(t) = self
            .templates
            .iter_mut()
            .find(|t| t.name == DEFAULT_TEMPLATE)
        {
            t.rootfs = Some(canon);
        }
        Ok(())
    }

    /// Adds a tenant for a key given on the command line or environment.
    pub fn add_key(&mut self, key: &str) -> Result<(), ConfigError> {
        if key.len() < 16 {
            return Err(ConfigError::Invalid(
                "an API key must be at least 16 characters".into(),
            ));
        }
        let key_sha256 = hash_key(key);
        if self.tenants.iter().any(|t| t.key_sha256 == key_sha256) {
            return Ok(());
        }
        let mut n = self.tenants.len() + 1;
        while self.tenants.iter().any(|t| t.name == format!("key{n}")) {
            n += 1;
        }
        self.tenants.push(Tenant {
            name: format!("key{n}"),
            key_sha256,
            max_sandboxes: DEFAULT_TENANT_SANDBOXES,
            max_memory: DEFAULT_TENANT_MEMORY,
            rate: DEFAULT_RATE,
            burst: DEFAULT_BURST,
        });
        Ok(())
    }
}

/// Parses `ADDR:PORT` (`localhost:PORT` is taken as 127.0.0.1).
pub fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    let t = s.trim();
    let t = t.strip_prefix("http://").unwrap_or(t);
    let replaced;
    let t = if let Some(port) = t.strip_prefix("localhost:") {
        replaced = format!("127.0.0.1:{port}");
        replaced.as_str()
    } else {
        t
    };
    t.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "listen address {s:?} is not ADDR:PORT (e.g. 127.0.0.1:8080)"
        ))
    })
}

/// Cores to millicores, if in range.
pub fn cpus_to_millicores(c: f64) -> Option<u64> {
    if c.is_finite() && (0.01..=1024.0).contains(&c) {
        Some((c * 1000.0).round() as u64)
    } else {
        None
    }
}

/// Smallest memory limit a sandbox may have.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Smallest writable layer.
pub const MIN_DISK: u64 = 1 << 20;

/// Checks limits for sanity (not quotas).
pub fn check_limits(l: &Limits) -> Result<(), String> {
    if l.memory_bytes < MIN_MEMORY {
        return Err(format!(
            "memory {} is below the minimum of 16M",
            paddock_types::format_size(l.memory_bytes)
        ));
    }
    if !(1..=1 << 20).contains(&l.pids) {
        return Err(format!("pids {} is not 1 to 1048576", l.pids));
    }
    if l.disk_bytes < MIN_DISK {
        return Err("disk is below the minimum of 1M".into());
    }
    if l.disk_bytes > 1 << 40 {
        return Err("disk is above the maximum of 1T".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = FileConfig::parse("")
            .unwrap()
            .resolve("/bin/true".into())
            .unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.defaults.limits, Limits::default());
        assert!(c.tenants.is_empty());
    }

    #[test]
    fn full_file() {
        let hash = hex(&hash_key("bob-key-0123456789"));
        let text = format!(
            r#"
listen = "127.0.0.1:9000"
max_sandboxes = 10
max_memory = "4G"
shutdown_grace = "2s"
[defaults]
memory = "128M"
cpus = 0.5
ttl = 60
[[tenants]]
name = "alice"
api_key = "alice-key-0123456789"
max_sandboxes = 3
max_memory = "1G"
[[tenants]]
name = "bob"
api_key_sha256 = "{hash}"
"#
        );
        let c = FileConfig::parse(&text)
            .unwrap()
            .resolve("/bin/true".into())
            .unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.max_memory, 4 << 30);
        assert_eq!(c.defaults.limits.memory_bytes, 128 << 20);
        assert_eq!(c.defaults.limits.cpu_millicores, 500);
        assert_eq!(c.defaults.ttl, Duration::from_secs(60));
        assert_eq!(c.tenants[0].max_sandboxes, 3);
        assert_eq!(c.tenants[1].key_sha256, hash_key("bob-key-0123456789"));
    }

    #[test]
    fn bad_files_are_refused() {
        for bad in [
            "listen = 5",
            "nonsense = 1",
            "listen = \"nowhere\"",
            "[defaults]\nmemory = \"1K\"",
            "[defaults]\ncpus = 0",
            "[[tenants]]\nname = \"a\"",
            "[[tenants]]\nname = \"a\"\napi_key = \"short\"",
            "[[tenants]]\nname = \"a\"\napi_key_sha256 = \"abc\"",
            "[[tenants]]\nname = \"a\"\napi_key = \"0123456789abcdef\"\n[[tenants]]\nname = \"b\"\napi_key = \"0123456789abcdef\"",
            "shutdown_grace = \"0s\"",
            "max_sandboxes = 2\npool_size = 3",
            "[[tenants]]\nname = \"a\"\napi_key = \"0123456789abcdef\"\nrate = 0",
        ] {
            let r = FileConfig::parse(bad)
                .map_err(ConfigError::Invalid)
                .and_then(|f| f.resolve("/bin/true".into()));
            assert!(r.is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn templates_default_override_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("usr")).unwrap();
        let tree = dir.path().display().to_string();
        let text = format!(
            r#"
pool_size = 1
[defaults]
memory = "128M"
[[templates]]
name = "tiny"
rootfs = "{tree}"
memory = "64M"
timeout = "5s"
pool_size = 2
[[templates]]
name = "default"
cpus = 2
"#
        );
        let c = FileConfig::parse(&text)
            .unwrap()
            .resolve("/bin/true".into())
            .unwrap();
        let names: Vec<&str> = c.templates.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["default", "tiny"]);
        let d = c.template("default").unwrap();
        assert_eq!(d.rootfs, None);
        assert_eq!(d.limits.memory_bytes, 128 << 20);
        assert_eq!(d.limits.cpu_millicores, 2000);
        assert_eq!(d.pool_size, 1);
        let t = c.template("tiny").unwrap();
        assert_eq!(
            t.rootfs.as_deref(),
            Some(dir.path().canonicalize().unwrap().as_path())
        );
        assert_eq!(t.limits.memory_bytes, 64 << 20);
        assert_eq!(t.limits.cpu_millicores, 1000, "from [defaults]");
        assert_eq!(t.timeout, Duration::from_secs(5));
        assert_eq!(t.pool_size, 2);
        assert_eq!(c.template_names(), "default, tiny");

        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let empty = tempfile::tempdir().unwrap();
        for (bad, says) in [
            ("[[templates]]\nname = \"\"".to_string(), "non-empty name"),
            (
                "[[templates]]\nname = \"a b\"".to_string(),
                "letters, digits",
            ),
            (
                "[[templates]]\nname = \"a\"\n[[templates]]\nname = \"a\"".to_string(),
                "used twice",
            ),
            (
                "[[templates]]\nname = \"a\"\nrootfs = \"/nonexistent/tree\"".to_string(),
                "does not exist",
            ),
            (
                format!(
                    "[[templates]]\nname = \"a\"\nrootfs = \"{}\"",
                    file.display()
                ),
                "is not a directory",
            ),
            (
                format!(
                    "[[templates]]\nname = \"a\"\nrootfs = \"{}\"",
                    empty.path().display()
                ),
                "has no usr/",
            ),
            (
                "[[templates]]\nname = \"a\"\nmemory = \"1K\"".to_string(),
                "templates[0] (a)",
            ),
            (
                "[[templates]]\nname = \"a\"\nbogus = 1".to_string(),
                "bogus",
            ),
            (
                "max_sandboxes = 3\npool_size = 2\n[[templates]]\nname = \"a\"\npool_size = 2"
                    .to_string(),
                "add up to 4",
            ),
        ] {
            let e = FileConfig::parse(&bad)
                .map_err(ConfigError::Invalid)
                .and_then(|f| f.resolve("/bin/true".into()))
                .expect_err(&bad)
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut c = FileConfig::default().resolve("/bin/true".into()).unwrap();
        assert!(c.set_default_rootfs(empty.path()).is_err());
        c.set_default_rootfs(dir.path()).unwrap();
        assert!(c.template("default").unwrap().rootfs.is_some());
    }

    #[test]
    fn keys_are_masked_and_generated() {
        let k = generate_key().unwrap();
        assert!(k.starts_with("pdk_") && k.len() == 36);
        assert_eq!(mask_key(&k), format!("{}****", &k[..6]));
        assert_eq!(mask_key("short"), "****");
    }
}
