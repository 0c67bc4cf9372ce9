//! Services (products), their proxy settings, policy chain and OIDC flows.

use crate::api::{created, deleted, id, link, ok, paged, random_hex, Page, Req};
use crate::db::{self, all, must, Bind, Tx};
use crate::error::{ApiError, ApiResult, Errors};
use crate::params::Params;
use crate::{configs, outbox, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

const BOOL_ATTRS: [(&str, bool); 9] = [
    ("intentions_required", false),
    ("buyers_manage_apps", true),
    ("buyers_manage_keys", true),
    ("custom_keys_enabled", true),
    ("mandatory_app_key", true),
    ("buyer_key_regenerate_enabled", true),
    ("referrer_filters_required", false),
    ("buyer_can_select_plan", false),
    ("txt_support", false),
];
const DEPLOYMENT_OPTIONS: [&str; 10] = [
    "hosted",
    "self_managed",
    "service_mesh_istio",
    "plugin_ruby",
    "plugin_java",
    "plugin_python",
    "plugin_nodejs",
    "plugin_php",
    "plugin_rest",
    "plugin_csharp",
];
const PLAN_CHANGE: [&str; 5] = [
    "request",
    "direct",
    "credit_card",
    "request_credit_card",
    "none",
];

const SERVICE_SQL: &str = "SELECT to_jsonb(s) FROM services s WHERE s.id = $1 AND s.provider_id = $2 AND s.state <> 'deleted'";

/// The JSON representation of a service row.
pub fn render(row: &Value) -> Value {
    let sid = row["id"].as_i64().unwrap_or(0);
    let mut out = Map::new();
    for k in [
        "id",
        "name",
        "state",
        "system_name",
        "backend_version",
        "description",
    ] {
        out.insert(k.into(), row[k].clone());
    }
    let attrs = row["attrs"].as_object().cloned().unwrap_or_default();
    out.insert(
        "deployment_option".into(),
        attrs
            .get("deployment_option")
            .cloned()
            .unwrap_or(json!("hosted")),
    );
    out.insert(
        "support_email".into(),
        attrs.get("support_email").cloned().unwrap_or(Value::Null),
    );
    for (k, default) in BOOL_ATTRS {
        out.insert(k.into(), attrs.get(k).cloned().unwrap_or(json!(default)));
    }
    out.insert(
        "buyer_plan_change_permission".into(),
        attrs
            .get("buyer_plan_change_permission")
            .cloned()
            .unwrap_or(json!("request")),
    );
    out.insert(
        "notification_settings".into(),
        attrs
            .get("notification_settings")
            .cloned()
            .unwrap_or(Value::Null),
    );
    out.insert(
        "annotations".into(),
        attrs.get("annotations").cloned().unwrap_or(json!({})),
    );
    out.insert("created_at".into(), row["created_at"].clone());
    out.insert("updated_at".into(), row["updated_at"].clone());
    out.insert(
        "links".into(),
        json!([
            link("metrics", format!("/admin/api/services/{sid}/metrics")),
            link("self", format!("/admin/api/services/{sid}")),
            link(
                "service_plans",
                format!("/admin/api/services/{sid}/service_plans")
            ),
            link(
                "application_plans",
                format!("/admin/api/services/{sid}/application_plans")
            ),
            link("features", format!("/admin/api/services/{sid}/features")),
        ]),
    );
    Value::Object(out)
}

pub async fn load(conn: &mut sqlx::PgConnection, state: &AppState, sid: i64) -> ApiResult<Value> {
    must(
        conn,
        SERVICE_SQL,
        &[Bind::I(sid), Bind::I(state.provider_id)],
    )
    .await
}

pub async fn list(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let page = Page::from(&req.params);
    let mut conn = state.db.pool().acquire().await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM services WHERE provider_id = $1 AND state <> 'deleted'",
    )
    .bind(state.provider_id)
    .fetch_one(&mut *conn)
    .await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(s) FROM services s WHERE provider_id = $1 AND state <> 'deleted' ORDER BY id LIMIT $2 OFFSET $3",
        &[Bind::I(state.provider_id), Bind::I(page.per_page), Bind::I(page.offset())],
    )
    .await?;
    Ok(Json(paged(
        "services",
        "service",
        rows.iter().map(render).collect(),
        page,
        total,
    ))
    .into_response())
}

