//! Health and metrics endpoints: `/status/live`, `/status/ready` (with the reason when not ready) and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// The dependencies a service needs before it can do useful work, each checked on every `/status/ready`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Arc<CheckFn>)>,
}

/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named check; `Err` carries the reason shown to the operator.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name,
            Arc::new(move || Box::pin(check()) as BoxFuture<'static, _>),
        ));
        self
    }

    /// Runs every check concurrently; `Ok` with per-check results when all pass.
    pub async fn evaluate(&self) -> (bool, Map<String, Value>) {
        let results = futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
                };
                (*name, outcome)
            }
        }))
        .await;
        let mut all_ok = true;
        let mut map = Map::new();
        for (name, outcome) in results {
            let shown = match outcome {
                Ok(()) => "ok".to_owned(),
                Err(reason) => {
                    all_ok = false;
                    reason
                }
            };
            map.insert(name.to_owned(), Value::String(shown));
        }
        (all_ok, map)
    }
}

#[derive(Clone)]
struct HealthState {
    readiness: Readiness,
    metrics: Metrics,
}

/// The three operational routes, to merge into a service's router (or serve alone on a management port).
pub fn routes<S: Clone + Send + Sync + 'static>(
    readiness: Readiness,
    metrics: Metrics,
) -> Router<S> {
    Router::new()
        .route("/status/live", get(live))
        .route("/status/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HealthState { readiness, metrics })
}

async fn live() -> Json<Value> {
    Json(json!({"status": "live", "success": true}))
}

async fn ready(State(state): State<HealthState>) -> Response {
    let (ok, checks) = state.readiness.evaluate().await;
    if ok {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "success": true, "checks": checks})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "success": false, "checks": checks})),
        )
            .into_response()
    }
}

async fn render_metrics(State(state): State<HealthState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_reports_each_failing_check() {
        let readiness = Readiness::new()
            .check("database", || async { Ok(()) })
            .check("backend", || async { Err("connection refused".to_owned()) });
        let (ok, checks) = readiness.evaluate().await;
        assert!(!ok);
        assert_eq!(checks["database"], "ok");
        assert_eq!(checks["backend"], "connection refused");
        let (ok, _) = Readiness::new()
            .check("x", || async { Ok(()) })
            .evaluate()
            .await;
        assert!(ok);
    }
}
