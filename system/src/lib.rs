//! system: mirrors porta, 3scale's admin system: the Account Management API under `/admin/api/`.

pub mod active_docs;
pub mod api;
pub mod apps;
pub mod backends;
pub mod catalog;
pub mod configs;
pub mod db;
pub mod error;
pub mod features;
pub mod outbox;
pub mod params;
pub mod plans;
pub mod pricing;
pub mod resync;
pub mod services;
pub mod swagger;
pub mod tokens;
pub mod users;

use axum::routing::{get, post, put};
use axum::Router;
use platform::db::{Database, DbConfig};
use platform::health::{self, Readiness};
use platform::{Context, EnvReader, Secret};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The schema this service owns.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The only provider (tenant) today; every row keeps its provider id so more can come later.
pub const PROVIDER_ID: i64 = 1;

/// Everything `system` reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub db: DbConfig,
    pub admin_access_token: Option<Secret>,
    pub targets: outbox::Targets,
    pub backend_public_url: String,
    pub superdomain: String,
    pub tenant_name: String,
}

impl Config {
    pub fn read(env: &mut EnvReader) -> Option<Self> {
        let listen_addr = env.or(
            "LISTEN_ADDR",
            "host:port",
            SocketAddr::from(([0, 0, 0, 0], 3000)),
        );
        let backend_url: Option<String> = env.optional("BACKEND_URL", "a URL");
        let targets = outbox::Targets {
            backend_url: backend_url.clone(),
            backend_user: env.optional("BACKEND_INTERNAL_API_USER", "a user name"),
            backend_password: env.secret("BACKEND_INTERNAL_API_PASSWORD"),
            zync_url: env.optional("ZYNC_ENDPOINT", "a URL"),
            zync_token: env.secret("ZYNC_AUTHENTICATION_TOKEN"),
            public_url: env.or(
                "SYSTEM_PUBLIC_URL",
                "a URL",
                format!("http://{listen_addr}/"),
            ),
        };
        Some(Self {
            listen_addr,
            db: DbConfig::read(env, "threescale_system"),
            admin_access_token: env.secret("ADMIN_ACCESS_TOKEN"),
            backend_public_url: env.or(
                "BACKEND_PUBLIC_URL",
                "a URL",
                backend_url.unwrap_or_else(|| "http://127.0.0.1:3001".into()),
            ),
            superdomain: env.or(
                "THREESCALE_SUPERDOMAIN",
                "a domain",
                "example.com".to_owned(),
            ),
            tenant_name: env.or("TENANT_NAME", "a name", "3scale".to_owned()),
            targets,
        })
    }
}

/// Shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub provider_id: i64,
    pub waker: outbox::Waker,
    pub config_cache: configs::ConfigCache,
    pub backend_public_url: String,
    pub superdomain: String,
    pub tenant_name: String,
}

impl AppState {
    pub fn new(db: Database, config: &Config) -> Self {
        Self {
            db,
            provider_id: PROVIDER_ID,
            waker: outbox::Waker::default(),
            config_cache: configs::ConfigCache::default(),
            backend_public_url: config.backend_public_url.clone(),
            superdomain: config.superdomain.clone(),
            tenant_name: config.tenant_name.clone(),
        }
    }
}

