//! The endpoints system calls: `PUT /tenant` (upsert of the tenant's admin endpoint and token) and
//! `PUT /notification` (a change to sync, stored with its job in one transaction before the 2xx).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::Row;

use crate::error::ApiError;
use crate::AppState;

/// The channel zync-que listens on; a NOTIFY is sent in the same transaction as the job, so it fires on commit.
pub const JOBS_CHANNEL: &str = "zync_jobs";

/// The longest `endpoint` or `access_token` zync accepts, as its Rails validations do.
const MAX_FIELD: usize = 255;

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
        Err(err) => Err(ApiError::BadRequest(format!("malformed JSON: {err}"))),
    }
}

/// An id as system sends it: a JSON integer, or a string of digits.
fn id_field(map: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be an integer")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{key} must be an integer")),
        Some(_) => Err(format!("{key} must be an integer")),
    }
}

fn string_field(map: &Map<String, Value>, field: &'static str) -> Result<String, ApiError> {
    match map.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            if s.len() > MAX_FIELD {
                Err(ApiError::invalid(
                    field,
                    format!("is too long (maximum is {MAX_FIELD} characters)"),
                ))
            } else {
                Ok(s.trim().to_owned())
            }
        }
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::invalid(field, "can't be blank"))
        }
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    }
}

