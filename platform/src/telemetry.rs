//! Structured logging with `tracing`: `RUST_LOG` picks what is logged, `LOG_FORMAT` picks text or JSON lines.

use crate::EnvReader;
use tracing_subscriber::{fmt, EnvFilter};

/// How the service logs.
pub struct TelemetryConfig {
    pub filter: String,
    pub json: bool,
}

impl TelemetryConfig {
    pub fn read(env: &mut EnvReader) -> Self {
        let filter = env.raw("RUST_LOG").unwrap_or("info").to_owned();
        if let Err(err) = EnvFilter::try_new(&filter) {
            env.error(format!("RUST_LOG: not a valid filter ({err})"));
        }
        let json = env.choice("LOG_FORMAT", &["text", "json"], "text") == "json";
        Self { filter, json }
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(service: &'static str, config: &TelemetryConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let installed = if config.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}
