//! Access tokens: the bootstrap admin token, `POST /admin/api/personal/access_tokens`, and zync's read-only token.
//! Only SHA-384 digests are stored; a value is shown once, on create.

use crate::api::{digest, random_hex, Req};
use crate::error::{ApiResult, Errors};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

const SCOPES: [&str; 5] = [
    "cms",
    "finance",
    "account_management",
    "stats",
    "policy_registry",
];

/// Stores the operator's first admin token (from `ADMIN_ACCESS_TOKEN`) if it is not there yet.
pub async fn bootstrap(pool: &sqlx::PgPool, provider_id: i64, token: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO access_tokens (user_id, name, digest, scopes, permission) \
         SELECT u.id, 'Bootstrap admin token', $1, $2, 'rw' FROM users u WHERE u.account_id = $3 \
         ORDER BY u.id LIMIT 1 ON CONFLICT (digest) DO NOTHING",
    )
    .bind(digest(token))
    .bind(SCOPES.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .bind(provider_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A fresh `ro` `account_management` token for zync's callbacks, valid one day.
pub async fn zync_token(pool: &sqlx::PgPool, provider_id: i64) -> anyhow::Result<String> {
    let value = random_hex(48);
    sqlx::query(
        "INSERT INTO access_tokens (user_id, name, digest, scopes, permission, expires_at) \
         SELECT u.id, 'OIDC Synchronization Token', $1, ARRAY['account_management'], 'ro', now() + interval '1 day' \
         FROM users u WHERE u.account_id = $2 ORDER BY u.id LIMIT 1",
    )
    .bind(digest(&value))
    .bind(provider_id)
    .execute(pool)
    .await?;
    Ok(value)
}

pub async fn create_personal(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let p = req.params.wrapped("access_token")?;
    let mut errors = Errors::default();
    let name = p.str("name").unwrap_or_default();
    if name.trim().is_empty() {
        errors.add("name", "can't be blank");
    }
    let permission = p.str("permission").unwrap_or_default();
    if !["ro", "rw"].contains(&permission.as_str()) {
        errors.add("permission", "is not included in the list");
    }
    let scopes = p.list("scopes");
    if scopes.is_empty() {
        errors.add("scopes", "can't be blank");
    } else if scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        errors.add("scopes", "invalid");
    }
    let expires_at = match p.str("expires_at").filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => match chrono::DateTime::parse_from_rfc3339(&raw) {
            Ok(t) if t > chrono::Utc::now() => Some(t.with_timezone(&chrono::Utc)),
            Ok(_) => {
                errors.add("expires_at", "must be in the future");
                None
            }
            Err(_) => {
                errors.add("expires_at", "invalid date-time");
                None
            }
        },
    };
    errors.check()?;
    let value = random_hex(48);
    let (id, created_at): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO access_tokens (user_id, name, digest, scopes, permission, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at",
    )
    .bind(req.caller.user_id)
    .bind(&name)
    .bind(digest(&value))
    .bind(&scopes)
    .bind(&permission)
    .bind(expires_at)
    .fetch_one(state.db.pool())
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"access_token": {
            "id": id, "name": name, "scopes": scopes, "permission": permission,
            "expires_at": expires_at.map(crate::api::ts), "created_at": crate::api::ts(created_at),
            "value": value,
        }})),
    )
        .into_response())
}
