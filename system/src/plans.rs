//! Application plans and their usage limits.

use crate::api::{collection, created, deleted, id, link, ok, paged, Page, Req};
use crate::db::{self, all, must, Bind, Tx};
use crate::error::{ApiError, ApiResult, Errors};
use crate::services::load;
use crate::{outbox, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub const PERIODS: [&str; 7] = ["eternity", "year", "month", "week", "day", "hour", "minute"];

pub fn render_plan(row: &Value) -> Value {
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let pid = row["id"].as_i64().unwrap_or(0);
    json!({
        "id": pid, "name": row["name"], "state": row["state"], "setup_fee": row["setup_fee"],
        "cost_per_month": row["cost_per_month"], "trial_period_days": row["trial_period_days"],
        "cancellation_period": 0, "approval_required": row["approval_required"], "default": row["is_default"],
        "custom": !row["original_id"].is_null(), "system_name": row["system_name"], "description": row["description"],
        "service_id": sid, "created_at": row["created_at"], "updated_at": row["updated_at"],
        "links": [
            link("service", format!("/admin/api/services/{sid}")),
            link("self", format!("/admin/api/services/{sid}/application_plans/{pid}")),
        ],
    })
}

pub async fn find_plan(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    pid: i64,
) -> ApiResult<Value> {
    must(
        conn,
        "SELECT to_jsonb(p) FROM plans p JOIN services s ON s.id = p.service_id WHERE p.id = $1 AND s.provider_id = $2 AND s.state <> 'deleted'",
        &[Bind::I(pid), Bind::I(state.provider_id)],
    )
    .await
}

async fn plan_of(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    sid: i64,
    pid: i64,
) -> ApiResult<Value> {
    let plan = find_plan(conn, state, pid).await?;
    if plan["service_id"].as_i64() != Some(sid) {
        return Err(ApiError::NotFound);
    }
    Ok(plan)
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
        "SELECT to_jsonb(p) FROM plans p WHERE service_id = $1 AND original_id IS NULL ORDER BY id",
        &[Bind::I(sid)],
    )
    .await?;
    Ok(collection(
        "plans",
        "application_plan",
        rows.iter().map(render_plan).collect(),
    ))
}

pub async fn list_all(State(state): State<AppState>, _req: Req) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(p) FROM plans p JOIN services s ON s.id = p.service_id WHERE s.provider_id = $1 AND s.state <> 'deleted' AND p.original_id IS NULL ORDER BY p.id",
        &[Bind::I(state.provider_id)],
    )
    .await?;
    Ok(collection(
        "plans",
        "application_plan",
        rows.iter().map(render_plan).collect(),
    ))
}

pub async fn show(
    State(state): State<AppState>,
    Path((sid, pid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ok(
        "application_plan",
        render_plan(&plan_of(&mut conn, &state, id(&sid)?, id(&pid)?).await?),
    ))
}

fn money(p: &crate::params::Params, key: &str, current: f64, errors: &mut Errors) -> f64 {
    match p.str(key) {
        None => current,
        Some(s) if s.trim().is_empty() => 0.0,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(v) if v >= 0.0 && v.is_finite() => v,
            Ok(_) => {
                errors.add(key, "must be greater than or equal to 0");
                current
            }
            Err(_) => {
                errors.add(key, "is not a number");
                current
            }
        },
    }
}

