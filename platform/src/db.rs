//! Postgres for a service: a pool that connects lazily, a database created if missing, and migrations applied in
//! the background with backoff, so a database that is down at start shows in `/status/ready` instead of a crash loop.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::DatabaseUrl;
use crate::{EnvReader, Shutdown};

/// The database settings every storing service reads.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub url: DatabaseUrl,
    pub max_connections: u32,
}

impl DbConfig {
    /// Reads `DATABASE_URL` (default: the local server, database `default_db`) and `DATABASE_POOL_SIZE`.
    pub fn read(env: &mut EnvReader, default_db: &str) -> Self {
        let default_url = format!("postgres://postgres@127.0.0.1:5432/{default_db}");
        let url = env
            .optional::<DatabaseUrl>("DATABASE_URL", "a postgres:// URL")
            .unwrap_or_else(|| default_url.parse().expect("the default URL is valid"));
        let max_connections = env.or(
            "DATABASE_POOL_SIZE",
            "a number of connections from 1",
            10u32,
        );
        if max_connections == 0 {
            env.error("DATABASE_POOL_SIZE: expected at least 1");
        }
        Self {
            url,
            max_connections: max_connections.max(1),
        }
    }
}

/// A service's database: the pool plus whether its schema is in place.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    migrated: Arc<AtomicBool>,
}

impl Database {
    /// Creates the pool without connecting and starts a task that creates the database if it is missing and runs
    /// the migrations, retrying with backoff until it succeeds or shutdown is requested.
    pub fn start(
        config: &DbConfig,
        migrator: &'static Migrator,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let options = connect_options(&config.url)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options.clone());
        let db = Self {
            pool,
            migrated: Arc::new(AtomicBool::new(false)),
        };
        let task = db.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match task.prepare(&options, migrator).await {
                    Ok(()) => {
                        task.migrated.store(true, Ordering::Release);
                        tracing::info!("database schema ready");
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "database not ready");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        Ok(db)
    }

    /// Connects and migrates now, failing on the first error. For tests and tools.
    pub async fn connect(config: &DbConfig, migrator: &'static Migrator) -> anyhow::Result<Self> {
        let options = connect_options(&config.url)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .connect_lazy_with(options.clone());
        let db = Self {
            pool,
            migrated: Arc::new(AtomicBool::new(false)),
        };
        db.prepare(&options, migrator).await?;
        db.migrated.store(true, Ordering::Release);
        Ok(db)
    }

    async fn prepare(
        &self,
        options: &PgConnectOptions,
        migrator: &'static Migrator,
    ) -> anyhow::Result<()> {
        create_database_if_missing(options).await?;
        // sqlx takes a Postgres advisory lock around migrations, so replicas starting together apply them once.
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    /// For `/status/ready`: the schema is in place and the server answers.
    pub async fn check(&self) -> Result<(), String> {
        if !self.is_migrated() {
            return Err("database schema not ready yet".to_owned());
        }
        self.pool
            .execute("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| format!("database unreachable: {e}"))
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether a database error means "not available right now" (server down, pool exhausted, schema not created yet)
/// rather than a bug: such errors are answered 503 with `Retry-After`, so clients and load balancers retry.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08xxx connection exceptions, 57P0x shutdown/cannot connect now, 53xxx insufficient resources,
            // 42P01 undefined table (migrations still running at start).
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "42P01"
        }),
        _ => false,
    }
}

/// The `Retry-After` seconds sent with a 503 caused by [`is_unavailable`].
pub const RETRY_AFTER_SECONDS: &str = "1";

fn connect_options(url: &DatabaseUrl) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url.as_str()).map_err(|e| anyhow::anyhow!("DATABASE_URL {url}: {e}"))
}

/// Creates the target database through the `postgres` maintenance database when it does not exist yet.
async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    match options.connect().await {
        Ok(conn) => {
            drop(conn);
            return Ok(());
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e.into()),
    }
    let mut admin = options.clone().database("postgres").connect().await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match admin
        .execute(format!("CREATE DATABASE {quoted}").as_str())
        .await
    {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another replica created it first.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::is_unavailable;
    use sqlx::{Connection, Executor};

    #[tokio::test]
    async fn missing_schema_and_exhausted_pools_are_unavailable_but_bugs_are_not() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .expect("the test server (DATABASE_URL or 127.0.0.1:5432) answers");
        let missing = conn
            .execute("SELECT * FROM not_migrated_yet")
            .await
            .unwrap_err();
        assert!(is_unavailable(&missing), "{missing}");
        let syntax = conn.execute("SELEC 1").await.unwrap_err();
        assert!(!is_unavailable(&syntax), "{syntax}");
        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let duplicate = conn.execute("INSERT INTO t VALUES (1)").await.unwrap_err();
        assert!(!is_unavailable(&duplicate), "{duplicate}");
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        conn.close().await.unwrap();
    }
}
