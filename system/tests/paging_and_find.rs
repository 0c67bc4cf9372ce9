//! Pagination bounds on every paginated list, and the account `find` variations, over real HTTP.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn ids(v: &Value, plural: &str, root: &str) -> Vec<i64> {
    v[plural]
        .as_array()
        .unwrap_or_else(|| panic!("no {plural} in {v}"))
        .iter()
        .map(|i| i[root]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn per_page_and_page_fall_back_silently() {
    let api = Server::start("sys_paging", &[]).await;
    let mut services = Vec::new();
    for name in ["Alpha", "Beta", "Gamma"] {
        services.push(api.service(name, "1").await);
    }
    let sid = services[0];
    let (_, metrics) = api
        .get(&format!("/admin/api/services/{sid}/metrics.json"))
        .await;
    let hits = metrics["metrics"][0]["metric"]["id"].as_i64().unwrap();
    let (_, plan, _) = api
        .json(
            "POST",
            &format!("/admin/api/services/{sid}/application_plans.json"),
            Some(json!({"name": "Plan"})),
        )
        .await;
    let pid = plan["application_plan"]["id"].as_i64().unwrap();
    for period in ["day", "hour", "minute"] {
        let (s, _, raw) = api
            .json(
                "POST",
                &format!("/admin/api/application_plans/{pid}/metrics/{hits}/limits.json"),
                Some(json!({"period": period, "value": 5})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{raw}");
    }
    for who in ["ann", "ben", "cat"] {
        let (s, acc, raw) = api
            .json(
                "POST",
                "/admin/api/signup.json",
                Some(
                    json!({"org_name": who, "username": who, "email": format!("{who}@x.example"),
                    "password": "secret123", "application_plan_id": pid}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{raw}");
        assert!(acc["account"]["id"].is_i64());
    }

    let lists = [
        ("/admin/api/services.json", "services", "service"),
        ("/admin/api/accounts.json", "accounts", "account"),
        (
            "/admin/api/applications.json",
            "applications",
            "application",
        ),
        (
            &*format!("/admin/api/application_plans/{pid}/limits.json"),
            "limits",
            "limit",
        ),
    ];
    for (path, plural, root) in lists {
        let (s, all) = api.get(path).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        let every = ids(&all, plural, root);
        assert_eq!(every.len(), 3, "{path}: {all}");
        assert!(
            all.get("metadata").is_none(),
            "{path}: one page, no metadata"
        );
        // Out-of-range or malformed per_page falls back to 500, without an error.
        for bad in ["0", "501", "-3", "abc"] {
            let (s, v) = api.get(&format!("{path}?per_page={bad}")).await;
            assert_eq!(s, StatusCode::OK, "{path} per_page={bad}");
            assert_eq!(ids(&v, plural, root), every, "{path} per_page={bad}");
            assert!(v.get("metadata").is_none());
        }
        // per_page 1: metadata appears; a bad page falls back to 1.
        for page in ["0", "-1", "x"] {
            let (_, v) = api.get(&format!("{path}?per_page=1&page={page}")).await;
            assert_eq!(ids(&v, plural, root), vec![every[0]], "{path} page={page}");
            assert_eq!(
                v["metadata"],
                json!({"per_page": 1, "total_entries": 3, "total_pages": 3, "current_page": 1}),
                "{path} page={page}"
            );
        }
        let (_, v) = api.get(&format!("{path}?per_page=2&page=2")).await;
        assert_eq!(ids(&v, plural, root), vec![every[2]], "{path}");
        assert_eq!(v["metadata"]["current_page"], 2);
        // Past the end: an empty page.
        let (s, v) = api.get(&format!("{path}?per_page=2&page=9")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v[plural], json!([]), "{path}");
    }
}

#[tokio::test]
async fn account_find_variations() {
    let api = Server::start("sys_acc_find", &[]).await;
    let (s, acc, raw) = api
        .json(
            "POST",
            "/admin/api/signup.json",
            Some(json!({"org_name": "Zed Corp", "username": "zed", "email": "zed@zed.example", "password": "secret123"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let aid = acc["account"]["id"].as_i64().unwrap();
    let user_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE account_id = $1")
        .bind(aid)
        .fetch_one(api.db.pool())
        .await
        .unwrap();
    for query in [
        "username=zed".to_owned(),
        "email=zed@zed.example".to_owned(),
        "email=zed%40zed.example".to_owned(),
        format!("user_id={user_id}"),
    ] {
        let (s, v) = api
            .get(&format!("/admin/api/accounts/find.json?{query}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{query}");
        assert_eq!(v["account"]["id"], aid, "{query}");
        assert_eq!(v["account"]["org_name"], "Zed Corp");
    }
    for query in [
        "username=nobody",
        "email=no@zed.example",
        "user_id=999999",
        "user_id=abc",
        "",
        "email=",
    ] {
        let (s, v) = api
            .get(&format!("/admin/api/accounts/find.json?{query}"))
            .await;
        assert_eq!(
            (s, v),
            (StatusCode::NOT_FOUND, json!({"status": "Not found"})),
            "{query}"
        );
    }
    // The provider's own admin user is not a developer account.
    let (s, _) = api
        .get("/admin/api/accounts/find.json?username=admin")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