/// The service's HTTP API (without the operational routes, which [`start`] adds).
pub fn router(state: AppState) -> Router {
    let s = "/admin/api/services/{sid}";
    let app = "/admin/api/accounts/{aid}/applications/{app}";
    let api = Router::new()
        .route(
            "/admin/api/personal/access_tokens",
            post(tokens::create_personal),
        )
        .route(
            "/admin/api/services",
            get(services::list).post(services::create),
        )
        .route(
            s,
            get(services::show)
                .put(services::update)
                .patch(services::update)
                .delete(services::destroy),
        )
        .route(
            &format!("{s}/proxy"),
            get(services::proxy_show)
                .put(services::proxy_update)
                .patch(services::proxy_update),
        )
        .route(&format!("{s}/proxy/deploy"), post(configs::deploy))
        .route(
            &format!("{s}/proxy/policies"),
            get(services::policies_show).put(services::policies_update),
        )
        .route(
            &format!("{s}/proxy/oidc_configuration"),
            get(services::oidc_show)
                .put(services::oidc_update)
                .patch(services::oidc_update),
        )
        .route(&format!("{s}/proxy/configs/{{env}}"), get(configs::list))
        .route(
            &format!("{s}/proxy/configs/{{env}}/{{version}}"),
            get(configs::show),
        )
        .route(
            &format!("{s}/proxy/configs/{{env}}/{{version}}/promote"),
            post(configs::promote),
        )
        .route(
            "/admin/api/account/proxy_configs/{env}",
            get(configs::account_list),
        )
        .route(
            &format!("{s}/metrics"),
            get(catalog::metrics_list).post(catalog::metric_create),
        )
        .route(
            &format!("{s}/metrics/{{mid}}"),
            get(catalog::metric_show)
                .put(catalog::metric_update)
                .patch(catalog::metric_update)
                .delete(catalog::metric_delete),
        )
        .route(
            &format!("{s}/metrics/{{pid}}/methods"),
            get(catalog::methods_list).post(catalog::method_create),
        )
        .route(
            &format!("{s}/metrics/{{pid}}/methods/{{mid}}"),
            get(catalog::method_show)
                .put(catalog::method_update)
                .patch(catalog::method_update)
                .delete(catalog::method_delete),
        )
        .route(
            &format!("{s}/proxy/mapping_rules"),
            get(catalog::rules_list).post(catalog::rule_create),
        )
        .route(
            &format!("{s}/proxy/mapping_rules/{{rid}}"),
            get(catalog::rule_show)
                .put(catalog::rule_update)
                .patch(catalog::rule_update)
                .delete(catalog::rule_delete),
        )
        .route("/admin/api/backend_apis", get(backends::backend_apis))
        .route(
            &format!("{s}/backend_usages"),
            get(backends::backend_usages),
        )
        .route(
            &format!("{s}/features"),
            get(features::list).post(features::create),
        )
        .route(
            &format!("{s}/features/{{fid}}"),
            get(features::show)
                .put(features::update)
                .patch(features::update)
                .delete(features::destroy),
        )
        .route(
            "/admin/api/application_plans/{pid}/features",
            get(features::plan_list).post(features::plan_enable),
        )
        .route(
            "/admin/api/application_plans/{pid}/features/{fid}",
            axum::routing::delete(features::plan_disable),
        )
        .route("/admin/api/application_plans", get(plans::list_all))
        .route(
            &format!("{s}/application_plans"),
            get(plans::list).post(plans::create),
        )
        .route(
            &format!("{s}/application_plans/{{pid}}"),
            get(plans::show)
                .put(plans::update)
                .patch(plans::update)
                .delete(plans::destroy),
        )
        .route(
            &format!("{s}/application_plans/{{pid}}/default"),
            put(plans::make_default),
        )
        .route(
            "/admin/api/application_plans/{pid}/limits",
            get(plans::limits_of_plan),
        )
        .route(
            "/admin/api/application_plans/{pid}/metrics/{mid}/limits",
            get(plans::limits_of_metric).post(plans::limit_create),
        )
        .route(
            "/admin/api/application_plans/{pid}/metrics/{mid}/limits/{lid}",
            get(plans::limit_show)
                .put(plans::limit_update)
                .patch(plans::limit_update)
                .delete(plans::limit_delete),
        )
        .route(
            "/admin/api/active_docs",
            get(active_docs::list).post(active_docs::create),
        )
        .route(
            "/admin/api/active_docs/{doc}",
            get(active_docs::show)
                .put(active_docs::update)
                .patch(active_docs::update)
                .delete(active_docs::destroy),
        )
        .route(
            "/admin/api/application_plans/{pid}/pricing_rules",
            get(pricing::list_of_plan),
        )
        .route(
            "/admin/api/application_plans/{pid}/metrics/{mid}/pricing_rules",
            get(pricing::list_of_metric).post(pricing::create),
        )
        .route(
            "/admin/api/application_plans/{pid}/metrics/{mid}/pricing_rules/{rid}",
            axum::routing::delete(pricing::destroy),
        )
        .route("/admin/api/signup", post(apps::signup))
        .route("/admin/api/accounts", get(apps::accounts_list))
        .route("/admin/api/accounts/find", get(apps::account_find))
        .route(
            "/admin/api/accounts/{aid}",
            get(apps::account_show)
                .put(apps::account_update)
                .patch(apps::account_update)
                .delete(apps::account_delete),
        )
        .route(
            "/admin/api/accounts/{aid}/{action}",
            put(apps::account_state),
        )
        .route(
            "/admin/api/accounts/{aid}/users",
            get(users::list).post(users::create),
        )
        .route(
            "/admin/api/accounts/{aid}/users/{uid}",
            get(users::show)
                .put(users::update)
                .patch(users::update)
                .delete(users::destroy),
        )
        .route(
            "/admin/api/accounts/{aid}/users/{uid}/{action}",
            put(users::action),
        )
        .route("/admin/api/applications", get(apps::apps_all))
        .route("/admin/api/applications/find", get(apps::app_find))
        .route(
            "/admin/api/accounts/{aid}/applications/find",
            get(apps::app_find_of_account),
        )
        .route(
            "/admin/api/accounts/{aid}/applications",
            get(apps::apps_of_account).post(apps::app_create),
        )
        .route(
            app,
            get(apps::app_show)
                .put(apps::app_update)
                .patch(apps::app_update)
                .delete(apps::app_delete),
        )
        .route(&format!("{app}/{{action}}"), put(apps::app_action))
        .route(
            &format!("{app}/keys"),
            get(apps::keys_list).post(apps::key_create),
        )
        .route(
            &format!("{app}/keys/{{key}}"),
            axum::routing::delete(apps::key_delete),
        )
        .route(
            &format!("{app}/referrer_filters"),
            get(apps::filters_list).post(apps::filter_create),
        )
        .route(
            &format!("{app}/referrer_filters/{{fid}}"),
            axum::routing::delete(apps::filter_delete),
        )
        .fallback(|| async { error::ApiError::NotFound })
        // Rails answers an unrouted method with 404 too, not 405.
        .method_not_allowed_fallback(|| async { error::ApiError::NotFound })
        .with_state(state);
    // The suffix is stripped before routing, so the layer must wrap the router from outside.
    Router::new().fallback_service(
        tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn(api::json_format))
            .service(api),
    )
}

