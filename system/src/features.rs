//! Service features (`/admin/api/services/{id}/features`) and the application plans that enable them
//! (`/admin/api/application_plans/{id}/features`). Portal-only data: nothing is pushed to backend or gateway.

use crate::api::{collection, created, deleted, id, link, ok, Req};
use crate::db::{self, all, must, Bind};
use crate::error::{ApiError, ApiResult, Errors};
use crate::plans::find_plan;
use crate::services::load;
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};

/// Attributes porta's `wrap_parameters Feature` recognises; an update or create naming none lacks the wrapper.
const ATTRS: [&str; 5] = ["name", "system_name", "description", "scope", "visible"];

fn render(row: &Value) -> Value {
    let sid = &row["service_id"];
    let fid = &row["id"];
    // Stored as porta's class names, shown underscored.
    let scope = match row["scope"].as_str() {
        Some("ServicePlan") => "service_plan",
        _ => "application_plan",
    };
    json!({
        "id": fid, "name": row["name"], "system_name": row["system_name"], "scope": scope,
        "visible": row["visible"], "description": row["description"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "links": [
            link("self", format!("/admin/api/services/{sid}/features/{fid}")),
            link("service", format!("/admin/api/services/{sid}")),
        ],
    })
}

async fn find(conn: &mut sqlx::PgConnection, sid: i64, fid: i64) -> ApiResult<Value> {
    must(
        conn,
        "SELECT to_jsonb(f) FROM features f WHERE f.id = $1 AND f.service_id = $2",
        &[Bind::I(fid), Bind::I(sid)],
    )
    .await
}

pub async fn list(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(f) FROM features f WHERE f.service_id = $1 ORDER BY f.id",
        &[Bind::I(sid)],
    )
    .await?;
    Ok(collection(
        "features",
        "feature",
        rows.iter().map(render).collect(),
    ))
}

