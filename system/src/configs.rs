//! Proxy config versions: the APIcast service JSON built from a service, written as a new sandbox version when it
//! changes, promoted to production keeping its number, and served to the gateway (with ETag / 304 for polling).

use crate::api::{collection, id, paged, Page, Req};
use crate::db::{all, must, Bind, Tx};
use crate::error::{ApiError, ApiResult, Errors};
use crate::services::{backend_version_for_backend, load, load_proxy, policies_with_apicast};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::apicast;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// `staging` is porta's alias of `sandbox`.
fn environment(raw: &str) -> Option<&'static str> {
    match raw {
        "sandbox" | "staging" => Some("sandbox"),
        "production" => Some("production"),
        _ => None,
    }
}

fn host_of(url: Option<&str>) -> Option<String> {
    url::Url::parse(url?)
        .ok()?
        .host_str()
        .map(str::to_ascii_lowercase)
}

/// Splits a mapping-rule pattern into its `{var}` names and its query constraints.
fn rule_parts(pattern: &str) -> (Vec<String>, Map<String, Value>) {
    let mut vars = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        match rest[start..].find('}') {
            Some(end) => {
                vars.push(rest[start + 1..start + end].to_owned());
                rest = &rest[start + end + 1..];
            }
            None => break,
        }
    }
    let mut qs = Map::new();
    if let Some((_, q)) = pattern.split_once('?') {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            qs.insert(k.to_owned(), json!(v));
        }
    }
    (vars, qs)
}

