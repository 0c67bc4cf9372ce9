//! The job worker: claims due jobs from Postgres (`FOR UPDATE SKIP LOCKED` plus a lease), woken by
//! `LISTEN/NOTIFY`, syncs the entity against system's current state, and records the outcome with backoff.
//!
//! One row per entity in `jobs` means one job per entity at a time and coalesces bursts; the lease
//! (`locked_until`) is the visibility timeout that hands a crashed worker's job to another. HTTP calls run outside
//! any transaction, so no row lock is held while an IdP is slow.

use chrono::{DateTime, Utc};
use platform::{Secret, Shutdown};
use rand::Rng;
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use crate::idp::{ClientSpec, IdpClient, Issuer, IssuerKind};
use crate::system::{Fetched, SystemClient, Tenant};

/// The worker's tunables.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Jobs worked at the same time (`ZYNC_QUE_WORKERS`).
    pub workers: usize,
    /// How long a claimed job stays invisible to other workers (`ZYNC_QUE_LEASE_SECONDS`).
    pub lease: Duration,
    /// The slow fallback poll, for a missed NOTIFY (`ZYNC_QUE_POLL_SECONDS`).
    pub poll: Duration,
    /// The first retry delay, doubled per failure (`ZYNC_QUE_RETRY_BASE_SECONDS`).
    pub retry_base: Duration,
    /// The longest retry delay (`ZYNC_QUE_RETRY_MAX_SECONDS`).
    pub retry_max: Duration,
    /// Sent to system as `X-Zync-Token` (`ZYNC_AUTHENTICATION_TOKEN`).
    pub zync_token: Option<Secret>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            // Jobs spend most of their time waiting on system and the IdP, so more workers than cores pay:
            // with 6, a steady ~270 notifications/s queued up (see docs/zync.md, Benchmark).
            workers: 16,
            lease: Duration::from_secs(120),
            poll: Duration::from_secs(5),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(15 * 60),
            zync_token: None,
        }
    }
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub entity_id: i64,
    pub tenant_id: i64,
    pub version: i64,
    pub attempts: i32,
    pub pending_since: Option<DateTime<Utc>>,
}

/// The retry delay after `attempts` failures: exponential, capped, with jitter over its upper half so that jobs
/// failing together (an IdP outage) do not retry together.
pub fn backoff(attempts: i32, base: Duration, max: Duration) -> Duration {
    let exp = attempts.clamp(0, 30) as u32;
    let full = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    let half = full / 2;
    let jitter = rand::thread_rng().gen_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter)
}

pub struct Worker {
    pool: PgPool,
    config: WorkerConfig,
    idp: IdpClient,
    system: SystemClient,
}

impl Worker {
    pub fn new(pool: PgPool, config: WorkerConfig, http: reqwest::Client) -> Self {
        Self {
            idp: IdpClient::new(http.clone()),
            system: SystemClient::new(http, config.zync_token.clone()),
            pool,
            config,
        }
    }

