//! Plan limits hold through the authorization cache: a stand-in backend that counts like Apisonator (authrep and
//! batched reports against one limit, with limit headers) behind the gateway with its default cache TTL.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::Router;
use gateway::apicast::compile;
use gateway::{AppState, Config};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

const LIMIT: i64 = 5;

/// Usage counted per user_key, with the number of authreps seen.
#[derive(Clone, Default)]
struct Counting {
    used: Arc<Mutex<HashMap<String, i64>>>,
    authreps: Arc<Mutex<u32>>,
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn authrep(
    State(c): State<Counting>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    *c.authreps.lock().unwrap() += 1;
    let key = q.get("user_key").cloned().unwrap_or_default();
    let delta: i64 = q
        .get("usage[hits]")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut used = c.used.lock().unwrap();
    let current = used.entry(key).or_default();
    if *current + delta > LIMIT {
        return (
            StatusCode::CONFLICT,
            [
                ("3scale-rejection-reason", "limits_exceeded".to_owned()),
                ("3scale-limit-remaining", "0".to_owned()),
                ("3scale-limit-reset", "60".to_owned()),
                ("3scale-limit-max-value", LIMIT.to_string()),
            ],
        )
            .into_response();
    }
    *current += delta;
    let same_calls = (LIMIT - *current) / delta.max(1);
    (
        StatusCode::OK,
        [
            ("3scale-limit-remaining", same_calls.to_string()),
            ("3scale-limit-reset", "60".to_owned()),
            ("3scale-limit-max-value", LIMIT.to_string()),
        ],
    )
        .into_response()
}

/// `POST /transactions.xml`: adds each transaction's `hits` to its user_key.
async fn report(State(c): State<Counting>, body: String) -> StatusCode {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut hits: HashMap<String, i64> = HashMap::new();
    for (k, v) in pairs {
        if let Some(rest) = k.strip_prefix("transactions[") {
            let (index, field) = rest.split_once(']').unwrap_or_default();
            if field == "[user_key]" {
                keys.insert(index.to_owned(), v);
            } else if field == "[usage][hits]" {
                hits.insert(index.to_owned(), v.parse().unwrap_or(0));
            }
        }
    }
    let mut used = c.used.lock().unwrap();
    for (index, key) in keys {
        *used.entry(key).or_default() += hits.get(&index).copied().unwrap_or(0);
    }
    StatusCode::ACCEPTED
}

#[tokio::test]
async fn the_call_after_the_limit_gets_429_from_the_cache_and_no_usage_is_lost() {
    let counting = Counting::default();
    let backend = serve(
        Router::new()
            .route("/transactions/authrep.xml", get(authrep))
            .route("/transactions.xml", post(report))
            .with_state(counting.clone()),
    )
    .await;
    let upstream = serve(Router::new().fallback(any(|| async { "upstream" }))).await;
    let config = Config {
        auth_cache_ttl: Duration::from_secs(60),
        ..Config::default()
    };
    let state = AppState::new(config.clone());
    let doc = json!({"services": [{"id": 7, "backend_version": 1,
        "backend_authentication_type": "service_token", "backend_authentication_value": "tok",
        "proxy": {"hosts": ["limits.test"], "api_backend": format!("http://{upstream}"),
            "backend": {"endpoint": format!("http://{backend}")},
            "proxy_rules": [{"http_method": "GET", "pattern": "/", "metric_system_name": "hits", "delta": 1}]}}]});
    state.store.set(compile(doc, &config.compile).unwrap());
    // A long report interval: the cached calls' usage is still queued when the limit is reached.
    tokio::spawn(
        state
            .reporter
            .clone()
            .run(Duration::from_secs(3600), platform::Shutdown::new()),
    );
    let gw = support::serve_gateway(state.clone()).await;
    let http = reqwest::Client::new();
    let call = |key: &'static str| {
        let http = http.clone();
        async move {
            http.get(format!("http://{gw}/things?user_key={key}"))
                .header("host", "limits.test")
                .send()
                .await
                .unwrap()
        }
    };

    for n in 1..=LIMIT {
        assert_eq!(call("k1").await.status(), 200, "call {n}");
    }
    assert_eq!(
        *counting.authreps.lock().unwrap(),
        1,
        "calls 2 to 5 come from the cache"
    );
    let sixth = call("k1").await;
    assert_eq!(sixth.status(), 429);
    let retry_after: u64 = sixth.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&retry_after), "{retry_after}");

    // Another key has its own budget; when its cache entry is refreshed, the queued usage reaches backend
    // before the authorization is asked, so backend judges the full count.
    for _ in 0..3 {
        assert_eq!(call("k2").await.status(), 200);
    }
    state.cache.invalidate_all();
    for _ in 0..2 {
        assert_eq!(call("k2").await.status(), 200);
    }
    state.cache.invalidate_all();
    assert_eq!(call("k2").await.status(), 429, "backend saw all five");

    // Everything the gateway let through is counted, once.
    state.reporter.flush().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = counting.used.lock().unwrap().clone();
        if used.get("k1") == Some(&LIMIT) && used.get("k2") == Some(&LIMIT) {
            break;
        }
        assert!(Instant::now() < deadline, "{used:?}");
        drop(used);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
