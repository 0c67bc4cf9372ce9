//! backend: mirrors apisonator, 3scale's backend: the Service Management API (`/transactions/...`) and its
//! `/internal/` configuration API, with configuration cached in memory and usage counted in memory and flushed
//! to Postgres every [`FLUSH_INTERVAL`].

pub mod config;
pub mod counters;
pub mod internal;
pub mod params;
pub mod period;
pub mod transactions;
pub mod xml;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::db::{Database, DbConfig};
use platform::health::{self, Readiness};
use platform::{Context, EnvReader, Secret};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// The apisonator version we answer as.
pub const VERSION: &str = "3.4.3";
/// Pending usage is written at least this often (the bound; shorter intervals cost Postgres more rows
/// per second without making limits more accurate within one process).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Larger report bodies get 413 without being read.
pub const REPORT_BODY_LIMIT: usize = 2 * params::BYTESIZE_LIMIT;

/// The schema this service owns.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything `backend` reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub db: DbConfig,
    /// HTTP Basic credentials of `/internal/`; open when unset.
    pub internal_auth: Option<(String, Secret)>,
}

impl Config {
    pub fn read(env: &mut EnvReader) -> Option<Self> {
        let user: Option<String> = env.optional("BACKEND_INTERNAL_API_USER", "a user name");
        let password = env.secret("BACKEND_INTERNAL_API_PASSWORD");
        let internal_auth = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                env.error("BACKEND_INTERNAL_API_USER and BACKEND_INTERNAL_API_PASSWORD must be set together");
                None
            }
        };
        Some(Self {
            listen_addr: env.or(
                "LISTEN_ADDR",
                "host:port",
                SocketAddr::from(([0, 0, 0, 0], 3001)),
            ),
            db: DbConfig::read(env, "threescale_backend"),
            internal_auth,
        })
    }
}

/// Shared by every request handler; one `Arc`, so the per-request clone of the state is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub db: Database,
    pub config: Arc<config::ConfigCache>,
    pub counters: Arc<counters::Counters>,
    pub internal_auth: Option<(String, Secret)>,
    /// Report jobs in progress, awaited before the final flush.
    pub jobs: TaskTracker,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(db: Database, internal_auth: Option<(String, Secret)>) -> Self {
        Self(Arc::new(Shared {
            db,
            config: Arc::new(config::ConfigCache::new()),
            counters: Arc::new(counters::Counters::new()),
            internal_auth,
            jobs: TaskTracker::new(),
        }))
    }
}

/// The service's HTTP API (without the operational routes, which [`start`] adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/transactions/authorize.xml", get(transactions::authorize))
        .route("/transactions/authrep.xml", get(transactions::authrep))
        .route(
            "/transactions/oauth_authorize.xml",
            get(transactions::oauth_authorize),
        )
        .route(
            "/transactions/oauth_authrep.xml",
            get(transactions::oauth_authrep),
        )
        .route(
            "/transactions.xml",
            // Bodies beyond Rack's 4 MiB reach the parser, which answers as apisonator does.
            post(transactions::report).layer(DefaultBodyLimit::max(REPORT_BODY_LIMIT)),
        )
        .route(
            "/check.txt",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "ok") }),
        )
        .route(
            "/status",
            get(|| async {
                Json(serde_json::json!({"status": "ok", "version": {"backend": VERSION}}))
            }),
        )
        .route(
            "/available",
            axum::routing::head(|| async { StatusCode::OK }),
        )
        .merge(internal::router(state.clone()))
        .fallback(fallback)
        .with_state(state)
}

async fn fallback(uri: axum::http::Uri) -> axum::response::Response {
    if uri.path().starts_with("/internal") {
        (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"status": "not_found", "error": "Not found"})),
        )
            .into_response()
    } else {
        transactions::not_found().await
    }
}

/// Background work: configuration invalidation across replicas and the counter flusher.
pub fn spawn_background(state: &AppState, shutdown: platform::Shutdown) {
    tokio::spawn(config::listen(
        state.db.pool().clone(),
        state.config.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(counters::flush_loop(
        state.db.pool().clone(),
        state.counters.clone(),
        FLUSH_INTERVAL,
        shutdown,
    ));
}

/// Waits for report jobs, then writes every pending counter (used at shutdown).
pub async fn drain(state: &AppState) {
    state.jobs.close();
    let _ = tokio::time::timeout(Duration::from_millis(300), state.jobs.wait()).await;
    if let Err(e) = state.counters.flush(state.db.pool()).await {
        tracing::error!(error = %e, "final flush of usage counters failed");
    }
}

/// Runs the service until shutdown is requested.
pub async fn start(config: Config, ctx: Context) -> anyhow::Result<()> {
    let db = Database::start(&config.db, &MIGRATOR, ctx.shutdown.clone())?;
    let probe = db.clone();
    let readiness = Readiness::new().check("database", move || {
        let db = probe.clone();
        async move { db.check().await }
    });
    let state = AppState::new(db.clone(), config.internal_auth.clone());
    spawn_background(&state, ctx.shutdown.clone());
    let app = router(state.clone()).merge(health::routes(readiness, ctx.metrics.clone()));
    let served = ctx.serve(config.listen_addr, app).await;
    drain(&state).await;
    db.close().await;
    served
}
