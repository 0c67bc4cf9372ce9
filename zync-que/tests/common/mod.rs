//! Test harness: a fresh database, zync's API on a real port, in-test stand-ins for system and for IdPs (REST
//! protocol and Keycloak's client registration, as we read it) that record every call, and the worker in-process.
#![allow(dead_code)]

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use platform::db::{Database, DbConfig};
use platform::testing::TestDb;
use platform::{EnvReader, Secret, Shutdown};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zync_que::WorkerConfig;

pub const ZYNC_TOKEN: &str = "zync-shared-token";
pub const TENANT_TOKEN: &str = "tenant-ro-token";

pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Polls `check` until it returns true, or panics with `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        if started.elapsed() > deadline {
            panic!("not reached within {deadline:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- system stand-in

#[derive(Default)]
pub struct SystemState {
    pub apps: Mutex<HashMap<i64, Value>>,
    pub proxies: Mutex<HashMap<i64, Value>>,
    pub auth_seen: Mutex<Vec<String>>,
    pub calls: AtomicUsize,
}

#[derive(serde::Deserialize)]
struct FindQuery {
    application_id: Option<i64>,
}

async fn find_app(
    State(s): State<Arc<SystemState>>,
    headers: HeaderMap,
    Query(q): Query<FindQuery>,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    record_auth(&s, &headers);
    match q
        .application_id
        .and_then(|id| s.apps.lock().unwrap().get(&id).cloned())
    {
        Some(app) => Json(json!({ "application": app })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"status": "Not found"}))).into_response(),
    }
}

async fn proxy_json(
    State(s): State<Arc<SystemState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    record_auth(&s, &headers);
    match s.proxies.lock().unwrap().get(&id).cloned() {
        Some(proxy) => Json(json!({ "proxy": proxy })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"status": "Not found"}))).into_response(),
    }
}

fn record_auth(s: &SystemState, headers: &HeaderMap) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut seen = s.auth_seen.lock().unwrap();
    if seen.len() < 10_000 {
        seen.push(auth);
    }
}

pub struct System {
    pub state: Arc<SystemState>,
    pub addr: SocketAddr,
}

impl System {
    pub async fn start() -> Self {
        let state = Arc::new(SystemState::default());
        let app = Router::new()
            .route("/admin/api/applications/find.json", get(find_app))
            .route("/admin/api/services/{id}/proxy.json", get(proxy_json))
            .with_state(state.clone());
        let addr = serve(app).await;
        Self { state, addr }
    }

    pub fn set_app(&self, id: i64, app: Value) {
        self.state.apps.lock().unwrap().insert(id, app);
    }

    pub fn remove_app(&self, id: i64) {
        self.state.apps.lock().unwrap().remove(&id);
    }

    pub fn set_proxy(&self, service_id: i64, proxy: Value) {
        self.state.proxies.lock().unwrap().insert(service_id, proxy);
    }
}

/// An OIDC application as system's find.json shows it.
pub fn oidc_app(id: i64, service_id: i64, name: &str) -> Value {
    json!({
        "id": id, "service_id": service_id, "state": "live", "enabled": true,
        "client_id": format!("client-{id}"), "client_secret": format!("secret-{id}"),
        "name": name, "description": "desc", "redirect_url": "https://app.example.com/cb",
        "oidc_configuration": {"standard_flow_enabled": true, "implicit_flow_enabled": false,
            "service_accounts_enabled": true, "direct_access_grants_enabled": false}
    })
}

// ---------------------------------------------------------------- IdP stand-in

#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: Option<Value>,
}

#[derive(Default)]
pub struct IdpState {
    pub clients: Mutex<BTreeMap<String, Value>>,
    pub calls: Mutex<Vec<Call>>,
    pub down: AtomicBool,
    /// While set, REST `PUT /clients/:id` calls are recorded, then left unanswered (a worker stuck mid-job).
    pub hang_puts: AtomicBool,
    /// The REST stand-in offers OAuth (discovery + token) only when set.
    pub rest_oauth: AtomicBool,
    pub tokens_issued: AtomicUsize,
    pub base: Mutex<String>,
}

pub struct Idp {
    pub state: Arc<IdpState>,
    pub addr: SocketAddr,
}

fn record(s: &IdpState, method: &str, path: &str, headers: &HeaderMap, body: Option<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.calls.lock().unwrap().push(Call {
        method: method.into(),
        path: path.into(),
        auth,
        body,
    });
}

fn valid_bearer(s: &IdpState, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer tok-"))
        && s.tokens_issued.load(Ordering::SeqCst) > 0
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response()
}

async fn rest_put(
    State(s): State<Arc<IdpState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(
        &s,
        "PUT",
        &format!("/clients/{id}"),
        &headers,
        Some(body.clone()),
    );
    if s.hang_puts.load(Ordering::SeqCst) {
        // Long past any test's deadline; bounded so the task ends with the runtime anyway.
        tokio::time::sleep(Duration::from_secs(600)).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    if s.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let created = s.clients.lock().unwrap().insert(id, body.clone()).is_none();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

async fn rest_delete(
    State(s): State<Arc<IdpState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(&s, "DELETE", &format!("/clients/{id}"), &headers, None);
    if s.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    match s.clients.lock().unwrap().remove(&id) {
        Some(_) => StatusCode::OK.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn discovery(State(s): State<Arc<IdpState>>, Path(prefix): Path<String>) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    if prefix == "rest" && !s.rest_oauth.load(Ordering::SeqCst) {
        return StatusCode::NOT_FOUND.into_response();
    }
    // Relative, as some IdPs publish it.
    Json(json!({"issuer": "x", "token_endpoint": "protocol/openid-connect/token"})).into_response()
}

async fn token(State(s): State<Arc<IdpState>>, body: String) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id").map(String::as_str) != Some("zync")
        || form.get("client_secret").map(String::as_str) != Some("s3cr/et")
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let n = s.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 300}))
        .into_response()
}

async fn kc_put(
    State(s): State<Arc<IdpState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(
        &s,
        "PUT",
        &format!("/default/{id}"),
        &headers,
        Some(body.clone()),
    );
    if s.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    if !valid_bearer(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    let mut clients = s.clients.lock().unwrap();
    if !clients.contains_key(&id) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "invalid_request", "error_description": "Client not found"})),
        )
            .into_response();
    }
    clients.insert(id, body.clone());
    Json(body).into_response()
}

async fn kc_post(State(s): State<Arc<IdpState>>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&s, "POST", "/default", &headers, Some(body.clone()));
    if s.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    if !valid_bearer(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    let id = body["clientId"].as_str().unwrap_or_default().to_owned();
    let mut clients = s.clients.lock().unwrap();
    if clients.contains_key(&id) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_client_metadata", "error_description": "Client Identifier in use"})))
            .into_response();
    }
    clients.insert(id, body.clone());
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn kc_delete(
    State(s): State<Arc<IdpState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(&s, "DELETE", &format!("/default/{id}"), &headers, None);
    if s.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    if !valid_bearer(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    match s.clients.lock().unwrap().remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "invalid_request", "error_description": "Client not found"})),
        )
            .into_response(),
    }
}

impl Idp {
    /// Serves the REST protocol under `/rest/` and Keycloak's registration under `/realms/test/` and the legacy
    /// `/auth/realms/test/`.
    pub async fn start() -> Self {
        let (state, app) = Self::app();
        let addr = serve(app).await;
        *state.base.lock().unwrap() = format!("http://{addr}");
        Self { state, addr }
    }

    /// The stand-in's routes and state, for serving it some other way (HTTPS).
    pub fn app() -> (Arc<IdpState>, Router) {
        let state = Arc::new(IdpState::default());
        let keycloak = || {
            Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(|s: State<Arc<IdpState>>| discovery(s, Path("kc".into()))),
                )
                .route("/protocol/openid-connect/token", post(token))
                .route("/clients-registrations/default", post(kc_post))
                .route(
                    "/clients-registrations/default/{id}",
                    put(kc_put).delete(kc_delete),
                )
        };
        let rest = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|s: State<Arc<IdpState>>| discovery(s, Path("rest".into()))),
            )
            .route("/protocol/openid-connect/token", post(token))
            .route("/clients/{id}", put(rest_put).delete(rest_delete));
        let app = Router::new()
            .nest("/rest", rest)
            .nest("/realms/test", keycloak())
            .nest("/auth/realms/test", keycloak())
            .with_state(state.clone());
        (state, app)
    }

    pub fn rest_issuer(&self) -> String {
        format!("http://zync:s3cr%2Fet@{}/rest", self.addr)
    }

    pub fn keycloak_issuer(&self, legacy: bool) -> String {
        let prefix = if legacy { "/auth" } else { "" };
        format!("http://zync:s3cr%2Fet@{}{prefix}/realms/test", self.addr)
    }

    pub fn client_ids(&self) -> Vec<String> {
        self.state.clients.lock().unwrap().keys().cloned().collect()
    }

    pub fn client(&self, id: &str) -> Option<Value> {
        self.state.clients.lock().unwrap().get(id).cloned()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- zync + worker

pub struct Harness {
    pub db: TestDb,
    pub pool: sqlx::PgPool,
    pub zync: SocketAddr,
    pub system: System,
    pub http: reqwest::Client,
    pub shutdown: Shutdown,
    worker: Option<tokio::task::JoinHandle<()>>,
}

pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        workers: 4,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(500),
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(300),
        zync_token: Some(Secret::new(ZYNC_TOKEN)),
    }
}

impl Harness {
    pub async fn new(name: &str) -> Self {
        let db = TestDb::new(name).await;
        let mut env = EnvReader::from_pairs([("DATABASE_URL", db.url.as_str())]);
        let database = Database::connect(&DbConfig::read(&mut env, "unused"), &zync_que::MIGRATOR)
            .await
            .expect("migrate");
        let pool = database.pool().clone();
        let zync = serve(zync::router(zync::AppState {
            db: database,
            token: Some(Secret::new(ZYNC_TOKEN)),
        }))
        .await;
        let system = System::start().await;
        let harness = Self {
            db,
            pool,
            zync,
            system,
            http: reqwest::Client::new(),
            shutdown: Shutdown::new(),
            worker: None,
        };
        let (status, _) = harness
            .put("/tenant", json!({"id": 2, "endpoint": format!("http://{}/", harness.system.addr), "access_token": TENANT_TOKEN}))
            .await;
        assert!(status.is_success());
        harness
    }

    pub fn start_worker(&mut self, config: WorkerConfig) {
        let http = zync_que::http_client(None, Duration::from_secs(5)).unwrap();
        self.shutdown = Shutdown::new();
        self.worker = Some(tokio::spawn(zync_que::run(
            self.pool.clone(),
            config,
            http,
            self.shutdown.clone(),
        )));
    }

    pub async fn stop_worker(&mut self) {
        self.shutdown.trigger();
        if let Some(handle) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .expect("worker stops")
                .unwrap();
        }
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let res = self
            .http
            .put(format!("http://{}{path}", self.zync))
            .header("authorization", format!("Token token=\"{ZYNC_TOKEN}\""))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn notify(&self, body: Value) {
        let (status, text) = self.put("/notification", body).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
    }

    /// Service and Proxy notifications for a service whose proxy names `issuer` of `kind`.
    pub async fn oidc_service(&self, service_id: i64, kind: &str, issuer: &str) {
        self.system.set_proxy(
            service_id,
            json!({"service_id": service_id, "authentication_method": "oidc",
                   "oidc_issuer_endpoint": issuer, "oidc_issuer_type": kind}),
        );
        self.notify(json!({"type": "Service", "id": service_id, "tenant_id": 2}))
            .await;
        self.notify(json!({"type": "Proxy", "id": service_id * 10, "service_id": service_id, "tenant_id": 2})).await;
    }

    pub async fn notify_app(&self, id: i64, service_id: i64) {
        self.notify(
            json!({"type": "Application", "id": id, "service_id": service_id, "tenant_id": 2,
            "parent_event_type": "Applications::ApplicationUpdatedEvent"}),
        )
        .await;
    }

    pub async fn sync_view(&self) -> Vec<Value> {
        let res: Value = self
            .http
            .get(format!("http://{}/sync/applications", self.zync))
            .header("authorization", format!("Token token=\"{ZYNC_TOKEN}\""))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        res["applications"].as_array().cloned().unwrap_or_default()
    }

    /// Whether every job is done.
    pub async fn all_done(&self) -> bool {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        pending == 0
    }
}
