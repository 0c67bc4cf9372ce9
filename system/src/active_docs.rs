//! ActiveDocs (`/admin/api/active_docs`): the provider's OpenAPI documents, each optionally tied to a service.

use crate::api::{collection, created, deleted, id, ok, Req};
use crate::db::{self, all, must, Bind};
use crate::error::{ApiError, ApiResult, Errors};
use crate::swagger;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

/// The attributes porta's `wrap_parameters` recognises; a create naming none of them lacks the wrapper.
const ATTRS: [&str; 7] = [
    "name",
    "system_name",
    "body",
    "description",
    "published",
    "skip_swagger_validations",
    "service_id",
];

/// Docs of deleted services are hidden, as porta's `accessible` scope does.
const VISIBLE_SQL: &str =
    "SELECT to_jsonb(d) FROM api_docs_services d LEFT JOIN services s ON s.id = d.service_id \
     WHERE d.provider_id = $1 AND (d.service_id IS NULL OR s.state <> 'deleted')";

fn render(row: &Value) -> Value {
    json!({
        "id": row["id"],
        "system_name": row["system_name"],
        "name": row["name"],
        "description": row["description"],
        "published": row["published"],
        "skip_swagger_validations": row["skip_swagger_validations"],
        "body": row["body"],
        "service_id": row["service_id"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    })
}

async fn find(conn: &mut sqlx::PgConnection, state: &AppState, doc: i64) -> ApiResult<Value> {
    must(
        conn,
        &format!("{VISIBLE_SQL} AND d.id = $2"),
        &[Bind::I(state.provider_id), Bind::I(doc)],
    )
    .await
}

pub async fn list(State(state): State<AppState>, _req: Req) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    let rows = all(
        &mut conn,
        &format!("{VISIBLE_SQL} ORDER BY d.id"),
        &[Bind::I(state.provider_id)],
    )
    .await?;
    Ok(collection(
        "api_docs",
        "api_doc",
        rows.iter().map(render).collect(),
    ))
}

pub async fn show(
    State(state): State<AppState>,
    Path(doc): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ok(
        "api_doc",
        render(&find(&mut conn, &state, id(&doc)?).await?),
    ))
}

fn service_not_found() -> ApiError {
    ApiError::Custom(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"error": "Service not found"}),
    )
}

fn too_long(errors: &mut Errors, attr: &str, value: Option<&str>, max: usize) {
    if value.is_some_and(|v| v.chars().count() > max) {
        errors.add(attr, format!("is too long (maximum is {max} characters)"));
    }
}

/// Large documents (up to the 4 MiB request limit) are parsed off the async workers.
async fn check_body(body: String, skip: bool) -> ApiResult<swagger::Checked> {
    if body.len() < 256 * 1024 {
        return Ok(swagger::check(&body, skip));
    }
    tokio::task::spawn_blocking(move || swagger::check(&body, skip))
        .await
        .map_err(|e| ApiError::Internal(format!("spec validation task: {e}")))
}

