//! Service features, plan features, and the account-scoped application find, over real HTTP with a real database.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn service_features_and_plan_features() {
    let api = Server::start("sys_features", &[]).await;
    let sid = api.service("Featured", "1").await;
    let other = api.service("Other", "1").await;
    let features = format!("/admin/api/services/{sid}/features.json");

    // Create: flat form, system_name from the name, default scope and visibility.
    let (s, v, raw) = api
        .form("POST", &features, "name=Unlimited+Support&description=24x7")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let f = &v["feature"];
    let fid = f["id"].as_i64().unwrap();
    assert_eq!(f["system_name"], "unlimited_support");
    assert_eq!(f["scope"], "application_plan");
    assert_eq!(f["visible"], true);
    assert_eq!(f["description"], "24x7");
    assert_eq!(
        f["links"][0]["href"],
        format!("/admin/api/services/{sid}/features/{fid}")
    );
    // Wrapped JSON with porta's scope class name.
    let (s, v, raw) = api
        .json(
            "POST",
            &features,
            Some(json!({"feature": {"name": "SLA", "system_name": "sla", "scope": "ServicePlan", "visible": false}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    assert_eq!(v["feature"]["scope"], "service_plan");
    assert_eq!(v["feature"]["visible"], false);

    // Validations.
    let (s, v, _) = api
        .json("POST", &features, Some(json!({"name": "SLA"})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["errors"]["system_name"],
        json!(["has already been taken"])
    );
    let (_, v, _) = api
        .json(
            "POST",
            &features,
            Some(json!({"name": "X1", "scope": "AccountPlan"})),
        )
        .await;
    assert_eq!(
        v["errors"]["scope"],
        json!(["must be ApplicationPlan or ServicePlan"])
    );
    // A name without a slug gets porta's internal system name instead of an error.
    let (s, v, raw) = api
        .json("POST", &features, Some(json!({"name": "Функция ✓"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let internal = v["feature"]["system_name"].as_str().unwrap().to_owned();
    assert!(
        internal.starts_with("feature_") && internal.len() == 20,
        "{internal}"
    );
    let (s, _, _) = api
        .json(
            "DELETE",
            &format!(
                "/admin/api/services/{sid}/features/{}.json",
                v["feature"]["id"]
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, raw) = api.json("POST", &features, Some(json!({}))).await;
    assert_eq!(
        (s, raw.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Required parameter missing: feature"
        )
    );
    // The same system_name in another service is fine.
    let (s, _, _) = api
        .json(
            "POST",
            &format!("/admin/api/services/{other}/features.json"),
            Some(json!({"name": "SLA"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Update keeps system_name; show; list.
    let one = format!("/admin/api/services/{sid}/features/{fid}.json");
    let (s, v, raw) = api
        .json(
            "PUT",
            &one,
            Some(json!({"name": "Gold Support", "system_name": "nope", "visible": "0"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert_eq!(v["feature"]["name"], "Gold Support");
    assert_eq!(v["feature"]["system_name"], "unlimited_support");
    assert_eq!(v["feature"]["visible"], false);
    let (s, v) = api.get(&one).await;
    assert_eq!((s, &v["feature"]["id"]), (StatusCode::OK, &json!(fid)));
    let (_, v) = api.get(&features).await;
    assert_eq!(v["features"].as_array().unwrap().len(), 2);
    // A feature of another service is not found here.
    let (s, _) = api
        .get(&format!("/admin/api/services/{other}/features/{fid}.json"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Plan features: enable, list, idempotent enable, disable.
    let (_, plan, _) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/application_plans.json"),
            Some(json!({"name": "Gold"})),
        )
        .await;
    let pid = plan["application_plan"]["id"].as_i64().unwrap();
    let plan_features = format!("/admin/api/application_plans/{pid}/features.json");
    let (s, v, raw) = api
        .form("POST", &plan_features, &format!("feature_id={fid}"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    assert_eq!(v["feature"]["id"], fid);
    let (s, _, _) = api
        .json("POST", &plan_features, Some(json!({"feature_id": fid})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, v) = api.get(&plan_features).await;
    let ids: Vec<&Value> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["feature"]["id"])
        .collect();
    assert_eq!(ids, vec![&json!(fid)]);
    // A feature scoped to service plans cannot be enabled on an application plan.
    let (_, all) = api.get(&features).await;
    let sla = all["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"]["system_name"] == "sla")
        .unwrap()["feature"]["id"]
        .as_i64()
        .unwrap();
    let (s, v, _) = api
        .json("POST", &plan_features, Some(json!({"feature_id": sla})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v, json!({"errors": {"plan_type": ["mismatch"]}}));
    // A feature of another service, or none, cannot be enabled.
    let (_, ofeat) = api
        .get(&format!("/admin/api/services/{other}/features.json"))
        .await;
    let other_fid = ofeat["features"][0]["feature"]["id"].as_i64().unwrap();
    let (s, _, _) = api
        .json(
            "POST",
            &plan_features,
            Some(json!({"feature_id": other_fid})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api.json("POST", &plan_features, Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A customized plan carries the plan's features.
    let (_, acc, _) = api
        .json(
            "POST",
            "/admin/api/signup.json",
            Some(json!({"org_name": "Acme", "username": "carol", "email": "carol@acme.example", "password": "secret123"})),
        )
        .await;
    let aid = acc["account"]["id"].as_i64().unwrap();
    let (s, app, raw) = api
        .json(
            "POST",
            &format!("/admin/api/accounts/{aid}/applications.json"),
            Some(json!({"plan_id": pid})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let app_id = app["application"]["id"].as_i64().unwrap();
    let (_, custom, _) = api
        .json(
            "PUT",
            &format!("/admin/api/accounts/{aid}/applications/{app_id}/customize_plan.json"),
            None,
        )
        .await;
    let cid = custom["application_plan"]["id"].as_i64().unwrap();
    let (_, v) = api
        .get(&format!("/admin/api/application_plans/{cid}/features.json"))
        .await;
    assert_eq!(v["features"][0]["feature"]["id"], fid);

    let (s, _, raw) = api
        .json(
            "DELETE",
            &format!("/admin/api/application_plans/{pid}/features/{fid}.json"),
            None,
        )
        .await;
    assert_eq!((s, raw.as_str()), (StatusCode::OK, ""));
    let (s, _, _) = api
        .json(
            "DELETE",
            &format!("/admin/api/application_plans/{pid}/features/{fid}.json"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Deleting the feature removes it from plans too.
    let (s, _, raw) = api.json("DELETE", &one, None).await;
    assert_eq!((s, raw.as_str()), (StatusCode::OK, ""));
    let (_, v) = api
        .get(&format!("/admin/api/application_plans/{cid}/features.json"))
        .await;
    assert_eq!(v["features"], json!([]));
    let (s, _) = api.get(&one).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn application_find_within_an_account() {
    let api = Server::start("sys_app_find", &[]).await;
    let sid = api.service("Find", "1").await;
    let (_, plan, _) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/application_plans.json"),
            Some(json!({"name": "Plan"})),
        )
        .await;
    let pid = plan["application_plan"]["id"].as_i64().unwrap();
    let mut accounts = Vec::new();
    for who in ["dave", "erin"] {
        let (s, acc, raw) = api
            .json(
                "POST",
                "/admin/api/signup.json",
                Some(json!({"org_name": who, "username": who, "email": format!("{who}@x.example"), "password": "secret123"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{raw}");
        accounts.push(acc["account"]["id"].as_i64().unwrap());
    }
    let (_, app, _) = api
        .json(
            "POST",
            &format!("/admin/api/accounts/{}/applications.json", accounts[0]),
            Some(json!({"plan_id": pid})),
        )
        .await;
    let app_id = app["application"]["id"].as_i64().unwrap();
    let user_key = app["application"]["user_key"].as_str().unwrap().to_owned();

    let (s, v) = api
        .get(&format!(
            "/admin/api/accounts/{}/applications/find.json?user_key={user_key}",
            accounts[0]
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["application"]["id"], app_id);
    let (s, v) = api
        .get(&format!(
            "/admin/api/accounts/{}/applications/find.json?application_id={app_id}",
            accounts[0]
        ))
        .await;
    assert_eq!(
        (s, &v["application"]["id"]),
        (StatusCode::OK, &json!(app_id))
    );
    // Another account does not see it; an unknown account is 404 too.
    let (s, v) = api
        .get(&format!(
            "/admin/api/accounts/{}/applications/find.json?user_key={user_key}",
            accounts[1]
        ))
        .await;
    assert_eq!(
        (s, v),
        (StatusCode::NOT_FOUND, json!({"status": "Not found"}))
    );
    let (s, _) = api
        .get(&format!(
            "/admin/api/accounts/999999/applications/find.json?user_key={user_key}"
        ))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn nul_characters_are_refused_not_a_500() {
    let api = Server::start("sys_nul", &[]).await;
    let (s, v, _) = api
        .json(
            "POST",
            "/admin/api/services.json",
            Some(json!({"service": {"name": "a\u{0}b"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("NUL"));
    let (s, _, _) = api
        .form(
            "POST",
            "/admin/api/active_docs.json",
            "name=a%00b&body=%7B%7D",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = api
        .json("GET", "/admin/api/accounts/find.json?username=a%00b", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Without a valid token the answer is still 403.
    let res = reqwest::Client::new()
        .get(format!(
            "{}/admin/api/accounts/find.json?username=a%00b",
            api.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn backend_lists_are_empty_for_tools_that_enumerate_them() {
    let api = Server::start("sys_backends", &[]).await;
    let sid = api.service("Product", "1").await;
    let (s, v, raw) = api
        .json(
            "GET",
            &format!("/admin/api/services/{sid}/backend_usages.json"),
            None,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])), "{raw}");
    let (s, v) = api.get("/admin/api/backend_apis.json").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"backend_apis": []})));
    let (s, _) = api
        .get("/admin/api/services/999999/backend_usages.json")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .json(
            "POST",
            "/admin/api/backend_apis.json",
            Some(json!({"name": "b", "private_endpoint": "https://b.example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