async fn save(state: &AppState, sid: i64, pid: Option<i64>, req: &Req) -> ApiResult<Value> {
    let p = req.params.wrapped("application_plan")?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, state, sid).await?;
    let current = match pid {
        Some(pid) => plan_of(&mut tx, state, sid, pid).await?,
        None => {
            json!({"state": "hidden", "cost_per_month": 0.0, "setup_fee": 0.0, "approval_required": false})
        }
    };
    let mut errors = Errors::default();
    let name = p
        .str("name")
        .or_else(|| current["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if name.trim().is_empty() {
        errors.add("name", "can't be blank");
    }
    let system_name = match pid {
        Some(_) => current["system_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        None => {
            let sn = p
                .str("system_name")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| db::system_name_from(&name));
            if !name.trim().is_empty() || p.has("system_name") {
                if !db::valid_system_name(&sn) {
                    errors.add(
                        "system_name",
                        "invalid. Only ASCII letters, numbers, dashes and underscores are allowed.",
                    );
                } else {
                    let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM plans WHERE service_id = $1 AND system_name = $2)")
                        .bind(sid)
                        .bind(&sn)
                        .fetch_one(&mut *tx)
                        .await?;
                    if taken {
                        errors.add("system_name", "has already been taken");
                    }
                }
            }
            sn
        }
    };
    let mut plan_state = current["state"].as_str().unwrap_or("hidden").to_owned();
    if let Some(ev) = p.str("state_event") {
        match ev.as_str() {
            "publish" => plan_state = "published".into(),
            "hide" => plan_state = "hidden".into(),
            _ => errors.add("state_event", "is invalid"),
        }
    }
    let cost = money(
        &p,
        "cost_per_month",
        current["cost_per_month"].as_f64().unwrap_or(0.0),
        &mut errors,
    );
    let setup = money(
        &p,
        "setup_fee",
        current["setup_fee"].as_f64().unwrap_or(0.0),
        &mut errors,
    );
    let trial = match p.int("trial_period_days") {
        Some(Ok(d)) if d >= 0 => Some(d),
        Some(_) => {
            errors.add("trial_period_days", "is not a number");
            None
        }
        None => current["trial_period_days"].as_i64(),
    };
    let approval = p
        .bool("approval_required")
        .unwrap_or(current["approval_required"].as_bool().unwrap_or(false));
    let description = p
        .opt_str("description")
        .unwrap_or_else(|| current["description"].as_str().map(str::to_owned));
    errors.check()?;
    let new_id: i64 = match pid {
        Some(pid) => sqlx::query_scalar(
            "UPDATE plans SET name=$2, system_name=$3, state=$4, cost_per_month=$5, setup_fee=$6, trial_period_days=$7, approval_required=$8, description=$9, updated_at=now() WHERE id=$1 RETURNING id",
        )
        .bind(pid),
        None => sqlx::query_scalar(
            "INSERT INTO plans (service_id, name, system_name, state, cost_per_month, setup_fee, trial_period_days, approval_required, description) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING id",
        )
        .bind(sid),
    }
    .bind(&name)
    .bind(&system_name)
    .bind(&plan_state)
    .bind(cost)
    .bind(setup)
    .bind(trial)
    .bind(approval)
    .bind(description)
    .fetch_one(&mut *tx)
    .await?;
    if pid.is_some() && current["name"].as_str() != Some(name.as_str()) {
        // Backend keeps plan_name per application.
        let apps: Vec<i64> = sqlx::query_scalar("SELECT id FROM applications WHERE plan_id = $1")
            .bind(new_id)
            .fetch_all(&mut *tx)
            .await?;
        for app in apps {
            crate::apps::push_app(&mut tx, app, None).await?;
        }
    }
    let row = plan_of(&mut tx, state, sid, new_id).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(render_plan(&row))
}

pub async fn create(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    Ok(created(
        "application_plan",
        save(&state, id(&sid)?, None, &req).await?,
    ))
}

