//! The `/internal/` JSON API through which system pushes configuration (apisonator's paths and bodies).

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::AppState;

pub const PERIODS: [&str; 7] = ["eternity", "year", "month", "week", "day", "hour", "minute"];

/// Failures of the internal API; database errors stay opaque to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound(m) => (
                StatusCode::NOT_FOUND,
                Json(json!({"status": "not_found", "error": m})),
            )
                .into_response(),
            ApiError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": "bad_request", "error": m})),
            )
                .into_response(),
            ApiError::Unprocessable(m) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"status": "error", "error": m})),
            )
                .into_response(),
            ApiError::Db(e) if platform::db::is_unavailable(&e) => {
                tracing::warn!(error = %e, "internal API database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, platform::db::RETRY_AFTER_SECONDS)],
                    Json(json!({"status": "error", "error": "service unavailable"})),
                )
                    .into_response()
            }
            ApiError::Db(e) => {
                tracing::error!(error = %e, "internal API database error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"status": "error", "error": "internal error"})),
                )
                    .into_response()
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

fn created(v: Value) -> ApiResult {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// Parses a JSON body leniently: an empty or broken body is an empty object.
fn body(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn section<'a>(v: &'a Value, name: &str) -> Result<&'a Value, ApiError> {
    match v.get(name) {
        Some(s) if s.is_object() || s.is_array() => Ok(s),
        _ => Err(ApiError::BadRequest(format!("missing parameter '{name}'"))),
    }
}

/// A JSON scalar as the string apisonator would store (ids may arrive as numbers).
fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn flag(v: &Value, key: &str) -> Option<bool> {
    match v.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(matches!(s.as_str(), "true" | "1")),
        Value::Number(n) => Some(n.as_i64() == Some(1)),
        _ => None,
    }
}

/// Tells every replica (including this one) that configuration changed.
async fn changed(state: &AppState) -> Result<(), ApiError> {
    sqlx::query("SELECT pg_notify('backend_config', '')")
        .execute(state.db.pool())
        .await?;
    state.config.invalidate_all();
    Ok(())
}

pub fn router(state: AppState) -> Router<AppState> {
    let mut r = Router::new().route("/internal/status", get(status)).route(
        "/internal/check.json",
        get(|| async { Json(json!({"status":"ok"})) }),
    );
    // apisonator routes accept paths with and without a trailing slash.
    let routes: Vec<(&str, axum::routing::MethodRouter<AppState>)> = vec![
        ("/internal/services", axum::routing::post(service_create)),
        (
            "/internal/services/change_provider_key/{key}",
            put(change_provider_key),
        ),
        (
            "/internal/services/{id}",
            get(service_get).put(service_put).delete(service_delete),
        ),
        (
            "/internal/services/{sid}/applications/batch",
            put(app_batch),
        ),
        (
            "/internal/services/{sid}/applications/key/{user_key}",
            get(user_key_get).delete(user_key_delete),
        ),
        (
            "/internal/services/{sid}/applications/{id}",
            get(app_get).put(app_put).post(app_post).delete(app_delete),
        ),
        (
            "/internal/services/{sid}/applications/{id}/key/{user_key}",
            put(user_key_put),
        ),
        (
            "/internal/services/{sid}/applications/{id}/keys",
            get(keys_list).post(key_create),
        ),
        (
            "/internal/services/{sid}/applications/{id}/keys/{value}",
            axum::routing::delete(key_delete),
        ),
        (
            "/internal/services/{sid}/applications/{id}/referrer_filters",
            get(filters_list).post(filter_create),
        ),
        (
            "/internal/services/{sid}/applications/{id}/referrer_filters/{value}",
            axum::routing::delete(filter_delete),
        ),
        (
            "/internal/services/{sid}/applications/{id}/utilization",
            get(utilization),
        ),
        (
            "/internal/services/{sid}/metrics/{id}",
            get(metric_get)
                .put(metric_put)
                .post(metric_post)
                .delete(metric_delete),
        ),
        (
            "/internal/services/{sid}/plans/{plan}/usagelimits/{metric}/{period}",
            get(limit_get).put(limit_put).delete(limit_delete),
        ),
        (
            "/internal/services/{sid}/errors",
            get(errors_list).delete(errors_delete),
        ),
        (
            "/internal/service_tokens",
            axum::routing::post(tokens_create).delete(tokens_delete),
        ),
        (
            "/internal/service_tokens/{token}/{sid}",
            axum::routing::head(token_exists).get(token_exists),
        ),
        (
            "/internal/service_tokens/{token}/{sid}/provider_key",
            get(token_provider_key),
        ),
    ];
    for (path, handler) in routes {
        r = r
            .route(path, handler.clone())
            .route(&format!("{path}/"), handler);
    }
    r.route_layer(middleware::from_fn_with_state(state, basic_auth))
}

