//! Developer accounts, their applications, application keys and referrer filters.

use crate::api::{collection, created, deleted, id, link, ok, paged, random_hex, Page, Req};
use crate::db::{all, must, one, Bind, Tx};
use crate::error::{ApiError, ApiResult, Errors};
use crate::params::Params;
use crate::plans::{find_plan, render_plan};
use crate::services::oidc_json;
use crate::{outbox, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------------------
// Accounts

const ACCOUNT_SQL: &str = "SELECT to_jsonb(a) || jsonb_build_object('users', (SELECT jsonb_agg(jsonb_build_object('id', u.id, 'username', u.username, 'email', u.email)) FROM users u WHERE u.account_id = a.id)) FROM accounts a";

fn render_account(row: &Value) -> Value {
    let aid = row["id"].as_i64().unwrap_or(0);
    json!({
        "id": aid, "created_at": row["created_at"], "updated_at": row["updated_at"], "state": row["state"],
        "org_name": row["org_name"], "credit_card_stored": false, "monthly_billing_enabled": true,
        "monthly_charging_enabled": true, "annotations": {},
        "links": [
            link("self", format!("/admin/api/accounts/{aid}")),
            link("users", format!("/admin/api/accounts/{aid}/users")),
        ],
    })
}

pub async fn find_account(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    aid: i64,
) -> ApiResult<Value> {
    must(
        conn,
        &format!("{ACCOUNT_SQL} WHERE a.id = $1 AND a.provider_id = $2"),
        &[Bind::I(aid), Bind::I(state.provider_id)],
    )
    .await
}

pub async fn signup(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let p = &req.params;
    let mut errors = Errors::default();
    let org = p.str("org_name").unwrap_or_default();
    if org.trim().is_empty() {
        errors.add("org_name", "can't be blank");
    }
    let username = p.str("username").unwrap_or_default();
    let email = p.str("email").unwrap_or_default();
    let mut tx = state.db.pool().begin().await?;
    let plan = match p.int("application_plan_id") {
        Some(Ok(pid)) => Some(find_plan(&mut tx, &state, pid).await?),
        Some(Err(())) => return Err(ApiError::NotFound),
        None => None,
    };
    crate::users::validate(
        &mut tx,
        state.provider_id,
        &username,
        &email,
        None,
        &mut errors,
    )
    .await?;
    errors.check()?;
    let aid: i64 = sqlx::query_scalar("INSERT INTO accounts (provider_id, org_name, state) VALUES ($1, $2, 'approved') RETURNING id")
        .bind(state.provider_id)
        .bind(&org)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO users (account_id, username, email) VALUES ($1, $2, $3)")
        .bind(aid)
        .bind(&username)
        .bind(&email)
        .execute(&mut *tx)
        .await?;
    if let Some(plan) = plan {
        let mut params = Params::default();
        params.0.insert("name".into(), json!("API signup"));
        params.0.insert("description".into(), json!("API signup"));
        insert_app(&mut tx, &state, aid, &plan, &params).await?;
    }
    let row = find_account(&mut tx, &state, aid).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(created("account", render_account(&row)))
}

pub async fn accounts_list(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let page = Page::from(&req.params);
    let filter = req.params.str("state").unwrap_or_default();
    let mut conn = state.db.pool().acquire().await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM accounts WHERE provider_id = $1 AND ($2 = '' OR state = $2)",
    )
    .bind(state.provider_id)
    .bind(&filter)
    .fetch_one(&mut *conn)
    .await?;
    let rows = all(
        &mut conn,
        &format!("{ACCOUNT_SQL} WHERE a.provider_id = $1 AND ($2 = '' OR a.state = $2) ORDER BY a.id LIMIT $3 OFFSET $4"),
        &[Bind::I(state.provider_id), Bind::S(filter), Bind::I(page.per_page), Bind::I(page.offset())],
    )
    .await?;
    Ok(Json(paged(
        "accounts",
        "account",
        rows.iter().map(render_account).collect(),
        page,
        total,
    ))
    .into_response())
}

pub async fn account_show(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ok(
        "account",
        render_account(&find_account(&mut conn, &state, id(&aid)?).await?),
    ))
}

