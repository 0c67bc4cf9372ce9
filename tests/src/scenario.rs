//! Building blocks for the scenario tests: the provider's admin steps of the 3scale guides (service, proxy, plan,
//! limit, account, application), calls through a gateway with the right `Host`, and polling with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::Admin;

/// How long a change may take to travel system → backend (outbox) and system → gateway (config poll) on a loaded
/// CI machine. Changes normally arrive within about a second.
pub const PROPAGATION: Duration = Duration::from_secs(20);

/// Polls `check` every 25 ms until it returns `Ok`, or panics after `deadline` with `what` and the last `Err`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() > deadline => {
                panic!("{what}: not true within {deadline:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// A gateway's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// JSON when the body is JSON (the echo upstream's report), else the text as a JSON string.
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends requests to one gateway's proxy port.
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
}

impl GatewayClient {
    /// `base` is the proxy's root URL (`Platform::url("gateway", "")`).
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into().trim_end_matches('/').to_owned(),
        }
    }

    /// `GET path` with `Host: host` and `headers`.
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.call(Method::GET, host, path, headers).await
    }

    pub async fn call(
        &self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header(reqwest::header::HOST, host)
            .timeout(Duration::from_secs(10));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {host}{path} through the gateway: {e}"));
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Repeats `GET path` until it answers `expected`, for changes that travel asynchronously (a request that is
    /// refused or unmatched does not count against limits, so polling is safe for the usage under test).
    pub async fn until_status(
        &self,
        expected: u16,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        eventually(
            &format!("GET {host}{path} {headers:?} answers {expected}"),
            PROPAGATION,
            || async {
                let answer = self.get(host, path, headers).await;
                if answer.status.as_u16() == expected {
                    Ok(answer)
                } else {
                    Err(format!("{} {}", answer.status, answer.body))
                }
            },
        )
        .await
    }
}

/// The numeric `id` under `root` of an admin API answer.
pub fn id_of(body: &Value, root: &str) -> i64 {
    body[root]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no {root}.id in {body}"))
}

/// `POST /admin/api/services.json` with `name`, `system_name` and `params`; returns the service id.
pub async fn create_service(admin: &Admin, name: &str, params: &[(&str, &str)]) -> i64 {
    let mut all = vec![("name", name), ("system_name", name)];
    all.extend_from_slice(params);
    id_of(
        &admin.post("/admin/api/services.json", &all).await,
        "service",
    )
}

/// `PATCH /admin/api/services/{sid}/proxy.json`.
pub async fn update_proxy(admin: &Admin, sid: i64, params: &[(&str, &str)]) -> Value {
    admin
        .ok(
            Method::PATCH,
            &format!("/admin/api/services/{sid}/proxy.json"),
            params,
        )
        .await
}

/// `PUT /admin/api/services/{sid}/proxy/policies.json` with the chain as JSON.
pub async fn set_policies(admin: &Admin, sid: i64, chain: Value) -> Value {
    admin
        .put(
            &format!("/admin/api/services/{sid}/proxy/policies.json"),
            &[("policies_config", &chain.to_string())],
        )
        .await
}

/// The id of the service's `hits` metric.
pub async fn hits_id(admin: &Admin, sid: i64) -> i64 {
    let metrics = admin
        .get(&format!("/admin/api/services/{sid}/metrics.json"), &[])
        .await;
    metrics["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| &m["metric"])
        .find(|m| m["system_name"] == "hits")
        .and_then(|m| m["id"].as_i64())
        .unwrap_or_else(|| panic!("service {sid} has no hits metric: {metrics}"))
}

/// A published application plan; returns its id.
pub async fn create_plan(admin: &Admin, sid: i64, name: &str) -> i64 {
    id_of(
        &admin
            .post(
                &format!("/admin/api/services/{sid}/application_plans.json"),
                &[
                    ("name", name),
                    ("system_name", name),
                    ("state_event", "publish"),
                ],
            )
            .await,
        "application_plan",
    )
}

/// A usage limit of `value` per `period` on metric `mid` of plan `pid`; returns its id.
pub async fn create_limit(admin: &Admin, pid: i64, mid: i64, period: &str, value: u64) -> i64 {
    id_of(
        &admin
            .post(
                &format!("/admin/api/application_plans/{pid}/metrics/{mid}/limits.json"),
                &[("period", period), ("value", &value.to_string())],
            )
            .await,
        "limit",
    )
}

/// A developer account created with `POST /admin/api/signup.json`; returns its id.
pub async fn signup(admin: &Admin, org: &str) -> i64 {
    id_of(
        &admin
            .post(
                "/admin/api/signup.json",
                &[
                    ("org_name", org),
                    ("username", org),
                    ("email", &format!("{org}@example.com")),
                    ("password", "secret-password-1"),
                ],
            )
            .await,
        "account",
    )
}

/// `POST /admin/api/accounts/{aid}/applications.json` on plan `pid`; returns the `application` object.
pub async fn create_app(admin: &Admin, aid: i64, pid: i64, params: &[(&str, &str)]) -> Value {
    let pid = pid.to_string();
    let mut all = vec![("plan_id", pid.as_str())];
    all.extend_from_slice(params);
    let body = admin
        .post(
            &format!("/admin/api/accounts/{aid}/applications.json"),
            &all,
        )
        .await;
    body["application"].clone()
}

/// A string field of an admin API object, or a panic naming it.
pub fn field(object: &Value, name: &str) -> String {
    object[name]
        .as_str()
        .map(str::to_owned)
        .or_else(|| object[name].as_i64().map(|n| n.to_string()))
        .unwrap_or_else(|| panic!("no {name} in {object}"))
}

/// `GET` on backend's internal API (`/internal/...`) with the platform's internal credentials; `Err` with the
/// status and body unless 2xx. Scenarios read usage here only (backend utilization).
pub async fn backend_internal_get(platform: &crate::Platform, path: &str) -> Result<Value, String> {
    let res = reqwest::Client::new()
        .get(platform.url("backend", path))
        .basic_auth(
            &platform.secrets.backend_internal_user,
            Some(&platform.secrets.backend_internal_password),
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = res.status();
    let body: Value = res
        .json()
        .await
        .map_err(|e| format!("GET {path}: {status} and no JSON: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("GET {path}: {status} {body}"))
    }
}

/// `metric system_name → current_value` of an application's utilization in backend (metrics the plan limits).
pub async fn utilization(
    platform: &crate::Platform,
    service_id: i64,
    app_id: &str,
) -> Result<Value, String> {
    let body = backend_internal_get(
        platform,
        &format!("/internal/services/{service_id}/applications/{app_id}/utilization"),
    )
    .await?;
    let mut values = serde_json::Map::new();
    for entry in body["utilization"].as_array().into_iter().flatten() {
        let name = entry["metric_name"].as_str().unwrap_or_default().to_owned();
        values.insert(name, entry["current_value"].clone());
    }
    Ok(Value::Object(values))
}
