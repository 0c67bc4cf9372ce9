//! The management API on `MANAGEMENT_LISTEN_ADDR`: APIcast's `/status/*` bodies, Prometheus `/metrics`, and
//! `/config` (read, replace, delete) when `APICAST_MANAGEMENT_API=debug`.

use crate::{apicast, AppState, ManagementMode};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use platform::metrics::Metrics;
use serde_json::{json, Value};

#[derive(Clone)]
struct Mgmt {
    state: AppState,
    metrics: Metrics,
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// The management router. `/status/live`, `/status/ready` and `/metrics` always answer (the platform's
/// lifecycle contract); `disabled` turns everything else off.
pub fn router(state: AppState, metrics: Metrics) -> Router {
    let mode = state.config.management;
    let mut router = Router::new()
        .route("/status/live", get(live))
        .route("/status/ready", get(ready))
        .route("/metrics", get(render_metrics));
    if mode != ManagementMode::Disabled {
        router = router.route("/status/info", get(info));
    }
    if mode == ManagementMode::Debug {
        router = router.route(
            "/config",
            get(get_config)
                .put(put_config)
                .post(put_config)
                .delete(delete_config),
        );
    }
    router
        .fallback(|| async { reply(StatusCode::NOT_FOUND, json!({"status": "not_found"})) })
        .with_state(Mgmt { state, metrics })
}

async fn live() -> Response {
    reply(StatusCode::OK, json!({"status": "live", "success": true}))
}

async fn ready(State(m): State<Mgmt>) -> Response {
    if !m.state.is_configured() {
        return reply(
            StatusCode::PRECONDITION_FAILED,
            json!({"status": "error", "error": "not configured", "success": false}),
        );
    }
    match m.state.store.get() {
        Some(config) if !config.services.is_empty() => {
            reply(StatusCode::OK, json!({"status": "ready", "success": true}))
        }
        _ => reply(
            StatusCode::OK,
            json!({"status": "warning", "warning": "no services", "success": true}),
        ),
    }
}

async fn info(State(m): State<Mgmt>) -> Response {
    let config = m.state.store.get();
    reply(
        StatusCode::OK,
        json!({
            "services": config.as_ref().map(|c| c.services.len()).unwrap_or(0),
            "version": config.as_ref().and_then(|c| c.version.clone()),
        }),
    )
}

async fn render_metrics(State(m): State<Mgmt>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.metrics.render(),
    )
        .into_response()
}

async fn get_config(State(m): State<Mgmt>) -> Response {
    let raw = m
        .state
        .store
        .get()
        .map(|c| c.raw.clone())
        .unwrap_or(Value::Null);
    reply(StatusCode::OK, raw)
}

async fn put_config(State(m): State<Mgmt>, body: Bytes) -> Response {
    match apicast::parse(&body, &m.state.config.compile) {
        Err(e) => {
            tracing::error!(error = %e, "configuration from the management API rejected");
            reply(
                StatusCode::BAD_REQUEST,
                json!({"config": null, "status": "error", "error": e.to_string()}),
            )
        }
        Ok(config) => {
            let count = config.services.len();
            let raw = config.raw.clone();
            if count == 0 {
                return reply(
                    StatusCode::NOT_ACCEPTABLE,
                    json!({"status": "not_configured", "config": raw, "services": 0}),
                );
            }
            m.state.store.set(config);
            reply(
                StatusCode::OK,
                json!({"status": "ok", "config": raw, "services": count}),
            )
        }
    }
}

async fn delete_config(State(m): State<Mgmt>) -> Response {
    m.state.store.clear();
    reply(StatusCode::OK, json!({"status": "ok", "config": null}))
}
