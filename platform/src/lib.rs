//! Shared ground for the platform's five services: configuration, telemetry, health, metrics, shutdown and Postgres.
//!
//! Each service's `main.rs` is one call to [`run`]: it reads the service's typed configuration (reporting every bad
//! variable at once), sets up logging and metrics, and hands the service a [`Context`] with the shutdown signal.

pub mod apicast;
pub mod config;
pub mod db;
pub mod health;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;
use std::process::ExitCode;

pub use config::{EnvReader, Secret};
pub use shutdown::Shutdown;

/// What a service gets from the platform when it starts.
#[derive(Clone)]
pub struct Context {
    /// The service's name, as it appears in logs and metrics.
    pub service: &'static str,
    /// Cancelled on SIGTERM or SIGINT.
    pub shutdown: Shutdown,
    /// Renders the process' Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// How long open requests may take to finish after shutdown is requested (`SHUTDOWN_DRAIN_SECONDS`).
    pub drain: std::time::Duration,
}

impl Context {
    /// A context for tests: no signal handling, a short drain.
    pub fn for_tests(service: &'static str) -> Self {
        Self {
            service,
            shutdown: Shutdown::new(),
            metrics: metrics::Metrics::global(),
            drain: std::time::Duration::from_secs(1),
        }
    }

    /// Binds `addr` and serves `app` (wrapped in the shared middleware stack) until shutdown.
    pub async fn serve(&self, addr: std::net::SocketAddr, app: axum::Router) -> anyhow::Result<()> {
        let listener = shutdown::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let app = http::stack(app, self.service);
        shutdown::serve(listener, app, self.shutdown.clone(), self.drain).await?;
        Ok(())
    }
}

/// Runs a service: configuration, telemetry, runtime, then `start` until it returns.
///
/// A bad configuration prints every problem to stderr and exits with status 2 before anything starts.
pub fn run<C, R, S, Fut>(service: &'static str, read: R, start: S) -> ExitCode
where
    R: FnOnce(&mut EnvReader) -> Option<C>,
    S: FnOnce(C, Context) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut env = EnvReader::from_env();
    let telemetry = telemetry::TelemetryConfig::read(&mut env);
    let drain = env.seconds("SHUTDOWN_DRAIN_SECONDS", shutdown::DEFAULT_DRAIN);
    let config = read(&mut env);
    let config = match (env.finish(), config) {
        (Ok(()), Some(config)) => config,
        (Err(err), _) => {
            eprintln!("{service}: invalid configuration\n{err}");
            return ExitCode::from(2);
        }
        (Ok(()), None) => {
            eprintln!("{service}: invalid configuration");
            return ExitCode::from(2);
        }
    };
    telemetry::init(service, &telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{service}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let ctx = Context {
            service,
            shutdown: Shutdown::on_signals(),
            metrics: metrics::Metrics::global(),
            drain,
        };
        start(config, ctx).await
    });
    // Background tasks that ignored the shutdown signal must not hold the process.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => {
            tracing::info!(service, "stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(service, error = %format!("{err:#}"), "fatal error");
            ExitCode::FAILURE
        }
    }
}
