//! Transport conventions of `/admin/api`: the `.json` suffix, authentication by access token, parameters, envelopes,
//! pagination and timestamps.

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::AppState;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha384};

/// Largest request body accepted (policy chains and OpenAPI documents may reach 2 MiB).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Strips `.json` from `/admin/api` paths before routing; any other format gets 406.
pub async fn json_format(mut req: Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/admin/api/") || path == "/admin/api" {
        match path.strip_suffix(".json") {
            Some(stripped) => {
                let new = match req.uri().query() {
                    Some(q) => format!("{stripped}?{q}"),
                    None => stripped.to_owned(),
                };
                if let Ok(uri) = new.parse::<Uri>() {
                    *req.uri_mut() = uri;
                }
            }
            None => {
                return (
                    StatusCode::NOT_ACCEPTABLE,
                    Json(json!({"error": "Only JSON is served: append .json to the path"})),
                )
                    .into_response()
            }
        }
    }
    next.run(req).await
}

/// Who is calling, from a valid access token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub read_only: bool,
}

/// A parsed, authenticated admin API request.
pub struct Req {
    pub params: Params,
    pub caller: Caller,
    pub headers: HeaderMap,
    pub path: String,
}

pub fn digest(token: &str) -> String {
    format!("SHA384${}", hex::encode(Sha384::digest(token.as_bytes())))
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn basic_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':').unwrap_or((text.as_str(), ""));
    let found = [user, pass]
        .into_iter()
        .find(|s| !s.trim().is_empty())
        .map(str::to_owned);
    found
}

impl FromRequest<AppState> for Req {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> ApiResult<Self> {
        let (parts, body) = req.into_parts();
        let mut params = parts.uri.query().map(Params::from_form).unwrap_or_default();
        let bytes = axum::body::to_bytes(Body::new(body), MAX_BODY)
            .await
            .map_err(|_| ApiError::TooLarge)?;
        if !bytes.is_empty() {
            let ctype = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            if ctype.contains("json") {
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(Value::Object(map)) => params.merge(Params(map)),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(ApiError::Custom(
                            StatusCode::BAD_REQUEST,
                            json!({"error": format!("Malformed JSON body: {e}")}),
                        ))
                    }
                }
            } else {
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| ApiError::BadRequest("Invalid request body encoding".into()))?;
                params.merge(Params::from_form(text));
            }
        }
        let token = params
            .str("access_token")
            .filter(|s| !s.is_empty())
            .or_else(|| basic_token(&parts.headers))
            .ok_or(ApiError::AccessDenied)?;
        let path = parts.uri.path().to_owned();
        let caller = authenticate(state, &token, &path, &parts.method).await?;
        params.0.remove("access_token");
        // Postgres text cannot hold NUL, so such a value would fail at the database as a 500.
        if params.0.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
            return Err(ApiError::Custom(
                StatusCode::BAD_REQUEST,
                json!({"error": "Parameters must not contain NUL characters"}),
            ));
        }
        Ok(Req {
            params,
            caller,
            headers: parts.headers,
            path,
        })
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

async fn authenticate(
    state: &AppState,
    token: &str,
    path: &str,
    method: &Method,
) -> ApiResult<Caller> {
    let row: Option<(i64, Vec<String>, String)> = sqlx::query_as(
        "SELECT t.user_id, t.scopes, t.permission FROM access_tokens t JOIN users u ON u.id = t.user_id \
         JOIN accounts a ON a.id = u.account_id \
         WHERE t.digest = $1 AND (t.expires_at IS NULL OR t.expires_at > now()) AND a.id = $2",
    )
    .bind(digest(token))
    .bind(state.provider_id)
    .fetch_optional(state.db.pool())
    .await?;
    let (user_id, scopes, permission) = row.ok_or(ApiError::AccessDenied)?;
    let accepted: &[&str] = if path.contains("/proxy/policies") {
        &["account_management", "policy_registry"]
    } else {
        &["account_management"]
    };
    if !scopes.iter().any(|s| accepted.contains(&s.as_str())) {
        return Err(ApiError::Permission);
    }
    let read_only = permission != "rw";
    if read_only && !matches!(*method, Method::GET | Method::HEAD) {
        return Err(ApiError::Permission);
    }
    Ok(Caller { user_id, read_only })
}

/// ISO 8601 without fractional seconds, as porta renders times.
pub fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn link(rel: &str, href: String) -> Value {
    json!({"rel": rel, "href": href})
}

/// `{"<root>": item}`.
pub fn wrap(root: &str, item: Value) -> Value {
    json!({ root: item })
}

pub fn ok(root: &str, item: Value) -> Response {
    Json(wrap(root, item)).into_response()
}

pub fn created(root: &str, item: Value) -> Response {
    (StatusCode::CREATED, Json(wrap(root, item))).into_response()
}

/// DELETE succeeded: 200 with an empty body.
pub fn deleted() -> Response {
    StatusCode::OK.into_response()
}

/// `{"<plural>": [{"<root>": …}]}` without pagination.
pub fn collection(plural: &str, root: &str, items: Vec<Value>) -> Response {
    let items: Vec<Value> = items.into_iter().map(|i| wrap(root, i)).collect();
    Json(json!({ plural: items })).into_response()
}

/// `page` and `per_page` as porta's pagination filter reads them (bad values fall back silently).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub page: i64,
    pub per_page: i64,
}

impl Page {
    pub fn from(params: &Params) -> Self {
        let page = match params.int("page") {
            Some(Ok(p)) if p >= 1 => p,
            _ => 1,
        };
        let per_page = match params.int("per_page") {
            Some(Ok(p)) if (1..=500).contains(&p) => p,
            _ => 500,
        };
        Self { page, per_page }
    }
    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }
}

/// A paginated collection; `metadata` only when there is more than one page.
pub fn paged(plural: &str, root: &str, items: Vec<Value>, page: Page, total: i64) -> Value {
    let items: Vec<Value> = items.into_iter().map(|i| wrap(root, i)).collect();
    let mut body = json!({ plural: items });
    if page.per_page < total {
        body["metadata"] = json!({
            "per_page": page.per_page,
            "total_entries": total,
            "total_pages": (total + page.per_page - 1) / page.per_page,
            "current_page": page.page,
        });
    }
    body
}

/// A path id that is not a number cannot exist.
pub fn id(raw: &str) -> ApiResult<i64> {
    raw.parse().map_err(|_| ApiError::NotFound)
}