pub async fn show(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ok(
        "service",
        render(&load(&mut conn, &state, id(&sid)?).await?),
    ))
}

/// Validates the permitted service params into (columns, attrs).
fn apply(p: &Params, row: &mut Value, creating: bool, errors: &mut Errors) {
    if let Some(name) = p.opt_str("name") {
        row["name"] = json!(name);
    }
    match row["name"].as_str() {
        None | Some("") => errors.add("name", "can't be blank"),
        Some(n) if n.chars().count() > 255 => {
            errors.add("name", "is too long (maximum is 255 characters)")
        }
        _ => {}
    }
    if creating {
        let sn = p
            .str("system_name")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| db::system_name_from(row["name"].as_str().unwrap_or("")));
        if !db::valid_system_name(&sn) {
            errors.add(
                "system_name",
                "invalid. Only ASCII letters, numbers, dashes and underscores are allowed.",
            );
        }
        row["system_name"] = json!(sn);
    }
    if let Some(d) = p.opt_str("description") {
        if d.as_ref().is_some_and(|d| d.len() > 65535) {
            errors.add("description", "is too long (maximum is 65535 characters)");
        }
        row["description"] = json!(d);
    }
    if let Some(bv) = p.str("backend_version") {
        if ["1", "2", "oauth", "oidc"].contains(&bv.as_str()) {
            row["backend_version"] = json!(bv);
        } else {
            errors.add("backend_version", "is not included in the list");
        }
    }
    let attrs = row["attrs"].as_object_mut().expect("attrs is an object");
    if let Some(d) = p.str("deployment_option") {
        if DEPLOYMENT_OPTIONS.contains(&d.as_str()) {
            attrs.insert("deployment_option".into(), json!(d));
        } else {
            errors.add("deployment_option", "is not included in the list");
        }
    }
    if let Some(email) = p.opt_str("support_email") {
        if let Some(e) = &email {
            let valid = e
                .split_once('@')
                .is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !e.contains(' '));
            if !valid {
                errors.add("support_email", "is invalid");
            }
        }
        attrs.insert("support_email".into(), json!(email));
    }
    for (k, _) in BOOL_ATTRS {
        if let Some(b) = p.bool(k) {
            attrs.insert(k.into(), json!(b));
        }
    }
    if let Some(v) = p.str("buyer_plan_change_permission") {
        if PLAN_CHANGE.contains(&v.as_str()) {
            attrs.insert("buyer_plan_change_permission".into(), json!(v));
        } else {
            errors.add(
                "buyer_plan_change_permission",
                "is not included in the list",
            );
        }
    }
    for k in ["notification_settings", "annotations"] {
        if let Some(v @ Value::Object(_)) = p.get(k) {
            attrs.insert(k.into(), v.clone());
        }
    }
    if let Some(ev) = p.str("state_event") {
        match ev.as_str() {
            "publish" => row["state"] = json!("published"),
            "hide" => row["state"] = json!("hidden"),
            _ => errors.add("state_event", "is invalid"),
        }
    }
}

