//! zync-que: mirrors 3scale's zync-que workers, which turn zync's stored jobs into OAuth clients in the identity
//! provider. Its HTTP port serves only health and metrics.

pub mod idp;
pub mod system;
pub mod worker;

use platform::db::{Database, DbConfig};
use platform::health::{self, Readiness};
use platform::{Context, EnvReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use worker::{run, Worker, WorkerConfig};

/// The job queue's schema is zync's; both services apply it so either may start first against an empty database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../zync/migrations");

/// Everything `zync-que` reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub db: DbConfig,
    pub worker: WorkerConfig,
    /// `SSL_CERT_FILE`: extra CA certificates (PEM bundle) trusted for IdPs and system.
    pub ca_file: Option<PathBuf>,
    /// `ZYNC_QUE_HTTP_TIMEOUT_SECONDS`: one outgoing request's limit.
    pub http_timeout: Duration,
}

impl Config {
    pub fn read(env: &mut EnvReader) -> Option<Self> {
        let defaults = WorkerConfig::default();
        let workers: usize = env.or(
            "ZYNC_QUE_WORKERS",
            "a number of workers from 1",
            defaults.workers,
        );
        if workers == 0 {
            env.error("ZYNC_QUE_WORKERS: expected at least 1");
        }
        let worker = WorkerConfig {
            workers: workers.max(1),
            lease: env.seconds("ZYNC_QUE_LEASE_SECONDS", defaults.lease),
            poll: env.seconds("ZYNC_QUE_POLL_SECONDS", defaults.poll),
            retry_base: env.seconds("ZYNC_QUE_RETRY_BASE_SECONDS", defaults.retry_base),
            retry_max: env.seconds("ZYNC_QUE_RETRY_MAX_SECONDS", defaults.retry_max),
            zync_token: env.secret("ZYNC_AUTHENTICATION_TOKEN"),
        };
        let ca_file = env.raw("SSL_CERT_FILE").map(PathBuf::from);
        if let Some(path) = &ca_file {
            if let Err(err) = load_ca_file(path) {
                env.error(format!("SSL_CERT_FILE: {err}"));
            }
        }
        let pool_size_set = env.raw("DATABASE_POOL_SIZE").is_some();
        let mut db = DbConfig::read(env, "threescale_zync");
        if !pool_size_set {
            db.max_connections = default_pool_size(worker.workers);
        }
        Some(Self {
            listen_addr: env.or(
                "LISTEN_ADDR",
                "host:port",
                SocketAddr::from(([0, 0, 0, 0], 9394)),
            ),
            db,
            worker,
            ca_file,
            http_timeout: env.seconds("ZYNC_QUE_HTTP_TIMEOUT_SECONDS", Duration::from_secs(10)),
        })
    }
}

/// The pool size when `DATABASE_POOL_SIZE` is unset: a connection per worker, plus the one the LISTEN connection
/// keeps and one for the gauges and readiness probe, so no worker waits for a connection to claim or record a job.
pub fn default_pool_size(workers: usize) -> u32 {
    (workers as u32).saturating_add(2).max(10)
}

/// Reads a PEM bundle into certificates; an unreadable file or one without any certificate is an error.
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The outgoing HTTP client: rustls with certificate verification, the system and bundled roots, plus the
/// certificates of `SSL_CERT_FILE`.
pub fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(3).min(timeout))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        for cert in load_ca_file(path).map_err(anyhow::Error::msg)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// Runs the worker and its health endpoint until shutdown is requested.
pub async fn start(config: Config, ctx: Context) -> anyhow::Result<()> {
    let db = Database::start(&config.db, &MIGRATOR, ctx.shutdown.clone())?;
    let http = http_client(config.ca_file.as_deref(), config.http_timeout)?;
    let probe = db.clone();
    let readiness = Readiness::new().check("database", move || {
        let db = probe.clone();
        async move { db.check().await }
    });
    let workers = {
        let db = db.clone();
        let shutdown = ctx.shutdown.clone();
        let config = config.worker.clone();
        tokio::spawn(async move {
            // Jobs need the schema; wait for the background migration instead of failing claims meanwhile.
            while !db.is_migrated() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.wait() => return,
                }
            }
            run(db.pool().clone(), config, http, shutdown).await
        })
    };
    ctx.serve(
        config.listen_addr,
        health::routes(readiness, ctx.metrics.clone()),
    )
    .await?;
    // Workers hand their jobs back on shutdown; bounded so a stuck call cannot hold the process.
    let _ = tokio::time::timeout(Duration::from_millis(500), workers).await;
    db.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ssl_cert_file_is_a_configuration_error() {
        let mut env = EnvReader::from_pairs([("SSL_CERT_FILE", "/nonexistent/ca.pem")]);
        let _ = Config::read(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(err.contains("SSL_CERT_FILE"), "{err}");

        let dir = std::env::temp_dir().join(format!("zync-que-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(load_ca_file(&empty).is_err());
        assert!(http_client(Some(&empty), Duration::from_secs(1)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn worker_settings_come_from_the_environment() {
        let mut env = EnvReader::from_pairs([
            ("ZYNC_QUE_WORKERS", "3"),
            ("ZYNC_QUE_RETRY_MAX_SECONDS", "60"),
            ("ZYNC_AUTHENTICATION_TOKEN", "t"),
        ]);
        let config = Config::read(&mut env).unwrap();
        env.finish().unwrap();
        assert_eq!(config.worker.workers, 3);
        assert_eq!(config.worker.retry_max, Duration::from_secs(60));
        assert_eq!(config.worker.zync_token.unwrap().expose(), "t");
        assert_eq!(
            config.db.max_connections, 10,
            "at least the platform default"
        );

        let mut env = EnvReader::from_pairs(std::iter::empty());
        let config = Config::read(&mut env).unwrap();
        env.finish().unwrap();
        assert_eq!(config.worker.workers, 16);
        assert_eq!(config.db.max_connections, 18, "a connection per worker");
        let mut env =
            EnvReader::from_pairs([("ZYNC_QUE_WORKERS", "32"), ("DATABASE_POOL_SIZE", "5")]);
        let config = Config::read(&mut env).unwrap();
        env.finish().unwrap();
        assert_eq!(config.db.max_connections, 5, "an explicit size wins");
        let mut env = EnvReader::from_pairs([("ZYNC_QUE_WORKERS", "0")]);
        let _ = Config::read(&mut env);
        assert!(env.finish().is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        use crate::worker::backoff;
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(900);
        for attempts in 0..40 {
            let full = base
                .saturating_mul(2u32.saturating_pow(attempts.min(30) as u32))
                .min(max);
            let d = backoff(attempts, base, max);
            assert!(d >= full / 2 && d <= full, "attempt {attempts}: {d:?}");
        }
        assert!(backoff(100, base, max) <= max);
    }
}
