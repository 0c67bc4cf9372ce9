//! The demo the local stack seeds: an API in user_key mode in front of the echo upstream, a published plan, a
//! developer account and an application, created through system's admin API as a user would.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::Platform;

/// What the demo created, and how to call it.
#[derive(Debug, Clone)]
pub struct Demo {
    pub service_id: i64,
    pub application_id: i64,
    pub user_key: String,
    /// A URL through the gateway that answers 200 (it carries the user_key).
    pub gateway_url: String,
}

impl Demo {
    pub fn curl(&self) -> String {
        format!("curl -i '{}'", self.gateway_url)
    }
}

fn id(v: &Value, envelope: &str) -> anyhow::Result<i64> {
    v[envelope]["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no {envelope}.id in {v}"))
}

/// Seeds the demo and waits (up to `deadline`) until a call through the gateway returns 200, which proves the
/// configuration reached the gateway and the application reached backend.
pub async fn seed(platform: &Platform, deadline: Duration) -> anyhow::Result<Demo> {
    let admin = platform.admin();
    let gateway = platform.service("gateway").process.addr;
    // The gateway routes by host without the port, so `localhost` works for both environments.
    let public = format!("http://localhost:{}", gateway.port());

    let service = admin
        .post(
            "/admin/api/services.json",
            &[
                ("name", "Echo API"),
                ("system_name", "echo-api"),
                ("backend_version", "1"),
                ("description", "Demo API seeded by the local stack"),
            ],
        )
        .await;
    let service_id = id(&service, "service")?;
    let echo = platform.echo.url("");
    admin
        .ok(
            Method::PATCH,
            &format!("/admin/api/services/{service_id}/proxy.json"),
            &[
                ("api_backend", echo.trim_end_matches('/')),
                ("sandbox_endpoint", &public),
                ("endpoint", &public),
            ],
        )
        .await;
    let plan = admin
        .post(
            &format!("/admin/api/services/{service_id}/application_plans.json"),
            &[("name", "Demo"), ("state_event", "publish")],
        )
        .await;
    let plan_id = id(&plan, "application_plan")?;
    let metrics = admin
        .get(
            &format!("/admin/api/services/{service_id}/metrics.json"),
            &[],
        )
        .await;
    let hits = metrics["metrics"]
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .find(|m| m["metric"]["system_name"] == "hits")
                .and_then(|m| m["metric"]["id"].as_i64())
        })
        .ok_or_else(|| anyhow::anyhow!("no hits metric in {metrics}"))?;
    admin
        .post(
            &format!("/admin/api/application_plans/{plan_id}/metrics/{hits}/limits.json"),
            &[("period", "minute"), ("value", "100")],
        )
        .await;
    let account = admin
        .post(
            "/admin/api/signup.json",
            &[
                ("org_name", "Demo Developer"),
                ("username", "demo"),
                ("email", "demo@example.com"),
            ],
        )
        .await;
    let account_id = id(&account, "account")?;
    let plan_id = plan_id.to_string();
    let app = admin
        .post(
            &format!("/admin/api/accounts/{account_id}/applications.json"),
            &[
                ("plan_id", plan_id.as_str()),
                ("name", "Demo App"),
                ("description", "Calls the echo API"),
            ],
        )
        .await;
    let application_id = id(&app, "application")?;
    let user_key = app["application"]["user_key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no user_key in {app}"))?
        .to_owned();
    let demo = Demo {
        service_id,
        application_id,
        gateway_url: format!("{public}/hello?user_key={user_key}"),
        user_key,
    };

    let http = reqwest::Client::new();
    let until = Instant::now() + deadline;
    loop {
        let last = match http.get(&demo.gateway_url).send().await {
            Ok(res) if res.status() == 200 => return Ok(demo),
            Ok(res) => format!("status {}", res.status()),
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            Instant::now() < until,
            "the demo API did not answer 200 through the gateway within {deadline:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
