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

/// An error and its causes on one line, for logs and stored error records: the outer message of an HTTP client's
/// error often says only "error sending request", the useful part (a refused certificate or connection) is in its
/// causes. A cause whose text the line already holds is not repeated.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        cause: Option<Box<Layer>>,
    }

    #[test]
    fn causes_are_joined_once_each() {
        let inner = Layer {
            text: "certificate unknown",
            cause: None,
        };
        let middle = Layer {
            text: "tls handshake",
            cause: Some(Box::new(inner)),
        };
        let outer = Layer {
            text: "error sending request: tls handshake",
            cause: Some(Box::new(middle)),
        };
        assert_eq!(
            error_chain(&outer),
            "error sending request: tls handshake: certificate unknown"
        );
    }
}