pub async fn account_find(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let p = &req.params;
    let (cond, bind) = if let Some(u) = p.str("username") {
        ("lower(u.username) = lower($2)", Bind::S(u))
    } else if let Some(e) = p.str("email") {
        ("lower(u.email) = lower($2)", Bind::S(e))
    } else if let Some(Ok(uid)) = p.int("user_id") {
        ("u.id = $2", Bind::I(uid))
    } else {
        return Err(ApiError::NotFound);
    };
    let mut conn = state.db.pool().acquire().await?;
    let sql = format!("{ACCOUNT_SQL} WHERE a.provider_id = $1 AND a.id IN (SELECT u.account_id FROM users u WHERE {cond}) LIMIT 1");
    let row = must(&mut conn, &sql, &[Bind::I(state.provider_id), bind]).await?;
    Ok(ok("account", render_account(&row)))
}

pub async fn account_update(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let p = req.params.wrapped("account")?;
    let mut tx = state.db.pool().begin().await?;
    find_account(&mut tx, &state, aid).await?;
    if let Some(org) = p.opt_str("org_name") {
        let Some(org) = org else {
            return Err(ApiError::Invalid(Errors::one("org_name", "can't be blank")));
        };
        sqlx::query("UPDATE accounts SET org_name = $2, updated_at = now() WHERE id = $1")
            .bind(aid)
            .bind(org)
            .execute(&mut *tx)
            .await?;
    }
    let row = find_account(&mut tx, &state, aid).await?;
    tx.commit().await?;
    Ok(ok("account", render_account(&row)))
}