async fn basic_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some((user, password)) = &state.internal_auth {
        let expected = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            user,
            password.expose()
        ));
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .map(str::trim);
        if given != Some(expected.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"Restricted Area\"")],
                Json(json!({"status": "error", "error": "unauthorized"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn status() -> Json<Value> {
    Json(json!({"status": "ok", "version": {"backend": crate::VERSION}}))
}

// ---------------------------------------------------------------- services

#[derive(sqlx::FromRow)]
struct ServiceRow {
    id: String,
    provider_key: String,
    backend_version: Option<String>,
    referrer_filters_required: bool,
    state: String,
}

async fn load_service(state: &AppState, id: &str) -> Result<Option<(ServiceRow, bool)>, ApiError> {
    let row: Option<ServiceRow> = sqlx::query_as(
        "SELECT id, provider_key, backend_version, referrer_filters_required, state FROM services WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(state.db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let default: Option<(String,)> =
        sqlx::query_as("SELECT service_id FROM provider_defaults WHERE provider_key = $1")
            .bind(&row.provider_key)
            .fetch_optional(state.db.pool())
            .await?;
    let is_default = default.is_some_and(|(d,)| d == row.id);
    Ok(Some((row, is_default)))
}

fn service_json(s: &ServiceRow, is_default: bool) -> Value {
    json!({
        "id": s.id,
        "state": s.state,
        "provider_key": s.provider_key,
        "backend_version": s.backend_version,
        "referrer_filters_required": s.referrer_filters_required,
        "default_service": is_default,
    })
}

async fn save_service(state: &AppState, id: Option<String>, b: &Value) -> Result<Value, ApiError> {
    let s = section(b, "service")?;
    let id = id
        .or_else(|| text(s, "id"))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Service has no id".into()))?;
    let existing = load_service(state, &id).await?;
    let provider_key = text(s, "provider_key")
        .filter(|v| !v.is_empty())
        .or_else(|| existing.as_ref().map(|(r, _)| r.provider_key.clone()))
        .ok_or_else(|| ApiError::BadRequest("Service has no provider_key".into()))?;
    let backend_version = text(s, "backend_version").or_else(|| {
        existing
            .as_ref()
            .and_then(|(r, _)| r.backend_version.clone())
    });
    let filters = flag(s, "referrer_filters_required")
        .or_else(|| existing.as_ref().map(|(r, _)| r.referrer_filters_required))
        .unwrap_or(false);
    // Anything other than active is stored as suspended, as apisonator does.
    let svc_state = match text(s, "state") {
        Some(v) if v == "active" => "active".to_owned(),
        Some(_) => "suspended".to_owned(),
        None => existing
            .as_ref()
            .map(|(r, _)| r.state.clone())
            .unwrap_or_else(|| "active".into()),
    };
    let mut tx = state.db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO services (id, provider_key, backend_version, referrer_filters_required, state)
         VALUES ($1,$2,$3,$4,$5) ON CONFLICT (id) DO UPDATE SET provider_key = EXCLUDED.provider_key,
         backend_version = EXCLUDED.backend_version, referrer_filters_required = EXCLUDED.referrer_filters_required,
         state = EXCLUDED.state",
    )
    .bind(&id)
    .bind(&provider_key)
    .bind(&backend_version)
    .bind(filters)
    .bind(&svc_state)
    .execute(&mut *tx)
    .await?;
    let make_default = flag(s, "default_service").unwrap_or(false);
    if make_default {
        sqlx::query(
            "INSERT INTO provider_defaults (provider_key, service_id) VALUES ($1,$2)
             ON CONFLICT (provider_key) DO UPDATE SET service_id = EXCLUDED.service_id",
        )
        .bind(&provider_key)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "INSERT INTO provider_defaults (provider_key, service_id) VALUES ($1,$2) ON CONFLICT DO NOTHING",
        )
        .bind(&provider_key)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    changed(state).await?;
    let (row, is_default) = load_service(state, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("service not found".into()))?;
    Ok(service_json(&row, is_default))
}

async fn service_create(State(state): State<AppState>, b: Bytes) -> ApiResult {
    let svc = save_service(&state, None, &body(&b)).await?;
    created(json!({"service": svc, "status": "created"}))
}

async fn service_put(State(state): State<AppState>, Path(id): Path<String>, b: Bytes) -> ApiResult {
    let svc = save_service(&state, Some(id), &body(&b)).await?;
    ok(json!({"service": svc, "status": "ok"}))
}

async fn service_get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    match load_service(&state, &id).await? {
        Some((row, d)) => ok(json!({"status": "found", "service": service_json(&row, d)})),
        None => Ok((StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response()),
    }
}

async fn service_delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let Some((row, is_default)) = load_service(&state, &id).await? else {
        return Ok((StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response());
    };
    let (others,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM services WHERE provider_key = $1 AND id <> $2")
            .bind(&row.provider_key)
            .bind(&id)
            .fetch_one(state.db.pool())
            .await?;
    if is_default && others > 0 {
        return Err(ApiError::BadRequest(format!(
            "Service id={id} is the default service of a provider with other services"
        )));
    }
    let mut tx = state.db.pool().begin().await?;
    for sql in [
        "DELETE FROM services WHERE id = $1",
        "DELETE FROM provider_defaults WHERE service_id = $1",
        "DELETE FROM service_tokens WHERE service_id = $1",
    ] {
        sqlx::query(sql).bind(&id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    changed(&state).await?;
    ok(json!({"status": "deleted"}))
}

async fn change_provider_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    b: Bytes,
) -> ApiResult {
    let b = body(&b);
    let Some(new_key) = text(&b, "new_key").filter(|k| !k.is_empty()) else {
        return Err(ApiError::BadRequest("Provider key is blank".into()));
    };
    let mut tx = state.db.pool().begin().await?;
    let (exists,): (i64,) = sqlx::query_as("SELECT count(*) FROM services WHERE provider_key = $1")
        .bind(&new_key)
        .fetch_one(&mut *tx)
        .await?;
    if exists > 0 {
        return Err(ApiError::BadRequest(format!(
            "Provider key=\"{new_key}\" already exists"
        )));
    }
    let updated = sqlx::query("UPDATE services SET provider_key = $2 WHERE provider_key = $1")
        .bind(&key)
        .bind(&new_key)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::BadRequest(format!(
            "Provider key=\"{key}\" does not exist"
        )));
    }
    sqlx::query("UPDATE provider_defaults SET provider_key = $2 WHERE provider_key = $1")
        .bind(&key)
        .bind(&new_key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    changed(&state).await?;
    ok(json!({"status": "ok"}))
}

// ---------------------------------------------------------------- applications

#[derive(sqlx::FromRow)]
struct AppRow {
    id: String,
    state: String,
    plan_id: Option<String>,
    plan_name: Option<String>,
    redirect_url: Option<String>,
}

async fn load_app(state: &AppState, sid: &str, id: &str) -> Result<Option<AppRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, state, plan_id, plan_name, redirect_url FROM applications WHERE service_id = $1 AND id = $2",
    )
    .bind(sid)
    .bind(id)
    .fetch_optional(state.db.pool())
    .await?)
}

fn app_json(sid: &str, a: &AppRow) -> Value {
    json!({
        "service_id": sid,
        "id": a.id,
        "state": a.state,
        "plan_id": a.plan_id,
        "plan_name": a.plan_name,
        "redirect_url": a.redirect_url,
    })
}

fn app_not_found() -> ApiError {
    ApiError::NotFound("application not found".into())
}

/// Creates or updates an application; returns whether it existed.
async fn save_app(
    state: &AppState,
    sid: &str,
    id: &str,
    a: &Value,
) -> Result<(bool, AppRow), ApiError> {
    let existing = load_app(state, sid, id).await?;
    let app_state = text(a, "state")
        .filter(|s| !s.is_empty())
        .or_else(|| existing.as_ref().map(|e| e.state.clone()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!("Application with id=\"{id}\" has no state"))
        })?;
    let pick = |k: &str, old: Option<&Option<String>>| {
        if a.get(k).is_some() {
            text(a, k)
        } else {
            old.cloned().flatten()
        }
    };
    let row = AppRow {
        id: id.to_owned(),
        state: app_state,
        plan_id: pick("plan_id", existing.as_ref().map(|e| &e.plan_id)),
        plan_name: pick("plan_name", existing.as_ref().map(|e| &e.plan_name)),
        redirect_url: pick("redirect_url", existing.as_ref().map(|e| &e.redirect_url)),
    };
    sqlx::query(
        "INSERT INTO applications (service_id, id, state, plan_id, plan_name, redirect_url) VALUES ($1,$2,$3,$4,$5,$6)
         ON CONFLICT (service_id, id) DO UPDATE SET state = EXCLUDED.state, plan_id = EXCLUDED.plan_id,
         plan_name = EXCLUDED.plan_name, redirect_url = EXCLUDED.redirect_url",
    )
    .bind(sid)
    .bind(id)
    .bind(&row.state)
    .bind(&row.plan_id)
    .bind(&row.plan_name)
    .bind(&row.redirect_url)
    .execute(state.db.pool())
    .await?;
    Ok((existing.is_some(), row))
}