/// Creates (`current` is `None`) or updates an ActiveDocs spec; returns its id.
async fn save(state: &AppState, current: Option<&Value>, req: &Req) -> ApiResult<i64> {
    let p = req.params.wrapped("api_docs_service")?;
    if current.is_none() && !ATTRS.iter().any(|k| p.has(k)) {
        return Err(ApiError::BadRequest(
            "Required parameter missing: api_docs_service".into(),
        ));
    }
    let old_str = |k: &str| current.and_then(|c| c[k].as_str()).map(str::to_owned);
    let old_bool = |k: &str| current.and_then(|c| c[k].as_bool()).unwrap_or(false);
    let mut tx = state.db.pool().begin().await?;
    // porta checks the service before validating anything else, and answers with its own error shape.
    let service_id = if p.has("service_id") {
        match p.str("service_id").filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(raw) => {
                let sid: i64 = raw.trim().parse().map_err(|_| service_not_found())?;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM services WHERE id = $1 AND provider_id = $2 AND state <> 'deleted')",
                )
                .bind(sid)
                .bind(state.provider_id)
                .fetch_one(&mut *tx)
                .await?;
                if !exists {
                    return Err(service_not_found());
                }
                Some(sid)
            }
        }
    } else {
        current.and_then(|c| c["service_id"].as_i64())
    };
    let mut errors = Errors::default();
    let name = p.opt_str("name").unwrap_or_else(|| old_str("name"));
    let body = p.opt_str("body").unwrap_or_else(|| old_str("body"));
    let description = p
        .opt_str("description")
        .unwrap_or_else(|| old_str("description"));
    let published = p.bool("published").unwrap_or_else(|| old_bool("published"));
    let skip = p
        .bool("skip_swagger_validations")
        .unwrap_or_else(|| old_bool("skip_swagger_validations"));
    if name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        errors.add("name", "can't be blank");
    }
    if body.as_deref().is_none_or(|b| b.trim().is_empty()) {
        errors.add("body", "can't be blank");
    }
    too_long(&mut errors, "name", name.as_deref(), 255);
    too_long(&mut errors, "description", description.as_deref(), 65535);
    let system_name = match current {
        Some(c) => c["system_name"].as_str().unwrap_or_default().to_owned(),
        None => {
            let sn = p
                .str("system_name")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| {
                    // porta names the model `service` inside the ApiDocs namespace.
                    db::generated_system_name(name.as_deref().unwrap_or(""), "service")
                });
            if !db::valid_system_name(&sn) {
                errors.add(
                    "system_name",
                    "invalid. Only ASCII letters, numbers, dashes and underscores are allowed.",
                );
            } else {
                let taken: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM api_docs_services WHERE provider_id = $1 AND system_name = $2)",
                )
                .bind(state.provider_id)
                .bind(&sn)
                .fetch_one(&mut *tx)
                .await?;
                if taken {
                    errors.add("system_name", "has already been taken");
                }
            }
            sn
        }
    };
    let checked = check_body(body.clone().unwrap_or_default(), skip).await?;
    for msg in &checked.body_errors {
        errors.add("body", msg.clone());
    }
    if checked.base_path_invalid {
        errors.add("base_path", "is invalid");
    }
    too_long(&mut errors, "base_path", checked.base_path.as_deref(), 255);
    errors.check()?;
    let doc: i64 = match current {
        None => sqlx::query_scalar(
            "INSERT INTO api_docs_services (provider_id, service_id, name, system_name, description, published, \
             skip_swagger_validations, body, base_path, swagger_version) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id",
        )
        .bind(state.provider_id)
        .bind(service_id)
        .bind(&name)
        .bind(&system_name)
        .bind(&description)
        .bind(published)
        .bind(skip)
        .bind(&body)
        .bind(&checked.base_path)
        .bind(&checked.swagger_version)
        .fetch_one(&mut *tx)
        .await?,
        Some(c) => {
            let doc = c["id"].as_i64().unwrap_or_default();
            sqlx::query(
                "UPDATE api_docs_services SET service_id = $2, name = $3, description = $4, published = $5, \
                 skip_swagger_validations = $6, body = $7, base_path = $8, swagger_version = $9, updated_at = now() \
                 WHERE id = $1",
            )
            .bind(doc)
            .bind(service_id)
            .bind(&name)
            .bind(&description)
            .bind(published)
            .bind(skip)
            .bind(&body)
            .bind(&checked.base_path)
            .bind(&checked.swagger_version)
            .execute(&mut *tx)
            .await?;
            doc
        }
    };
    tx.commit().await?;
    Ok(doc)
}

pub async fn create(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let doc = save(&state, None, &req).await?;
    let mut conn = state.db.pool().acquire().await?;
    Ok(created(
        "api_doc",
        render(&find(&mut conn, &state, doc).await?),
    ))
}

pub async fn update(
    State(state): State<AppState>,
    Path(doc): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let doc = id(&doc)?;
    let current = {
        let mut conn = state.db.pool().acquire().await?;
        find(&mut conn, &state, doc).await?
    };
    save(&state, Some(&current), &req).await?;
    let mut conn = state.db.pool().acquire().await?;
    Ok(ok("api_doc", render(&find(&mut conn, &state, doc).await?)))
}

pub async fn destroy(
    State(state): State<AppState>,
    Path(doc): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let doc = id(&doc)?;
    let mut conn = state.db.pool().acquire().await?;
    find(&mut conn, &state, doc).await?;
    sqlx::query("DELETE FROM api_docs_services WHERE id = $1 AND provider_id = $2")
        .bind(doc)
        .bind(state.provider_id)
        .execute(&mut *conn)
        .await?;
    Ok(deleted())
}
