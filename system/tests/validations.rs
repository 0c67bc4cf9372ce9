//! porta's validation messages for services, proxy, policies, metrics, mapping rules, plans, limits, applications,
//! keys and referrer filters, checked over real HTTP with a real database, one request per message.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// One request and the message it must produce under `attr` (422 unless `status` says otherwise).
struct Case {
    method: &'static str,
    path: String,
    body: Value,
    attr: &'static str,
    msg: &'static str,
}

fn case(
    method: &'static str,
    path: String,
    body: Value,
    attr: &'static str,
    msg: &'static str,
) -> Case {
    Case {
        method,
        path,
        body,
        attr,
        msg,
    }
}

async fn check(api: &Server, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let (s, v, raw) = api.json(c.method, &c.path, Some(c.body.clone())).await;
        let found = v["errors"][c.attr]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == c.msg));
        if s != StatusCode::UNPROCESSABLE_ENTITY || !found {
            failures.push(format!(
                "{} {} {} → {s} {raw}\n   expected {}: {:?}",
                c.method, c.path, c.body, c.attr, c.msg
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn porta_messages_for_every_resource() {
    let api = Server::start("sys_validations", &[]).await;
    let sid = api.service("First", "1").await;
    let sid2 = api.service("Second", "2").await;
    let (_, m) = api
        .get(&format!("/admin/api/services/{sid}/metrics.json"))
        .await;
    let hits = m["metrics"][0]["metric"]["id"].as_i64().unwrap();
    let (s, v, raw) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/metrics.json"),
            Some(json!({"metric": {"friendly_name": "Bytes", "unit": "byte"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let bytes = v["metric"]["id"].as_i64().unwrap();
    let plan = |sid: i64, name: &str| {
        let api = &api;
        let name = name.to_owned();
        async move {
            let (s, v, raw) = api
                .json(
                    "POST",
                    &format!("/admin/api/services/{sid}/application_plans.json"),
                    Some(json!({"name": name})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{raw}");
            v["application_plan"]["id"].as_i64().unwrap()
        }
    };
    let pid = plan(sid, "Basic").await;
    let pid2 = plan(sid2, "Basic").await;
    let (_, acc, _) = api
        .json(
            "POST",
            "/admin/api/signup.json",
            Some(json!({"org_name": "Acme", "username": "acme", "email": "acme@acme.example", "password": "secret123"})),
        )
        .await;
    let aid = acc["account"]["id"].as_i64().unwrap();
    let apps = format!("/admin/api/accounts/{aid}/applications.json");
    let (s, app, raw) = api
        .json(
            "POST",
            &apps,
            Some(json!({"plan_id": pid, "user_key": "taken-user-key"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let app_id = app["application"]["id"].as_i64().unwrap();
    let (s, app2, raw) = api
        .json(
            "POST",
            &apps,
            Some(json!({"plan_id": pid2, "application_id": "taken-app-id"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let app2_id = app2["application"]["id"].as_i64().unwrap();
    let (s, _, raw) = api
        .json(
            "POST",
            &format!("/admin/api/application_plans/{pid}/metrics/{hits}/limits.json"),
            Some(json!({"period": "day", "value": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");

    let services = "/admin/api/services.json".to_owned();
    let proxy = format!("/admin/api/services/{sid}/proxy.json");
    let rules = format!("/admin/api/services/{sid}/proxy/mapping_rules.json");
    let metrics = format!("/admin/api/services/{sid}/metrics.json");
    let plans = format!("/admin/api/services/{sid}/application_plans.json");
    let limits = format!("/admin/api/application_plans/{pid}/metrics/{hits}/limits.json");
    let keys = format!("/admin/api/accounts/{aid}/applications/{app2_id}/keys.json");
    let filters = format!("/admin/api/accounts/{aid}/applications/{app_id}/referrer_filters.json");
    let rule = |body: Value| {
        let mut b = json!({"http_method": "GET", "pattern": "/ok", "delta": 1, "metric_id": hits});
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        json!({ "mapping_rule": b })
    };
    let p = |body: Value| json!({ "proxy": body });
    check(
        &api,
        vec![
            // Services.
            case("POST", services.clone(), json!({"name": ""}), "name", "can't be blank"),
            case("POST", services.clone(), json!({"name": "x".repeat(256)}), "name", "is too long (maximum is 255 characters)"),
            case("POST", services.clone(), json!({"name": "S1", "backend_version": "9"}), "backend_version", "is not included in the list"),
            case("POST", services.clone(), json!({"name": "S2", "deployment_option": "nope"}), "deployment_option", "is not included in the list"),
            case("POST", services.clone(), json!({"name": "S3", "support_email": "bad"}), "support_email", "is invalid"),
            case("POST", services.clone(), json!({"name": "S4", "state_event": "explode"}), "state_event", "is invalid"),
            case("POST", services.clone(), json!({"name": "First"}), "system_name", "has already been taken"),
            // Proxy.
            case("PATCH", proxy.clone(), p(json!({"credentials_location": "nowhere"})), "credentials_location", "is not included in the list"),
            case("PATCH", proxy.clone(), p(json!({"api_backend": "ftp://x.example.com"})), "api_backend",
                "the accepted format is 'scheme://address(:port)(/path)'. Accepted schemes are http, https, ws and wss"),
            case("PATCH", proxy.clone(), p(json!({"endpoint": "not a url"})), "endpoint", "the accepted format is 'protocol://address(:port)'"),
            case("PATCH", proxy.clone(), p(json!({"sandbox_endpoint": "nope"})), "sandbox_endpoint", "the accepted format is 'protocol://address(:port)'"),
            case("PATCH", proxy.clone(), p(json!({"error_status_auth_failed": 600})), "error_status_auth_failed", "must be less than 600"),
            case("PATCH", proxy.clone(), p(json!({"error_status_no_match": 100})), "error_status_no_match", "must be greater than or equal to 200"),
            case("PATCH", proxy.clone(), p(json!({"auth_user_key": "bad key!"})), "auth_user_key", "is invalid"),
            case("PATCH", proxy.clone(), p(json!({"hostname_rewrite": "bad host!"})), "hostname_rewrite", "is invalid"),
            case("PATCH", proxy.clone(), p(json!({"oidc_issuer_type": "other"})), "oidc_issuer_type", "is not included in the list"),
            case("PATCH", proxy.clone(), p(json!({"jwt_claim_with_client_id": "azp"})), "jwt_claim_with_client_id_type", "can't be blank"),
            // Policies.
            case("PUT", format!("/admin/api/services/{sid}/proxy/policies.json"),
                json!({"policies_config": [{"name": "cors", "version": "builtin", "configuration": {}, "enabled": true}]}),
                "policies_config", "is missing apicast policy"),
            // Metrics and methods.
            case("POST", metrics.clone(), json!({"metric": {"unit": "x"}}), "friendly_name", "can't be blank"),
            case("POST", metrics.clone(), json!({"metric": {"friendly_name": "NoUnit"}}), "unit", "can't be blank"),
            case("POST", metrics.clone(), json!({"metric": {"friendly_name": "Hits", "unit": "x"}}), "friendly_name", "has already been taken"),
            case("POST", format!("/admin/api/services/{sid}/metrics/{bytes}/methods.json"), json!({"metric": {"friendly_name": "Under bytes"}}),
                "parent_id", "You can only create methods under 'hits'"),
            // Mapping rules.
            case("POST", rules.clone(), rule(json!({"http_method": "FETCH"})), "http_method", "is not included in the list"),
            case("POST", rules.clone(), rule(json!({"pattern": ""})), "pattern", "can't be blank"),
            case("POST", rules.clone(), rule(json!({"delta": 0})), "delta", "must be greater than 0"),
            case("POST", rules.clone(), rule(json!({"delta": "x"})), "delta", "is not a number"),
            case("POST", rules.clone(), json!({"mapping_rule": {"http_method": "GET", "pattern": "/a", "delta": 1}}), "metric_id", "can't be blank"),
            case("POST", rules.clone(), rule(json!({"pattern": "/a/{x}/{x}"})), "pattern", "Can't have repeated variable names"),
            // Plans and limits.
            case("POST", plans.clone(), json!({"application_plan": {"name": ""}}), "name", "can't be blank"),
            case("POST", plans.clone(), json!({"application_plan": {"name": "P2", "state_event": "x"}}), "state_event", "is invalid"),
            case("POST", plans.clone(), json!({"application_plan": {"name": "P3", "cost_per_month": "-1"}}), "cost_per_month", "must be greater than or equal to 0"),
            case("POST", plans.clone(), json!({"application_plan": {"name": "P4", "setup_fee": "abc"}}), "setup_fee", "is not a number"),
            case("POST", plans.clone(), json!({"application_plan": {"name": "P5", "trial_period_days": "x"}}), "trial_period_days", "is not a number"),
            case("POST", plans.clone(), json!({"application_plan": {"name": "Basic"}}), "system_name", "has already been taken"),
            case("POST", limits.clone(), json!({"usage_limit": {"period": "fortnight", "value": 1}}), "period", "is invalid"),
            case("POST", limits.clone(), json!({"usage_limit": {"period": "day", "value": 2}}), "period", "has already been taken"),
            // Applications.
            case("POST", apps.clone(), json!({"plan_id": pid, "user_key": "bad key!"}), "user_key", "is invalid"),
            case("POST", apps.clone(), json!({"plan_id": pid, "user_key": "taken-user-key"}), "user_key", "has already been taken"),
            case("POST", apps.clone(), json!({"plan_id": pid2, "application_id": "abc"}), "application_id", "is too short (minimum is 4 characters)"),
            case("POST", apps.clone(), json!({"plan_id": pid2, "application_id": "taken-app-id"}), "application_id", "has already been taken"),
            // Keys and referrer filters.
            case("POST", keys.clone(), json!({"key": "abc"}), "value", "is too short (minimum is 5 characters)"),
            case("POST", keys.clone(), json!({"key": "has space"}), "value", "is invalid"),
            case("POST", filters.clone(), json!({"referrer_filter": "bad value!"}), "value", "is invalid"),
            case("POST", filters.clone(), json!({"referrer_filter": ""}), "value", "can't be blank"),
        ],
    )
    .await;

    // Key limit (5 per app) and duplicates, case-insensitive.
    for i in 0..5 {
        let (s, _, raw) = api
            .json(
                "POST",
                &keys,
                Some(json!({"key": format!("Key-number-{i}")})),
            )
            .await;
        assert!(
            s == StatusCode::CREATED || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{raw}"
        );
    }
    let (_, listed) = api.get(&keys).await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 5, "{listed}");
    check(
        &api,
        vec![case(
            "POST",
            keys.clone(),
            json!({"key": "one-more-key"}),
            "base",
            "Limit reached",
        )],
    )
    .await;
    let key_to_drop = listed["keys"][4]["key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _, _) = api
        .json(
            "DELETE",
            &format!("/admin/api/accounts/{aid}/applications/{app2_id}/keys/{key_to_drop}.json"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        &api,
        vec![case(
            "POST",
            keys.clone(),
            json!({"key": "KEY-NUMBER-0"}),
            "value",
            "has already been taken",
        )],
    )
    .await;
    // Referrer filters: 5 at most, unique.
    for f in [
        "a.example.com",
        "b.example.com",
        "*.c.example.com",
        "d-e.example",
        "f",
    ] {
        let (s, _, raw) = api
            .json("POST", &filters, Some(json!({"referrer_filter": f})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{f}: {raw}");
    }
    check(
        &api,
        vec![
            case(
                "POST",
                filters.clone(),
                json!({"referrer_filter": "g.example.com"}),
                "base",
                "Limit reached",
            ),
            case(
                "POST",
                filters.clone(),
                json!({"referrer_filter": "a.example.com"}),
                "value",
                "has already been taken",
            ),
        ],
    )
    .await;

    // State transitions from the wrong state.
    let (s, v, _) = api
        .json(
            "PUT",
            &format!("/admin/api/accounts/{aid}/applications/{app_id}/resume.json"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["errors"]["state"],
        json!(["cannot transition via \"resume\""])
    );
}