async fn app_put(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let b = body(&b);
    let a = section(&b, "application")?;
    let (existed, row) = save_app(&state, &sid, &id, a).await?;
    changed(&state).await?;
    ok(
        json!({"status": if existed {"modified"} else {"created"}, "application": app_json(&sid, &row)}),
    )
}

async fn app_post(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let b = body(&b);
    let a = section(&b, "application")?;
    if let Some(existing) = load_app(&state, &sid, &id).await? {
        return Ok((
            StatusCode::METHOD_NOT_ALLOWED,
            Json(json!({"status": "exists", "application": app_json(&sid, &existing)})),
        )
            .into_response());
    }
    let (_, row) = save_app(&state, &sid, &id, a).await?;
    changed(&state).await?;
    created(json!({"status": "created", "application": app_json(&sid, &row)}))
}

async fn app_get(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
) -> ApiResult {
    let row = load_app(&state, &sid, &id)
        .await?
        .ok_or_else(app_not_found)?;
    ok(json!({"status": "found", "application": app_json(&sid, &row)}))
}

async fn app_delete(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
) -> ApiResult {
    load_app(&state, &sid, &id)
        .await?
        .ok_or_else(app_not_found)?;
    let mut tx = state.db.pool().begin().await?;
    for sql in [
        "DELETE FROM applications WHERE service_id = $1 AND id = $2",
        "DELETE FROM user_keys WHERE service_id = $1 AND app_id = $2",
        "DELETE FROM application_keys WHERE service_id = $1 AND app_id = $2",
        "DELETE FROM referrer_filters WHERE service_id = $1 AND app_id = $2",
    ] {
        sqlx::query(sql)
            .bind(&sid)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    changed(&state).await?;
    ok(json!({"status": "deleted"}))
}

async fn app_batch(State(state): State<AppState>, Path(sid): Path<String>, b: Bytes) -> ApiResult {
    let b = body(&b);
    let apps = section(&b, "applications")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut successful = 0;
    for a in &apps {
        let id = text(a, "id").unwrap_or_default();
        if id.is_empty() {
            let e = json!({"status": "error", "id": Value::Null, "error": "Application has no id"});
            failures.push(e.clone());
            results.push(e);
            continue;
        }
        match save_app(&state, &sid, &id, a).await {
            Ok((existed, row)) => {
                if let Some(uk) = text(a, "user_key").filter(|k| !k.is_empty()) {
                    set_user_key(&state, &sid, &id, &uk).await?;
                }
                if let Some(keys) = a.get("application_keys").and_then(Value::as_array) {
                    sqlx::query(
                        "DELETE FROM application_keys WHERE service_id = $1 AND app_id = $2",
                    )
                    .bind(&sid)
                    .bind(&id)
                    .execute(state.db.pool())
                    .await?;
                    for k in keys.iter().filter_map(Value::as_str) {
                        add_key(&state, &sid, &id, k).await?;
                    }
                }
                if let Some(filters) = a.get("referrer_filters").and_then(Value::as_array) {
                    sqlx::query(
                        "DELETE FROM referrer_filters WHERE service_id = $1 AND app_id = $2",
                    )
                    .bind(&sid)
                    .bind(&id)
                    .execute(state.db.pool())
                    .await?;
                    for f in filters.iter().filter_map(Value::as_str) {
                        add_filter(&state, &sid, &id, f).await?;
                    }
                }
                let mut j = app_json(&sid, &row);
                j["user_key"] = json!(text(a, "user_key"));
                j["application_keys"] = json!(list_keys(&state, &sid, &id).await?);
                j["referrer_filters"] = json!(list_filters(&state, &sid, &id).await?);
                successful += 1;
                results.push(
                    json!({"status": if existed {"modified"} else {"created"}, "application": j}),
                );
            }
            Err(ApiError::BadRequest(m)) => {
                let e = json!({"status": "error", "id": id, "error": m});
                failures.push(e.clone());
                results.push(e);
            }
            Err(e) => return Err(e),
        }
    }
    changed(&state).await?;
    ok(json!({
        "status": "completed",
        "total": apps.len(),
        "successful": successful,
        "failed": failures.len(),
        "applications": results,
        "failures": failures,
    }))
}

// ---------------------------------------------------------------- user keys

async fn set_user_key(state: &AppState, sid: &str, id: &str, uk: &str) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO user_keys (service_id, user_key, app_id) VALUES ($1,$2,$3)
         ON CONFLICT (service_id, user_key) DO UPDATE SET app_id = EXCLUDED.app_id",
    )
    .bind(sid)
    .bind(uk)
    .bind(id)
    .execute(state.db.pool())
    .await?;
    Ok(())
}

