//! Admin API over `oneshot` with a real database: conventions, validations, main resources, config versions, outbox.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use platform::db::{Database, DbConfig};
use platform::testing::TestDb;
use platform::EnvReader;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token";

struct Api {
    app: axum::Router,
    db: Database,
    _test_db: TestDb,
}

async fn api(prefix: &str) -> Api {
    let test_db = TestDb::new(prefix).await;
    let url = test_db.url.clone();
    let mut env = EnvReader::from_pairs([("DATABASE_URL", url.as_str())]);
    let config = system::Config::read(&mut env).unwrap();
    let db = Database::connect(&DbConfig::read(&mut env, "x"), &system::MIGRATOR)
        .await
        .unwrap();
    let state = system::AppState::new(db.clone(), &config);
    system::tokens::bootstrap(db.pool(), system::PROVIDER_ID, TOKEN)
        .await
        .unwrap();
    Api {
        app: system::router(state),
        db,
        _test_db: test_db,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        let body = match body {
            Some((ctype, b)) => {
                req = req.header("content-type", ctype);
                Body::from(b)
            }
            None => Body::empty(),
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn json(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (s, b) = self
            .call(
                method,
                &format!("{path}{sep}access_token={TOKEN}"),
                Some(("application/json", body.to_string())),
            )
            .await;
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    async fn form(&self, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        let (s, b) = self
            .call(
                method,
                path,
                Some((
                    "application/x-www-form-urlencoded",
                    format!("access_token={TOKEN}&{body}"),
                )),
            )
            .await;
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (s, b) = self
            .call("GET", &format!("{path}{sep}access_token={TOKEN}"), None)
            .await;
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn conventions_auth_formats_wrapping_and_errors() {
    let api = api("sys_conv").await;
    // No token, bad token.
    let (s, b) = api.call("GET", "/admin/api/services.json", None).await;
    assert_eq!(
        (s, b.as_str()),
        (StatusCode::FORBIDDEN, r#"{"error":"Access denied"}"#)
    );
    let (s, _) = api
        .call("GET", "/admin/api/services.json?access_token=nope", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // HTTP Basic with the token as password, as the toolbox sends it.
    let basic = format!("Basic {}", base64_encode(&format!(":{TOKEN}")));
    let res = api
        .app
        .clone()
        .oneshot(
            Request::get("/admin/api/services.json")
                .header("authorization", basic)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Formats: no extension or .xml → 406.
    let (s, b) = api
        .call(
            "GET",
            &format!("/admin/api/services?access_token={TOKEN}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE);
    assert!(b.contains("JSON"));
    let (s, _) = api
        .call(
            "GET",
            &format!("/admin/api/services.xml?access_token={TOKEN}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE);
    // Three equivalent parameter shapes.
    let (s, b1) = api
        .form("POST", "/admin/api/services.json", "name=Flat")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b1}");
    assert_eq!(b1["service"]["system_name"], "flat");
    let (s, b2) = api
        .form(
            "POST",
            "/admin/api/services.json",
            "service[name]=Wrapped&service[backend_version]=2",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b2["service"]["backend_version"], "2");
    let (s, b3) = api
        .json(
            "POST",
            "/admin/api/services.json",
            json!({"service": {"name": "Json", "backend_version": "oidc"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b3["service"]["backend_version"], "oidc");
    assert!(b3["service"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["rel"] == "metrics"));
    // Validation messages.
    let (s, b) = api
        .json(
            "POST",
            "/admin/api/services.json",
            json!({"service": {"name": ""}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(b["errors"]["name"], json!(["can't be blank"]));
    let (_, b) = api
        .json("POST", "/admin/api/services.json", json!({"name": "Flat"}))
        .await;
    assert_eq!(
        b["errors"]["system_name"],
        json!(["has already been taken"])
    );
    let (_, b) = api
        .json(
            "POST",
            "/admin/api/services.json",
            json!({"name": "X", "backend_version": "9"}),
        )
        .await;
    assert_eq!(
        b["errors"]["backend_version"],
        json!(["is not included in the list"])
    );
    // Not found, malformed JSON.
    let (s, b) = api.get("/admin/api/services/999999.json").await;
    assert_eq!(
        (s, b),
        (StatusCode::NOT_FOUND, json!({"status": "Not found"}))
    );
    let (s, _) = api
        .call(
            "POST",
            &format!("/admin/api/services.json?access_token={TOKEN}"),
            Some(("application/json", "{bad".into())),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Pagination: metadata only when more than one page.
    let (_, b) = api.get("/admin/api/services.json?per_page=2&page=2").await;
    assert_eq!(b["services"].as_array().unwrap().len(), 1);
    assert_eq!(b["metadata"]["total_entries"], 3);
    assert_eq!(b["metadata"]["total_pages"], 2);
    let (_, b) = api.get("/admin/api/services.json").await;
    assert!(b.get("metadata").is_none());
    // Read-only tokens cannot write; new tokens are created with their value shown once.
    let (s, t) = api
        .form(
            "POST",
            "/admin/api/personal/access_tokens.json",
            "name=ro&permission=ro&scopes[]=account_management",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let ro = t["access_token"]["value"].as_str().unwrap().to_owned();
    assert_eq!(ro.len(), 96);
    let (s, _) = api
        .call(
            "GET",
            &format!("/admin/api/services.json?access_token={ro}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .call(
            "POST",
            &format!("/admin/api/services.json?access_token={ro}&name=nope"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(b.contains("correct permissions"));
    let stored: Vec<String> = sqlx::query_scalar("SELECT digest FROM access_tokens")
        .fetch_all(api.db.pool())
        .await
        .unwrap();
    assert!(stored
        .iter()
        .all(|d| d.starts_with("SHA384$") && !d.contains(&ro)));
    // DELETE → 200 with an empty body.
    let sid = b1["service"]["id"].as_i64().unwrap();
    let (s, b) = api
        .call(
            "DELETE",
            &format!("/admin/api/services/{sid}.json?access_token={TOKEN}"),
            None,
        )
        .await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, ""));
    let (s, _) = api.get(&format!("/admin/api/services/{sid}.json")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn service_to_application_and_config_versions() {
    let api = api("sys_flow").await;
    let (_, svc) = api
        .json(
            "POST",
            "/admin/api/services.json",
            json!({"name": "Echo", "backend_version": "2"}),
        )
        .await;
    let sid = svc["service"]["id"].as_i64().unwrap();
    // Defaults created with the service.
    let (_, metrics) = api
        .get(&format!("/admin/api/services/{sid}/metrics.json"))
        .await;
    let hits = &metrics["metrics"][0]["metric"];
    assert_eq!(hits["system_name"], "hits");
    let hits_id = hits["id"].as_i64().unwrap();
    let (_, rules) = api
        .get(&format!(
            "/admin/api/services/{sid}/proxy/mapping_rules.json"
        ))
        .await;
    assert_eq!(rules["mapping_rules"][0]["mapping_rule"]["pattern"], "/");
    let (s, m) = api
        .json(
            "DELETE",
            &format!("/admin/api/services/{sid}/metrics/{hits_id}.json"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        m["errors"]["base"],
        json!(["The Hits metric cannot be deleted"])
    );
    // Methods only under hits.
    let (s, _) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/metrics/{hits_id}/methods.json"),
            json!({"friendly_name": "Get thing"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Mapping rule validations.
    let (s, b) = api.json("POST", &format!("/admin/api/services/{sid}/proxy/mapping_rules.json"), json!({"mapping_rule": {"http_method": "GET", "pattern": "/a/{x}/{x}", "delta": 0, "metric_id": hits_id}})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        b["errors"]["pattern"],
        json!(["Can't have repeated variable names"])
    );
    assert_eq!(b["errors"]["delta"], json!(["must be greater than 0"]));
    // Proxy: no config version until api_backend is set.
    let (_, cfgs) = api
        .get(&format!(
            "/admin/api/services/{sid}/proxy/configs/sandbox.json"
        ))
        .await;
    assert_eq!(cfgs["proxy_configs"], json!([]));
    let (s, p) = api
        .json(
            "PATCH",
            &format!("/admin/api/services/{sid}/proxy.json"),
            json!({"proxy": {"credentials_location": "nowhere"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        p["errors"]["credentials_location"],
        json!(["is not included in the list"])
    );
    let (s, p) = api
        .json("PATCH", &format!("/admin/api/services/{sid}/proxy.json"), json!({"proxy": {"api_backend": "http://127.0.0.1:9999", "endpoint": "http://prod.example.com", "sandbox_endpoint": "http://staging.example.com", "credentials_location": "headers"}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["proxy"]["credentials_location"], "headers");
    let (s, latest) = api
        .get(&format!(
            "/admin/api/services/{sid}/proxy/configs/sandbox/latest.json"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    let content = &latest["proxy_config"]["content"];
    assert_eq!(latest["proxy_config"]["version"], 1);
    assert_eq!(content["backend_version"], "2");
    assert_eq!(content["backend_authentication_type"], "service_token");
    assert_eq!(
        content["proxy"]["hosts"],
        json!(["prod.example.com", "staging.example.com"])
    );
    assert_eq!(
        content["proxy"]["proxy_rules"][0]["metric_system_name"],
        "hits"
    );
    assert_eq!(content["proxy"]["policy_chain"][0]["name"], "apicast");
    // An unchanged PATCH writes no new version; a changed one does.
    api.json(
        "PATCH",
        &format!("/admin/api/services/{sid}/proxy.json"),
        json!({"proxy": {"service_id": sid}}),
    )
    .await;
    let (_, cfgs) = api
        .get(&format!(
            "/admin/api/services/{sid}/proxy/configs/sandbox.json"
        ))
        .await;
    assert_eq!(cfgs["proxy_configs"].as_array().unwrap().len(), 1);
    let (s, _) = api.json("PUT", &format!("/admin/api/services/{sid}/proxy/policies.json"), json!({"policies_config": [{"name": "cors", "version": "builtin", "configuration": {}}]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = api
        .json("PUT", &format!("/admin/api/services/{sid}/proxy/policies.json"), json!({"policies_config": [{"name": "cors", "version": "builtin", "configuration": {}, "enabled": true}, {"name": "apicast", "version": "builtin", "configuration": {}, "enabled": true}]}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, latest) = api
        .get(&format!(
            "/admin/api/services/{sid}/proxy/configs/staging/latest.json"
        ))
        .await;
    assert_eq!(latest["proxy_config"]["version"], 2);
    // Promote keeps the number; promoting twice is 422.
    let (s, pr) = api
        .form(
            "POST",
            &format!("/admin/api/services/{sid}/proxy/configs/sandbox/2/promote.json"),
            "to=production",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{pr}");
    assert_eq!(pr["proxy_config"]["version"], 2);
    let (s, _) = api
        .form(
            "POST",
            &format!("/admin/api/services/{sid}/proxy/configs/sandbox/2/promote.json"),
            "to=production",
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // The gateway's endpoint, with ETag and 304.
    let path = format!(
        "/admin/api/account/proxy_configs/production.json?version=latest&access_token={TOKEN}"
    );
    let res = api
        .app
        .clone()
        .oneshot(Request::get(&path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        body["proxy_configs"][0]["proxy_config"]["content"]["id"],
        sid
    );
    let res = api
        .app
        .clone()
        .oneshot(
            Request::get(&path)
                .header("if-none-match", &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    // Plan, limit, account, application.
    let (s, plan) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/application_plans.json"),
            json!({"application_plan": {"name": "Basic", "state_event": "publish"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(plan["application_plan"]["state"], "published");
    let pid = plan["application_plan"]["id"].as_i64().unwrap();
    let (s, l) = api
        .form(
            "POST",
            &format!("/admin/api/application_plans/{pid}/metrics/{hits_id}/limits.json"),
            "period=day&value=-3",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(l["limit"]["value"], 0);
    let (_, l) = api
        .form(
            "POST",
            &format!("/admin/api/application_plans/{pid}/metrics/{hits_id}/limits.json"),
            "period=day&value=5",
        )
        .await;
    assert_eq!(l["errors"]["period"], json!(["has already been taken"]));
    let (_, l) = api
        .form(
            "POST",
            &format!("/admin/api/application_plans/{pid}/metrics/{hits_id}/limits.json"),
            "period=fortnight&value=5",
        )
        .await;
    assert_eq!(l["errors"]["period"], json!(["is invalid"]));
    let (s, acc) = api
        .form(
            "POST",
            "/admin/api/signup.json",
            "org_name=Dev&username=dev&email=dev@example.com&password=x",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{acc}");
    let aid = acc["account"]["id"].as_i64().unwrap();
    let (_, dup) = api
        .form(
            "POST",
            "/admin/api/signup.json",
            "org_name=Dev&username=dev&email=dev@example.com",
        )
        .await;
    assert_eq!(dup["errors"]["username"], json!(["has already been taken"]));
    let (s, app) = api
        .form(
            "POST",
            &format!("/admin/api/accounts/{aid}/applications.json"),
            &format!("plan_id={pid}&name=App"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{app}");
    let app_id = app["application"]["application_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app_id.len(), 8);
    assert_eq!(app["application"]["state"], "live");
    let app_pk = app["application"]["id"].as_i64().unwrap();
    let (_, keys) = api
        .get(&format!(
            "/admin/api/accounts/{aid}/applications/{app_pk}/keys.json"
        ))
        .await;
    assert_eq!(
        keys["keys"].as_array().unwrap().len(),
        1,
        "mandatory_app_key generates one key"
    );
    let (s, found) = api
        .get(&format!(
            "/admin/api/applications/find.json?application_id={app_pk}"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(found["application"]["application_id"], app_id.as_str());
    let (s, _) = api
        .get(&format!(
            "/admin/api/applications/find.json?app_id={app_id}"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, sus) = api
        .json(
            "PUT",
            &format!("/admin/api/accounts/{aid}/applications/{app_pk}/suspend.json"),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, sus["application"]["state"].clone()),
        (StatusCode::OK, json!("suspended"))
    );
    let (s, _) = api
        .json(
            "PUT",
            &format!("/admin/api/accounts/{aid}/applications/{app_pk}/suspend.json"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = api
        .json(
            "PUT",
            &format!("/admin/api/accounts/{aid}/applications/{app_pk}/resume.json"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    for i in 0..4 {
        let (s, _) = api
            .form(
                "POST",
                &format!("/admin/api/accounts/{aid}/applications/{app_pk}/keys.json"),
                &format!("key=key-number-{i}"),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, b) = api
        .form(
            "POST",
            &format!("/admin/api/accounts/{aid}/applications/{app_pk}/keys.json"),
            "key=one-too-many",
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(b["errors"]["base"], json!(["Limit reached"]));
    let (s, _) = api
        .json(
            "DELETE",
            &format!("/admin/api/accounts/{aid}/applications/{app_pk}/keys/key-number-0.json"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .form(
            "POST",
            &format!("/admin/api/accounts/{aid}/applications/{app_pk}/referrer_filters.json"),
            "referrer_filter=bad/value",
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, _) = api
        .form(
            "POST",
            &format!("/admin/api/accounts/{aid}/applications/{app_pk}/referrer_filters.json"),
            "referrer_filter=*.example.com",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = api
        .json(
            "DELETE",
            &format!("/admin/api/services/{sid}/application_plans/{pid}.json"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(b["errors"]["base"][0]
        .as_str()
        .unwrap()
        .starts_with("This application plan cannot be deleted"));
    // Every change was recorded for backend and zync in the outbox.
    let paths: Vec<String> =
        sqlx::query_scalar("SELECT target || ' ' || method || ' ' || path FROM outbox ORDER BY id")
            .fetch_all(api.db.pool())
            .await
            .unwrap();
    let has = |p: &str| paths.iter().any(|x| x == p);
    assert!(
        has(&format!("backend PUT /internal/services/{sid}")),
        "{paths:?}"
    );
    assert!(has(&format!(
        "backend PUT /internal/services/{sid}/plans/{pid}/usagelimits/{hits_id}/day"
    )));
    assert!(has(&format!(
        "backend PUT /internal/services/{sid}/applications/{app_id}"
    )));
    assert!(has("zync PUT /notification"));
}

#[tokio::test]
async fn resync_queues_every_backend_entity_again() {
    let api = api("sys_resync").await;
    let (_, svc) = api
        .json(
            "POST",
            "/admin/api/services.json",
            json!({"name": "Resync", "backend_version": "2"}),
        )
        .await;
    let sid = svc["service"]["id"].as_i64().unwrap();
    let (_, plan) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/application_plans.json"),
            json!({"name": "Plan"}),
        )
        .await;
    let pid = plan["application_plan"]["id"].as_i64().unwrap();
    let (_, acc) = api
        .form(
            "POST",
            "/admin/api/signup.json",
            "org_name=D&username=dev&email=d@example.com",
        )
        .await;
    let aid = acc["account"]["id"].as_i64().unwrap();
    let (s, _) = api
        .form(
            "POST",
            &format!("/admin/api/accounts/{aid}/applications.json"),
            &format!("plan_id={pid}"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE target = 'backend'")
        .fetch_one(api.db.pool())
        .await
        .unwrap();
    let mut env = EnvReader::from_pairs([("DATABASE_URL", api._test_db.url.as_str())]);
    let config = system::Config::read(&mut env).unwrap();
    let state = system::AppState::new(api.db.clone(), &config);
    let queued = system::resync::enqueue_all(&state).await.unwrap();
    // Service, token, hits, app, user_key mapping, generated key.
    assert_eq!(queued, before, "a re-push repeats every backend write");
}

#[tokio::test]
async fn oversized_bodies_wrong_wrapper_types_and_read_only_zync_callbacks() {
    let api = api("sys_edges").await;
    let big = format!("name={}", "x".repeat(5 * 1024 * 1024));
    let (s, _) = api
        .call(
            "POST",
            &format!("/admin/api/services.json?access_token={TOKEN}"),
            Some(("application/x-www-form-urlencoded", big)),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, b) = api
        .call(
            "POST",
            &format!("/admin/api/services.json?access_token={TOKEN}"),
            Some(("application/json", r#"{"service":"x"}"#.into())),
        )
        .await;
    assert_eq!(
        (s, b.as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Wrong type for parameter: service"
        )
    );
    let (_, svc) = api
        .json(
            "POST",
            "/admin/api/services.json",
            json!({"name": "Oidc", "backend_version": "oidc", "account_id": 77}),
        )
        .await;
    let sid = svc["service"]["id"].as_i64().unwrap();
    let ro = system::tokens::zync_token(api.db.pool(), system::PROVIDER_ID)
        .await
        .unwrap();
    let (s, b) = api
        .call(
            "GET",
            &format!("/admin/api/services/{sid}/proxy.json?access_token={ro}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let proxy: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(proxy["proxy"]["oidc_issuer_type"], "keycloak");
    let (s, _) = api
        .call(
            "GET",
            &format!("/admin/api/applications/find.json?application_id=424242&access_token={ro}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call(
            "PATCH",
            &format!("/admin/api/services/{sid}/proxy.json?access_token={ro}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}
