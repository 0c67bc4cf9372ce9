//! Users of developer accounts over real HTTP with a real database.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn account_users_lifecycle_and_validations() {
    let api = Server::start("sys_users", &[]).await;
    let (s, acc, raw) = api
        .json(
            "POST",
            "/admin/api/signup.json",
            Some(json!({"org_name": "Users Inc", "username": "owner", "email": "owner@users.example", "password": "secret123"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let aid = acc["account"]["id"].as_i64().unwrap();
    let users = format!("/admin/api/accounts/{aid}/users.json");

    // The signup user is the account's active admin.
    let (s, v) = api.get(&users).await;
    assert_eq!(s, StatusCode::OK);
    let owner = &v["users"][0]["user"];
    assert_eq!(owner["username"], "owner");
    assert_eq!(owner["role"], "admin");
    assert_eq!(owner["state"], "active");
    assert_eq!(owner["account_id"], aid);
    let owner_id = owner["id"].as_i64().unwrap();

    // Create: pending member; flat or wrapped parameters.
    let (s, v, raw) = api
        .form(
            "POST",
            &users,
            "username=helper&email=helper%40users.example&password=pw123456",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let helper = v["user"]["id"].as_i64().unwrap();
    assert_eq!(v["user"]["state"], "pending");
    assert_eq!(v["user"]["role"], "member");
    assert!(!raw.contains("pw123456"), "the password is never echoed");
    let (s, _, raw) = api
        .json(
            "POST",
            &users,
            Some(json!({"user": {"username": "third", "email": "third@users.example"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");

    // Validations: taken across the provider (case-insensitive), too short, bad email, blank.
    let (s, v, _) = api
        .json(
            "POST",
            &users,
            Some(json!({"username": "HELPER", "email": "OWNER@users.example"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"]["username"], json!(["has already been taken"]));
    assert_eq!(v["errors"]["email"], json!(["has already been taken"]));
    let (_, v, _) = api
        .json(
            "POST",
            &users,
            Some(json!({"username": "ab", "email": "nope"})),
        )
        .await;
    assert_eq!(
        v["errors"]["username"],
        json!(["is too short (minimum is 3 characters)"])
    );
    assert_eq!(
        v["errors"]["email"],
        json!(["should look like an email address"])
    );
    let (_, v, _) = api.json("POST", &users, Some(json!({}))).await;
    assert_eq!(v["errors"]["username"], json!(["can't be blank"]));
    assert_eq!(v["errors"]["email"], json!(["can't be blank"]));

    // Filters.
    let (_, v) = api.get(&format!("{users}?state=pending")).await;
    assert_eq!(v["users"].as_array().unwrap().len(), 2);
    let (_, v) = api.get(&format!("{users}?role=admin")).await;
    assert_eq!(v["users"].as_array().unwrap().len(), 1);

    // Update keeps uniqueness; show.
    let one = format!("/admin/api/accounts/{aid}/users/{helper}.json");
    let (s, v, raw) = api
        .json("PUT", &one, Some(json!({"email": "new@users.example"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert_eq!(v["user"]["email"], "new@users.example");
    assert_eq!(v["user"]["username"], "helper");
    let (s, v, _) = api
        .json("PUT", &one, Some(json!({"username": "owner"})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"]["username"], json!(["has already been taken"]));
    let (s, v) = api.get(&one).await;
    assert_eq!((s, &v["user"]["id"]), (StatusCode::OK, &json!(helper)));

    // State and role actions.
    let act = |a: &str| format!("/admin/api/accounts/{aid}/users/{helper}/{a}.json");
    let (s, v, _) = api.json("PUT", &act("unsuspend"), None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["errors"]["state"],
        json!(["cannot transition via \"unsuspend\""])
    );
    for (a, field, expected) in [
        ("activate", "state", "active"),
        ("suspend", "state", "suspended"),
        ("unsuspend", "state", "active"),
        ("admin", "role", "admin"),
        ("member", "role", "member"),
    ] {
        let (s, v, raw) = api.json("PUT", &act(a), None).await;
        assert_eq!(s, StatusCode::OK, "{a}: {raw}");
        assert_eq!(v["user"][field], expected, "{a}");
    }
    let (s, _, _) = api.json("PUT", &act("promote"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The last admin cannot be deleted; others can.
    let (s, v, _) = api
        .json(
            "DELETE",
            &format!("/admin/api/accounts/{aid}/users/{owner_id}.json"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["errors"]["base"], json!(["Can't delete last admin"]));
    let (s, _, raw) = api.json("DELETE", &one, None).await;
    assert_eq!((s, raw.as_str()), (StatusCode::OK, ""));
    let (s, _) = api.get(&one).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Users of another account, and unknown accounts, are not found.
    let (s, _) = api
        .get(&format!("/admin/api/accounts/999999/users/{owner_id}.json"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.get("/admin/api/accounts/999999/users.json").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Account states: approve/reject/make_pending, never to the current state.
    let state_of = |a: &str| format!("/admin/api/accounts/{aid}/{a}.json");
    let (s, v, _) = api.json("PUT", &state_of("approve"), None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["errors"]["state"],
        json!(["cannot transition via \"approve\""])
    );
    for (a, expected) in [
        ("reject", "rejected"),
        ("make_pending", "pending"),
        ("approve", "approved"),
    ] {
        let (s, v, raw) = api.json("PUT", &state_of(a), None).await;
        assert_eq!(s, StatusCode::OK, "{a}: {raw}");
        assert_eq!(v["account"]["state"], expected);
    }
    // Account find by the new user's id.
    let (_, v) = api
        .get(&format!("/admin/api/accounts/find.json?user_id={owner_id}"))
        .await;
    assert_eq!(v["account"]["id"], aid);
}