pub async fn show(
    State(state): State<AppState>,
    Path((sid, fid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (sid, fid) = (id(&sid)?, id(&fid)?);
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    Ok(ok("feature", render(&find(&mut conn, sid, fid).await?)))
}

/// `ApplicationPlan` / `ServicePlan`; the underscored forms this API renders are accepted too.
fn scope_of(raw: &str) -> Option<&'static str> {
    match raw {
        "ApplicationPlan" | "application_plan" => Some("ApplicationPlan"),
        "ServicePlan" | "service_plan" => Some("ServicePlan"),
        _ => None,
    }
}

async fn save(state: &AppState, sid: i64, fid: Option<i64>, req: &Req) -> ApiResult<Value> {
    let p = req.params.wrapped("feature")?;
    if !ATTRS.iter().any(|k| p.has(k)) {
        return Err(ApiError::BadRequest(
            "Required parameter missing: feature".into(),
        ));
    }
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, state, sid).await?;
    let current = match fid {
        Some(fid) => find(&mut tx, sid, fid).await?,
        None => json!({"scope": "ApplicationPlan", "visible": true}),
    };
    let mut errors = Errors::default();
    let name = p
        .opt_str("name")
        .unwrap_or_else(|| current["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if name.chars().count() > 255 {
        errors.add("name", "is too long (maximum is 255 characters)");
    }
    let description = p
        .opt_str("description")
        .unwrap_or_else(|| current["description"].as_str().map(str::to_owned));
    let scope = match p.str("scope") {
        Some(raw) => match scope_of(&raw) {
            Some(s) => s.to_owned(),
            None => {
                errors.add("scope", "must be ApplicationPlan or ServicePlan");
                raw
            }
        },
        None => current["scope"]
            .as_str()
            .unwrap_or("ApplicationPlan")
            .to_owned(),
    };
    let visible = p
        .bool("visible")
        .unwrap_or_else(|| current["visible"].as_bool().unwrap_or(true));
    // system_name is generated from the name and never changes afterwards.
    let system_name = match fid {
        Some(_) => current["system_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        None => {
            let sn = p
                .str("system_name")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| db::generated_system_name(&name, "feature"));
            if !db::valid_system_name(&sn) {
                errors.add(
                    "system_name",
                    "invalid. Only ASCII letters, numbers, dashes and underscores are allowed.",
                );
            } else {
                let taken: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM features WHERE service_id = $1 AND system_name = $2)",
                )
                .bind(sid)
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
    errors.check()?;
    let fid: i64 = match fid {
        Some(fid) => sqlx::query_scalar(
            "UPDATE features SET name = $2, description = $3, scope = $4, visible = $5, updated_at = now() \
             WHERE id = $1 RETURNING id",
        )
        .bind(fid),
        None => sqlx::query_scalar(
            "INSERT INTO features (service_id, name, description, scope, visible, system_name) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(sid),
    }
    .bind(&name)
    .bind(&description)
    .bind(&scope)
    .bind(visible)
    .bind(&system_name)
    .fetch_one(&mut *tx)
    .await?;
    let row = find(&mut tx, sid, fid).await?;
    tx.commit().await?;
    Ok(render(&row))
}

pub async fn create(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    Ok(created(
        "feature",
        save(&state, id(&sid)?, None, &req).await?,
    ))
}

pub async fn update(
    State(state): State<AppState>,
    Path((sid, fid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(ok(
        "feature",
        save(&state, id(&sid)?, Some(id(&fid)?), &req).await?,
    ))
}

pub async fn destroy(
    State(state): State<AppState>,
    Path((sid, fid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (sid, fid) = (id(&sid)?, id(&fid)?);
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    find(&mut conn, sid, fid).await?;
    sqlx::query("DELETE FROM features WHERE id = $1")
        .bind(fid)
        .execute(&mut *conn)
        .await?;
    Ok(deleted())
}

// ---------------------------------------------------------------------------------------------------------------
// Features enabled on an application plan

pub async fn plan_list(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let pid = id(&pid)?;
    let mut conn = state.db.pool().acquire().await?;
    find_plan(&mut conn, &state, pid).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(f) FROM features f JOIN features_plans fp ON fp.feature_id = f.id \
         WHERE fp.plan_id = $1 ORDER BY f.id",
        &[Bind::I(pid)],
    )
    .await?;
    Ok(collection(
        "features",
        "feature",
        rows.iter().map(render).collect(),
    ))
}

/// `POST …/features.json` with `feature_id`: the feature must belong to the plan's service.
pub async fn plan_enable(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let pid = id(&pid)?;
    let mut tx = state.db.pool().begin().await?;
    let plan = find_plan(&mut tx, &state, pid).await?;
    let sid = plan["service_id"].as_i64().unwrap_or_default();
    let fid = match req.params.int("feature_id") {
        Some(Ok(fid)) => fid,
        _ => return Err(ApiError::NotFound),
    };
    let row = find(&mut tx, sid, fid).await?;
    // porta's FeaturesPlan: a feature scoped to service plans cannot be enabled on an application plan.
    if row["scope"] != "ApplicationPlan" {
        return Err(ApiError::Invalid(Errors::one("plan_type", "mismatch")));
    }
    sqlx::query(
        "INSERT INTO features_plans (plan_id, feature_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(pid)
    .bind(fid)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(created("feature", render(&row)))
}

pub async fn plan_disable(
    State(state): State<AppState>,
    Path((pid, fid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (pid, fid) = (id(&pid)?, id(&fid)?);
    let mut conn = state.db.pool().acquire().await?;
    find_plan(&mut conn, &state, pid).await?;
    let gone = sqlx::query("DELETE FROM features_plans WHERE plan_id = $1 AND feature_id = $2")
        .bind(pid)
        .bind(fid)
        .execute(&mut *conn)
        .await?;
    if gone.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    Ok(deleted())
}