async fn user_key_put(
    State(state): State<AppState>,
    Path((sid, id, uk)): Path<(String, String, String)>,
) -> ApiResult {
    set_user_key(&state, &sid, &id, &uk).await?;
    changed(&state).await?;
    ok(json!({"status": "modified", "application": {"id": id}}))
}

async fn find_user_key(state: &AppState, sid: &str, uk: &str) -> Result<String, ApiError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT app_id FROM user_keys WHERE service_id = $1 AND user_key = $2")
            .bind(sid)
            .bind(uk)
            .fetch_optional(state.db.pool())
            .await?;
    row.map(|(id,)| id)
        .ok_or_else(|| ApiError::NotFound("application key not found".into()))
}

async fn user_key_get(
    State(state): State<AppState>,
    Path((sid, uk)): Path<(String, String)>,
) -> ApiResult {
    let id = find_user_key(&state, &sid, &uk).await?;
    ok(json!({"status": "found", "application": {"id": id}}))
}

async fn user_key_delete(
    State(state): State<AppState>,
    Path((sid, uk)): Path<(String, String)>,
) -> ApiResult {
    find_user_key(&state, &sid, &uk).await?;
    sqlx::query("DELETE FROM user_keys WHERE service_id = $1 AND user_key = $2")
        .bind(&sid)
        .bind(&uk)
        .execute(state.db.pool())
        .await?;
    changed(&state).await?;
    ok(json!({"status": "deleted"}))
}

