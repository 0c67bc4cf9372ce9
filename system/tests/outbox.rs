//! Backend and zync down, then back: every queued change is delivered once, in order.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::Router;
use platform::db::{Database, DbConfig};
use platform::testing::{free_port, TestDb};
use platform::{EnvReader, Shutdown};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

type Log = Arc<Mutex<Vec<String>>>;

async fn record(State(log): State<Log>, method: Method, uri: Uri, _body: Bytes) -> &'static str {
    log.lock().unwrap().push(format!("{method} {}", uri.path()));
    "{}"
}

#[tokio::test]
async fn changes_survive_downtime_and_arrive_once_in_order() {
    let test_db = TestDb::new("sys_outbox").await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let url = test_db.url.clone();
    let mut env = EnvReader::from_pairs([
        ("DATABASE_URL", url.as_str()),
        ("BACKEND_URL", base.as_str()),
        ("ZYNC_ENDPOINT", base.as_str()),
        ("ADMIN_ACCESS_TOKEN", "tok"),
    ]);
    let config = system::Config::read(&mut env).unwrap();
    let db = Database::connect(&config.db, &system::MIGRATOR)
        .await
        .unwrap();
    let _ = DbConfig::read(&mut env, "x");
    let state = system::AppState::new(db.clone(), &config);
    let shutdown = Shutdown::new();
    let bootstrapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    system::after_migrations(&db, &config, &state, shutdown.clone(), bootstrapped.clone()).await;
    assert!(bootstrapped.load(std::sync::atomic::Ordering::Acquire));
    let app = system::router(state);
    for body in ["name=One&backend_version=2", "name=Two"] {
        let req = axum::http::Request::post("/admin/api/services.json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(format!("access_token=tok&{body}")))
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 201);
    }
    // An OIDC service change is also notified to zync.
    let req = axum::http::Request::put("/admin/api/services/1.json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(
            "access_token=tok&backend_version=oidc",
        ))
        .unwrap();
    assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    // Both targets are down: the head rows are tried and kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tried: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE attempts > 0 AND delivered_at IS NULL",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if tried >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery attempt while down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // They come back.
    let log: Log = Arc::default();
    let stub = Router::new().fallback(record).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, stub).await.unwrap() });
    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT method || ' ' || path FROM outbox WHERE target = 'backend' ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
                .fetch_one(db.pool())
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} changes still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.trigger();
    let seen = log.lock().unwrap().clone();
    let backend_seen: Vec<String> = seen
        .iter()
        .filter(|s| s.contains("/internal/"))
        .cloned()
        .collect();
    assert_eq!(backend_seen, expected, "backend calls in order, each once");
    assert!(seen.iter().any(|s| s == "PUT /tenant"), "{seen:?}");
    assert!(seen.iter().any(|s| s == "PUT /notification"), "{seen:?}");
    assert!(expected
        .iter()
        .any(|s| s.starts_with("POST /internal/service_tokens")));
}