pub async fn create(State(state): State<AppState>, req: Req) -> ApiResult<Response> {
    let p = req.params.wrapped("service")?;
    let mut row = json!({"name": null, "description": null, "backend_version": "1", "state": "incomplete", "attrs": {}});
    let mut errors = Errors::default();
    apply(&p, &mut row, true, &mut errors);
    let mut tx = state.db.pool().begin().await?;
    if !errors.has("system_name") {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM services WHERE provider_id = $1 AND system_name = $2)",
        )
        .bind(state.provider_id)
        .bind(row["system_name"].as_str())
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            errors.add("system_name", "has already been taken");
        }
    }
    errors.check()?;
    let sid: i64 = sqlx::query_scalar(
        "INSERT INTO services (provider_id, name, system_name, description, state, backend_version, attrs) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(state.provider_id)
    .bind(row["name"].as_str())
    .bind(row["system_name"].as_str())
    .bind(row["description"].as_str())
    .bind(row["state"].as_str())
    .bind(row["backend_version"].as_str())
    .bind(&row["attrs"])
    .fetch_one(&mut *tx)
    .await?;
    let hits: i64 = sqlx::query_scalar(
        "INSERT INTO metrics (service_id, system_name, friendly_name, unit, description) \
         VALUES ($1, 'hits', 'Hits', 'hit', 'Number of API hits') RETURNING id",
    )
    .bind(sid)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO mapping_rules (service_id, metric_id, http_method, pattern, delta, position) VALUES ($1, $2, 'GET', '/', 1, 1)")
        .bind(sid)
        .bind(hits)
        .execute(&mut *tx)
        .await?;
    let settings = default_proxy(
        &state,
        row["system_name"].as_str().unwrap_or(""),
        row["attrs"]["deployment_option"].as_str(),
    );
    sqlx::query("INSERT INTO proxies (service_id, settings) VALUES ($1, $2)")
        .bind(sid)
        .bind(&settings)
        .execute(&mut *tx)
        .await?;
    let token = random_hex(32);
    sqlx::query("INSERT INTO service_tokens (service_id, value) VALUES ($1, $2)")
        .bind(sid)
        .bind(&token)
        .execute(&mut *tx)
        .await?;
    push_service(&mut tx, &state, sid).await?;
    outbox::backend(
        &mut tx,
        "POST",
        "/internal/service_tokens/".into(),
        Some(json!({"service_tokens": {token: {"service_id": sid.to_string()}}})),
    )
    .await?;
    crate::catalog::push_metric(&mut tx, sid, hits).await?;
    let saved = load(&mut tx, &state, sid).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(created("service", render(&saved)))
}

pub async fn update(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let p = req.params.wrapped("service")?;
    let mut tx = state.db.pool().begin().await?;
    let mut row = load(&mut tx, &state, sid).await?;
    let was_oidc = row["backend_version"] == "oidc";
    let mut errors = Errors::default();
    apply(&p, &mut row, false, &mut errors);
    errors.check()?;
    sqlx::query(
        "UPDATE services SET name = $2, description = $3, state = $4, backend_version = $5, attrs = $6, updated_at = now() WHERE id = $1",
    )
    .bind(sid)
    .bind(row["name"].as_str())
    .bind(row["description"].as_str())
    .bind(row["state"].as_str())
    .bind(row["backend_version"].as_str())
    .bind(&row["attrs"])
    .execute(&mut *tx)
    .await?;
    push_service(&mut tx, &state, sid).await?;
    let is_oidc = row["backend_version"] == "oidc";
    if is_oidc || was_oidc {
        outbox::zync(
            &mut tx,
            state.provider_id,
            "Service",
            sid,
            "OIDC::ServiceChangedEvent",
            json!({}),
        )
        .await?;
        outbox::zync(
            &mut tx,
            state.provider_id,
            "Proxy",
            sid,
            "OIDC::ProxyChangedEvent",
            json!({"service_id": sid}),
        )
        .await?;
    }
    configs::deploy_sandbox(&mut tx, &state, sid).await?;
    let saved = load(&mut tx, &state, sid).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(ok("service", render(&saved)))
}

pub async fn destroy(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, &state, sid).await?;
    let remaining: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM services WHERE provider_id = $1 AND state <> 'deleted'",
    )
    .bind(state.provider_id)
    .fetch_one(&mut *tx)
    .await?;
    if remaining <= 1 {
        return Err(ApiError::Custom(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": {"from": "incomplete", "event": "mark_as_deleted", "error": "The last service cannot be deleted", "object": {"id": sid}}}),
        ));
    }
    sqlx::query("UPDATE services SET state = 'deleted', updated_at = now() WHERE id = $1")
        .bind(sid)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM proxy_configs WHERE service_id = $1")
        .bind(sid)
        .execute(&mut *tx)
        .await?;
    outbox::backend(&mut tx, "DELETE", format!("/internal/services/{sid}"), None).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(deleted())
}