pub async fn account_state(
    State(state): State<AppState>,
    Path((aid, action)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let new_state = match action.as_str() {
        "approve" => "approved",
        "reject" => "rejected",
        "make_pending" => "pending",
        _ => return Err(ApiError::NotFound),
    };
    let mut tx = state.db.pool().begin().await?;
    let current = find_account(&mut tx, &state, aid).await?;
    // porta's state machine moves between pending, approved and rejected, never to the state it is in.
    if current["state"] == new_state {
        let msg = format!("cannot transition via \"{action}\"");
        return Err(ApiError::Invalid(Errors::one("state", &msg)));
    }
    sqlx::query("UPDATE accounts SET state = $2, updated_at = now() WHERE id = $1")
        .bind(aid)
        .bind(new_state)
        .execute(&mut *tx)
        .await?;
    let row = find_account(&mut tx, &state, aid).await?;
    tx.commit().await?;
    Ok(ok("account", render_account(&row)))
}

pub async fn account_delete(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let mut tx = state.db.pool().begin().await?;
    find_account(&mut tx, &state, aid).await?;
    let apps: Vec<i64> = sqlx::query_scalar("SELECT id FROM applications WHERE account_id = $1")
        .bind(aid)
        .fetch_all(&mut *tx)
        .await?;
    for app in apps {
        delete_app_rows(&mut tx, &state, app).await?;
    }
    sqlx::query("DELETE FROM accounts WHERE id = $1")
        .bind(aid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}

// ---------------------------------------------------------------------------------------------------------------
// Applications

const APP_SQL: &str = "SELECT to_jsonb(ap) || jsonb_build_object('backend_version', s.backend_version, 'service_name', s.name, \
    'plan_name', p.name, 'org_name', a.org_name, 'mandatory_app_key', COALESCE((s.attrs->>'mandatory_app_key')::boolean, true), \
    'oidc_configuration', pr.oidc_configuration, \
    'first_key', (SELECT k.value FROM application_keys k WHERE k.application_id = ap.id ORDER BY k.id LIMIT 1)) \
    FROM applications ap JOIN services s ON s.id = ap.service_id JOIN plans p ON p.id = ap.plan_id \
    JOIN accounts a ON a.id = ap.account_id LEFT JOIN proxies pr ON pr.service_id = s.id";

pub fn render_app(row: &Value) -> Value {
    let app = row["id"].as_i64().unwrap_or(0);
    let aid = row["account_id"].as_i64().unwrap_or(0);
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let bv = row["backend_version"].as_str().unwrap_or("1");
    let mut out = json!({
        "id": app, "state": row["state"], "enabled": row["state"] == "live",
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "service_id": sid, "service_name": row["service_name"], "plan_id": row["plan_id"], "plan_name": row["plan_name"],
        "account_id": aid, "org_name": row["org_name"], "first_traffic_at": null, "first_daily_traffic_at": null,
        "name": row["name"], "description": row["description"],
    });
    match bv {
        "1" => {
            out["user_key"] = row["user_key"].clone();
            out["provider_verification_key"] =
                json!(crate::api::digest(row["user_key"].as_str().unwrap_or(""))[7..39]);
        }
        _ => {
            out["application_id"] = row["application_id"].clone();
        }
    }
    if bv == "oauth" || bv == "oidc" {
        out["redirect_url"] = row["redirect_url"].clone();
        out["client_id"] = row["application_id"].clone();
        out["client_secret"] = row["first_key"].clone();
    }
    if bv == "oidc" {
        out["oidc_configuration"] = oidc_json(sid, &row["oidc_configuration"]);
    }
    let base = format!("/admin/api/accounts/{aid}/applications/{app}");
    out["links"] = json!([
        link("self", base.clone()),
        link("service", format!("/admin/api/services/{sid}")),
        link("account", format!("/admin/api/accounts/{aid}")),
        link(
            "plan",
            format!(
                "/admin/api/services/{sid}/application_plans/{}",
                row["plan_id"]
            )
        ),
        link("keys", format!("{base}/keys")),
        link("referrer_filters", format!("{base}/referrer_filters")),
    ]);
    out
}

async fn find_app(conn: &mut sqlx::PgConnection, state: &AppState, app: i64) -> ApiResult<Value> {
    must(
        conn,
        &format!("{APP_SQL} WHERE ap.id = $1 AND ap.provider_id = $2 AND s.state <> 'deleted'"),
        &[Bind::I(app), Bind::I(state.provider_id)],
    )
    .await
}

async fn app_of(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    aid: i64,
    app: i64,
) -> ApiResult<Value> {
    let row = find_app(conn, state, app).await?;
    if row["account_id"].as_i64() != Some(aid) {
        return Err(ApiError::NotFound);
    }
    Ok(row)
}

fn valid_user_key(k: &str) -> bool {
    let simple = !k.is_empty()
        && k.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.');
    let b64 = !k.is_empty()
        && k.len().is_multiple_of(4)
        && base64::engine::general_purpose::STANDARD.decode(k).is_ok()
        && !k.contains('/');
    (simple || b64) && k.chars().count() <= 256
}

fn printable(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| ('\x21'..='\x7e').contains(&c))
}

fn validate_key(value: &str, errors: &mut Errors, attr: &str) {
    if !printable(value) {
        errors.add(attr, "is invalid");
    }
    let n = value.chars().count();
    if n < 5 {
        errors.add(attr, "is too short (minimum is 5 characters)");
    } else if n > 255 {
        errors.add(attr, "is too long (maximum is 255 characters)");
    }
}

/// Queues the backend writes for an application's current state; `old_user_key` unmaps a replaced user_key.
pub async fn push_app(tx: &mut Tx<'_>, app: i64, old_user_key: Option<String>) -> ApiResult<()> {
    let (sid, app_id, user_key, st, pid, pname, redirect): (i64, String, String, String, i64, String, Option<String>) = sqlx::query_as(
        "SELECT ap.service_id, ap.application_id, ap.user_key, ap.state, ap.plan_id, p.name, ap.redirect_url FROM applications ap JOIN plans p ON p.id = ap.plan_id WHERE ap.id = $1",
    )
    .bind(app)
    .fetch_one(&mut **tx)
    .await?;
    let backend_state = if st == "live" {
        "active".to_owned()
    } else {
        st
    };
    let mut body = json!({"application": {"state": backend_state, "plan_id": pid.to_string(), "plan_name": pname}});
    if let Some(r) = redirect {
        body["application"]["redirect_url"] = json!(r);
    }
    outbox::backend(
        tx,
        "PUT",
        format!("/internal/services/{sid}/applications/{app_id}"),
        Some(body),
    )
    .await?;
    if let Some(old) = old_user_key.filter(|o| *o != user_key) {
        outbox::backend(
            tx,
            "DELETE",
            format!("/internal/services/{sid}/applications/key/{}", enc(&old)),
            None,
        )
        .await?;
    }
    outbox::backend(
        tx,
        "PUT",
        format!(
            "/internal/services/{sid}/applications/{app_id}/key/{}",
            enc(&user_key)
        ),
        None,
    )
    .await
}

pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Puts an application on another plan (change_plan, customize/decustomize) and tells backend and zync.
async fn move_to_plan(
    tx: &mut Tx<'_>,
    state: &AppState,
    app: i64,
    sid: i64,
    plan_id: i64,
) -> ApiResult<()> {
    sqlx::query("UPDATE applications SET plan_id = $2, updated_at = now() WHERE id = $1")
        .bind(app)
        .bind(plan_id)
        .execute(&mut **tx)
        .await?;
    push_app(tx, app, None).await?;
    zync_app(tx, state, app, sid, "Applications::ApplicationUpdatedEvent").await
}

async fn zync_app(
    tx: &mut Tx<'_>,
    state: &AppState,
    app: i64,
    sid: i64,
    event: &str,
) -> ApiResult<()> {
    outbox::zync(
        tx,
        state.provider_id,
        "Application",
        app,
        event,
        json!({"service_id": sid}),
    )
    .await
}

/// Creates an application with porta's credential rules. `plan` is a plan row.
async fn insert_app(
    tx: &mut Tx<'_>,
    state: &AppState,
    aid: i64,
    plan: &Value,
    p: &Params,
) -> ApiResult<i64> {
    let sid = plan["service_id"].as_i64().unwrap_or(0);
    let (bv, mandatory): (String, bool) = sqlx::query_as("SELECT backend_version, COALESCE((attrs->>'mandatory_app_key')::boolean, true) FROM services WHERE id = $1")
        .bind(sid)
        .fetch_one(&mut **tx)
        .await?;
    let mut errors = Errors::default();
    let user_key = p
        .str("user_key")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| random_hex(16));
    if !valid_user_key(&user_key) {
        errors.add("user_key", "is invalid");
    }
    let app_id = p
        .str("application_id")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| random_hex(4));
    if !printable(&app_id) {
        errors.add("application_id", "is invalid");
    } else if app_id.chars().count() < 4 {
        errors.add("application_id", "is too short (minimum is 4 characters)");
    } else if app_id.chars().count() > 255 {
        errors.add("application_id", "is too long (maximum is 255 characters)");
    }
    let (uk_taken, id_taken): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM applications WHERE provider_id = $1 AND user_key = $2), EXISTS (SELECT 1 FROM applications WHERE provider_id = $1 AND application_id = $3)",
    )
    .bind(state.provider_id)
    .bind(&user_key)
    .bind(&app_id)
    .fetch_one(&mut **tx)
    .await?;
    if uk_taken {
        errors.add("user_key", "has already been taken");
    }
    if id_taken {
        errors.add("application_id", "has already been taken");
    }
    let mut keys = p.list("application_key");
    keys.retain(|k| !k.is_empty());
    let oauth = bv == "oauth" || bv == "oidc";
    for k in &keys {
        validate_key(k, &mut errors, "application_key");
    }
    if keys.len() > if oauth { 1 } else { 5 } {
        errors.add("base", "Limit reached");
    }
    if keys.is_empty() && (oauth || (bv == "2" && mandatory)) {
        keys.push(random_hex(16));
    }
    let redirect = p.str("redirect_url").filter(|s| !s.is_empty());
    if let Some(r) = &redirect {
        if url::Url::parse(r).is_err() {
            errors.add("redirect_url", "is invalid");
        }
    }
    errors.check()?;
    let st = if plan["approval_required"].as_bool() == Some(true) {
        "pending"
    } else {
        "live"
    };
    let app: i64 = sqlx::query_scalar(
        "INSERT INTO applications (provider_id, account_id, service_id, plan_id, state, user_key, application_id, name, description, redirect_url) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id",
    )
    .bind(state.provider_id)
    .bind(aid)
    .bind(sid)
    .bind(plan["id"].as_i64())
    .bind(st)
    .bind(&user_key)
    .bind(&app_id)
    .bind(p.str("name"))
    .bind(p.str("description"))
    .bind(redirect)
    .fetch_one(&mut **tx)
    .await?;
    push_app(tx, app, None).await?;
    for k in keys {
        sqlx::query("INSERT INTO application_keys (application_id, value) VALUES ($1, $2)")
            .bind(app)
            .bind(&k)
            .execute(&mut **tx)
            .await?;
        outbox::backend(
            tx,
            "POST",
            format!(
                "/internal/services/{sid}/applications/{}/keys/",
                enc(&app_id)
            ),
            Some(json!({"application_key": {"value": k}})),
        )
        .await?;
    }
    zync_app(tx, state, app, sid, "Applications::ApplicationCreatedEvent").await?;
    Ok(app)
}

