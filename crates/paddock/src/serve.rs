//! `paddock serve`: the HTTP API server.
//!
//! ```text
//! paddock serve [--listen ADDR:PORT] [--api-key KEY]... [--config FILE]
//!               [--rootfs DIR] [--check-config]
//! ```
//!
//! Settings come from the TOML file (`--config`, `PADDOCK_CONFIG`), then
//! the flags and environment (`PADDOCK_LISTEN`, `PADDOCK_API_KEY`) override
//! it. With no key anywhere, one development key is generated and printed
//! once. Logs go to stderr (level from `PADDOCK_LOG`: error, warn, info,
//! debug, trace); stdout carries only the start-up lines.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use paddock_server::config::{FileConfig, ServerConfig, generate_key, mask_key, parse_listen};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080, or the next free port).
    #[arg(long, value_name = "ADDR:PORT", env = "PADDOCK_LISTEN")]
    pub listen: Option<String>,
    /// An API key (repeatable); each is a tenant of its own.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "PADDOCK_API_KEY",
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "PADDOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Base root filesystem of the `default` template (a directory with a
    /// Linux tree, e.g. a debootstrap result) instead of the host's.
    #[arg(long, value_name = "DIR", env = "PADDOCK_ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// Validate the configuration, print a summary and exit (0 when valid).
    #[arg(long)]
    pub check_config: bool,
}

/// Default port, and how many after it are tried when it is taken.
const DEFAULT_PORT: u16 = 8080;
const PORT_TRIES: u16 = 20;

pub fn main(args: ServeArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("paddock serve: {e:#}");
            1
        }
    }
}

fn load(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let exe = std::env::current_exe().context("cannot find the paddock executable")?;
    let mut config = file.resolve(exe)?;
    if let Some(listen) = &args.listen {
        config.listen = Some(parse_listen(listen)?);
    }
    for key in &args.api_keys {
        config.add_key(key)?;
    }
    if let Some(dir) = &args.rootfs {
        config.set_default_rootfs(dir)?;
    }
    Ok(config)
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load(&args)?;
    if args.check_config {
        println!(
            "configuration OK: listen {}, {} tenant(s), max {} sandboxes",
            config
                .listen
                .map_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"), |a| a.to_string()),
            config.tenants.len(),
            config.max_sandboxes
        );
        for t in &config.templates {
            println!(
                "template {}: rootfs {}, memory {}, cpus {}, pids {}, disk {}, timeout {:?}, pool {}",
                t.name,
                t.rootfs
                    .as_ref()
                    .map_or_else(|| "/ (the host's)".to_string(), |p| p.display().to_string()),
                paddock_types::format_size(t.limits.memory_bytes),
                t.limits.cpu_millicores as f64 / 1000.0,
                t.limits.pids,
                paddock_types::format_size(t.limits.disk_bytes),
                t.timeout,
                t.pool_size
            );
        }
        return Ok(());
    }
    init_logs();
    let mut dev_key = None;
    if config.tenants.is_empty() {
        let key = generate_key()?;
        config.add_key(&key)?;
        dev_key = Some(key);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = bind(config.listen).await?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "paddock serve: listening on http://{addr}")?;
            if let Some(key) = &dev_key {
                writeln!(
                    out,
                    "paddock serve: development API key (shown once): {key}\n\
                     paddock serve: try: curl -H 'Authorization: Bearer {key}' http://{addr}/v1/sandboxes"
                )?;
            }
            out.flush()?;
        }
        for t in &config.tenants {
            tracing::info!(tenant = %t.name, max_sandboxes = t.max_sandboxes, "tenant");
        }
        for t in &config.templates {
            tracing::info!(
                template = %t.name,
                rootfs = %t.rootfs.as_ref().map_or_else(|| "/".to_string(), |p| p.display().to_string()),
                pool_size = t.pool_size,
                "template"
            );
        }
        if let Some(key) = &dev_key {
            tracing::info!(key = %mask_key(key), "generated a development key");
        }
        paddock_server::serve(config, listener, shutdown_signal()).await?;
        Ok(())
    })
}

async fn bind(listen: Option<SocketAddr>) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(addr) = listen {
        return tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"));
    }
    for port in DEFAULT_PORT..DEFAULT_PORT + PORT_TRIES {
        if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return Ok(l);
        }
    }
    bail!(
        "ports {DEFAULT_PORT} to {} on 127.0.0.1 are all taken; pass --listen",
        DEFAULT_PORT + PORT_TRIES - 1
    )
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn init_logs() {
    let level = match std::env::var("PADDOCK_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