// ---------------------------------------------------------------- application keys

async fn add_key(state: &AppState, sid: &str, id: &str, value: &str) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO application_keys (service_id, app_id, value) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING")
        .bind(sid)
        .bind(id)
        .bind(value)
        .execute(state.db.pool())
        .await?;
    Ok(())
}

async fn list_keys(state: &AppState, sid: &str, id: &str) -> Result<Vec<String>, ApiError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT value FROM application_keys WHERE service_id = $1 AND app_id = $2 ORDER BY value",
    )
    .bind(sid)
    .bind(id)
    .fetch_all(state.db.pool())
    .await?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
}

async fn keys_list(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
) -> ApiResult {
    let keys = list_keys(&state, &sid, &id).await?;
    let keys: Vec<Value> = keys
        .into_iter()
        .map(|v| json!({"service_id": sid, "app_id": id, "value": v}))
        .collect();
    ok(json!({"status": "found", "application_keys": keys}))
}

async fn key_create(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let b = body(&b);
    let value = b
        .get("application_key")
        .and_then(|k| text(k, "value"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    add_key(&state, &sid, &id, &value).await?;
    changed(&state).await?;
    created(json!({"status": "created", "application_key": {"app_id": id, "value": value}}))
}

async fn key_delete(
    State(state): State<AppState>,
    Path((sid, id, value)): Path<(String, String, String)>,
) -> ApiResult {
    let done = sqlx::query(
        "DELETE FROM application_keys WHERE service_id = $1 AND app_id = $2 AND value = $3",
    )
    .bind(&sid)
    .bind(&id)
    .bind(&value)
    .execute(state.db.pool())
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound("application key not found".into()));
    }
    changed(&state).await?;
    ok(json!({"status": "deleted"}))
}