pub async fn update(
    State(state): State<AppState>,
    Path((sid, pid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(ok(
        "application_plan",
        save(&state, id(&sid)?, Some(id(&pid)?), &req).await?,
    ))
}

pub async fn make_default(
    State(state): State<AppState>,
    Path((sid, pid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (sid, pid) = (id(&sid)?, id(&pid)?);
    let mut tx = state.db.pool().begin().await?;
    plan_of(&mut tx, &state, sid, pid).await?;
    sqlx::query(
        "UPDATE plans SET is_default = (id = $2), updated_at = now() WHERE service_id = $1",
    )
    .bind(sid)
    .bind(pid)
    .execute(&mut *tx)
    .await?;
    let row = plan_of(&mut tx, &state, sid, pid).await?;
    tx.commit().await?;
    Ok(ok("application_plan", render_plan(&row)))
}

pub async fn destroy(
    State(state): State<AppState>,
    Path((sid, pid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (sid, pid) = (id(&sid)?, id(&pid)?);
    let mut tx = state.db.pool().begin().await?;
    plan_of(&mut tx, &state, sid, pid).await?;
    let used: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM applications WHERE plan_id = $1)")
            .bind(pid)
            .fetch_one(&mut *tx)
            .await?;
    if used {
        return Err(ApiError::Refused(Errors::one(
            "base",
            "This application plan cannot be deleted! At least one application depends on it.",
        )));
    }
    let customized: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM plans WHERE original_id = $1)")
            .bind(pid)
            .fetch_one(&mut *tx)
            .await?;
    if customized {
        // porta's message, with its double space.
        return Err(ApiError::Refused(Errors::one(
            "base",
            "This application plan cannot be deleted!  At least one customized version of this application plan exists.",
        )));
    }
    let limits: Vec<(i64, String)> =
        sqlx::query_as("SELECT metric_id, period FROM usage_limits WHERE plan_id = $1")
            .bind(pid)
            .fetch_all(&mut *tx)
            .await?;
    for (mid, period) in limits {
        outbox::backend(
            &mut tx,
            "DELETE",
            format!("/internal/services/{sid}/plans/{pid}/usagelimits/{mid}/{period}"),
            None,
        )
        .await?;
    }
    sqlx::query("DELETE FROM plans WHERE id = $1")
        .bind(pid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}

/// Copies `plan` (a plan row) into a hidden custom plan with its limits, pricing rules and features, as porta's
/// `ApplicationPlan#customize`; queues the copied limits for backend and returns the new plan's id.
pub async fn copy_as_custom(tx: &mut Tx<'_>, plan: &Value) -> ApiResult<i64> {
    let pid = plan["id"].as_i64().unwrap_or_default();
    let sid = plan["service_id"].as_i64().unwrap_or_default();
    let base: String = plan["system_name"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let name = format!("{} (custom)", plan["name"].as_str().unwrap_or_default());
    // porta suffixes the current time's digits; microseconds keep two customizations in one second apart.
    let system_name = format!("{base}_custom_{}", chrono::Utc::now().timestamp_micros());
    let custom: i64 = sqlx::query_scalar(
        "INSERT INTO plans (service_id, name, system_name, state, description, approval_required, trial_period_days, \
         cost_per_month, setup_fee, original_id) \
         SELECT service_id, $2, $3, 'hidden', description, approval_required, trial_period_days, cost_per_month, \
         setup_fee, id FROM plans WHERE id = $1 RETURNING id",
    )
    .bind(pid)
    .bind(&name)
    .bind(&system_name)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO usage_limits (plan_id, metric_id, period, value) \
         SELECT $2, metric_id, period, value FROM usage_limits WHERE plan_id = $1 ORDER BY id",
    )
    .bind(pid)
    .bind(custom)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO pricing_rules (plan_id, metric_id, min, max, cost_per_unit) \
         SELECT $2, metric_id, min, max, cost_per_unit FROM pricing_rules WHERE plan_id = $1 ORDER BY id",
    )
    .bind(pid)
    .bind(custom)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO features_plans (plan_id, feature_id) SELECT $2, feature_id FROM features_plans WHERE plan_id = $1",
    )
    .bind(pid)
    .bind(custom)
    .execute(&mut **tx)
    .await?;
    let limits = all(
        tx,
        &format!("{LIMIT_SQL} WHERE l.plan_id = $1 ORDER BY l.id"),
        &[Bind::I(custom)],
    )
    .await?;
    for limit in &limits {
        push_limit(tx, sid, limit).await?;
    }
    Ok(custom)
}

/// Deletes a custom plan (no application may still use it), unqueuing its limits from backend first.
pub async fn drop_custom(tx: &mut Tx<'_>, sid: i64, custom: i64) -> ApiResult<()> {
    let limits: Vec<(i64, String)> =
        sqlx::query_as("SELECT metric_id, period FROM usage_limits WHERE plan_id = $1")
            .bind(custom)
            .fetch_all(&mut **tx)
            .await?;
    for (mid, period) in limits {
        outbox::backend(
            tx,
            "DELETE",
            format!("/internal/services/{sid}/plans/{custom}/usagelimits/{mid}/{period}"),
            None,
        )
        .await?;
    }
    sqlx::query("DELETE FROM plans WHERE id = $1")
        .bind(custom)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Limits

fn render_limit(row: &Value) -> Value {
    let pid = row["plan_id"].as_i64().unwrap_or(0);
    let mid = row["metric_id"].as_i64().unwrap_or(0);
    let lid = row["id"].as_i64().unwrap_or(0);
    json!({
        "id": lid, "period": row["period"], "value": row["value"], "metric_id": mid, "plan_id": pid,
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "links": [
            link("self", format!("/admin/api/application_plans/{pid}/metrics/{mid}/limits/{lid}")),
            link("metric", format!("/admin/api/services/{}/metrics/{mid}", row["service_id"])),
            link("plan", format!("/admin/api/services/{}/application_plans/{pid}", row["service_id"])),
        ],
    })
}

const LIMIT_SQL: &str = "SELECT to_jsonb(l) || jsonb_build_object('service_id', p.service_id) FROM usage_limits l JOIN plans p ON p.id = l.plan_id";

async fn push_limit(tx: &mut Tx<'_>, sid: i64, row: &Value) -> ApiResult<()> {
    let (pid, mid, period) = (
        &row["plan_id"],
        &row["metric_id"],
        row["period"].as_str().unwrap_or(""),
    );
    outbox::backend(
        tx,
        "PUT",
        format!("/internal/services/{sid}/plans/{pid}/usagelimits/{mid}/{period}"),
        Some(json!({"usagelimit": {period: row["value"]}})),
    )
    .await
}

pub async fn limits_of_plan(
    State(state): State<AppState>,
    Path(pid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let pid = id(&pid)?;
    let page = Page::from(&req.params);
    let mut conn = state.db.pool().acquire().await?;
    find_plan(&mut conn, &state, pid).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_limits WHERE plan_id = $1")
        .bind(pid)
        .fetch_one(&mut *conn)
        .await?;
    let rows = all(
        &mut conn,
        &format!("{LIMIT_SQL} WHERE l.plan_id = $1 ORDER BY l.id LIMIT $2 OFFSET $3"),
        &[Bind::I(pid), Bind::I(page.per_page), Bind::I(page.offset())],
    )
    .await?;
    Ok(Json(paged(
        "limits",
        "limit",
        rows.iter().map(render_limit).collect(),
        page,
        total,
    ))
    .into_response())
}

pub async fn plan_and_metric(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    pid: i64,
    mid: i64,
) -> ApiResult<i64> {
    let plan = find_plan(conn, state, pid).await?;
    let sid = plan["service_id"].as_i64().unwrap_or(0);
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM metrics WHERE id = $1 AND service_id = $2)",
    )
    .bind(mid)
    .bind(sid)
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Err(ApiError::NotFound);
    }
    Ok(sid)
}

pub async fn limits_of_metric(
    State(state): State<AppState>,
    Path((pid, mid)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (pid, mid) = (id(&pid)?, id(&mid)?);
    let mut conn = state.db.pool().acquire().await?;
    plan_and_metric(&mut conn, &state, pid, mid).await?;
    let rows = all(
        &mut conn,
        &format!("{LIMIT_SQL} WHERE l.plan_id = $1 AND l.metric_id = $2 ORDER BY l.id"),
        &[Bind::I(pid), Bind::I(mid)],
    )
    .await?;
    Ok(collection(
        "limits",
        "limit",
        rows.iter().map(render_limit).collect(),
    ))
}

async fn find_limit(
    conn: &mut sqlx::PgConnection,
    pid: i64,
    mid: i64,
    lid: i64,
) -> ApiResult<Value> {
    must(
        conn,
        &format!("{LIMIT_SQL} WHERE l.id = $1 AND l.plan_id = $2 AND l.metric_id = $3"),
        &[Bind::I(lid), Bind::I(pid), Bind::I(mid)],
    )
    .await
}

pub async fn limit_show(
    State(state): State<AppState>,
    Path((pid, mid, lid)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (pid, mid, lid) = (id(&pid)?, id(&mid)?, id(&lid)?);
    let mut conn = state.db.pool().acquire().await?;
    plan_and_metric(&mut conn, &state, pid, mid).await?;
    Ok(ok(
        "limit",
        render_limit(&find_limit(&mut conn, pid, mid, lid).await?),
    ))
}

async fn save_limit(
    state: &AppState,
    pid: i64,
    mid: i64,
    lid: Option<i64>,
    req: &Req,
) -> ApiResult<Value> {
    let p = req.params.wrapped("usage_limit")?;
    let mut tx = state.db.pool().begin().await?;
    let sid = plan_and_metric(&mut tx, state, pid, mid).await?;
    let current = match lid {
        Some(lid) => Some(find_limit(&mut tx, pid, mid, lid).await?),
        None => None,
    };
    let mut errors = Errors::default();
    let period = p
        .str("period")
        .or_else(|| {
            current
                .as_ref()
                .and_then(|c| c["period"].as_str().map(str::to_owned))
        })
        .unwrap_or_default();
    if !PERIODS.contains(&period.as_str()) {
        errors.add("period", "is invalid");
    } else {
        let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM usage_limits WHERE plan_id = $1 AND metric_id = $2 AND period = $3 AND id <> $4)")
            .bind(pid)
            .bind(mid)
            .bind(&period)
            .bind(lid.unwrap_or(0))
            .fetch_one(&mut *tx)
            .await?;
        if taken {
            errors.add("period", "has already been taken");
        }
    }
    let value = match p.int("value") {
        Some(Ok(v)) => v.max(0),
        Some(Err(())) => match p.str("value") {
            // Rails casts "12abc" to 12 and non-numeric text to 0.
            Some(s) => s
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .unwrap_or(0),
            None => 0,
        },
        None if p.has("value") => 0,
        None => current
            .as_ref()
            .and_then(|c| c["value"].as_i64())
            .unwrap_or(0),
    };
    errors.check()?;
    if let Some(c) = &current {
        if c["period"].as_str() != Some(period.as_str()) {
            outbox::backend(
                &mut tx,
                "DELETE",
                format!(
                    "/internal/services/{sid}/plans/{pid}/usagelimits/{mid}/{}",
                    c["period"].as_str().unwrap_or("")
                ),
                None,
            )
            .await?;
        }
    }
    let new_id: i64 = match lid {
        Some(lid) => {
            sqlx::query_scalar("UPDATE usage_limits SET period=$2, value=$3, updated_at=now() WHERE id=$1 RETURNING id")
                .bind(lid)
                .bind(&period)
                .bind(value)
                .fetch_one(&mut *tx)
                .await?
        }
        None => {
            sqlx::query_scalar("INSERT INTO usage_limits (plan_id, metric_id, period, value) VALUES ($1,$2,$3,$4) RETURNING id")
                .bind(pid)
                .bind(mid)
                .bind(&period)
                .bind(value)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    let row = find_limit(&mut tx, pid, mid, new_id).await?;
    push_limit(&mut tx, sid, &row).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(render_limit(&row))
}

pub async fn limit_create(
    State(state): State<AppState>,
    Path((pid, mid)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(created(
        "limit",
        save_limit(&state, id(&pid)?, id(&mid)?, None, &req).await?,
    ))
}

pub async fn limit_update(
    State(state): State<AppState>,
    Path((pid, mid, lid)): Path<(String, String, String)>,
    req: Req,
) -> ApiResult<Response> {
    Ok(ok(
        "limit",
        save_limit(&state, id(&pid)?, id(&mid)?, Some(id(&lid)?), &req).await?,
    ))
}

pub async fn limit_delete(
    State(state): State<AppState>,
    Path((pid, mid, lid)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (pid, mid, lid) = (id(&pid)?, id(&mid)?, id(&lid)?);
    let mut tx = state.db.pool().begin().await?;
    let sid = plan_and_metric(&mut tx, &state, pid, mid).await?;
    let row = find_limit(&mut tx, pid, mid, lid).await?;
    sqlx::query("DELETE FROM usage_limits WHERE id = $1")
        .bind(lid)
        .execute(&mut *tx)
        .await?;
    outbox::backend(
        &mut tx,
        "DELETE",
        format!(
            "/internal/services/{sid}/plans/{pid}/usagelimits/{mid}/{}",
            row["period"].as_str().unwrap_or("")
        ),
        None,
    )
    .await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}
