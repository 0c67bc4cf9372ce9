//! ActiveDocs over real HTTP with a real database: envelopes, parameter shapes, validations and porta's messages.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn oas3() -> String {
    json!({"openapi": "3.0.2", "info": {"title": "Pets", "version": "1.0"},
        "servers": [{"url": "https://pets.example.com/v1"}],
        "paths": {"/pets": {"get": {"responses": {"200": {"description": "ok"}}}}}})
    .to_string()
}

fn swagger2() -> String {
    json!({"swagger": "2.0", "info": {"title": "Pets", "version": "1.0"}, "host": "pets.example.com",
        "schemes": ["https"], "paths": {"/pets": {"get": {"responses": {"200": {"description": "ok"}}}}}})
    .to_string()
}

#[tokio::test]
async fn crud_envelopes_and_parameter_shapes() {
    let api = Server::start("sys_adocs_crud", &[]).await;
    let sid = api.service("Pets", "1").await;

    // Wrapped JSON with every attribute.
    let (s, v, raw) = api
        .json(
            "POST",
            "/admin/api/active_docs.json",
            Some(json!({"api_docs_service": {"name": "Pets API", "system_name": "pets_spec", "body": oas3(),
                "description": "the pets", "published": true, "service_id": sid}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let doc = &v["api_doc"];
    let id = doc["id"].as_i64().unwrap();
    assert_eq!(doc["system_name"], "pets_spec");
    assert_eq!(doc["name"], "Pets API");
    assert_eq!(doc["description"], "the pets");
    assert_eq!(doc["published"], true);
    assert_eq!(doc["skip_swagger_validations"], false);
    assert_eq!(doc["service_id"], sid);
    assert_eq!(doc["body"], oas3(), "the body is kept as the raw string");
    assert!(doc["created_at"].as_str().unwrap().ends_with('Z'));

    // Flat form parameters; system_name generated from name; published defaults to false; Swagger 2.0 accepted.
    let body = format!("name=Second+Spec&body={}", percent_encode(&swagger2()));
    let (s, v, raw) = api.form("POST", "/admin/api/active_docs.json", &body).await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    assert_eq!(v["api_doc"]["system_name"], "second_spec");
    assert_eq!(v["api_doc"]["published"], false);
    assert_eq!(v["api_doc"]["service_id"], Value::Null);
    let second = v["api_doc"]["id"].as_i64().unwrap();

    // Form with the wrapper key.
    let (s, v, raw) = api
        .form(
            "POST",
            "/admin/api/active_docs.json",
            "api_docs_service[name]=Legacy&api_docs_service[body]=%7B%22apis%22%3A%5B%5D%7D&api_docs_service[published]=1",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    assert_eq!(v["api_doc"]["published"], true);

    // List and show.
    let (s, list) = api.get("/admin/api/active_docs.json").await;
    assert_eq!(s, StatusCode::OK);
    let docs = list["api_docs"].as_array().unwrap();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0]["api_doc"]["id"], id);
    assert!(list.get("metadata").is_none());
    let (s, shown) = api.get(&format!("/admin/api/active_docs/{id}.json")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(shown["api_doc"]["system_name"], "pets_spec");

    // Update: system_name is immutable, service_id can be removed with a blank value, flags toggle.
    let (s, v, raw) = api
        .json(
            "PUT",
            &format!("/admin/api/active_docs/{id}.json"),
            Some(json!({"name": "Renamed", "system_name": "other", "service_id": "", "published": "0",
                "skip_swagger_validations": "1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert_eq!(v["api_doc"]["name"], "Renamed");
    assert_eq!(v["api_doc"]["system_name"], "pets_spec");
    assert_eq!(v["api_doc"]["service_id"], Value::Null);
    assert_eq!(v["api_doc"]["published"], false);
    assert_eq!(v["api_doc"]["skip_swagger_validations"], true);
    assert_eq!(v["api_doc"]["body"], oas3());
    // PATCH reaches update too; attaching a service works.
    let (s, v, raw) = api
        .json(
            "PATCH",
            &format!("/admin/api/active_docs/{second}.json"),
            Some(json!({"api_docs_service": {"service_id": sid}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert_eq!(v["api_doc"]["service_id"], sid);

    // Delete: 200 with an empty body, then 404.
    let (s, _, raw) = api
        .json("DELETE", &format!("/admin/api/active_docs/{id}.json"), None)
        .await;
    assert_eq!((s, raw.as_str()), (StatusCode::OK, ""));
    let (s, v) = api.get(&format!("/admin/api/active_docs/{id}.json")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v, json!({"status": "Not found"}));
    let (s, _, _) = api
        .json("DELETE", &format!("/admin/api/active_docs/{id}.json"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.get("/admin/api/active_docs/abc.json").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A doc whose service is deleted is hidden, as porta's `accessible` scope does.
    api.service("Keeper", "1").await;
    let (s, _, raw) = api
        .json("DELETE", &format!("/admin/api/services/{sid}.json"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    let (_, list) = api.get("/admin/api/active_docs.json").await;
    let ids: Vec<i64> = list["api_docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["api_doc"]["id"].as_i64().unwrap())
        .collect();
    assert!(!ids.contains(&second), "{ids:?}");
    let (s, _) = api
        .get(&format!("/admin/api/active_docs/{second}.json"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn validations_and_messages() {
    let api = Server::start("sys_adocs_valid", &[]).await;
    let post = |body: Value| {
        let api = &api;
        async move {
            api.json("POST", "/admin/api/active_docs.json", Some(body))
                .await
        }
    };

    // Nothing recognisable: the wrapper is missing.
    let (s, _, raw) = api
        .json("POST", "/admin/api/active_docs.json", Some(json!({})))
        .await;
    assert_eq!(
        (s, raw.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Required parameter missing: api_docs_service"
        )
    );
    // A wrapper that is not a hash.
    let (s, _, raw) = post(json!({"api_docs_service": "x"})).await;
    assert_eq!(
        (s, raw.as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Wrong type for parameter: api_docs_service"
        )
    );

    // Blank name and body.
    let (s, v, _) = post(json!({"name": "", "body": ""})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"]["name"], json!(["can't be blank"]));
    assert_eq!(v["errors"]["body"][0], "can't be blank");

    // Not JSON: porta's two messages, and nothing stored.
    let (s, v, _) = post(json!({"name": "Bad", "body": "NOT VALID JSON"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v,
        json!({"errors": {"body": ["Invalid JSON", "JSON Spec is invalid"]}})
    );
    // JSON without a version and without `apis`: a Swagger 1.0 document that is not one.
    let (_, v, _) = post(json!({"name": "Bad", "body": "{\"foo\": 1}"})).await;
    assert_eq!(v["errors"]["body"], json!(["JSON Spec is invalid"]));
    // Unknown version.
    let (_, v, _) = post(json!({"name": "Bad", "body": "{\"openapi\": \"4.0.0\"}"})).await;
    assert_eq!(v["errors"]["body"], json!(["Invalid Swagger version"]));
    // OpenAPI 3.0 without info and paths.
    let (_, v, _) = post(json!({"name": "Bad", "body": "{\"openapi\": \"3.0.0\"}"})).await;
    assert_eq!(
        v["errors"]["body"],
        json!(["object at root is missing required properties: info, paths"])
    );
    // Swagger 2.0 with an unknown root key, an incomplete info and an operation without responses.
    let bad2 = json!({"swagger": "2.0", "invalid": 1, "info": {"version": "1"},
        "paths": {"/a": {"get": {}}}});
    let (_, v, _) = post(json!({"name": "Bad", "body": bad2.to_string()})).await;
    let msgs: Vec<&str> = v["errors"]["body"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        msgs.contains(&"object property at `/invalid` is a disallowed additional property"),
        "{msgs:?}"
    );
    assert!(
        msgs.contains(&"object at `/info` is missing required properties: title"),
        "{msgs:?}"
    );
    assert!(
        msgs.contains(&"object at `/paths/~1a/get` is missing required properties: responses"),
        "{msgs:?}"
    );
    // OpenAPI 3.1 closes objects with unevaluatedProperties.
    let bad31 = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}, "nope": true});
    let (_, v, _) = post(json!({"name": "Bad", "body": bad31.to_string()})).await;
    assert_eq!(
        v["errors"]["body"],
        json!(["object property at `/nope` is a disallowed unevaluated property"])
    );

    // skip_swagger_validations accepts any body, but the base path is still checked.
    let (s, v, raw) = post(json!({"name": "Loose", "body": "{\"openapi\": \"3.0.0\"}", "skip_swagger_validations": true})).await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    assert_eq!(v["api_doc"]["skip_swagger_validations"], true);
    let relative = json!({"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, "paths": {},
        "servers": [{"url": "/relative"}]});
    let (s, v, _) =
        post(json!({"name": "Rel", "body": relative.to_string(), "skip_swagger_validations": "1"}))
            .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"]["base_path"], json!(["is invalid"]));

    // A large valid document (over the size that is validated off the async workers).
    let mut paths = serde_json::Map::new();
    for i in 0..4000 {
        paths.insert(
            format!("/resource/{i}"),
            json!({"get": {"description": "x".repeat(64), "responses": {"200": {"description": "ok"}}}}),
        );
    }
    let big = json!({"openapi": "3.0.3", "info": {"title": "Big", "version": "1"}, "paths": paths})
        .to_string();
    assert!(big.len() > 256 * 1024);
    let (s, v, raw) = post(json!({"name": "Big", "body": big})).await;
    assert_eq!(s, StatusCode::CREATED, "{}", &raw[..raw.len().min(300)]);
    assert_eq!(v["api_doc"]["body"].as_str().unwrap().len(), big.len());

    // system_name: taken, and invalid.
    let (s, _, raw) = post(json!({"name": "Dup", "body": oas3()})).await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let (s, v, _) = post(json!({"name": "Dup", "body": oas3()})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["errors"]["system_name"],
        json!(["has already been taken"])
    );
    let (_, v, _) = post(json!({"name": "Odd", "system_name": "-bad name", "body": oas3()})).await;
    assert_eq!(
        v["errors"]["system_name"][0]
            .as_str()
            .unwrap()
            .split('.')
            .next(),
        Some("invalid")
    );
    // A name without an ASCII slug gets porta's internal system name.
    let (s, v, raw) = post(json!({"name": "Документация", "body": oas3()})).await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let internal = v["api_doc"]["system_name"].as_str().unwrap();
    assert!(
        internal.starts_with("service_") && internal.len() == 20,
        "{internal}"
    );
    let (_, v, _) = post(json!({"name": "x".repeat(256), "body": oas3()})).await;
    assert_eq!(
        v["errors"]["name"],
        json!(["is too long (maximum is 255 characters)"])
    );

    // service_id must be an existing service: porta's controller answers with its own shape.
    for bad in [json!(999_999), json!("abc")] {
        let (s, v, _) = post(json!({"name": "Svc", "body": oas3(), "service_id": bad})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(v, json!({"error": "Service not found"}));
    }

    // An update with an invalid body keeps the stored one.
    let (_, list) = api.get("/admin/api/active_docs.json").await;
    let dup = list["api_docs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["api_doc"]["system_name"] == "dup")
        .unwrap()["api_doc"]["id"]
        .as_i64()
        .unwrap();
    let (s, v, _) = api
        .json(
            "PUT",
            &format!("/admin/api/active_docs/{dup}.json"),
            Some(json!({"body": "{apis: []}"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["errors"]["body"]
        .as_array()
        .unwrap()
        .contains(&json!("JSON Spec is invalid")));
    let (_, shown) = api.get(&format!("/admin/api/active_docs/{dup}.json")).await;
    assert_eq!(shown["api_doc"]["body"], oas3());
    // Update of a missing spec.
    let (s, v, _) = api
        .json(
            "PUT",
            "/admin/api/active_docs/0.json",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(
        (s, v),
        (StatusCode::NOT_FOUND, json!({"status": "Not found"}))
    );
}

#[tokio::test]
async fn auth_is_enforced() {
    let api = Server::start("sys_adocs_auth", &[]).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{}/admin/api/active_docs.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.text().await.unwrap(), r#"{"error":"Access denied"}"#);
    // A read-only token reads but cannot write.
    let (s, v, raw) = api
        .json(
            "POST",
            "/admin/api/personal/access_tokens.json",
            Some(json!({"name": "ro", "permission": "ro", "scopes": ["account_management"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{raw}");
    let ro = v["access_token"]["value"].as_str().unwrap().to_owned();
    let res = client
        .get(format!(
            "{}/admin/api/active_docs.json?access_token={ro}",
            api.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = client
        .post(format!(
            "{}/admin/api/active_docs.json?access_token={ro}",
            api.base
        ))
        .json(&json!({"name": "x", "body": oas3()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // The format comes from the extension.
    let res = client
        .get(format!(
            "{}/admin/api/active_docs.xml?access_token={ro}",
            api.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_ACCEPTABLE);
}

fn percent_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