// ---------------------------------------------------------------- referrer filters

async fn add_filter(state: &AppState, sid: &str, id: &str, value: &str) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO referrer_filters (service_id, app_id, value) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING")
        .bind(sid)
        .bind(id)
        .bind(value)
        .execute(state.db.pool())
        .await?;
    Ok(())
}

async fn list_filters(state: &AppState, sid: &str, id: &str) -> Result<Vec<String>, ApiError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT value FROM referrer_filters WHERE service_id = $1 AND app_id = $2 ORDER BY value",
    )
    .bind(sid)
    .bind(id)
    .fetch_all(state.db.pool())
    .await?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
}

async fn filters_list(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
) -> ApiResult {
    ok(json!({"status": "found", "referrer_filters": list_filters(&state, &sid, &id).await?}))
}

async fn filter_create(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let b = body(&b);
    let Some(value) = text(&b, "referrer_filter").filter(|v| !v.trim().is_empty()) else {
        return Ok((
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "referrer filter can't be blank"})),
        )
            .into_response());
    };
    add_filter(&state, &sid, &id, &value).await?;
    changed(&state).await?;
    created(json!({"status": "created", "referrer_filter": value}))
}

async fn filter_delete(
    State(state): State<AppState>,
    Path((sid, id, value)): Path<(String, String, String)>,
) -> ApiResult {
    // The value travels URL-safe-Base64 encoded; raw values are accepted as a fallback.
    let decoded = base64::engine::general_purpose::URL_SAFE
        .decode(value.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let mut deleted = 0;
    for candidate in decoded.iter().chain(std::iter::once(&value)) {
        deleted += sqlx::query(
            "DELETE FROM referrer_filters WHERE service_id = $1 AND app_id = $2 AND value = $3",
        )
        .bind(&sid)
        .bind(&id)
        .bind(candidate)
        .execute(state.db.pool())
        .await?
        .rows_affected();
    }
    if deleted == 0 {
        return Err(ApiError::NotFound("referrer filter not found".into()));
    }
    changed(&state).await?;
    ok(json!({"status": "deleted"}))
}

// ---------------------------------------------------------------- metrics

async fn load_metric(
    state: &AppState,
    sid: &str,
    id: &str,
) -> Result<Option<(String, Option<String>)>, ApiError> {
    Ok(
        sqlx::query_as("SELECT name, parent_id FROM metrics WHERE service_id = $1 AND id = $2")
            .bind(sid)
            .bind(id)
            .fetch_optional(state.db.pool())
            .await?,
    )
}

fn metric_json(sid: &str, id: &str, name: &str, parent: &Option<String>) -> Value {
    json!({"service_id": sid, "id": id, "parent_id": parent, "name": name})
}

async fn save_metric(state: &AppState, sid: &str, id: &str, b: &Value) -> Result<Value, ApiError> {
    let m = section(b, "metric")?;
    let existing = load_metric(state, sid, id).await?;
    let name = text(m, "name")
        .filter(|n| !n.is_empty())
        .or_else(|| existing.as_ref().map(|e| e.0.clone()))
        .ok_or_else(|| ApiError::BadRequest("Metric has no name".into()))?;
    let parent = if m.get("parent_id").is_some() {
        text(m, "parent_id").filter(|p| !p.is_empty())
    } else {
        existing.and_then(|e| e.1)
    };
    sqlx::query(
        "INSERT INTO metrics (service_id, id, name, parent_id) VALUES ($1,$2,$3,$4)
         ON CONFLICT (service_id, id) DO UPDATE SET name = EXCLUDED.name, parent_id = EXCLUDED.parent_id",
    )
    .bind(sid)
    .bind(id)
    .bind(&name)
    .bind(&parent)
    .execute(state.db.pool())
    .await?;
    changed(state).await?;
    Ok(metric_json(sid, id, &name, &parent))
}

async fn metric_post(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let m = save_metric(&state, &sid, &id, &body(&b)).await?;
    created(json!({"status": "created", "metric": m}))
}

async fn metric_put(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let m = save_metric(&state, &sid, &id, &body(&b)).await?;
    ok(json!({"status": "modified", "metric": m}))
}

async fn metric_get(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
) -> ApiResult {
    let (name, parent) = load_metric(&state, &sid, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("metric not found".into()))?;
    ok(json!({"status": "found", "metric": metric_json(&sid, &id, &name, &parent)}))
}

async fn metric_delete(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
) -> ApiResult {
    load_metric(&state, &sid, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("metric not found".into()))?;
    sqlx::query("DELETE FROM metrics WHERE service_id = $1 AND id = $2")
        .bind(&sid)
        .bind(&id)
        .execute(state.db.pool())
        .await?;
    changed(&state).await?;
    ok(json!({"status": "deleted"}))
}

// ---------------------------------------------------------------- usage limits

fn limit_json(sid: &str, plan: &str, metric: &str, period: &str, value: i64) -> Value {
    let mut v = json!({"service_id": sid, "plan_id": plan, "metric_id": metric});
    v[period] = json!(value);
    v
}

async fn limit_get(
    State(state): State<AppState>,
    Path((sid, plan, metric, period)): Path<(String, String, String, String)>,
) -> ApiResult {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT value FROM usage_limits WHERE service_id=$1 AND plan_id=$2 AND metric_id=$3 AND period=$4",
    )
    .bind(&sid)
    .bind(&plan)
    .bind(&metric)
    .bind(&period)
    .fetch_optional(state.db.pool())
    .await?;
    let (value,) = row.ok_or_else(|| ApiError::NotFound("usagelimit not found".into()))?;
    ok(json!({"status": "found", "usagelimit": limit_json(&sid, &plan, &metric, &period, value)}))
}

