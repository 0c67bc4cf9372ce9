//! Calls back to system's admin API with the tenant's token, for the current state of an application or a proxy.

use base64::Engine;
use platform::Secret;
use reqwest::StatusCode;
use serde_json::Value;

/// What system said about an entity.
#[derive(Debug)]
pub enum Fetched {
    Found(Value),
    /// 404: the entity is gone.
    Gone,
}

/// A tenant as zync stored it from `PUT /tenant`.
pub struct Tenant {
    pub endpoint: String,
    pub access_token: Secret,
}

pub struct SystemClient {
    http: reqwest::Client,
    /// Sent as `X-Zync-Token`, as zync does.
    zync_token: Option<Secret>,
}

impl SystemClient {
    pub fn new(http: reqwest::Client, zync_token: Option<Secret>) -> Self {
        Self { http, zync_token }
    }

    pub async fn application(&self, tenant: &Tenant, id: i64) -> Result<Fetched, String> {
        self.fetch(
            tenant,
            &format!("/admin/api/applications/find.json?application_id={id}"),
            "application",
        )
        .await
    }

    pub async fn proxy(&self, tenant: &Tenant, service_id: i64) -> Result<Fetched, String> {
        self.fetch(
            tenant,
            &format!("/admin/api/services/{service_id}/proxy.json"),
            "proxy",
        )
        .await
    }

    async fn fetch(&self, tenant: &Tenant, path: &str, key: &str) -> Result<Fetched, String> {
        // Only the endpoint's scheme, host and port are used, as in zync.
        let base = url::Url::parse(&tenant.endpoint)
            .map_err(|e| format!("tenant endpoint is not a URL ({e})"))?;
        let url = base
            .join(path)
            .map_err(|e| format!("bad system URL ({e})"))?;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!(":{}", tenant.access_token.expose()));
        let mut req = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
        if let Some(token) = &self.zync_token {
            req = req.header("x-zync-token", token.expose());
        }
        let path_only = path.split('?').next().unwrap_or(path);
        let res = req.send().await.map_err(|e| {
            format!(
                "GET {path_only} on system failed: {}",
                crate::idp::describe(e)
            )
        })?;
        let status = res.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(Fetched::Gone);
        }
        // zync parses 422 like a success.
        if !status.is_success() && status != StatusCode::UNPROCESSABLE_ENTITY {
            return Err(format!("GET {path_only} on system answered {status}"));
        }
        let body: Value = res.json().await.map_err(|e| {
            format!(
                "GET {path_only} on system: not JSON ({})",
                crate::idp::describe(e)
            )
        })?;
        match body.get(key) {
            Some(inner @ Value::Object(_)) => Ok(Fetched::Found(inner.clone())),
            _ if body.is_object() => Ok(Fetched::Found(body)),
            _ => Err(format!("GET {path_only} on system: unexpected JSON")),
        }
    }
}