/// Queues `PUT /internal/services/{id}` with the service's current state.
pub async fn push_service(tx: &mut Tx<'_>, state: &AppState, sid: i64) -> ApiResult<()> {
    let (bv, attrs, key): (String, Value, Option<String>) = sqlx::query_as(
        "SELECT s.backend_version, s.attrs, a.provider_key FROM services s JOIN accounts a ON a.id = s.provider_id WHERE s.id = $1",
    )
    .bind(sid)
    .fetch_one(&mut **tx)
    .await?;
    let first: i64 = sqlx::query_scalar("SELECT min(id) FROM services WHERE provider_id = $1")
        .bind(state.provider_id)
        .fetch_one(&mut **tx)
        .await?;
    let body = json!({"service": {
        "id": sid.to_string(),
        "provider_key": key,
        "referrer_filters_required": attrs.get("referrer_filters_required").and_then(Value::as_bool).unwrap_or(false),
        "backend_version": backend_version_for_backend(&bv),
        "default_service": first == sid,
        "state": "active",
    }});
    outbox::backend(tx, "PUT", format!("/internal/services/{sid}"), Some(body)).await
}

/// `oidc` is stored as shown; apisonator and APIcast know it as `oauth`.
pub fn backend_version_for_backend(bv: &str) -> &str {
    if bv == "oidc" {
        "oauth"
    } else {
        bv
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Proxy

const PROXY_STRINGS: [&str; 22] = [
    "endpoint",
    "sandbox_endpoint",
    "api_backend",
    "credentials_location",
    "auth_app_key",
    "auth_app_id",
    "auth_user_key",
    "error_auth_failed",
    "error_auth_missing",
    "error_no_match",
    "error_limits_exceeded",
    "error_headers_auth_failed",
    "error_headers_auth_missing",
    "error_headers_no_match",
    "error_headers_limits_exceeded",
    "secret_token",
    "hostname_rewrite",
    "oauth_login_url",
    "api_test_path",
    "oidc_issuer_endpoint",
    "oidc_issuer_type",
    "jwt_claim_with_client_id",
];
const PROXY_STATUSES: [&str; 4] = [
    "error_status_auth_failed",
    "error_status_auth_missing",
    "error_status_no_match",
    "error_status_limits_exceeded",
];

fn default_proxy(state: &AppState, system_name: &str, deployment: Option<&str>) -> Value {
    let dashed = system_name.replace('_', "-");
    let (endpoint, sandbox) = if deployment.unwrap_or("hosted") == "hosted" {
        (
            json!(format!(
                "https://{dashed}-{}-apicast-production.{}",
                state.tenant_name, state.superdomain
            )),
            json!(format!(
                "https://{dashed}-{}-apicast-staging.{}",
                state.tenant_name, state.superdomain
            )),
        )
    } else {
        (Value::Null, Value::Null)
    };
    json!({
        "endpoint": endpoint, "sandbox_endpoint": sandbox, "api_backend": null,
        "credentials_location": "query", "auth_app_key": "app_key", "auth_app_id": "app_id", "auth_user_key": "user_key",
        "error_auth_failed": "Authentication failed", "error_status_auth_failed": 403,
        "error_headers_auth_failed": "text/plain; charset=us-ascii",
        "error_auth_missing": "Authentication parameters missing", "error_status_auth_missing": 403,
        "error_headers_auth_missing": "text/plain; charset=us-ascii",
        "error_no_match": "No Mapping Rule matched", "error_status_no_match": 404,
        "error_headers_no_match": "text/plain; charset=us-ascii",
        "error_limits_exceeded": "Usage limit exceeded", "error_status_limits_exceeded": 429,
        "error_headers_limits_exceeded": "text/plain; charset=us-ascii",
        "secret_token": format!("Shared_secret_sent_from_proxy_to_API_backend_{}", random_hex(8)),
        "hostname_rewrite": null, "oauth_login_url": null, "api_test_path": "/", "api_test_success": null,
        "oidc_issuer_endpoint": null, "oidc_issuer_type": "keycloak",
        "jwt_claim_with_client_id": null, "jwt_claim_with_client_id_type": null,
        "deployed_at": null,
    })
}

/// The proxy row with its service's backend_version: `(settings, policies, oidc, lock_version, created, updated, bv)`.
pub async fn load_proxy(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    sid: i64,
) -> ApiResult<Value> {
    must(
        conn,
        "SELECT to_jsonb(p) || jsonb_build_object('backend_version', s.backend_version, 'deployment_option', \
         COALESCE(s.attrs->>'deployment_option', 'hosted')) FROM proxies p JOIN services s ON s.id = p.service_id \
         WHERE p.service_id = $1 AND s.provider_id = $2 AND s.state <> 'deleted'",
        &[Bind::I(sid), Bind::I(state.provider_id)],
    )
    .await
}

pub fn policies_with_apicast(policies: &Value) -> Value {
    let mut list = policies.as_array().cloned().unwrap_or_default();
    if !list.iter().any(|p| p["name"] == "apicast") {
        list.push(
            json!({"name": "apicast", "version": "builtin", "configuration": {}, "enabled": true}),
        );
    }
    Value::Array(list)
}

pub fn render_proxy(row: &Value) -> Value {
    let sid = row["service_id"].as_i64().unwrap_or(0);
    let mut out = row["settings"].as_object().cloned().unwrap_or_default();
    let oidc = row["backend_version"] == "oidc";
    if !oidc {
        for k in [
            "oidc_issuer_endpoint",
            "oidc_issuer_type",
            "jwt_claim_with_client_id",
            "jwt_claim_with_client_id_type",
        ] {
            out.remove(k);
        }
    }
    out.insert("service_id".into(), json!(sid));
    out.insert(
        "policies_config".into(),
        policies_with_apicast(&row["policies_config"]),
    );
    out.insert("created_at".into(), row["created_at"].clone());
    out.insert("updated_at".into(), row["updated_at"].clone());
    out.insert("deployment_option".into(), row["deployment_option"].clone());
    out.insert("lock_version".into(), row["lock_version"].clone());
    out.insert(
        "links".into(),
        json!([
            link(
                "mapping_rules",
                format!("/admin/api/services/{sid}/proxy/mapping_rules")
            ),
            link("self", format!("/admin/api/services/{sid}/proxy")),
            link("service", format!("/admin/api/services/{sid}")),
        ]),
    );
    Value::Object(out)
}

pub async fn proxy_show(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ok(
        "proxy",
        render_proxy(&load_proxy(&mut conn, &state, id(&sid)?).await?),
    ))
}

fn valid_token_chars(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        ["http", "https", "ws", "wss"].contains(&u.scheme()) && u.host_str().is_some()
    })
}