    /// Claims the oldest due job, if any.
    pub async fn claim(&self) -> Result<Option<Job>, sqlx::Error> {
        let row = sqlx::query(
            "UPDATE jobs SET locked_until = now() + make_interval(secs => $1), last_attempt_at = now()
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE status = 'pending' AND run_at <= now() AND (locked_until IS NULL OR locked_until < now())
                 ORDER BY run_at LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, kind, entity_id, tenant_id, version, attempts, pending_since",
        )
        .bind(self.config.lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Job {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                entity_id: r.try_get("entity_id")?,
                tenant_id: r.try_get("tenant_id")?,
                version: r.try_get("version")?,
                attempts: r.try_get("attempts")?,
                pending_since: r.try_get("pending_since")?,
            })
        })
        .transpose()
    }

    /// Claims and works one job; `Ok(false)` when none was due.
    pub async fn run_once(&self) -> Result<bool, sqlx::Error> {
        let Some(job) = self.claim().await? else {
            return Ok(false);
        };
        let started = std::time::Instant::now();
        let outcome = self.perform(&job).await;
        metrics::histogram!("zync_job_duration_seconds", "kind" => job.kind.clone())
            .record(started.elapsed().as_secs_f64());
        self.finish(&job, outcome).await?;
        Ok(true)
    }

    /// Records the outcome: done (unless a newer notification arrived meanwhile, which keeps it pending), or
    /// failed with the error and the next attempt after backoff.
    pub async fn finish(&self, job: &Job, outcome: Result<(), String>) -> Result<(), sqlx::Error> {
        match outcome {
            Ok(()) => {
                let row = sqlx::query(
                    "UPDATE jobs SET
                        status = CASE WHEN version = $2 THEN 'done' ELSE 'pending' END,
                        pending_since = CASE WHEN version = $2 THEN NULL ELSE pending_since END,
                        locked_until = NULL, attempts = 0, last_success_at = now(), last_error = NULL
                     WHERE id = $1
                     RETURNING status",
                )
                .bind(job.id)
                .bind(job.version)
                .fetch_optional(&self.pool)
                .await?;
                metrics::counter!("zync_jobs_performed_total", "kind" => job.kind.clone(), "outcome" => "success")
                    .increment(1);
                if let (Some(since), Some(row)) = (job.pending_since, row) {
                    if row.try_get::<String, _>("status")? == "done" {
                        let latency = (Utc::now() - since).to_std().unwrap_or_default();
                        metrics::histogram!("zync_notification_to_idp_seconds", "kind" => job.kind.clone())
                            .record(latency.as_secs_f64());
                    }
                }
                tracing::info!(kind = %job.kind, entity_id = job.entity_id, "synced");
            }
            Err(error) => {
                let delay = backoff(job.attempts, self.config.retry_base, self.config.retry_max);
                tracing::warn!(kind = %job.kind, entity_id = job.entity_id, attempts = job.attempts + 1,
                    retry_in_ms = delay.as_millis() as u64, %error, "sync failed");
                metrics::counter!("zync_jobs_performed_total", "kind" => job.kind.clone(), "outcome" => "failure")
                    .increment(1);
                let error: String = error.chars().take(1000).collect();
                sqlx::query(
                    "UPDATE jobs SET attempts = attempts + 1, locked_until = NULL, last_error = $2,
                        run_at = now() + make_interval(secs => $3)
                     WHERE id = $1",
                )
                .bind(job.id)
                .bind(error)
                .bind(delay.as_secs_f64())
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Gives a job back at once (shutdown in the middle of it).
    pub async fn release(&self, job_id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE jobs SET locked_until = NULL WHERE id = $1")
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn perform(&self, job: &Job) -> Result<(), String> {
        let tenant = self.tenant(job.tenant_id).await?;
        match job.kind.as_str() {
            "application" => self.sync_application(&tenant, job).await,
            "proxy" => self.sync_proxy(&tenant, job).await,
            other => Err(format!("unknown job kind {other:?}")),
        }
    }

    async fn tenant(&self, id: i64) -> Result<Tenant, String> {
        let row = sqlx::query("SELECT endpoint, access_token FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| format!("tenant {id} is unknown"))?;
        Ok(Tenant {
            endpoint: row.try_get("endpoint").map_err(db_error)?,
            access_token: Secret::new(row.try_get::<String, _>("access_token").map_err(db_error)?),
        })
    }

    /// The issuer system currently names for a service, and whether the proxy says outright that the service
    /// authenticates with OIDC (`authentication_method`; `None` when it does not say).
    async fn current_issuer(
        &self,
        tenant: &Tenant,
        service_id: i64,
    ) -> Result<(Option<(IssuerKind, String)>, Option<bool>), String> {
        let proxy = match self.system.proxy(tenant, service_id).await? {
            Fetched::Gone => return Ok((None, Some(false))),
            Fetched::Found(proxy) => proxy,
        };
        let oidc = proxy
            .get("authentication_method")
            .and_then(Value::as_str)
            .map(|m| m == "oidc");
        let endpoint = proxy
            .get("oidc_issuer_endpoint")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let Some(endpoint) = endpoint else {
            return Ok((None, oidc));
        };
        if oidc == Some(false) {
            return Ok((None, oidc));
        }
        let kind = IssuerKind::parse(proxy.get("oidc_issuer_type").and_then(Value::as_str))?;
        Ok((Some((kind, endpoint.to_owned())), oidc))
    }

    /// Makes the IdP match system's current state for one application.
    async fn sync_application(&self, tenant: &Tenant, job: &Job) -> Result<(), String> {
        let app_id = job.entity_id;
        let recorded = sqlx::query(
            "SELECT client_id, issuer_type, endpoint, digest,
                    synced_at > now() - make_interval(secs => $2) AS fresh
             FROM clients WHERE application_id = $1",
        )
        .bind(app_id)
        .bind(UNCHANGED_SKIP.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .map(|r| -> Result<Recorded, sqlx::Error> {
            Ok((
                r.try_get("client_id")?,
                r.try_get("issuer_type")?,
                r.try_get("endpoint")?,
                r.try_get::<Option<String>, _>("digest")?,
                r.try_get("fresh")?,
            ))
        })
        .transpose()
        .map_err(db_error)?;

        // What the client should be now: None when the app is gone or its service is not OIDC.
        let target = match self.system.application(tenant, app_id).await? {
            Fetched::Gone => None,
            Fetched::Found(app) => {
                let service_id = match app.get("service_id").and_then(Value::as_i64) {
                    Some(id) => id,
                    None => sqlx::query_scalar::<_, i64>(
                        "SELECT service_id FROM applications WHERE id = $1",
                    )
                    .bind(app_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error)?,
                };
                let spec = ClientSpec::from_application(&app, &app_id.to_string());
                let (issuer, oidc) = self.current_issuer(tenant, service_id).await?;
                // When the proxy does not say, system's sign of an OIDC service is the app's oidc_configuration.
                let oidc = oidc
                    .unwrap_or_else(|| app.get("oidc_configuration").is_some_and(Value::is_object));
                issuer
                    .filter(|_| oidc)
                    .map(|(kind, endpoint)| (service_id, spec, kind, endpoint))
            }
        };

        // A client pushed earlier somewhere else (or under another id) goes first.
        if let Some((client_id, kind, endpoint, _, _)) = &recorded {
            let same_place = target.as_ref().is_some_and(|(_, spec, k, e)| {
                k.as_str() == kind && e == endpoint && &spec.client_id == client_id
            });
            if !same_place {
                let issuer = Issuer::parse(IssuerKind::parse(Some(kind))?, endpoint)?;
                self.idp.delete(&issuer, client_id).await?;
                self.forget_client(app_id).await?;
            }
        }

        let Some((service_id, spec, kind, endpoint)) = target else {
            return Ok(());
        };
        let issuer = Issuer::parse(kind, &endpoint)?;
        if spec.should_exist(kind) {
            let digest = spec.digest(kind);
            let unchanged = recorded.as_ref().is_some_and(|(c, k, e, d, fresh)| {
                *fresh
                    && c == &spec.client_id
                    && k == kind.as_str()
                    && e == &endpoint
                    && d.as_deref() == Some(&digest)
            });
            if unchanged {
                return Ok(());
            }
            self.idp.upsert(&issuer, &spec).await?;
            sqlx::query(
                "INSERT INTO clients (application_id, service_id, client_id, issuer_type, endpoint, digest)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (application_id) DO UPDATE SET service_id = EXCLUDED.service_id,
                     client_id = EXCLUDED.client_id, issuer_type = EXCLUDED.issuer_type,
                     endpoint = EXCLUDED.endpoint, digest = EXCLUDED.digest, synced_at = now()",
            )
            .bind(app_id)
            .bind(service_id)
            .bind(&spec.client_id)
            .bind(kind.as_str())
            .bind(&endpoint)
            .bind(&digest)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        } else {
            self.idp.delete(&issuer, &spec.client_id).await?;
            self.forget_client(app_id).await?;
        }
        Ok(())
    }

    async fn forget_client(&self, app_id: i64) -> Result<(), String> {
        sqlx::query("DELETE FROM clients WHERE application_id = $1")
            .bind(app_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Records the service's current issuer; when it changed, every application of the service is re-synced.
    async fn sync_proxy(&self, tenant: &Tenant, job: &Job) -> Result<(), String> {
        let service_id = job.entity_id;
        let (current, _) = self.current_issuer(tenant, service_id).await?;
        if let Some((kind, endpoint)) = &current {
            // Refuse an unusable issuer now rather than on every application.
            Issuer::parse(*kind, endpoint)?;
        }
        let (kind, endpoint) = match &current {
            Some((k, e)) => (Some(k.as_str()), Some(e.as_str())),
            None => (None, None),
        };
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let stored = sqlx::query(
            "SELECT issuer_type, endpoint FROM service_issuers WHERE service_id = $1 FOR UPDATE",
        )
        .bind(service_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let changed = match &stored {
            None => true,
            Some(row) => {
                let old_kind: Option<String> = row.try_get("issuer_type").map_err(db_error)?;
                let old_endpoint: Option<String> = row.try_get("endpoint").map_err(db_error)?;
                old_kind.as_deref() != kind || old_endpoint.as_deref() != endpoint
            }
        };
        if !changed {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO service_issuers (service_id, issuer_type, endpoint) VALUES ($1, $2, $3)
             ON CONFLICT (service_id) DO UPDATE SET issuer_type = EXCLUDED.issuer_type,
                 endpoint = EXCLUDED.endpoint, updated_at = now()",
        )
        .bind(service_id)
        .bind(kind)
        .bind(endpoint)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let apps: Vec<(i64, i64)> =
            sqlx::query_as("SELECT id, tenant_id FROM applications WHERE service_id = $1")
                .bind(service_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
        for (app_id, tenant_id) in &apps {
            zync::api::enqueue(&mut tx, "application", *app_id, *tenant_id)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        tracing::info!(
            service_id,
            applications = apps.len(),
            "issuer changed, re-syncing applications"
        );
        Ok(())
    }

    /// Refreshes the pending/failing gauges.
    pub async fn report_gauges(&self) -> Result<(), sqlx::Error> {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE attempts = 0) AS pending, count(*) FILTER (WHERE attempts > 0) AS failing
             FROM jobs WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        metrics::gauge!("zync_jobs_pending").set(row.try_get::<i64, _>("pending")? as f64);
        metrics::gauge!("zync_jobs_failing").set(row.try_get::<i64, _>("failing")? as f64);
        Ok(())
    }

    /// When the next scheduled job is due, if any is pending.
    async fn next_due(&self) -> Option<Duration> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM (min(GREATEST(run_at, COALESCE(locked_until, run_at))) - now()))::float8
             FROM jobs WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .ok()
        .flatten();
        secs.map(|s| Duration::from_secs_f64(s.max(0.0)))
    }
}

/// Where a client was last pushed: client id, issuer type, issuer endpoint, digest, pushed recently.
type Recorded = (String, String, String, Option<String>, bool);

/// An identical push within this long of the last one is skipped: it coalesces bursts of notifications that
/// change nothing, while a later one still re-asserts the client in case the IdP lost it.
const UNCHANGED_SKIP: Duration = Duration::from_secs(60);

fn db_error(err: sqlx::Error) -> String {
    // Details go to the log; the job record gets a generic message.
    tracing::error!(error = %err, "database error while syncing");
    "database error".to_owned()
}

/// Runs `config.workers` workers and the NOTIFY listener until shutdown. The worker logic used by tests and the
/// binary alike.
pub async fn run(pool: PgPool, config: WorkerConfig, http: reqwest::Client, shutdown: Shutdown) {
    let worker = Arc::new(Worker::new(pool.clone(), config.clone(), http));
    let wake = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(listen(pool.clone(), wake.clone(), shutdown.clone()));
    {
        let worker = worker.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                if let Err(err) = worker.report_gauges().await {
                    tracing::debug!(error = %err, "gauges not refreshed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        });
    }
    for _ in 0..config.workers.max(1) {
        tasks.spawn(work_loop(worker.clone(), wake.clone(), shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn work_loop(worker: Arc<Worker>, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut db_delay = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        // Registered before looking for work, so a NOTIFY arriving in between is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let job = match worker.claim().await {
            Ok(job) => {
                db_delay = Duration::from_millis(100);
                job
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim jobs");
                tokio::select! {
                    _ = tokio::time::sleep(db_delay) => {}
                    _ = shutdown.wait() => return,
                }
                db_delay = (db_delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        match job {
            Some(job) => {
                let started = std::time::Instant::now();
                let outcome = tokio::select! {
                    outcome = worker.perform(&job) => outcome,
                    _ = shutdown.wait() => {
                        // Hand it back now rather than after the lease; the sync is idempotent.
                        let _ = worker.release(job.id).await;
                        return;
                    }
                };
                metrics::histogram!("zync_job_duration_seconds", "kind" => job.kind.clone())
                    .record(started.elapsed().as_secs_f64());
                if let Err(err) = worker.finish(&job, outcome).await {
                    tracing::warn!(error = %err, "cannot record job outcome; the lease will expire");
                }
            }
            None => {
                let wait = worker
                    .next_due()
                    .await
                    .map_or(worker.config.poll, |due| due.min(worker.config.poll))
                    .max(Duration::from_millis(5));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    }
}

async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                tracing::warn!(error = %err, "cannot LISTEN; relying on polling");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(err) = listener.listen(zync::api::JOBS_CHANNEL).await {
            tracing::warn!(error = %err, "LISTEN failed");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return,
            }
            continue;
        }
        delay = Duration::from_millis(100);
        // Anything committed while we were not listening is found by the workers' next claim.
        wake.notify_waiters();
        loop {
            tokio::select! {
                msg = listener.recv() => match msg {
                    // One job, one worker: waking them all would only make them race for it.
                    Ok(_) => wake.notify_one(),
                    Err(err) => {
                        tracing::warn!(error = %err, "LISTEN connection lost");
                        break;
                    }
                },
                _ = shutdown.wait() => return,
            }
        }
    }
}
