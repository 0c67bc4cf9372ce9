//! Graceful shutdown: one token cancelled on SIGTERM or SIGINT, and a server loop that drains within a bound.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Cancelled when the process is asked to stop. Clone it into every background task.
#[derive(Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A token that no signal cancels (tests cancel it themselves).
    pub fn new() -> Self {
        Self::default()
    }

    /// A token cancelled by the first SIGTERM or SIGINT.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            trigger.trigger();
        });
        shutdown
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once shutdown has been requested.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    pub fn token(&self) -> CancellationToken {
        self.0.clone()
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// How long in-flight requests may take to finish after shutdown is requested.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until shutdown, then waits at most `drain` for open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: Shutdown,
    drain: Duration,
) -> std::io::Result<()> {
    let signal = shutdown.clone();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { signal.wait().await });
    tokio::select! {
        result = server => result,
        _ = async { shutdown.wait().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(drain_secs = drain.as_secs_f64(), "drain time over, closing remaining connections");
            Ok(())
        }
    }
}

/// Binds `addr`, with a message that names the address when it fails.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