const ENDPOINT_FORMAT: &str = "the accepted format is 'protocol://address(:port)'";
const API_BACKEND_FORMAT: &str =
    "the accepted format is 'scheme://address(:port)(/path)'. Accepted schemes are http, https, ws and wss";

fn validate_proxy(settings: &Map<String, Value>, deployment: &str, errors: &mut Errors) {
    let s = |k: &str| {
        settings
            .get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if let Some(c) = s("credentials_location") {
        if !["headers", "query", "authorization"].contains(&c) {
            errors.add("credentials_location", "is not included in the list");
        }
    }
    for k in [
        "auth_app_key",
        "auth_app_id",
        "auth_user_key",
        "secret_token",
    ] {
        if let Some(v) = s(k) {
            if !valid_token_chars(v) {
                errors.add(k, "is invalid");
            }
        }
    }
    for k in PROXY_STATUSES {
        match settings.get(k).and_then(Value::as_i64) {
            None => errors.add(k, "can't be blank"),
            Some(code) if !(200..=599).contains(&code) => errors.add(k, "must be less than 600"),
            _ => {}
        }
        if let Some(code) = settings.get(k).and_then(Value::as_i64) {
            if code < 200 {
                errors.0.remove(k);
                errors.add(k, "must be greater than or equal to 200");
            }
        }
    }
    // porta's locale replaces `invalid` with these texts for the proxy's URLs.
    for (k, msg) in [
        ("endpoint", ENDPOINT_FORMAT),
        ("sandbox_endpoint", ENDPOINT_FORMAT),
        ("api_backend", API_BACKEND_FORMAT),
    ] {
        if let Some(v) = s(k) {
            if !valid_url(v) {
                errors.add(k, msg);
            }
        }
    }
    if deployment == "hosted" {
        for k in ["endpoint", "sandbox_endpoint"] {
            if s(k).is_none() {
                errors.add(k, "can't be blank");
            }
        }
    }
    if let Some(h) = s("hostname_rewrite") {
        let host = h
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
            .map(|(h, _)| h)
            .unwrap_or(h);
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            errors.add("hostname_rewrite", "is invalid");
        }
    }
    if let Some(t) = s("oidc_issuer_type") {
        if !["keycloak", "rest"].contains(&t) {
            errors.add("oidc_issuer_type", "is not included in the list");
        }
    } else if s("oidc_issuer_endpoint").is_some() {
        errors.add("oidc_issuer_type", "can't be blank");
    }
    if let Some(e) = s("oidc_issuer_endpoint") {
        if !valid_url(e) {
            errors.add("oidc_issuer_endpoint", "is invalid");
        }
    }
    match (
        s("jwt_claim_with_client_id"),
        s("jwt_claim_with_client_id_type"),
    ) {
        (Some(_), None) => errors.add("jwt_claim_with_client_id_type", "can't be blank"),
        (None, Some(_)) => errors.add("jwt_claim_with_client_id", "can't be blank"),
        (_, Some(t)) if !["plain", "liquid"].contains(&t) => errors.add(
            "jwt_claim_with_client_id_type",
            "is not included in the list",
        ),
        _ => {}
    }
    for k in PROXY_STRINGS
        .iter()
        .chain(["jwt_claim_with_client_id_type"].iter())
    {
        let limit = if *k == "api_test_path" { 8192 } else { 255 };
        if s(k).is_some_and(|v| v.chars().count() > limit) {
            errors.add(k, format!("is too long (maximum is {limit} characters)"));
        }
    }
}