/// Waits for the schema, then stores the bootstrap token and starts the outbox delivery; `bootstrapped` turns true
/// once the token is stored, so readiness never reports a service that would still refuse its admin token.
pub async fn after_migrations(
    db: &Database,
    config: &Config,
    state: &AppState,
    shutdown: platform::Shutdown,
    bootstrapped: Arc<AtomicBool>,
) {
    while !db.is_migrated() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.wait() => return,
        }
    }
    if let Some(token) = &config.admin_access_token {
        let mut delay = Duration::from_millis(100);
        while let Err(err) = tokens::bootstrap(db.pool(), state.provider_id, token.expose()).await {
            tracing::warn!(error = %err, "storing ADMIN_ACCESS_TOKEN failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    bootstrapped.store(true, Ordering::Release);
    outbox::spawn(
        db.pool().clone(),
        config.targets.clone(),
        state.waker.clone(),
        shutdown,
        state.provider_id,
    );
}

/// Runs the service until shutdown is requested.
pub async fn start(config: Config, ctx: Context) -> anyhow::Result<()> {
    let db = Database::start(&config.db, &MIGRATOR, ctx.shutdown.clone())?;
    let probe = db.clone();
    let bootstrapped = Arc::new(AtomicBool::new(false));
    let flag = bootstrapped.clone();
    let readiness = Readiness::new()
        .check("database", move || {
            let db = probe.clone();
            async move { db.check().await }
        })
        .check("bootstrap", move || {
            let done = flag.load(Ordering::Acquire);
            async move {
                if done {
                    Ok(())
                } else {
                    Err("storing ADMIN_ACCESS_TOKEN".to_owned())
                }
            }
        });
    let state = AppState::new(db.clone(), &config);
    {
        let (db, config, state, shutdown) = (
            db.clone(),
            config.clone(),
            state.clone(),
            ctx.shutdown.clone(),
        );
        tokio::spawn(async move {
            after_migrations(&db, &config, &state, shutdown, bootstrapped).await
        });
    }
    let app = router(state).merge(health::routes(readiness, ctx.metrics.clone()));
    ctx.serve(config.listen_addr, app).await?;
    db.close().await;
    Ok(())
}
