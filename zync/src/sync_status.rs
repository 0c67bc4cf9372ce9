//! `GET /sync/applications`: per application, whether its OAuth client is in sync with system, pending or
//! failing, with the last attempt and the last error. It shows ids and states only, never secrets.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Deserialize)]
pub struct Filter {
    pub tenant_id: Option<i64>,
    /// `in_sync`, `pending` or `failing`.
    pub state: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct ApplicationSync {
    pub application_id: i64,
    pub tenant_id: i64,
    pub service_id: Option<i64>,
    pub client_id: Option<String>,
    pub state: &'static str,
    pub attempts: i32,
    pub pending_since: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

const MAX_LIMIT: i64 = 1000;

pub async fn list_applications(
    State(state): State<AppState>,
    Query(filter): Query<Filter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let wanted = match filter.state.as_deref() {
        None | Some("") => None,
        Some(s @ ("in_sync" | "pending" | "failing")) => Some(s.to_owned()),
        Some(_) => {
            return Err(ApiError::invalid(
                "state",
                "expected in_sync, pending or failing",
            ))
        }
    };
    let limit = filter.limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let rows = sqlx::query(
        "SELECT * FROM (
            SELECT j.entity_id, j.tenant_id, a.service_id, c.client_id, j.attempts, j.pending_since, j.run_at,
                   j.last_attempt_at, j.last_success_at, j.last_error,
                   CASE WHEN j.status = 'done' THEN 'in_sync'
                        WHEN j.attempts > 0 THEN 'failing'
                        ELSE 'pending' END AS state
            FROM jobs j
            LEFT JOIN applications a ON a.id = j.entity_id
            LEFT JOIN clients c ON c.application_id = j.entity_id
            WHERE j.kind = 'application' AND ($1::BIGINT IS NULL OR j.tenant_id = $1)
         ) s
         WHERE ($2::TEXT IS NULL OR s.state = $2)
         ORDER BY s.entity_id
         LIMIT $3",
    )
    .bind(filter.tenant_id)
    .bind(wanted)
    .bind(limit)
    .fetch_all(state.db.pool())
    .await?;
    let mut apps = Vec::with_capacity(rows.len());
    for row in rows {
        let state: String = row.try_get("state")?;
        let state = match state.as_str() {
            "in_sync" => "in_sync",
            "failing" => "failing",
            _ => "pending",
        };
        apps.push(ApplicationSync {
            application_id: row.try_get("entity_id")?,
            tenant_id: row.try_get("tenant_id")?,
            service_id: row.try_get("service_id")?,
            client_id: row.try_get("client_id")?,
            state,
            attempts: row.try_get("attempts")?,
            pending_since: row.try_get("pending_since")?,
            next_attempt_at: if state == "in_sync" {
                None
            } else {
                row.try_get("run_at")?
            },
            last_attempt_at: row.try_get("last_attempt_at")?,
            last_success_at: row.try_get("last_success_at")?,
            last_error: row.try_get("last_error")?,
        });
    }
    Ok(Json(serde_json::json!({ "applications": apps })))
}
