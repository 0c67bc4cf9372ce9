//! The one middleware stack every service's HTTP API wears: request ids, access logs, metrics, panic guard.
//!
//! Access logs carry the path only, never the query string: 3scale credentials (`user_key`, `provider_key`,
//! `access_token`) travel in query strings and must not reach the logs.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Response, StatusCode};
use axum::middleware::{self, Next};
use axum::Router;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` in the shared stack. `service` labels the metrics.
pub fn stack(router: Router, service: &'static str) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let request_id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!(
                "request",
                method = %req.method(),
                path = %req.uri().path(),
                request_id,
                status = tracing::field::Empty,
            )
        })
        .on_request(())
        .on_response(|res: &Response<_>, latency: Duration, span: &Span| {
            span.record("status", res.status().as_u16());
            tracing::debug!(latency_ms = latency.as_secs_f64() * 1000.0, "response");
        })
        .on_failure(());
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(trace)
            .layer(middleware::from_fn(move |req, next| {
                record_metrics(service, req, next)
            }))
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

async fn record_metrics(
    service: &'static str,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let started = Instant::now();
    // The matched route, not the raw path, keeps label cardinality bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("service", service.to_owned()),
        ("method", method),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The answer given when a handler panics (also used by the gateway's own lean stack).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<axum::body::Body> {
    tracing::error!("request handler panicked");
    let mut res = Response::new(axum::body::Body::from("Internal Server Error"));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn assigns_and_propagates_request_ids() {
        let app = stack(Router::new().route("/", get(|| async { "hi" })), "test");
        let res = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let generated = res.headers().get(&REQUEST_ID).expect("an id is assigned");
        assert_eq!(generated.len(), 36);
        let res = app
            .oneshot(
                Request::builder()
                    .uri("/")
                    .header(&REQUEST_ID, "abc-123")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.headers()[&REQUEST_ID], "abc-123");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = stack(Router::new().route("/", get(boom)), "test");
        let res = app
            .oneshot(
                Request::builder()
                    .uri("/")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