async fn limit_put(
    State(state): State<AppState>,
    Path((sid, plan, metric, period)): Path<(String, String, String, String)>,
    b: Bytes,
) -> ApiResult {
    let b = body(&b);
    let l = section(&b, "usagelimit")?;
    if !PERIODS.contains(&period.as_str()) {
        return Err(ApiError::BadRequest(format!("invalid period '{period}'")));
    }
    let value = match l.get(&period) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::BadRequest(format!("missing parameter '{period}'")))?;
    sqlx::query(
        "INSERT INTO usage_limits (service_id, plan_id, metric_id, period, value) VALUES ($1,$2,$3,$4,$5)
         ON CONFLICT (service_id, plan_id, metric_id, period) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(&sid)
    .bind(&plan)
    .bind(&metric)
    .bind(&period)
    .bind(value)
    .execute(state.db.pool())
    .await?;
    changed(&state).await?;
    ok(
        json!({"status": "modified", "usagelimit": limit_json(&sid, &plan, &metric, &period, value)}),
    )
}

async fn limit_delete(
    State(state): State<AppState>,
    Path((sid, plan, metric, period)): Path<(String, String, String, String)>,
) -> ApiResult {
    sqlx::query(
        "DELETE FROM usage_limits WHERE service_id=$1 AND plan_id=$2 AND metric_id=$3 AND period=$4",
    )
    .bind(&sid)
    .bind(&plan)
    .bind(&metric)
    .bind(&period)
    .execute(state.db.pool())
    .await?;
    changed(&state).await?;
    ok(json!({"status": "deleted"}))
}

// ---------------------------------------------------------------- service tokens

async fn tokens_create(State(state): State<AppState>, b: Bytes) -> ApiResult {
    let b = body(&b);
    let tokens = section(&b, "service_tokens")?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut pairs = Vec::new();
    for (token, v) in &tokens {
        if token.trim().is_empty() {
            return Err(ApiError::Unprocessable(
                "Service token cannot be blank".into(),
            ));
        }
        let Some(sid) = text(v, "service_id").filter(|s| !s.is_empty()) else {
            return Err(ApiError::Unprocessable("Service ID cannot be blank".into()));
        };
        pairs.push((token.clone(), sid));
    }
    for (token, sid) in pairs {
        sqlx::query(
            "INSERT INTO service_tokens (token, service_id) VALUES ($1,$2) ON CONFLICT DO NOTHING",
        )
        .bind(token)
        .bind(sid)
        .execute(state.db.pool())
        .await?;
    }
    changed(&state).await?;
    created(json!({"status": "created"}))
}