pub async fn app_create(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let mut tx = state.db.pool().begin().await?;
    find_account(&mut tx, &state, aid).await?;
    let pid = match req.params.int("plan_id") {
        Some(Ok(pid)) => pid,
        _ => return Err(ApiError::NotFound),
    };
    let plan = find_plan(&mut tx, &state, pid).await?;
    let app = insert_app(&mut tx, &state, aid, &plan, &req.params).await?;
    let row = find_app(&mut tx, &state, app).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(created("application", render_app(&row)))
}

pub async fn apps_of_account(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let mut conn = state.db.pool().acquire().await?;
    find_account(&mut conn, &state, aid).await?;
    let filter = req.params.str("state").unwrap_or_default();
    let rows = all(&mut conn, &format!("{APP_SQL} WHERE ap.account_id = $1 AND ($2 = '' OR ap.state = $2) AND s.state <> 'deleted' ORDER BY ap.id"), &[Bind::I(aid), Bind::S(filter)]).await?;
    Ok(collection(
        "applications",
        "application",
        rows.iter().map(render_app).collect(),
    ))
}

pub async fn apps_all(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let page = Page::from(&req.params);
    let p = &req.params;
    let sid = p.int("service_id").and_then(Result::ok).unwrap_or(0);
    let pid = p.int("plan_id").and_then(Result::ok).unwrap_or(0);
    let st = p.str("state").unwrap_or_default();
    let cond = "ap.provider_id = $1 AND s.state <> 'deleted' AND ($2 = 0 OR ap.service_id = $2) AND ($3 = 0 OR ap.plan_id = $3) AND ($4 = '' OR ap.state = $4)";
    let mut conn = state.db.pool().acquire().await?;
    let binds = [
        Bind::I(state.provider_id),
        Bind::I(sid),
        Bind::I(pid),
        Bind::S(st),
    ];
    let total = one(
        &mut conn,
        &format!("SELECT to_jsonb(count(*)) FROM applications ap JOIN services s ON s.id = ap.service_id WHERE {cond}"),
        &binds,
    )
    .await?
    .and_then(|v| v.as_i64())
    .unwrap_or(0);
    let mut binds = binds.to_vec();
    binds.push(Bind::I(page.per_page));
    binds.push(Bind::I(page.offset()));
    let rows = all(
        &mut conn,
        &format!("{APP_SQL} WHERE {cond} ORDER BY ap.id LIMIT $5 OFFSET $6"),
        &binds,
    )
    .await?;
    Ok(Json(paged(
        "applications",
        "application",
        rows.iter().map(render_app).collect(),
        page,
        total,
    ))
    .into_response())
}