/// The APIcast service object (`gateway-apicast.md` §1.2/§1.3), or `None` when porta would refuse to write a version
/// (no `api_backend` or no service token yet).
pub async fn build_content(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    sid: i64,
) -> ApiResult<Option<Value>> {
    let service = load(conn, state, sid).await?;
    let proxy = load_proxy(conn, state, sid).await?;
    let settings = proxy["settings"].as_object().cloned().unwrap_or_default();
    let api_backend = settings
        .get("api_backend")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let token: Option<String> = sqlx::query_scalar(
        "SELECT value FROM service_tokens WHERE service_id = $1 ORDER BY id LIMIT 1",
    )
    .bind(sid)
    .fetch_optional(&mut *conn)
    .await?;
    let (Some(api_backend), Some(token)) = (api_backend, token) else {
        return Ok(None);
    };
    let shown_bv = service["backend_version"].as_str().unwrap_or("1");
    let bv = backend_version_for_backend(shown_bv);
    let rules = all(
        conn,
        "SELECT to_jsonb(r) || jsonb_build_object('metric_system_name', m.system_name) FROM mapping_rules r \
         JOIN metrics m ON m.id = r.metric_id WHERE r.service_id = $1 ORDER BY r.position, r.id",
        &[Bind::I(sid)],
    )
    .await?;
    let proxy_rules: Vec<apicast::ProxyRule> = rules
        .iter()
        .map(|r| {
            let pattern = r["pattern"].as_str().unwrap_or("/");
            let (params, qs) = rule_parts(pattern);
            let mut extra = Map::new();
            extra.insert("id".into(), r["id"].clone());
            extra.insert("metric_id".into(), r["metric_id"].clone());
            extra.insert("position".into(), r["position"].clone());
            extra.insert("parameters".into(), json!(params));
            extra.insert("owner_id".into(), json!(sid));
            extra.insert("owner_type".into(), json!("Proxy"));
            apicast::ProxyRule {
                http_method: r["http_method"].as_str().map(str::to_owned),
                pattern: r["pattern"].as_str().map(str::to_owned),
                metric_system_name: r["metric_system_name"].as_str().map(str::to_owned),
                delta: r["delta"].as_i64().map(apicast::Scalar::from),
                last: r["last"].as_bool().unwrap_or(false),
                querystring_parameters: Some(qs),
                extra,
            }
        })
        .collect();
    let chain: Vec<apicast::Policy> = policies_with_apicast(&proxy["policies_config"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["enabled"].as_bool().unwrap_or(true))
        .map(|p| apicast::Policy {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            version: p["version"].as_str().map(str::to_owned),
            configuration: p["configuration"].clone(),
            enabled: None,
        })
        .collect();
    let endpoint = settings.get("endpoint").and_then(Value::as_str);
    let sandbox = settings.get("sandbox_endpoint").and_then(Value::as_str);
    let hosts: Vec<String> = [host_of(endpoint), host_of(sandbox)]
        .into_iter()
        .flatten()
        .collect();
    let backend_host = host_of(Some(&state.backend_public_url));
    let mut settings = settings.clone();
    settings.remove("deployed_at");
    settings.remove("api_test_success");
    // The stored proxy settings carry the APIcast fields (error texts, credentials location, ...) under their
    // APIcast names; reading them through the shared type is what keeps system and gateway in step.
    let mut p: apicast::Proxy = serde_json::from_value(Value::Object(settings))
        .map_err(|e| ApiError::Internal(format!("proxy settings of service {sid}: {e}")))?;
    p.api_backend = Some(api_backend.to_owned());
    p.authentication_method = Some(if shown_bv == "oidc" { "oidc" } else { bv }.to_owned());
    p.hosts = hosts;
    p.backend = Some(apicast::Backend {
        endpoint: Some(state.backend_public_url.clone()),
        host: backend_host,
    });
    p.policy_chain = Some(chain);
    p.proxy_rules = proxy_rules;
    p.extra.insert("id".into(), json!(sid));
    p.extra.insert("service_id".into(), json!(sid));
    p.extra.insert("service_backend_version".into(), json!(bv));
    p.extra.insert("valid?".into(), json!(true));
    p.extra.insert(
        "hostname_rewrite_for_sandbox".into(),
        json!(host_of(Some(api_backend))),
    );
    let port = url::Url::parse(api_backend)
        .ok()
        .and_then(|u| u.port_or_known_default());
    p.extra.insert("endpoint_port".into(), json!(port));
    let mut extra = Map::new();
    extra.insert("account_id".into(), json!(state.provider_id));
    extra.insert("name".into(), service["name"].clone());
    extra.insert("description".into(), service["description"].clone());
    extra.insert("state".into(), service["state"].clone());
    for (k, v) in service["attrs"].as_object().cloned().unwrap_or_default() {
        extra.insert(k, v);
    }
    extra.insert("proxiable?".into(), json!(true));
    let content = apicast::Service {
        id: Some(apicast::Scalar::from(sid)),
        system_name: service["system_name"].as_str().map(str::to_owned),
        backend_version: Some(apicast::Scalar::from(bv)),
        backend_authentication_type: Some("service_token".into()),
        backend_authentication_value: Some(token),
        proxy: p,
        extra,
    };
    serde_json::to_value(&content)
        .map(Some)
        .map_err(|e| ApiError::Internal(format!("proxy config of service {sid}: {e}")))
}

/// Writes a new sandbox version when the built content differs from the newest one. Returns the version written.
pub async fn deploy_sandbox(tx: &mut Tx<'_>, state: &AppState, sid: i64) -> ApiResult<Option<i64>> {
    let Some(content) = build_content(tx, state, sid).await? else {
        return Ok(None);
    };
    let latest: Option<(i64, Value)> = sqlx::query_as(
        "SELECT version, content FROM proxy_configs WHERE service_id = $1 AND environment = 'sandbox' ORDER BY version DESC LIMIT 1",
    )
    .bind(sid)
    .fetch_optional(&mut **tx)
    .await?;
    if latest.as_ref().is_some_and(|(_, c)| *c == content) {
        return Ok(None);
    }
    let version = latest.map(|(v, _)| v).unwrap_or(0) + 1;
    let hosts = content["proxy"]["hosts"].clone();
    let hosts: Vec<String> = serde_json::from_value(hosts).unwrap_or_default();
    sqlx::query(
        "INSERT INTO proxy_configs (provider_id, service_id, environment, version, content, hosts) VALUES ($1, $2, 'sandbox', $3, $4, $5)",
    )
    .bind(state.provider_id)
    .bind(sid)
    .bind(version)
    .bind(&content)
    .bind(&hosts)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE proxies SET settings = jsonb_set(settings, '{deployed_at}', to_jsonb(now())) WHERE service_id = $1")
        .bind(sid)
        .execute(&mut **tx)
        .await?;
    Ok(Some(version))
}

fn render_config(row: &Value) -> Value {
    json!({
        "id": row["id"], "version": row["version"], "environment": row["environment"], "content": row["content"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    })
}

/// `POST /services/{id}/proxy/deploy`: deploys to staging and answers with the proxy.
pub async fn deploy(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, &state, sid).await?;
    deploy_sandbox(&mut tx, &state, sid).await?;
    let proxy = load_proxy(&mut tx, &state, sid).await?;
    tx.commit().await?;
    Ok(crate::api::created(
        "proxy",
        crate::services::render_proxy(&proxy),
    ))
}

fn env_or_400(raw: &str) -> ApiResult<&'static str> {
    environment(raw).ok_or_else(|| {
        ApiError::Custom(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid environment"}),
        )
    })
}

pub async fn list(
    State(state): State<AppState>,
    Path((sid, env)): Path<(String, String)>,
    _req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let env = env_or_400(&env)?;
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    let rows = all(
        &mut conn,
        "SELECT to_jsonb(c) FROM proxy_configs c WHERE service_id = $1 AND environment = $2 ORDER BY version",
        &[Bind::I(sid), Bind::S(env.into())],
    )
    .await?;
    Ok(collection(
        "proxy_configs",
        "proxy_config",
        rows.iter().map(render_config).collect(),
    ))
}