async fn tokens_delete(State(state): State<AppState>, b: Bytes) -> ApiResult {
    let b = body(&b);
    let list = section(&b, "service_tokens")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut count = 0;
    for t in &list {
        if let (Some(token), Some(sid)) = (text(t, "service_token"), text(t, "service_id")) {
            count += sqlx::query("DELETE FROM service_tokens WHERE token = $1 AND service_id = $2")
                .bind(token)
                .bind(sid)
                .execute(state.db.pool())
                .await?
                .rows_affected();
        }
    }
    changed(&state).await?;
    ok(json!({"status": "deleted", "count": count}))
}

async fn token_exists(
    State(state): State<AppState>,
    Path((token, sid)): Path<(String, String)>,
) -> ApiResult {
    let row: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM service_tokens WHERE token = $1 AND service_id = $2")
            .bind(&token)
            .bind(&sid)
            .fetch_optional(state.db.pool())
            .await?;
    Ok(if row.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
    .into_response())
}

async fn token_provider_key(
    State(state): State<AppState>,
    Path((token, sid)): Path<(String, String)>,
) -> ApiResult {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT s.provider_key FROM service_tokens t JOIN services s ON s.id = t.service_id
         WHERE t.token = $1 AND t.service_id = $2",
    )
    .bind(&token)
    .bind(&sid)
    .fetch_optional(state.db.pool())
    .await?;
    let (pk,) =
        row.ok_or_else(|| ApiError::NotFound("token/service combination not found".into()))?;
    ok(json!({"status": "found", "provider_key": pk}))
}

// ---------------------------------------------------------------- utilization and errors

async fn utilization(
    State(state): State<AppState>,
    Path((sid, id)): Path<(String, String)>,
) -> ApiResult {
    let app = load_app(&state, &sid, &id)
        .await?
        .ok_or_else(app_not_found)?;
    let now = chrono::Utc::now();
    let limits: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT l.metric_id, m.name, l.period, l.value FROM usage_limits l
         JOIN metrics m ON m.service_id = l.service_id AND m.id = l.metric_id
         WHERE l.service_id = $1 AND l.plan_id = $2 ORDER BY m.name, l.period",
    )
    .bind(&sid)
    .bind(app.plan_id.clone().unwrap_or_default())
    .fetch_all(state.db.pool())
    .await?;
    let mut out = Vec::new();
    for (metric_id, name, period, max) in limits {
        let Some(p) = crate::period::Period::parse(&period) else {
            continue;
        };
        let current = state
            .counters
            .current(state.db.pool(), &sid, &id, &metric_id, p, now)
            .await?;
        out.push(json!({"period": period, "metric_name": name, "max_value": max, "current_value": current}));
    }
    ok(json!({"status": "found", "utilization": out}))
}

async fn errors_list(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let per_page: i64 = q
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(100);
    let page: i64 = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(1);
    // One snapshot for the page and the count, so a report job storing an error between the two
    // reads cannot produce `count: 1` with an empty page.
    let mut tx = state.db.pool().begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, String, chrono::DateTime<chrono::Utc>, Value)> = sqlx::query_as(
        "SELECT code, message, created_at, context_info FROM integration_errors WHERE service_id = $1
         ORDER BY id DESC LIMIT $2 OFFSET $3",
    )
    .bind(&sid)
    .bind(per_page)
    .bind((page - 1) * per_page)
    .fetch_all(&mut *tx)
    .await?;
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM integration_errors WHERE service_id = $1")
            .bind(&sid)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    let errors: Vec<Value> = rows
        .into_iter()
        .map(|(code, message, ts, ctx)| {
            json!({"code": code, "message": message,
                   "timestamp": ts.format("%Y-%m-%d %H:%M:%S %z").to_string(), "context_info": ctx})
        })
        .collect();
    ok(json!({"status": "found", "errors": errors, "count": count}))
}

async fn errors_delete(State(state): State<AppState>, Path(sid): Path<String>) -> ApiResult {
    sqlx::query("DELETE FROM integration_errors WHERE service_id = $1")
        .bind(&sid)
        .execute(state.db.pool())
        .await?;
    ok(json!({"status": "deleted"}))
}
