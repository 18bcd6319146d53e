//! The sandbox manager and HTTP API behind `paddock serve`.
//!
//! - [`config`]: the TOML configuration, tenants and their keys (kept as
//!   SHA-256 hashes), quotas, default limits.
//! - [`manager`]: the registry of live sandboxes per tenant, quotas,
//!   get-or-create by key with per-key locks, the TTL / idle reaper and the
//!   health checks.
//! - [`api`]: the routes (axum), bearer auth, JSON errors, Server-Sent
//!   Events for streamed output.
//! - [`metrics`]: Prometheus text and the same figures as JSON.
//!
//! [`serve`] first kills what sandboxes of an earlier server killed with
//! SIGKILL left behind, then runs it all on a listener until a shutdown
//! future resolves, then
//! lets in-flight requests finish within the grace period and kills every
//! sandbox.

pub mod api;
pub mod config;
pub mod error;
pub mod manager;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;

pub use config::{ConfigError, FileConfig, ServerConfig, Tenant};
pub use error::ApiError;
pub use manager::Manager;

/// The server failed (not a request: those are answered).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Listening or accepting failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the API on `listener` until `shutdown` resolves; then stops
/// accepting, gives in-flight requests `config.shutdown_grace` to finish,
/// kills every sandbox and stops the functions pool.
pub async fn serve(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let grace = config.shutdown_grace;
    // Sandboxes of an earlier server that was killed outright (SIGKILL, a
    // crash) are still running: kill them and remove their cgroups.
    match tokio::task::spawn_blocking(paddock_jail::clean_leftovers).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot clean up leftovers of earlier runs"),
        Err(e) => tracing::warn!(error = %e, "cleaning up leftovers failed"),
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let manager = Manager::new(config, metrics);
    manager.start_background();
    let state = api::AppState {
        manager: manager.clone(),
        pool: Arc::new(tokio::sync::OnceCell::new()),
    };
    let app = api::router(state.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; in-flight requests have {grace:?}");
            stop.cancel();
            tokio::time::sleep(grace).await;
        }
    };
    let result = tokio::select! {
        r = server.into_future() => r.map_err(ServerError::Io),
        _ = signal => {
            tracing::warn!("in-flight requests did not finish within {grace:?}; cancelling them");
            Ok(())
        }
    };
    manager.shutdown().await;
    if let Some(pool) = state.pool.get().cloned() {
        drop(state);
        // Dropping the last handle stops the workers (and joins threads).
        let _ = tokio::task::spawn_blocking(move || drop(pool)).await;
    }
    tracing::info!("shut down: every sandbox is gone");
    result
}