pub async fn proxy_update(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let p = req.params.wrapped("proxy")?;
    let mut tx = state.db.pool().begin().await?;
    let row = load_proxy(&mut tx, &state, sid).await?;
    let mut settings = row["settings"].as_object().cloned().unwrap_or_default();
    for k in PROXY_STRINGS
        .iter()
        .chain(["jwt_claim_with_client_id_type"].iter())
    {
        if let Some(v) = p.opt_str(k) {
            settings.insert((*k).into(), json!(v));
        }
    }
    let mut errors = Errors::default();
    for k in PROXY_STATUSES {
        match p.int(k) {
            Some(Ok(v)) => {
                settings.insert(k.into(), json!(v));
            }
            Some(Err(())) => errors.add(k, "is not a number"),
            None if p.has(k) => {
                settings.insert(k.into(), Value::Null);
            }
            None => {}
        }
    }
    validate_proxy(
        &settings,
        row["deployment_option"].as_str().unwrap_or("hosted"),
        &mut errors,
    );
    errors.check()?;
    sqlx::query("UPDATE proxies SET settings = $2, lock_version = lock_version + 1, updated_at = now() WHERE service_id = $1")
        .bind(sid)
        .bind(Value::Object(settings))
        .execute(&mut *tx)
        .await?;
    proxy_changed(&mut tx, &state, sid, &row).await?;
    let saved = load_proxy(&mut tx, &state, sid).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(ok("proxy", render_proxy(&saved)))
}

/// After any proxy-level change: a new sandbox config if the content changed, and zync for OIDC services.
pub async fn proxy_changed(
    tx: &mut Tx<'_>,
    state: &AppState,
    sid: i64,
    row: &Value,
) -> ApiResult<()> {
    configs::deploy_sandbox(tx, state, sid).await?;
    if row["backend_version"] == "oidc" {
        let endpoint = row["settings"]["oidc_issuer_endpoint"].clone();
        outbox::zync(
            tx,
            state.provider_id,
            "Proxy",
            sid,
            "OIDC::ProxyChangedEvent",
            json!({"service_id": sid, "oidc_endpoint": endpoint}),
        )
        .await?;
    }
    Ok(())
}