pub async fn app_find(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    find_app_by(&state, &req.params, None).await
}

/// `GET /admin/api/accounts/{aid}/applications/find.json`: the same search within one developer account.
pub async fn app_find_of_account(
    State(state): State<AppState>,
    Path(aid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let aid = id(&aid)?;
    let mut conn = state.db.pool().acquire().await?;
    find_account(&mut conn, &state, aid).await?;
    drop(conn);
    find_app_by(&state, &req.params, Some(aid)).await
}

async fn find_app_by(state: &AppState, p: &Params, account: Option<i64>) -> ApiResult<Response> {
    let service = p.int("service_id").and_then(Result::ok).unwrap_or(0);
    let (cond, bind) = if let Some(Ok(app)) = p.int("application_id") {
        ("ap.id = $2", Bind::I(app))
    } else if let Some(k) = p.str("user_key") {
        ("ap.user_key = $2 AND s.backend_version = '1'", Bind::S(k))
    } else if let Some(k) = p.str("app_id") {
        (
            "ap.application_id = $2 AND s.backend_version <> '1'",
            Bind::S(k),
        )
    } else {
        return Err(ApiError::NotFound);
    };
    let mut conn = state.db.pool().acquire().await?;
    let sql = format!("{APP_SQL} WHERE ap.provider_id = $1 AND s.state <> 'deleted' AND {cond} AND ($3 = 0 OR ap.service_id = $3) \
         AND ($4 = 0 OR ap.account_id = $4) LIMIT 1");
    let row = must(
        &mut conn,
        &sql,
        &[
            Bind::I(state.provider_id),
            bind,
            Bind::I(service),
            Bind::I(account.unwrap_or(0)),
        ],
    )
    .await?;
    Ok(ok("application", render_app(&row)))
}

pub async fn app_show(
    State(state): State<AppState>,
    Path((aid, app)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ok(
        "application",
        render_app(&app_of(&mut conn, &state, id(&aid)?, id(&app)?).await?),
    ))
}

pub async fn app_update(
    State(state): State<AppState>,
    Path((aid, app)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let p = &req.params;
    let mut tx = state.db.pool().begin().await?;
    let row = app_of(&mut tx, &state, aid, app).await?;
    let mut errors = Errors::default();
    let old_key = row["user_key"].as_str().unwrap_or_default().to_owned();
    let user_key = p
        .str("user_key")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| old_key.clone());
    if user_key != old_key {
        if !valid_user_key(&user_key) {
            errors.add("user_key", "is invalid");
        }
        let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM applications WHERE provider_id = $1 AND user_key = $2 AND id <> $3)")
            .bind(state.provider_id)
            .bind(&user_key)
            .bind(app)
            .fetch_one(&mut *tx)
            .await?;
        if taken {
            errors.add("user_key", "has already been taken");
        }
    }
    let redirect = p
        .opt_str("redirect_url")
        .unwrap_or_else(|| row["redirect_url"].as_str().map(str::to_owned));
    errors.check()?;
    let name = p
        .opt_str("name")
        .unwrap_or_else(|| row["name"].as_str().map(str::to_owned));
    let description = p
        .opt_str("description")
        .unwrap_or_else(|| row["description"].as_str().map(str::to_owned));
    sqlx::query("UPDATE applications SET user_key=$2, name=$3, description=$4, redirect_url=$5, updated_at=now() WHERE id=$1")
        .bind(app)
        .bind(&user_key)
        .bind(name)
        .bind(description)
        .bind(redirect)
        .execute(&mut *tx)
        .await?;
    push_app(&mut tx, app, Some(old_key)).await?;
    zync_app(
        &mut tx,
        &state,
        app,
        row["service_id"].as_i64().unwrap_or(0),
        "Applications::ApplicationUpdatedEvent",
    )
    .await?;
    let row = find_app(&mut tx, &state, app).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(ok("application", render_app(&row)))
}

