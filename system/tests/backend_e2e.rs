//! End to end with the real `backend` binary: what system's admin API creates (service, plan with a limit, account,
//! application) reaches backend through the outbox, so `authrep.xml` authorizes the generated credentials, enforces
//! the limit, and rejects the application once it is suspended.
//!
//! Needs the backend binary next to system's (`cargo build -p backend`).

mod common;

use common::Server;
use platform::testing::{ServiceProcess, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USER: &str = "internal-user";
const PASSWORD: &str = "internal-secret";

fn backend_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_system")).with_file_name("backend");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p backend`",
        path.display()
    );
    path
}

struct Authrep {
    status: StatusCode,
    reason_code: Option<String>,
    body: String,
}

async fn authrep(
    client: &reqwest::Client,
    backend: &ServiceProcess,
    query: &[(&str, &str)],
) -> Authrep {
    let res = client
        .get(backend.url("/transactions/authrep.xml"))
        .query(query)
        .header("3scale-options", "rejection_reason_header=1")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("authrep");
    let status = res.status();
    let reason_code = res
        .headers()
        .get("3scale-rejection-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Authrep {
        status,
        reason_code,
        body: res.text().await.unwrap_or_default(),
    }
}

/// Repeats `authrep` until `done` holds, failing with the last answer after `deadline`.
async fn authrep_until(
    client: &reqwest::Client,
    backend: &ServiceProcess,
    query: &[(&str, &str)],
    what: &str,
    done: impl Fn(&Authrep) -> bool,
) -> Authrep {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = authrep(client, backend, query).await;
        if done(&a) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last answer {} {:?} {}\n--- backend logs ---\n{}",
            a.status,
            a.reason_code,
            a.body,
            backend.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn created(api: &Server, method: &str, path: &str, body: Value) -> Value {
    let (s, v, raw) = api.json(method, path, Some(body)).await;
    assert!(s.is_success(), "{method} {path}: {s} {raw}");
    v
}

/// Sets the service's private endpoint and reads the service token from the sandbox gateway config.
async fn service_token(api: &Server, sid: i64) -> String {
    created(
        api,
        "PATCH",
        &format!("/admin/api/services/{sid}/proxy.json"),
        json!({"proxy": {"api_backend": "http://127.0.0.1:9"}}),
    )
    .await;
    let (s, cfg) = api
        .get(&format!(
            "/admin/api/services/{sid}/proxy/configs/sandbox/latest.json"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{cfg}");
    cfg["proxy_config"]["content"]["backend_authentication_value"]
        .as_str()
        .expect("service token in the gateway config")
        .to_owned()
}

#[tokio::test]
async fn admin_api_changes_drive_authrep_on_the_real_backend() {
    let backend_db = TestDb::new("sys_e2e_backend").await;
    let mut backend = ServiceProcess::spawn(
        "backend",
        &backend_binary(),
        &[
            ("DATABASE_URL", backend_db.url.clone()),
            ("DATABASE_POOL_SIZE", "4".to_owned()),
            ("BACKEND_INTERNAL_API_USER", USER.to_owned()),
            ("BACKEND_INTERNAL_API_PASSWORD", PASSWORD.to_owned()),
        ],
    );
    let ready = backend.url("/status/ready");
    backend.wait_ready(&ready, Duration::from_secs(30)).await;

    let api = Server::start(
        "sys_e2e_system",
        &[
            ("BACKEND_URL", backend.url("")),
            ("BACKEND_INTERNAL_API_USER", USER.to_owned()),
            ("BACKEND_INTERNAL_API_PASSWORD", PASSWORD.to_owned()),
        ],
    )
    .await;

    // Service (user_key mode); its gateway config carries the service token.
    let sid = api.service("E2E", "1").await;
    let token = service_token(&api, sid).await;
    let (_, metrics) = api
        .get(&format!("/admin/api/services/{sid}/metrics.json"))
        .await;
    let hits = metrics["metrics"][0]["metric"]["id"].as_i64().unwrap();

    // Plan with a limit of 3 hits ever (eternity: no period boundary can reset it mid-test).
    let plan = created(
        &api,
        "POST",
        &format!("/admin/api/services/{sid}/application_plans.json"),
        json!({"name": "Basic", "state_event": "publish"}),
    )
    .await;
    let pid = plan["application_plan"]["id"].as_i64().unwrap();
    let limit = created(
        &api,
        "POST",
        &format!("/admin/api/application_plans/{pid}/metrics/{hits}/limits.json"),
        json!({"period": "eternity", "value": 3}),
    )
    .await;
    let lid = limit["limit"]["id"].as_i64().unwrap();

    // Developer account and application with generated credentials.
    let account = created(
        &api,
        "POST",
        "/admin/api/signup.json",
        json!({"org_name": "Acme", "username": "alice", "email": "alice@acme.example", "password": "secret123"}),
    )
    .await;
    let aid = account["account"]["id"].as_i64().unwrap();
    let app = created(
        &api,
        "POST",
        &format!("/admin/api/accounts/{aid}/applications.json"),
        json!({"plan_id": pid, "name": "App", "description": "e2e"}),
    )
    .await;
    let app_id = app["application"]["id"].as_i64().unwrap();
    let user_key = app["application"]["user_key"].as_str().unwrap().to_owned();
    assert_eq!(user_key.len(), 32);

    let client = reqwest::Client::new();
    let sid_s = sid.to_string();
    let query = [
        ("service_token", token.as_str()),
        ("service_id", sid_s.as_str()),
        ("user_key", user_key.as_str()),
        ("usage[hits]", "1"),
    ];
    // The outbox delivers asynchronously: the first success is the first hit counted.
    let first = authrep_until(
        &client,
        &backend,
        &query,
        "authorized after delivery",
        |a| a.status == StatusCode::OK,
    )
    .await;
    assert!(
        first.body.contains("<authorized>true</authorized>"),
        "{}",
        first.body
    );
    assert!(first.body.contains("<plan>Basic</plan>"), "{}", first.body);
    for _ in 0..2 {
        let a = authrep(&client, &backend, &query).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    let over = authrep(&client, &backend, &query).await;
    assert_eq!(over.status, StatusCode::CONFLICT, "{}", over.body);
    assert_eq!(over.reason_code.as_deref(), Some("limits_exceeded"));

    // A wrong key is rejected.
    let wrong = authrep(
        &client,
        &backend,
        &[
            ("service_token", token.as_str()),
            ("service_id", sid_s.as_str()),
            ("user_key", "not-a-key"),
        ],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.body);

    // Suspend: backend learns the state and answers application_not_active.
    created(
        &api,
        "PUT",
        &format!("/admin/api/accounts/{aid}/applications/{app_id}/suspend.json"),
        json!({}),
    )
    .await;
    let no_usage = [
        ("service_token", token.as_str()),
        ("service_id", sid_s.as_str()),
        ("user_key", user_key.as_str()),
    ];
    let suspended = authrep_until(
        &client,
        &backend,
        &no_usage,
        "rejected after suspend",
        |a| a.reason_code.as_deref() == Some("application_not_active"),
    )
    .await;
    assert_eq!(suspended.status, StatusCode::CONFLICT);
    assert!(
        suspended.body.contains("application is not active"),
        "{}",
        suspended.body
    );

    // Resume brings it back (the limit still applies, so the answer is the limit, not the state).
    created(
        &api,
        "PUT",
        &format!("/admin/api/accounts/{aid}/applications/{app_id}/resume.json"),
        json!({}),
    )
    .await;
    authrep_until(
        &client,
        &backend,
        &no_usage,
        "active again after resume",
        |a| a.reason_code.as_deref() != Some("application_not_active"),
    )
    .await;

    // Raising the limit to 5 propagates: exactly two more hits fit.
    created(
        &api,
        "PUT",
        &format!("/admin/api/application_plans/{pid}/metrics/{hits}/limits/{lid}.json"),
        json!({"usage_limit": {"value": 5}}),
    )
    .await;
    authrep_until(&client, &backend, &query, "raised limit applied", |a| {
        a.status == StatusCode::OK
    })
    .await;
    let fifth = authrep(&client, &backend, &query).await;
    assert_eq!(fifth.status, StatusCode::OK, "{}", fifth.body);
    let sixth = authrep(&client, &backend, &query).await;
    assert_eq!(
        sixth.reason_code.as_deref(),
        Some("limits_exceeded"),
        "{}",
        sixth.body
    );

    // An app_id/app_key service: the generated key authorizes, a changed plan limit propagates.
    let sid2 = api.service("Keys", "2").await;
    let plan2 = created(
        &api,
        "POST",
        &format!("/admin/api/services/{sid2}/application_plans.json"),
        json!({"name": "Keyed"}),
    )
    .await;
    let pid2 = plan2["application_plan"]["id"].as_i64().unwrap();
    let app2 = created(
        &api,
        "POST",
        &format!("/admin/api/accounts/{aid}/applications.json"),
        json!({"plan_id": pid2, "name": "Keyed app"}),
    )
    .await;
    let app2_id = app2["application"]["id"].as_i64().unwrap();
    let application_id = app2["application"]["application_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, keys) = api
        .get(&format!(
            "/admin/api/accounts/{aid}/applications/{app2_id}/keys.json"
        ))
        .await;
    let app_key = keys["keys"][0]["key"]["value"]
        .as_str()
        .expect("a generated key (mandatory_app_key)")
        .to_owned();
    let token2 = service_token(&api, sid2).await;
    let sid2_s = sid2.to_string();
    let keyed = [
        ("service_token", token2.as_str()),
        ("service_id", sid2_s.as_str()),
        ("app_id", application_id.as_str()),
        ("app_key", app_key.as_str()),
    ];
    // The application reaches backend before its key (outbox order), and an app without keys needs none:
    // wait until a wrong key is refused, which shows the key arrived.
    let wrong_key = [
        ("service_token", token2.as_str()),
        ("service_id", sid2_s.as_str()),
        ("app_id", application_id.as_str()),
        ("app_key", "wrong-key"),
    ];
    authrep_until(
        &client,
        &backend,
        &wrong_key,
        "wrong app_key refused",
        |a| a.reason_code.as_deref() == Some("application_key_invalid"),
    )
    .await;
    let good = authrep(&client, &backend, &keyed).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);
    assert!(good.body.contains("<plan>Keyed</plan>"), "{}", good.body);

    // Key rotation: a second key works once delivered; the first stops working once deleted.
    let keys_path = format!("/admin/api/accounts/{aid}/applications/{app2_id}/keys");
    created(
        &api,
        "POST",
        &format!("{keys_path}.json"),
        json!({"key": "second-key-value"}),
    )
    .await;
    let second = [
        ("service_token", token2.as_str()),
        ("service_id", sid2_s.as_str()),
        ("app_id", application_id.as_str()),
        ("app_key", "second-key-value"),
    ];
    authrep_until(&client, &backend, &second, "second key accepted", |a| {
        a.status == StatusCode::OK
    })
    .await;
    let (s, _, raw) = api
        .json("DELETE", &format!("{keys_path}/{app_key}.json"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    authrep_until(&client, &backend, &keyed, "deleted key refused", |a| {
        a.reason_code.as_deref() == Some("application_key_invalid")
    })
    .await;
    let still = authrep(&client, &backend, &second).await;
    assert_eq!(still.status, StatusCode::OK, "{}", still.body);

    drop(api);
    backend.terminate(Duration::from_secs(10)).await;
}