pub async fn policies_show(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let mut conn = state.db.pool().acquire().await?;
    let row = load_proxy(&mut conn, &state, id(&sid)?).await?;
    Ok(
        Json(json!({"policies_config": policies_with_apicast(&row["policies_config"])}))
            .into_response(),
    )
}

pub async fn policies_update(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let p = req.params.wrapped("proxy")?;
    let raw = p.get("policies_config").cloned().ok_or_else(|| {
        ApiError::BadRequest("Required parameter missing: policies_config".into())
    })?;
    let list = match raw {
        Value::String(s) => serde_json::from_str::<Value>(&s).unwrap_or(Value::Null),
        other => other,
    };
    let mut errors = Errors::default();
    let mut stored = Vec::new();
    match list.as_array() {
        Some(items) => {
            for item in items {
                let ok = item["name"].as_str().is_some_and(|s| !s.is_empty())
                    && item["version"].as_str().is_some_and(|s| !s.is_empty())
                    && (item.get("configuration").is_none() || item["configuration"].is_object());
                if !ok {
                    errors.add("policies_config", "contains some invalid policy");
                    continue;
                }
                stored.push(json!({
                    "name": item["name"], "version": item["version"],
                    "configuration": item.get("configuration").cloned().unwrap_or(json!({})),
                    "enabled": item.get("enabled").map(|v| v.as_bool().unwrap_or(v == "true")).unwrap_or(true),
                }));
            }
            if !stored.iter().any(|p| p["name"] == "apicast") {
                errors.add("policies_config", "is missing apicast policy");
            }
        }
        None => errors.add("policies_config", "is invalid"),
    }
    if serde_json::to_string(&stored).map(|s| s.len()).unwrap_or(0) > 2 * 1024 * 1024 {
        errors.add("policies_config", "is too big");
    }
    let mut tx = state.db.pool().begin().await?;
    let row = load_proxy(&mut tx, &state, sid).await?;
    errors.check()?;
    let stored = Value::Array(stored);
    sqlx::query(
        "UPDATE proxies SET policies_config = $2, updated_at = now() WHERE service_id = $1",
    )
    .bind(sid)
    .bind(&stored)
    .execute(&mut *tx)
    .await?;
    proxy_changed(&mut tx, &state, sid, &row).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(Json(json!({"policies_config": stored})).into_response())
}

pub fn oidc_json(sid: i64, stored: &Value) -> Value {
    let get = |k: &str, d: bool| stored.get(k).and_then(Value::as_bool).unwrap_or(d);
    json!({
        "id": sid,
        "standard_flow_enabled": get("standard_flow_enabled", true),
        "implicit_flow_enabled": get("implicit_flow_enabled", false),
        "service_accounts_enabled": get("service_accounts_enabled", false),
        "direct_access_grants_enabled": get("direct_access_grants_enabled", false),
    })
}

pub async fn oidc_show(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut conn = state.db.pool().acquire().await?;
    let row = load_proxy(&mut conn, &state, sid).await?;
    Ok(ok(
        "oidc_configuration",
        oidc_json(sid, &row["oidc_configuration"]),
    ))
}

pub async fn oidc_update(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let p = req.params.wrapped("oidc_configuration")?;
    let mut tx = state.db.pool().begin().await?;
    let row = load_proxy(&mut tx, &state, sid).await?;
    let mut current = oidc_json(sid, &row["oidc_configuration"]);
    for k in [
        "standard_flow_enabled",
        "implicit_flow_enabled",
        "service_accounts_enabled",
        "direct_access_grants_enabled",
    ] {
        if let Some(b) = p.bool(k) {
            current[k] = json!(b);
        }
    }
    sqlx::query(
        "UPDATE proxies SET oidc_configuration = $2, updated_at = now() WHERE service_id = $1",
    )
    .bind(sid)
    .bind(&current)
    .execute(&mut *tx)
    .await?;
    proxy_changed(&mut tx, &state, sid, &row).await?;
    tx.commit().await?;
    state.waker.wake();
    Ok(ok("oidc_configuration", current))
}