pub async fn app_action(
    State(state): State<AppState>,
    Path((aid, app, action)): Path<(String, String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let mut tx = state.db.pool().begin().await?;
    let row = app_of(&mut tx, &state, aid, app).await?;
    let current = row["state"].as_str().unwrap_or("");
    let sid = row["service_id"].as_i64().unwrap_or(0);
    if action == "change_plan" {
        let pid = match req.params.int("plan_id") {
            Some(Ok(pid)) => pid,
            _ => return Err(ApiError::NotFound),
        };
        let plan = find_plan(&mut tx, &state, pid).await?;
        if plan["service_id"].as_i64() != Some(sid) {
            return Err(ApiError::NotFound);
        }
        move_to_plan(&mut tx, &state, app, sid, pid).await?;
        drop_unused_custom(&mut tx, sid, row["plan_id"].as_i64().unwrap_or_default()).await?;
        let plan = find_plan(&mut tx, &state, pid).await?;
        tx.commit().await?;
        state.waker.wake();
        return Ok(ok("application_plan", render_plan(&plan)));
    }
    if action == "customize_plan" || action == "decustomize_plan" {
        let plan_id = row["plan_id"].as_i64().unwrap_or_default();
        let plan = find_plan(&mut tx, &state, plan_id).await?;
        let original = plan["original_id"].as_i64();
        // Both are idempotent: a customized plan stays, a stock plan is answered as is.
        let target = match (action.as_str(), original) {
            ("customize_plan", None) => Some(crate::plans::copy_as_custom(&mut tx, &plan).await?),
            ("decustomize_plan", Some(orig)) => Some(orig),
            _ => None,
        };
        if let Some(target) = target {
            move_to_plan(&mut tx, &state, app, sid, target).await?;
            if original.is_some() {
                crate::plans::drop_custom(&mut tx, sid, plan_id).await?;
            }
        }
        let plan = find_plan(&mut tx, &state, target.unwrap_or(plan_id)).await?;
        tx.commit().await?;
        state.waker.wake();
        return Ok(ok("application_plan", render_plan(&plan)));
    }
    let (from, to) = match action.as_str() {
        "accept" => ("pending", "live"),
        "suspend" => ("live", "suspended"),
        "resume" => ("suspended", "live"),
        _ => return Err(ApiError::NotFound),
    };
    if current != from {
        let msg = format!("cannot transition via \"{action}\"");
        return Err(ApiError::Invalid(Errors::one("state", &msg)));
    }
    sqlx::query("UPDATE applications SET state = $2, updated_at = now() WHERE id = $1")
        .bind(app)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    push_app(&mut tx, app, None).await?;
    zync_app(
        &mut tx,
        &state,
        app,
        sid,
        "Applications::ApplicationEnabledChangedEvent",
    )
    .await?;
    let row = find_app(&mut tx, &state, app).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(ok("application", render_app(&row)))
}

/// A customized plan lives and dies with its application: drop it once nothing uses it.
async fn drop_unused_custom(tx: &mut Tx<'_>, sid: i64, plan: i64) -> ApiResult<()> {
    let orphan: bool = sqlx::query_scalar(
        "SELECT p.original_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM applications WHERE plan_id = p.id) \
         FROM plans p WHERE p.id = $1",
    )
    .bind(plan)
    .fetch_optional(&mut **tx)
    .await?
    .unwrap_or(false);
    if orphan {
        crate::plans::drop_custom(tx, sid, plan).await?;
    }
    Ok(())
}

async fn delete_app_rows(tx: &mut Tx<'_>, state: &AppState, app: i64) -> ApiResult<()> {
    let (sid, app_id, user_key): (i64, String, String) = sqlx::query_as(
        "SELECT service_id, application_id, user_key FROM applications WHERE id = $1",
    )
    .bind(app)
    .fetch_one(&mut **tx)
    .await?;
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT value FROM application_keys WHERE application_id = $1")
            .bind(app)
            .fetch_all(&mut **tx)
            .await?;
    for k in keys {
        outbox::backend(
            tx,
            "DELETE",
            format!(
                "/internal/services/{sid}/applications/{}/keys/{}",
                enc(&app_id),
                enc(&k)
            ),
            None,
        )
        .await?;
    }
    let filters: Vec<String> =
        sqlx::query_scalar("SELECT value FROM referrer_filters WHERE application_id = $1")
            .bind(app)
            .fetch_all(&mut **tx)
            .await?;
    for f in filters {
        outbox::backend(tx, "DELETE", filter_path(sid, &app_id, Some(&f)), None).await?;
    }
    outbox::backend(
        tx,
        "DELETE",
        format!(
            "/internal/services/{sid}/applications/key/{}",
            enc(&user_key)
        ),
        None,
    )
    .await?;
    outbox::backend(
        tx,
        "DELETE",
        format!("/internal/services/{sid}/applications/{}", enc(&app_id)),
        None,
    )
    .await?;
    outbox::zync(
        tx,
        state.provider_id,
        "Application",
        app,
        "Applications::ApplicationDeletedEvent",
        json!({"service_id": sid, "proxy_id": sid}),
    )
    .await?;
    let plan: i64 = sqlx::query_scalar("DELETE FROM applications WHERE id = $1 RETURNING plan_id")
        .bind(app)
        .fetch_one(&mut **tx)
        .await?;
    drop_unused_custom(tx, sid, plan).await
}

pub async fn app_delete(
    State(state): State<AppState>,
    Path((aid, app)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let mut tx = state.db.pool().begin().await?;
    app_of(&mut tx, &state, aid, app).await?;
    delete_app_rows(&mut tx, &state, app).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}

// ---------------------------------------------------------------------------------------------------------------
// Keys and referrer filters

pub fn filter_path(sid: i64, app_id: &str, value: Option<&str>) -> String {
    let base = format!(
        "/internal/services/{sid}/applications/{}/referrer_filters",
        enc(app_id)
    );
    match value {
        Some(v) => format!(
            "{base}/{}",
            base64::engine::general_purpose::URL_SAFE.encode(v)
        ),
        None => base,
    }
}

pub async fn keys_list(
    State(state): State<AppState>,
    Path((aid, app)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let mut conn = state.db.pool().acquire().await?;
    app_of(&mut conn, &state, aid, app).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(k) FROM application_keys k WHERE application_id = $1 ORDER BY id",
        &[Bind::I(app)],
    )
    .await?;
    let items = rows
        .iter()
        .map(|k| json!({
            "value": k["value"], "created_at": k["created_at"], "updated_at": k["updated_at"],
            "links": [link("application", format!("/admin/api/accounts/{aid}/applications/{app}"))],
        }))
        .collect();
    Ok(collection("keys", "key", items))
}

pub async fn key_create(
    State(state): State<AppState>,
    Path((aid, app)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let mut tx = state.db.pool().begin().await?;
    let row = app_of(&mut tx, &state, aid, app).await?;
    let value = req
        .params
        .str("key")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| random_hex(16));
    let mut errors = Errors::default();
    validate_key(&value, &mut errors, "value");
    let (count, taken): (i64, bool) = sqlx::query_as(
        "SELECT count(*), COALESCE(bool_or(lower(value) = lower($2)), false) FROM application_keys WHERE application_id = $1",
    )
    .bind(app)
    .bind(&value)
    .fetch_one(&mut *tx)
    .await?;
    let bv = row["backend_version"].as_str().unwrap_or("1");
    let limit = if bv == "oauth" || bv == "oidc" { 1 } else { 5 };
    if count >= limit {
        errors.add("base", "Limit reached");
    }
    if taken {
        errors.add("value", "has already been taken");
    }
    errors.check()?;
    sqlx::query("INSERT INTO application_keys (application_id, value) VALUES ($1, $2)")
        .bind(app)
        .bind(&value)
        .execute(&mut *tx)
        .await?;
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let app_id = row["application_id"].as_str().unwrap_or_default();
    outbox::backend(
        &mut tx,
        "POST",
        format!(
            "/internal/services/{sid}/applications/{}/keys/",
            enc(app_id)
        ),
        Some(json!({"application_key": {"value": value}})),
    )
    .await?;
    zync_app(
        &mut tx,
        &state,
        app,
        sid,
        "Applications::ApplicationUpdatedEvent",
    )
    .await?;
    let row = find_app(&mut tx, &state, app).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(created("application", render_app(&row)))
}

pub async fn key_delete(
    State(state): State<AppState>,
    Path((aid, app, key)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let mut tx = state.db.pool().begin().await?;
    let row = app_of(&mut tx, &state, aid, app).await?;
    let gone = sqlx::query("DELETE FROM application_keys WHERE application_id = $1 AND value = $2")
        .bind(app)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    if gone.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let app_id = row["application_id"].as_str().unwrap_or_default();
    outbox::backend(
        &mut tx,
        "DELETE",
        format!(
            "/internal/services/{sid}/applications/{}/keys/{}",
            enc(app_id),
            enc(&key)
        ),
        None,
    )
    .await?;
    zync_app(
        &mut tx,
        &state,
        app,
        sid,
        "Applications::ApplicationUpdatedEvent",
    )
    .await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}

fn render_filter(aid: i64, app: i64, f: &Value) -> Value {
    json!({
        "id": f["id"], "value": f["value"], "created_at": f["created_at"], "updated_at": f["updated_at"],
        "links": [link("application", format!("/admin/api/accounts/{aid}/applications/{app}"))],
    })
}

pub async fn filters_list(
    State(state): State<AppState>,
    Path((aid, app)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let mut conn = state.db.pool().acquire().await?;
    app_of(&mut conn, &state, aid, app).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(f) FROM referrer_filters f WHERE application_id = $1 ORDER BY id",
        &[Bind::I(app)],
    )
    .await?;
    Ok(collection(
        "referrer_filters",
        "referrer_filter",
        rows.iter().map(|f| render_filter(aid, app, f)).collect(),
    ))
}

pub async fn filter_create(
    State(state): State<AppState>,
    Path((aid, app)): Path<(String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let (aid, app) = (id(&aid)?, id(&app)?);
    let mut tx = state.db.pool().begin().await?;
    let row = app_of(&mut tx, &state, aid, app).await?;
    let value = req.params.str("referrer_filter").unwrap_or_default();
    let mut errors = Errors::default();
    if value.is_empty() {
        errors.add("value", "can't be blank");
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '.' || c == '-')
    {
        errors.add("value", "is invalid");
    } else if value.chars().count() > 255 {
        errors.add("value", "is too long (maximum is 255 characters)");
    }
    let (count, taken): (i64, bool) = sqlx::query_as("SELECT count(*), COALESCE(bool_or(value = $2), false) FROM referrer_filters WHERE application_id = $1")
        .bind(app)
        .bind(&value)
        .fetch_one(&mut *tx)
        .await?;
    if count >= 5 {
        errors.add("base", "Limit reached");
    }
    if taken {
        errors.add("value", "has already been taken");
    }
    errors.check()?;
    sqlx::query("INSERT INTO referrer_filters (application_id, value) VALUES ($1, $2)")
        .bind(app)
        .bind(&value)
        .execute(&mut *tx)
        .await?;
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let app_id = row["application_id"].as_str().unwrap_or_default();
    outbox::backend(
        &mut tx,
        "POST",
        filter_path(sid, app_id, None),
        Some(json!({"referrer_filter": value})),
    )
    .await?;
    let row = find_app(&mut tx, &state, app).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(created("application", render_app(&row)))
}

pub async fn filter_delete(
    State(state): State<AppState>,
    Path((aid, app, fid)): Path<(String, String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let (aid, app, fid) = (id(&aid)?, id(&app)?, id(&fid)?);
    let mut tx = state.db.pool().begin().await?;
    let row = app_of(&mut tx, &state, aid, app).await?;
    let value: Option<String> = sqlx::query_scalar(
        "DELETE FROM referrer_filters WHERE id = $1 AND application_id = $2 RETURNING value",
    )
    .bind(fid)
    .bind(app)
    .fetch_optional(&mut *tx)
    .await?;
    let value = value.ok_or(ApiError::NotFound)?;
    let sid = row["service_id"].as_i64().unwrap_or(0);
    outbox::backend(
        &mut tx,
        "DELETE",
        filter_path(
            sid,
            row["application_id"].as_str().unwrap_or_default(),
            Some(&value),
        ),
        None,
    )
    .await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}
