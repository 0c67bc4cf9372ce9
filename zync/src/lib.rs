//! zync: durable intake of system's notifications, stored with their sync jobs in Postgres for zync-que, plus a
//! view of each application's sync state.

pub mod api;
pub mod auth;
pub mod error;
pub mod sync_status;

use axum::routing::{get, put};
use axum::Router;
use platform::db::{Database, DbConfig};
use platform::health::{self, Readiness};
use platform::{Context, EnvReader, Secret};
use std::net::SocketAddr;

/// The schema this service owns (zync-que applies it too).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything `zync` reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub db: DbConfig,
    /// `ZYNC_AUTHENTICATION_TOKEN`; unset means no check, as in zync.
    pub token: Option<Secret>,
}

impl Config {
    pub fn read(env: &mut EnvReader) -> Option<Self> {
        Some(Self {
            listen_addr: env.or(
                "LISTEN_ADDR",
                "host:port",
                SocketAddr::from(([0, 0, 0, 0], 5000)),
            ),
            db: DbConfig::read(env, "threescale_zync"),
            token: env.secret("ZYNC_AUTHENTICATION_TOKEN"),
        })
    }
}

/// Shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub token: Option<Secret>,
}

/// The service's HTTP API (without the operational routes, which [`start`] adds).
pub fn router(state: AppState) -> Router {
    let token = state.token.clone();
    Router::new()
        .route("/tenant", put(api::put_tenant).patch(api::put_tenant))
        .route(
            "/notification",
            put(api::put_notification).patch(api::put_notification),
        )
        .route("/sync/applications", get(sync_status::list_applications))
        .layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
        .with_state(state)
}

/// Runs the service until shutdown is requested.
pub async fn start(config: Config, ctx: Context) -> anyhow::Result<()> {
    let db = Database::start(&config.db, &MIGRATOR, ctx.shutdown.clone())?;
    let probe = db.clone();
    let readiness = Readiness::new().check("database", move || {
        let db = probe.clone();
        async move { db.check().await }
    });
    let app = router(AppState {
        db: db.clone(),
        token: config.token.clone(),
    })
    .merge(health::routes(readiness, ctx.metrics.clone()));
    ctx.serve(config.listen_addr, app).await?;
    db.close().await;
    Ok(())
}