/// A JSON response with a strong ETag; `If-None-Match` that matches gets 304.
fn with_etag(req_headers: &axum::http::HeaderMap, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..16]));
    etag_response(req_headers, etag, bytes)
}

fn etag_response(req_headers: &axum::http::HeaderMap, etag: String, bytes: Vec<u8>) -> Response {
    let matches = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let tag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    (
        StatusCode::OK,
        [
            (header::ETAG, tag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            ),
        ],
        bytes,
    )
        .into_response()
}

pub async fn show(
    State(state): State<AppState>,
    Path((sid, env, version)): Path<(String, String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let env = env_or_400(&env)?;
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, &state, sid).await?;
    let row = if version == "latest" {
        must(
            &mut conn,
            "SELECT to_jsonb(c) FROM proxy_configs c WHERE service_id = $1 AND environment = $2 ORDER BY version DESC LIMIT 1",
            &[Bind::I(sid), Bind::S(env.into())],
        )
        .await?
    } else {
        must(
            &mut conn,
            "SELECT to_jsonb(c) FROM proxy_configs c WHERE service_id = $1 AND environment = $2 AND version = $3",
            &[Bind::I(sid), Bind::S(env.into()), Bind::I(id(&version)?)],
        )
        .await?
    };
    Ok(with_etag(
        &req.headers,
        &json!({"proxy_config": render_config(&row)}),
    ))
}

pub async fn promote(
    State(state): State<AppState>,
    Path((sid, env, version)): Path<(String, String, String)>,
    req: Req,
) -> ApiResult<Response> {
    let sid = id(&sid)?;
    let env = env_or_400(&env)?;
    let version = id(&version)?;
    let to = req
        .params
        .str("to")
        .ok_or_else(|| ApiError::BadRequest("Required parameter missing: to".into()))?;
    let to = environment(&to).ok_or_else(|| {
        ApiError::Invalid(Errors::one("environment", "is not included in the list"))
    })?;
    let mut tx = state.db.pool().begin().await?;
    load(&mut tx, &state, sid).await?;
    let row = must(
        &mut tx,
        "SELECT to_jsonb(c) FROM proxy_configs c WHERE service_id = $1 AND environment = $2 AND version = $3",
        &[Bind::I(sid), Bind::S(env.into()), Bind::I(version)],
    )
    .await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM proxy_configs WHERE service_id = $1 AND environment = $2 AND version = $3)")
        .bind(sid)
        .bind(to)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        return Err(ApiError::Invalid(Errors::one(
            "version",
            "has already been taken",
        )));
    }
    let hosts: Vec<String> = serde_json::from_value(row["hosts"].clone()).unwrap_or_default();
    let new_id: i64 = sqlx::query_scalar(
        "INSERT INTO proxy_configs (provider_id, service_id, environment, version, content, hosts) VALUES ($1,$2,$3,$4,$5,$6) RETURNING id",
    )
    .bind(state.provider_id)
    .bind(sid)
    .bind(to)
    .bind(version)
    .bind(&row["content"])
    .bind(&hosts)
    .fetch_one(&mut *tx)
    .await?;
    let saved = must(
        &mut tx,
        "SELECT to_jsonb(c) FROM proxy_configs c WHERE id = $1",
        &[Bind::I(new_id)],
    )
    .await?;
    tx.commit().await?;
    Ok(crate::api::created("proxy_config", render_config(&saved)))
}

