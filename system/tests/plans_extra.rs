//! Pricing rules and application plan customization over real HTTP with a real database.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Fixture {
    sid: i64,
    pid: i64,
    hits: i64,
}

async fn fixture(api: &Server, name: &str) -> Fixture {
    let sid = api.service(name, "1").await;
    let (_, metrics) = api
        .get(&format!("/admin/api/services/{sid}/metrics.json"))
        .await;
    let hits = metrics["metrics"][0]["metric"]["id"].as_i64().unwrap();
    let (s, v, raw) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/application_plans.json"),
            Some(json!({"name": "Basic"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    Fixture {
        sid,
        pid: v["application_plan"]["id"].as_i64().unwrap(),
        hits,
    }
}

#[tokio::test]
async fn pricing_rules_crud_and_validations() {
    let api = Server::start("sys_pricing", &[]).await;
    let f = fixture(&api, "Priced").await;
    let rules = format!(
        "/admin/api/application_plans/{}/metrics/{}/pricing_rules.json",
        f.pid, f.hits
    );

    let (s, v, raw) = api
        .form("POST", &rules, "min=1&max=100&cost_per_unit=0.5")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let rule = &v["pricing_rule"];
    assert_eq!(rule["min"], 1);
    assert_eq!(rule["max"], 100);
    assert_eq!(rule["cost_per_unit"], 0.5);
    assert_eq!(rule["metric_id"], f.hits);
    assert!(rule["links"].is_array());
    let rid = rule["id"].as_i64().unwrap();

    // Wrapped JSON, open-ended band, cost cast to 4 decimals.
    let (s, v, raw) = api
        .json(
            "POST",
            &rules,
            Some(json!({"pricing_rule": {"min": 101, "cost_per_unit": "0.123456"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    assert_eq!(v["pricing_rule"]["max"], Value::Null);
    assert_eq!(v["pricing_rule"]["cost_per_unit"], 0.1235);

    // Validations with porta's messages.
    let cases = [
        (
            json!({"min": 50, "max": 60}),
            "min",
            "The 'From' value must be greater than the 'To' values of other existing rules",
        ),
        (
            json!({"min": 5000}),
            "min",
            "The 'From' value must be greater than the 'To' values of other existing rules",
        ),
        (
            json!({"min": 0}),
            "min",
            "must be greater than or equal to 1",
        ),
        (json!({"min": "abc"}), "min", "is not a number"),
        (json!({"min": "1.5"}), "min", "must be an integer"),
        (json!({}), "min", "is not a number"),
        (
            json!({"min": 1, "cost_per_unit": "-1"}),
            "cost_per_unit",
            "maximum decimals is 4.",
        ),
        (
            json!({"min": 1, "cost_per_unit": "x"}),
            "cost_per_unit",
            "is not a number",
        ),
        (
            json!({"min": 1, "cost_per_unit": "1e300"}),
            "cost_per_unit",
            "must be less than 10000000000000000",
        ),
        (
            json!({"min": "99999999999999999999"}),
            "min",
            "must be an integer",
        ),
    ];
    for (body, attr, msg) in cases {
        let (s, v, raw) = api.json("POST", &rules, Some(body.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {raw}");
        assert!(
            v["errors"][attr]
                .as_array()
                .is_some_and(|m| m.contains(&json!(msg))),
            "{body} → {raw}"
        );
    }
    // max below min, on a plan without rules for another metric.
    let (s, v, _) = api
        .json(
            "POST",
            &format!("/admin/api/services/{}/metrics.json", f.sid),
            Some(json!({"friendly_name": "Bytes", "unit": "byte"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let bytes = v["metric"]["id"].as_i64().unwrap();
    let bytes_rules = format!(
        "/admin/api/application_plans/{}/metrics/{bytes}/pricing_rules.json",
        f.pid
    );
    let (s, v, _) = api
        .json("POST", &bytes_rules, Some(json!({"min": 10, "max": 5})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["errors"]["max"],
        json!(["'To' value cannot be less than your 'From' value"])
    );
    let (s, _, raw) = api
        .json(
            "POST",
            &bytes_rules,
            Some(json!({"min": 1, "max": 10, "cost_per_unit": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");

    // Lists: per metric and per plan.
    let (s, v) = api.get(&rules).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["pricing_rules"].as_array().unwrap().len(), 2);
    assert_eq!(v["pricing_rules"][0]["pricing_rule"]["id"], rid);
    let (_, v) = api
        .get(&format!(
            "/admin/api/application_plans/{}/pricing_rules.json",
            f.pid
        ))
        .await;
    assert_eq!(v["pricing_rules"].as_array().unwrap().len(), 3);

    // Unknown plan or metric, or a metric of another service: 404.
    let other = fixture(&api, "Other").await;
    for path in [
        format!(
            "/admin/api/application_plans/999999/metrics/{}/pricing_rules.json",
            f.hits
        ),
        format!(
            "/admin/api/application_plans/{}/metrics/999999/pricing_rules.json",
            f.pid
        ),
        format!(
            "/admin/api/application_plans/{}/metrics/{}/pricing_rules.json",
            f.pid, other.hits
        ),
    ] {
        let (s, v, _) = api.json("POST", &path, Some(json!({"min": 1}))).await;
        assert_eq!(
            (s, v),
            (StatusCode::NOT_FOUND, json!({"status": "Not found"})),
            "{path}"
        );
    }

    // Delete: 200 and empty, then 404; deleting the metric removes its rules.
    let one = format!(
        "/admin/api/application_plans/{}/metrics/{}/pricing_rules/{rid}.json",
        f.pid, f.hits
    );
    let (s, _, raw) = api.json("DELETE", &one, None).await;
    assert_eq!((s, raw.as_str()), (StatusCode::OK, ""));
    let (s, _, _) = api.json("DELETE", &one, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .json(
            "DELETE",
            &format!("/admin/api/services/{}/metrics/{bytes}.json", f.sid),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = api
        .get(&format!(
            "/admin/api/application_plans/{}/pricing_rules.json",
            f.pid
        ))
        .await;
    assert_eq!(v["pricing_rules"].as_array().unwrap().len(), 1);
}

async fn backend_calls(api: &Server) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT method || ' ' || path FROM outbox WHERE target = 'backend' ORDER BY id",
    )
    .fetch_all(api.db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn customize_and_decustomize_application_plans() {
    let api = Server::start("sys_custom_plan", &[]).await;
    let f = fixture(&api, "Custom").await;
    let (s, _, raw) = api
        .json(
            "POST",
            &format!(
                "/admin/api/application_plans/{}/metrics/{}/limits.json",
                f.pid, f.hits
            ),
            Some(json!({"period": "day", "value": 10})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let (s, _, raw) = api
        .json(
            "POST",
            &format!(
                "/admin/api/application_plans/{}/metrics/{}/pricing_rules.json",
                f.pid, f.hits
            ),
            Some(json!({"min": 1, "cost_per_unit": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let (s, acc, raw) = api
        .json(
            "POST",
            "/admin/api/signup.json",
            Some(json!({"org_name": "Acme", "username": "bob", "email": "bob@acme.example", "password": "secret123"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let aid = acc["account"]["id"].as_i64().unwrap();
    let (s, app, raw) = api
        .json(
            "POST",
            &format!("/admin/api/accounts/{aid}/applications.json"),
            Some(json!({"plan_id": f.pid})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let app_id = app["application"]["id"].as_i64().unwrap();
    let base = format!("/admin/api/accounts/{aid}/applications/{app_id}");

    // Customize: a hidden copy with the limits and pricing rules, and the app moves to it.
    let (s, v, raw) = api
        .json("PUT", &format!("{base}/customize_plan.json"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    let custom = &v["application_plan"];
    let cid = custom["id"].as_i64().unwrap();
    assert_ne!(cid, f.pid);
    assert_eq!(custom["name"], "Basic (custom)");
    assert_eq!(custom["custom"], true);
    assert_eq!(custom["state"], "hidden");
    assert!(custom["system_name"]
        .as_str()
        .unwrap()
        .starts_with("basic_custom_"));
    let (_, shown) = api.get(&format!("{base}.json")).await;
    assert_eq!(shown["application"]["plan_id"], cid);
    assert_eq!(shown["application"]["plan_name"], "Basic (custom)");
    let (_, limits) = api
        .get(&format!("/admin/api/application_plans/{cid}/limits.json"))
        .await;
    assert_eq!(limits["limits"][0]["limit"]["value"], 10);
    assert_eq!(limits["limits"][0]["limit"]["period"], "day");
    let (_, prices) = api
        .get(&format!(
            "/admin/api/application_plans/{cid}/pricing_rules.json"
        ))
        .await;
    assert_eq!(prices["pricing_rules"].as_array().unwrap().len(), 1);
    // Backend learns the copied limit and the app's new plan.
    let calls = backend_calls(&api).await;
    let sid = f.sid;
    assert!(
        calls.contains(&format!(
            "PUT /internal/services/{sid}/plans/{cid}/usagelimits/{}/day",
            f.hits
        )),
        "{calls:?}"
    );
    // Custom plans stay out of the plan lists.
    let (_, plans) = api
        .get(&format!("/admin/api/services/{sid}/application_plans.json"))
        .await;
    let ids: Vec<&Value> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["application_plan"]["id"])
        .collect();
    assert_eq!(ids, vec![&json!(f.pid)]);
    let (_, all) = api.get("/admin/api/application_plans.json").await;
    assert!(!all.to_string().contains("(custom)"));
    // Customizing again answers the same custom plan.
    let (_, again, _) = api
        .json("PUT", &format!("{base}/customize_plan.json"), None)
        .await;
    assert_eq!(again["application_plan"]["id"], cid);
    // The original cannot be deleted while a customization exists.
    let (s, v, _) = api
        .json(
            "DELETE",
            &format!("/admin/api/services/{sid}/application_plans/{}.json", f.pid),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        v["errors"]["base"][0],
        "This application plan cannot be deleted!  At least one customized version of this application plan exists."
    );

    // Decustomize: back to the original; the custom plan and its backend limits are gone.
    let (s, v, raw) = api
        .json("PUT", &format!("{base}/decustomize_plan.json"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert_eq!(v["application_plan"]["id"], f.pid);
    assert_eq!(v["application_plan"]["custom"], false);
    let (_, shown) = api.get(&format!("{base}.json")).await;
    assert_eq!(shown["application"]["plan_id"], f.pid);
    let (s, _) = api
        .get(&format!(
            "/admin/api/services/{sid}/application_plans/{cid}.json"
        ))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let calls = backend_calls(&api).await;
    assert_eq!(
        calls.last().unwrap(),
        &format!(
            "DELETE /internal/services/{sid}/plans/{cid}/usagelimits/{}/day",
            f.hits
        )
    );
    let (_, again, _) = api
        .json("PUT", &format!("{base}/decustomize_plan.json"), None)
        .await;
    assert_eq!(again["application_plan"]["id"], f.pid);

    // change_plan away from a customized plan drops the customization, and answers the full plan.
    let (_, v, _) = api
        .json("PUT", &format!("{base}/customize_plan.json"), None)
        .await;
    let cid2 = v["application_plan"]["id"].as_i64().unwrap();
    let (s, v, raw) = api
        .json(
            "PUT",
            &format!("{base}/change_plan.json"),
            Some(json!({"plan_id": f.pid})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert_eq!(v["application_plan"]["id"], f.pid);
    assert!(v["application_plan"]["links"].is_array());
    let (s, _) = api
        .get(&format!(
            "/admin/api/services/{sid}/application_plans/{cid2}.json"
        ))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Deleting the app drops a customization too.
    let (_, v, _) = api
        .json("PUT", &format!("{base}/customize_plan.json"), None)
        .await;
    let cid3 = v["application_plan"]["id"].as_i64().unwrap();
    let (s, _, _) = api.json("DELETE", &format!("{base}.json"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .get(&format!(
            "/admin/api/services/{sid}/application_plans/{cid3}.json"
        ))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Unknown application.
    let (s, _, _) = api
        .json(
            "PUT",
            &format!("/admin/api/accounts/{aid}/applications/999999/customize_plan.json"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
