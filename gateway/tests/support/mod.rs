//! Shared by the black-box test files: a recording stand-in backend (answering like Apisonator, plus an OIDC
//! discovery/JWKS endpoint), an echo upstream, and a gateway on port 0 in front of them.
#![allow(dead_code)]

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};
use gateway::apicast::compile;
use gateway::{AppState, Config};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Stand {
    pub calls: Arc<Mutex<Vec<HashMap<String, String>>>>,
    pub reports: Arc<Mutex<Vec<String>>>,
    pub down: Arc<AtomicBool>,
    pub jwks: Arc<Mutex<Value>>,
    pub base: Arc<Mutex<String>>,
    /// Requests the echo upstream received.
    pub upstream_hits: Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

pub async fn authrep(
    State(s): State<Stand>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let mut q = q;
    q.insert(
        "3scale-options".into(),
        headers
            .get("3scale-options")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .into(),
    );
    let key = q
        .get("user_key")
        .or(q.get("app_id"))
        .cloned()
        .unwrap_or_default();
    s.calls.lock().unwrap().push(q);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match key.as_str() {
        "limited" => (
            StatusCode::CONFLICT,
            [
                ("3scale-rejection-reason", "limits_exceeded"),
                ("3scale-limit-reset", "42"),
            ],
        )
            .into_response(),
        "disabled" => (
            StatusCode::CONFLICT,
            [
                ("3scale-rejection-reason", "limits_exceeded"),
                ("3scale-limit-max-value", "0"),
            ],
        )
            .into_response(),
        k if k.starts_with("good") || k == "client-1" || k == "custom-client" => {
            StatusCode::OK.into_response()
        }
        _ => (
            StatusCode::FORBIDDEN,
            [("3scale-rejection-reason", "user_key_invalid")],
        )
            .into_response(),
    }
}

pub async fn stand_ins() -> (Stand, SocketAddr, SocketAddr) {
    let stand = Stand::default();
    let backend = Router::new()
        .route("/transactions/authrep.xml", get(authrep))
        .route("/transactions/oauth_authrep.xml", get(authrep))
        .route(
            "/transactions.xml",
            axum::routing::post(|State(s): State<Stand>, body: String| async move {
                if s.down.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                s.reports.lock().unwrap().push(body);
                StatusCode::ACCEPTED
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            get(|State(s): State<Stand>| async move {
                let base = s.base.lock().unwrap().clone();
                Json(json!({"issuer": base, "jwks_uri": format!("{base}/jwks"),
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"]}))
            }),
        )
        .route(
            "/jwks",
            get(|State(s): State<Stand>| async move { Json(s.jwks.lock().unwrap().clone()) }),
        )
        .with_state(stand.clone());
    let backend_addr = serve(backend).await;
    *stand.base.lock().unwrap() = format!("http://{backend_addr}");
    let hits = stand.upstream_hits.clone();
    let upstream = Router::new().fallback(any(
        move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap, body: String| async move {
            hits.fetch_add(1, Ordering::SeqCst);
            // Repeated request headers are joined with ", " so tests can see every value.
            let mut h: HashMap<String, String> = HashMap::new();
            for (k, v) in headers.iter() {
                let v = v.to_str().unwrap_or("");
                h.entry(k.to_string())
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(v);
                    })
                    .or_insert_with(|| v.to_owned());
            }
            (
                [("x-upstream", "yes")],
                Json(json!({"method": method.as_str(), "uri": uri.to_string(), "headers": h, "body": body})),
            )
        },
    ));
    let upstream_addr = serve(upstream).await;
    (stand, backend_addr, upstream_addr)
}

pub async fn gateway(config: Config, doc: Value) -> (AppState, SocketAddr) {
    let state = AppState::new(config.clone());
    state.store.set(compile(doc, &config.compile).unwrap());
    tokio::spawn(
        state
            .reporter
            .clone()
            .run(Duration::from_millis(50), platform::Shutdown::new()),
    );
    let addr = serve_gateway(state.clone()).await;
    (state, addr)
}

/// The proxy on port 0, served by the gateway's own HTTP/1.1 server as in the binary.
pub async fn serve_gateway(state: AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway::serve_proxy_on(
        listener,
        state,
        platform::Shutdown::new(),
        Duration::from_secs(1),
    ));
    addr
}

pub fn service(backend: SocketAddr, upstream: SocketAddr, extra: Value) -> Value {
    let mut proxy = json!({
        "hosts": ["api.test"],
        "api_backend": format!("http://{upstream}/base"),
        "backend": {"endpoint": format!("http://{backend}")},
        "secret_token": "s3cret",
        "proxy_rules": [
            {"http_method": "GET", "pattern": "/hits", "metric_system_name": "hits", "delta": 1},
            {"http_method": "ANY", "pattern": "/hits/{id}$", "metric_system_name": "hits", "delta": 2},
            {"http_method": "POST", "pattern": "/", "metric_system_name": "posts", "delta": 1}
        ]
    });
    if let Value::Object(map) = extra {
        for (k, v) in map {
            proxy[k] = v;
        }
    }
    json!({"id": 42, "backend_version": 1, "backend_authentication_type": "service_token",
        "backend_authentication_value": "tok", "proxy": proxy})
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn gw_get(addr: SocketAddr, path: &str) -> reqwest::Response {
    client()
        .get(format!("http://{addr}{path}"))
        .header("host", "api.test")
        .send()
        .await
        .unwrap()
}

pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