/// `PUT /tenant`: 201 with the tenant when new, 204 when an existing tenant was updated.
pub async fn put_tenant(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let mut map = parse_object(&body)?;
    // Rails' ParamsWrapper also accepts the `{"tenant": {...}}` form.
    if let Some(Value::Object(inner)) = map.remove("tenant") {
        map = inner;
    }
    let id = id_field(&map, "id")
        .map_err(ApiError::BadRequest)?
        .ok_or_else(|| ApiError::BadRequest("id is required".into()))?;
    let endpoint = string_field(&map, "endpoint")?;
    let access_token = string_field(&map, "access_token")?;
    if url_has_no_host(&endpoint) {
        return Err(ApiError::invalid("endpoint", "must be an http(s) URL"));
    }
    let row = sqlx::query(
        "INSERT INTO tenants (id, endpoint, access_token) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET endpoint = EXCLUDED.endpoint, access_token = EXCLUDED.access_token,
             updated_at = now()
         RETURNING (xmax = 0) AS inserted, created_at, updated_at",
    )
    .bind(id)
    .bind(&endpoint)
    .bind(&access_token)
    .fetch_one(state.db.pool())
    .await?;
    let inserted: bool = row.try_get("inserted")?;
    if inserted {
        let created_at: DateTime<Utc> = row.try_get("created_at")?;
        let updated_at: DateTime<Utc> = row.try_get("updated_at")?;
        // The access token is a secret: it is stored, never echoed.
        Ok((
            StatusCode::CREATED,
            Json(json!({"id": id, "endpoint": endpoint, "created_at": created_at, "updated_at": updated_at})),
        )
            .into_response())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

fn url_has_no_host(endpoint: &str) -> bool {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    match rest {
        Some(rest) => rest.split(['/', '?', '#']).next().unwrap_or("").is_empty(),
        None => true,
    }
}

/// The record types system notifies about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    Application,
    Proxy,
    Service,
    Provider,
}

impl RecordType {
    fn parse(value: Option<&Value>) -> Option<Self> {
        match value?.as_str()? {
            "Application" => Some(Self::Application),
            "Proxy" => Some(Self::Proxy),
            "Service" => Some(Self::Service),
            "Provider" => Some(Self::Provider),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Application => "Application",
            Self::Proxy => "Proxy",
            Self::Service => "Service",
            Self::Provider => "Provider",
        }
    }
}

/// `PUT /notification`: 201 once the notification and its job are committed.
pub async fn put_notification(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let map = parse_object(&body)?;
    let record_type = RecordType::parse(map.get("type")).ok_or_else(|| {
        ApiError::invalid(
            "type",
            "is not included in the list: expected Application, Proxy, Service or Provider",
        )
    })?;
    let tenant_id = id_field(&map, "tenant_id")
        .map_err(ApiError::BadRequest)?
        .ok_or_else(|| ApiError::BadRequest("tenant_id is required".into()))?;
    let id = id_field(&map, "id")
        .map_err(|m| ApiError::invalid("id", m))?
        .ok_or_else(|| ApiError::invalid("id", "can't be blank"))?;
    let service_id =
        id_field(&map, "service_id").map_err(|m| ApiError::invalid("service_id", m))?;
    let event_id = headers
        .get("x-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(100).collect::<String>());

    let mut tx = state.db.pool().begin().await?;
    // FOR KEY SHARE keeps the tenant from being deleted under us without blocking its upserts.
    let tenant = sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR KEY SHARE")
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    if tenant.is_none() {
        return Err(ApiError::UnknownTenant(format!(
            "unknown tenant {tenant_id}: send PUT /tenant first"
        )));
    }
    // The job: which entity zync-que must sync for this notification.
    let job: Option<(&str, i64)> = match record_type {
        RecordType::Service => {
            sqlx::query(
                "INSERT INTO services (id, tenant_id) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id",
            )
            .bind(id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
            // A service change may switch OIDC on or off: the proxy sync notices and re-syncs its applications.
            Some(("proxy", id))
        }
        RecordType::Application | RecordType::Proxy => {
            let service_id =
                service_id.ok_or_else(|| ApiError::invalid("service", "must exist"))?;
            let service = sqlx::query(
                "SELECT id FROM services WHERE id = $1 AND tenant_id = $2 FOR KEY SHARE",
            )
            .bind(service_id)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
            if service.is_none() {
                // The "dependency missing" answer: system then sends the Service (and Proxy) first and retries.
                return Err(ApiError::invalid("service", "must exist"));
            }
            let table = if record_type == RecordType::Application {
                "applications"
            } else {
                "proxies"
            };
            sqlx::query(&format!(
                "INSERT INTO {table} (id, tenant_id, service_id) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, service_id = EXCLUDED.service_id"
            ))
            .bind(id)
            .bind(tenant_id)
            .bind(service_id)
            .execute(&mut *tx)
            .await?;
            if record_type == RecordType::Application {
                Some(("application", id))
            } else {
                Some(("proxy", service_id))
            }
        }
        RecordType::Provider => {
            sqlx::query(
                "INSERT INTO providers (id, tenant_id) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id",
            )
            .bind(id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
            // Provider changes only matter to the OpenShift routes integration, which is not built.
            None
        }
    };
    let row = sqlx::query(
        "INSERT INTO notifications (tenant_id, record_type, record_id, event_id, data)
         VALUES ($1, $2, $3, $4, $5) RETURNING id, received_at",
    )
    .bind(tenant_id)
    .bind(record_type.as_str())
    .bind(id)
    .bind(&event_id)
    .bind(Value::Object(map))
    .fetch_one(&mut *tx)
    .await?;
    let notification_id: i64 = row.try_get("id")?;
    let received_at: DateTime<Utc> = row.try_get("received_at")?;
    if let Some((kind, entity_id)) = job {
        enqueue(&mut tx, kind, entity_id, tenant_id).await?;
    }
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": notification_id,
            "tenant_id": tenant_id,
            "record_type": record_type.as_str(),
            "record_id": id,
            "created_at": received_at,
            "updated_at": received_at,
        })),
    )
        .into_response())
}

/// Creates the entity's job, or revives and bumps the existing one: one row per entity is what coalesces a burst
/// of notifications into one sync, and the new version tells a worker already running it to run it once more.
pub async fn enqueue(
    tx: &mut sqlx::PgConnection,
    kind: &str,
    entity_id: i64,
    tenant_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO jobs (kind, entity_id, tenant_id) VALUES ($1, $2, $3)
         ON CONFLICT (kind, entity_id) DO UPDATE SET
             tenant_id = EXCLUDED.tenant_id,
             version = jobs.version + 1,
             pending_since = COALESCE(jobs.pending_since, now()),
             run_at = CASE WHEN jobs.status = 'done' THEN now() ELSE LEAST(jobs.run_at, now()) END,
             attempts = CASE WHEN jobs.status = 'done' THEN 0 ELSE jobs.attempts END,
             status = 'pending'",
    )
    .bind(kind)
    .bind(entity_id)
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(JOBS_CHANNEL)
        .bind(kind)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