/// `GET /admin/api/account/proxy_configs/{env}`: what the gateway polls. With `version=latest`, the newest version per
/// service; the unfiltered first page is cached in memory and keyed by the newest config id, so an unchanged poll
/// costs one indexed query.
pub async fn account_list(
    State(state): State<AppState>,
    Path(env): Path<String>,
    req: Req,
) -> ApiResult<Response> {
    let env = environment(&env)
        .ok_or_else(|| ApiError::Invalid(Errors::one("environment", "invalid environment")))?;
    let page = Page::from(&req.params);
    let latest = req.params.str("version").as_deref() == Some("latest");
    let host = req
        .params
        .str("host")
        .filter(|h| !h.is_empty())
        .map(|h| h.to_ascii_lowercase());
    let mut conn = state.db.pool().acquire().await?;
    let (max_id, count): (Option<i64>, i64) = sqlx::query_as(
        "SELECT max(id), count(*) FROM proxy_configs WHERE provider_id = $1 AND environment = $2",
    )
    .bind(state.provider_id)
    .bind(env)
    .fetch_one(&mut *conn)
    .await?;
    let cache_key = format!(
        "{env}|{latest}|{}|{}|{}|{}",
        host.as_deref().unwrap_or(""),
        page.page,
        page.per_page,
        max_id.unwrap_or(0)
    );
    let stamp = (max_id.unwrap_or(0), count);
    if let Some((etag, bytes)) = state.config_cache.get(&cache_key, stamp) {
        return Ok(etag_response(&req.headers, etag, bytes));
    }
    let scope = if latest {
        "SELECT DISTINCT ON (service_id) * FROM proxy_configs WHERE provider_id = $1 AND environment = $2 ORDER BY service_id, version DESC"
    } else {
        "SELECT * FROM proxy_configs WHERE provider_id = $1 AND environment = $2"
    };
    let filter = "($3 = '' OR $3 = ANY(c.hosts))";
    let binds = [
        Bind::I(state.provider_id),
        Bind::S(env.into()),
        Bind::S(host.unwrap_or_default()),
    ];
    let total = crate::db::one(
        &mut conn,
        &format!("SELECT to_jsonb(count(*)) FROM ({scope}) c WHERE {filter}"),
        &binds,
    )
    .await?
    .and_then(|v| v.as_i64())
    .unwrap_or(0);
    let mut binds = binds.to_vec();
    binds.push(Bind::I(page.per_page));
    binds.push(Bind::I(page.offset()));
    let rows = all(&mut conn, &format!("SELECT to_jsonb(c) FROM ({scope}) c WHERE {filter} ORDER BY c.service_id, c.version LIMIT $4 OFFSET $5"), &binds).await?;
    let body = paged(
        "proxy_configs",
        "proxy_config",
        rows.iter().map(render_config).collect(),
        page,
        total,
    );
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..16]));
    state
        .config_cache
        .put(cache_key, stamp, etag.clone(), bytes.clone());
    Ok(etag_response(&req.headers, etag, bytes))
}

/// A small bounded cache of rendered account-level config pages, invalidated by the newest config id.
#[derive(Default, Clone)]
pub struct ConfigCache(std::sync::Arc<std::sync::Mutex<CachedPages>>);

/// Cache key → ((newest id, count), ETag, body).
type CachedPages = std::collections::HashMap<String, ((i64, i64), String, Vec<u8>)>;

impl ConfigCache {
    const MAX_ENTRIES: usize = 64;

    fn get(&self, key: &str, stamp: (i64, i64)) -> Option<(String, Vec<u8>)> {
        let map = self.0.lock().ok()?;
        map.get(key)
            .filter(|(s, _, _)| *s == stamp)
            .map(|(_, e, b)| (e.clone(), b.clone()))
    }

    fn put(&self, key: String, stamp: (i64, i64), etag: String, bytes: Vec<u8>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= Self::MAX_ENTRIES {
                map.clear();
            }
            map.insert(key, (stamp, etag, bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rule_parts_extracts_vars_and_query() {
        let (vars, qs) = super::rule_parts("/foo/{id}.json?bar={x}&baz=1");
        assert_eq!(vars, vec!["id", "x"]);
        assert_eq!(qs["bar"], "{x}");
        assert_eq!(qs["baz"], "1");
    }

    /// Proxy settings as system stores them survive the shared APIcast type unchanged (nulls included), so
    /// building content through it changes no stored config.
    #[test]
    fn proxy_settings_round_trip_through_the_shared_type() {
        let settings = serde_json::json!({
            "endpoint": "https://a.example.com", "sandbox_endpoint": null, "api_backend": null,
            "credentials_location": "query", "auth_app_key": "app_key", "auth_app_id": "app_id", "auth_user_key": "user_key",
            "error_auth_failed": "Authentication failed", "error_status_auth_failed": 403,
            "error_headers_auth_failed": "text/plain; charset=us-ascii",
            "error_auth_missing": "Authentication parameters missing", "error_status_auth_missing": 403,
            "error_headers_auth_missing": "text/plain; charset=us-ascii",
            "error_no_match": "No Mapping Rule matched", "error_status_no_match": 404,
            "error_headers_no_match": "text/plain; charset=us-ascii",
            "error_limits_exceeded": "Usage limit exceeded", "error_status_limits_exceeded": 429,
            "error_headers_limits_exceeded": "text/plain; charset=us-ascii",
            "secret_token": "Shared_secret", "hostname_rewrite": null, "oauth_login_url": null, "api_test_path": "/",
            "oidc_issuer_endpoint": null, "oidc_issuer_type": "keycloak",
            "jwt_claim_with_client_id": null, "jwt_claim_with_client_id_type": null,
            "hosts": [], "policy_chain": null, "backend": null, "proxy_rules": [], "authentication_method": null
        });
        let typed: platform::apicast::Proxy = serde_json::from_value(settings.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), settings);
    }
}
