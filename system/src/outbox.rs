//! The outbox: changes that backend (apisonator's internal API) and zync must learn, recorded in the same transaction
//! as the change and delivered in order per target by a background task that retries with backoff.

use crate::db::Tx;
use crate::error::ApiResult;
use platform::{Secret, Shutdown};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub const BACKEND: &str = "backend";
pub const ZYNC: &str = "zync";

/// Where deliveries go; a target without an URL keeps its rows until one is configured.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub backend_url: Option<String>,
    pub backend_user: Option<String>,
    pub backend_password: Option<Secret>,
    pub zync_url: Option<String>,
    pub zync_token: Option<Secret>,
    /// The URL zync calls back (`PUT /tenant` `endpoint`).
    pub public_url: String,
}

pub async fn enqueue(
    tx: &mut Tx<'_>,
    target: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> ApiResult<()> {
    sqlx::query("INSERT INTO outbox (target, method, path, body) VALUES ($1, $2, $3, $4)")
        .bind(target)
        .bind(method)
        .bind(path)
        .bind(body)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn backend(
    tx: &mut Tx<'_>,
    method: &str,
    path: String,
    body: Option<Value>,
) -> ApiResult<()> {
    enqueue(tx, BACKEND, method, &path, body).await
}

/// A zync notification as porta's `ZyncEvent` payload.
pub async fn zync(
    tx: &mut Tx<'_>,
    provider_id: i64,
    kind: &str,
    id: i64,
    event_type: &str,
    extra: Value,
) -> ApiResult<()> {
    let mut body = json!({
        "type": kind,
        "id": id,
        "parent_event_id": uuid::Uuid::new_v4().to_string(),
        "parent_event_type": event_type,
        "tenant_id": provider_id,
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    enqueue(tx, ZYNC, "PUT", "/notification", Some(body)).await
}

/// Wakes the delivery task right after a commit instead of at its next poll.
#[derive(Clone, Default)]
pub struct Waker(pub Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_waiters();
        self.0.notify_one();
    }
}

struct Row {
    id: i64,
    method: String,
    path: String,
    body: Option<Value>,
    attempts: i32,
}

/// Runs one delivery loop per target until shutdown.
pub fn spawn(
    pool: sqlx::PgPool,
    targets: Targets,
    waker: Waker,
    shutdown: Shutdown,
    provider_id: i64,
) {
    for target in [BACKEND, ZYNC] {
        let pool = pool.clone();
        let targets = targets.clone();
        let waker = waker.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default();
            let mut zync_token: Option<(String, std::time::Instant)> = None;
            loop {
                let next = deliver_next(
                    &pool,
                    &client,
                    &targets,
                    target,
                    provider_id,
                    &mut zync_token,
                )
                .await;
                let pause = match next {
                    Ok(true) => continue,
                    Ok(false) => Duration::from_millis(500),
                    Err(err) => {
                        tracing::warn!(target, error = %err, "outbox delivery failed");
                        Duration::from_millis(200)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = waker.0.notified() => {}
                    _ = shutdown.wait() => return,
                }
            }
        });
    }
}

/// Delivers the oldest pending row of `target` if it is due. `Ok(true)` when one was delivered.
async fn deliver_next(
    pool: &sqlx::PgPool,
    client: &reqwest::Client,
    targets: &Targets,
    target: &str,
    provider_id: i64,
    zync_token: &mut Option<(String, std::time::Instant)>,
) -> anyhow::Result<bool> {
    let base = match target {
        BACKEND => targets.backend_url.clone(),
        _ => targets.zync_url.clone(),
    };
    let Some(base) = base else { return Ok(false) };
    let row: Option<(i64, String, String, Option<Value>, i32, bool)> = sqlx::query_as(
        "SELECT id, method, path, body, attempts, next_attempt_at <= now() FROM outbox \
         WHERE target = $1 AND delivered_at IS NULL ORDER BY id LIMIT 1",
    )
    .bind(target)
    .fetch_optional(pool)
    .await?;
    let Some((id, method, path, body, attempts, due)) = row else {
        return Ok(false);
    };
    // The head of the queue blocks the rest: later changes of an entity must not overtake earlier ones.
    if !due {
        return Ok(false);
    }
    let row = Row {
        id,
        method,
        path,
        body,
        attempts,
    };
    let result = match target {
        BACKEND => send_backend(client, targets, &base, &row).await,
        _ => send_zync(pool, client, targets, &base, &row, provider_id, zync_token).await,
    };
    match result {
        Ok(()) => {
            sqlx::query(
                "UPDATE outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1",
            )
            .bind(row.id)
            .execute(pool)
            .await?;
            Ok(true)
        }
        Err(err) => {
            let backoff_ms = (100u64 << row.attempts.clamp(0, 8)).min(30_000);
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
            )
            .bind(row.id)
            .bind(err.to_string())
            .bind(backoff_ms as f64 / 1000.0)
            .execute(pool)
            .await?;
            tracing::warn!(target, outbox_id = row.id, attempts = row.attempts + 1, error = %err, "delivery failed; will retry");
            Ok(false)
        }
    }
}

fn method(m: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(m.as_bytes()).unwrap_or(reqwest::Method::PUT)
}

async fn send_backend(
    client: &reqwest::Client,
    t: &Targets,
    base: &str,
    row: &Row,
) -> anyhow::Result<()> {
    let mut req = client.request(
        method(&row.method),
        format!("{}{}", base.trim_end_matches('/'), row.path),
    );
    if let Some(user) = &t.backend_user {
        req = req.basic_auth(user, t.backend_password.as_ref().map(|p| p.expose()));
    }
    if let Some(body) = &row.body {
        req = req.json(body);
    }
    let res = req.send().await?;
    let status = res.status();
    // A DELETE of something backend never had is already done.
    if status.is_success() || (row.method == "DELETE" && status == 404) {
        Ok(())
    } else {
        anyhow::bail!("backend answered {status}")
    }
}

async fn zync_put(
    client: &reqwest::Client,
    t: &Targets,
    url: String,
    body: &Value,
) -> anyhow::Result<reqwest::StatusCode> {
    let mut req = client
        .put(url)
        .header("X-Event-Id", uuid::Uuid::new_v4().to_string())
        .json(body);
    if let Some(token) = &t.zync_token {
        req = req.header(
            "Authorization",
            format!("Token token=\"{}\"", token.expose()),
        );
    }
    Ok(req.send().await?.status())
}

async fn send_zync(
    pool: &sqlx::PgPool,
    client: &reqwest::Client,
    t: &Targets,
    base: &str,
    row: &Row,
    provider_id: i64,
    token: &mut Option<(String, std::time::Instant)>,
) -> anyhow::Result<()> {
    let base = base.trim_end_matches('/');
    let fresh = token
        .as_ref()
        .is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(3600));
    if !fresh {
        *token = Some((
            crate::tokens::zync_token(pool, provider_id).await?,
            std::time::Instant::now(),
        ));
    }
    let value = token.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
    let tenant = json!({"id": provider_id, "endpoint": t.public_url, "access_token": value});
    let status = zync_put(client, t, format!("{base}/tenant"), &tenant).await?;
    if !status.is_success() {
        anyhow::bail!("zync /tenant answered {status}");
    }
    let body = row.body.clone().unwrap_or(Value::Null);
    let url = format!("{base}{}", row.path);
    let mut status = zync_put(client, t, url.clone(), &body).await?;
    if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        // "Dependency missing": send the service (and its proxy) first, then the original again.
        if let Some(sid) = body.get("service_id").and_then(Value::as_i64) {
            for kind in ["Service", "Proxy"] {
                let mut dep = json!({
                    "type": kind, "id": sid, "parent_event_id": uuid::Uuid::new_v4().to_string(),
                    "parent_event_type": "ZyncEvent", "tenant_id": provider_id,
                });
                if kind == "Proxy" {
                    dep["service_id"] = json!(sid);
                }
                let s = zync_put(client, t, format!("{base}/notification"), &dep).await?;
                if !s.is_success() {
                    anyhow::bail!("zync dependency {kind} answered {s}");
                }
            }
            status = zync_put(client, t, url, &body).await?;
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        anyhow::bail!("zync answered {status}")
    }
}
