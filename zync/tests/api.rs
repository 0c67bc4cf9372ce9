//! zync's HTTP contract against a real Postgres: auth, tenant upsert statuses, notification intake with its job,
//! the 422 dependency signal, unknown tenants, bad input, and coalescing of duplicates into one job.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use platform::db::{Database, DbConfig};
use platform::testing::TestDb;
use platform::{EnvReader, Secret};
use serde_json::{json, Value};
use tower::ServiceExt;
use zync::{router, AppState, MIGRATOR};

const TOKEN: &str = "zync-secret";

async fn setup(name: &str) -> (TestDb, AppState) {
    let test_db = TestDb::new(name).await;
    let mut env = EnvReader::from_pairs([("DATABASE_URL", test_db.url.as_str())]);
    let db = Database::connect(&DbConfig::read(&mut env, "unused"), &MIGRATOR)
        .await
        .expect("migrate");
    let state = AppState {
        db,
        token: Some(Secret::new(TOKEN)),
    };
    (test_db, state)
}

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let res = router(state.clone())
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

const AUTH: Option<&str> = Some("Token token=\"zync-secret\"");

async fn put(state: &AppState, path: &str, body: Value) -> (StatusCode, String) {
    call(state, "PUT", path, AUTH, &body.to_string()).await
}

#[tokio::test]
async fn authentication_is_required_and_checked() {
    let (_db, state) = setup("zync_auth").await;
    let body =
        json!({"id": 2, "endpoint": "https://a.example.com/", "access_token": "t"}).to_string();
    let (status, text) = call(&state, "PUT", "/tenant", None, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(text, "HTTP Token: Access denied.\n");
    let (status, _) = call(
        &state,
        "PUT",
        "/tenant",
        Some("Token token=\"nope\""),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&state, "PUT", "/tenant", Some("Bearer zync-secret"), &body).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(&state, "GET", "/sync/applications", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tenant_upsert_answers_201_then_204_and_never_echoes_the_token() {
    let (_db, state) = setup("zync_tenant").await;
    let (status, text) = put(
        &state,
        "/tenant",
        json!({"id": 2, "endpoint": "https://a.example.com/", "access_token": "ro-token-1"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert!(!text.contains("ro-token-1"));
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["id"], 2);
    let (status, _) = put(
        &state,
        "/tenant",
        json!({"tenant": {"id": "2", "endpoint": "https://b.example.com/", "access_token": "ro-token-2"}}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let row: (String, String) =
        sqlx::query_as("SELECT endpoint, access_token FROM tenants WHERE id = 2")
            .fetch_one(state.db.pool())
            .await
            .unwrap();
    assert_eq!(row, ("https://b.example.com/".into(), "ro-token-2".into()));
    let (status, text) = put(
        &state,
        "/tenant",
        json!({"id": 3, "endpoint": "", "access_token": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"errors": {"endpoint": ["can't be blank"]}})
    );
    let (status, text) = call(&state, "PUT", "/tenant", AUTH, "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("malformed JSON"), "{text}");
    let (status, _) = put(
        &state,
        "/tenant",
        json!({"endpoint": "https://a/", "access_token": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn jobs(state: &AppState) -> Vec<(String, i64, String, i64)> {
    sqlx::query_as("SELECT kind, entity_id, status, version FROM jobs ORDER BY kind, entity_id")
        .fetch_all(state.db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn notifications_are_stored_with_their_job_and_dependencies_come_first() {
    let (_db, state) = setup("zync_notify").await;
    let (status, _) = put(
        &state,
        "/notification",
        json!({"type": "Application", "id": 42, "service_id": 7, "tenant_id": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown tenant is refused");
    put(
        &state,
        "/tenant",
        json!({"id": 2, "endpoint": "https://a.example.com/", "access_token": "t"}),
    )
    .await;

    let (status, text) = put(
        &state,
        "/notification",
        json!({"type": "Application", "id": 42, "service_id": 7, "tenant_id": 2}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown service is the dependency signal"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"errors": {"service": ["must exist"]}})
    );
    assert!(jobs(&state).await.is_empty());

    let (status, _) = put(
        &state,
        "/notification",
        json!({"type": "Service", "id": 7, "tenant_id": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = put(
        &state,
        "/notification",
        json!({"type": "Proxy", "id": 70, "service_id": 7, "tenant_id": 2, "oidc_endpoint": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    for _ in 0..3 {
        let (status, text) = put(
            &state,
            "/notification",
            json!({"type": "Application", "id": 42, "service_id": 7, "tenant_id": 2,
                   "parent_event_id": "e", "parent_event_type": "Applications::ApplicationUpdatedEvent"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["record_type"], "Application");
        assert_eq!(body["record_id"], 42);
    }
    // One job per entity; the duplicates bumped its version instead of piling up.
    assert_eq!(
        jobs(&state).await,
        vec![
            ("application".into(), 42, "pending".into(), 3),
            ("proxy".into(), 7, "pending".into(), 2)
        ]
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(state.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 5);
    let data: Value = sqlx::query_scalar(
        "SELECT data FROM notifications WHERE record_type = 'Application' LIMIT 1",
    )
    .fetch_one(state.db.pool())
    .await
    .unwrap();
    assert_eq!(data["parent_event_id"], "e", "the whole body is kept");

    let (status, text) = put(
        &state,
        "/notification",
        json!({"type": "Unknown", "id": 1, "tenant_id": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text.contains("type"), "{text}");
    let (status, _) = put(&state, "/notification", json!({"type": "Service", "id": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&state, "PUT", "/notification", AUTH, "[1,").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, text) = call(&state, "GET", "/sync/applications?state=pending", AUTH, "").await;
    assert_eq!(status, StatusCode::OK);
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["applications"][0]["application_id"], 42);
    assert_eq!(view["applications"][0]["state"], "pending");
    assert_eq!(view["applications"][0]["service_id"], 7);
}
