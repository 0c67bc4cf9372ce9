//! The test IdP on its own: tokens verify against its JWKS; the Keycloak stand-in and the REST protocol create
//! clients that can get tokens at once and lose them when deleted; the management APIs demand the right token;
//! key rotation changes the signing `kid`.

use serde_json::{json, Value};
use tests::{IdpOptions, TestIdp};

async fn idp() -> TestIdp {
    TestIdp::start(IdpOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("JWT header")
        .kid
        .expect("kid")
}

#[tokio::test]
async fn keycloak_stand_in_creates_updates_and_deletes_clients_that_get_tokens() {
    let idp = idp().await;
    let http = reqwest::Client::new();
    let admin = idp.admin_token().await.expect("admin token");
    let base = format!("{}/clients-registrations/default", idp.issuer);

    // zync updates first and creates after the update fails.
    let body = json!({"name": "App One", "description": null, "clientId": "app-one", "secret": "one-secret",
        "redirectUris": ["http://example.com/cb"], "attributes": {"3scale": true}, "enabled": true,
        "standardFlowEnabled": false, "serviceAccountsEnabled": true});
    let res = http
        .put(format!("{base}/app-one"))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = http
        .post(&base)
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(res.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with("/clients-registrations/default/app-one"));
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["clientId"], "app-one");
    assert_eq!(created["attributes"]["3scale"], "true");

    let token = idp
        .client_credentials_token("app-one", "one-secret")
        .await
        .expect("the new client gets a token at once");
    let claims = idp.verify(&token).await.expect("verifies");
    assert_eq!(claims["azp"], "app-one");
    assert_eq!(claims["appid"], "app-one");
    assert!(idp
        .client_credentials_token("app-one", "wrong")
        .await
        .is_err());

    // A duplicate create is refused the way Keycloak does.
    let res = http
        .post(&base)
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error_description"], "Client Identifier in use");

    // Update: null fields are kept, given ones change, the new secret applies at once.
    let res = http
        .put(format!("{base}/app-one"))
        .bearer_auth(&admin)
        .json(
            &json!({"name": null, "clientId": "app-one", "secret": "new-secret",
            "redirectUris": ["http://example.com/other"], "enabled": null}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["name"], "App One");
    assert_eq!(updated["redirectUris"], json!(["http://example.com/other"]));
    assert!(idp
        .client_credentials_token("app-one", "one-secret")
        .await
        .is_err());
    idp.client_credentials_token("app-one", "new-secret")
        .await
        .expect("new secret works");
    let got: Value = http
        .get(format!("{base}/app-one"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["secret"], "new-secret");

    // A disabled client cannot get tokens.
    let res = http
        .put(format!("{base}/app-one"))
        .bearer_auth(&admin)
        .json(&json!({"clientId": "app-one", "enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(idp
        .client_credentials_token("app-one", "new-secret")
        .await
        .is_err());

    let res = http
        .delete(format!("{base}/app-one"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = http
        .get(format!("{base}/app-one"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(idp.clients().await.unwrap().is_empty());
}

#[tokio::test]
async fn management_apis_demand_a_token_with_realm_management_roles() {
    let idp = idp().await;
    let http = reqwest::Client::new();
    let base = format!("{}/clients-registrations/default", idp.issuer);
    let body = json!({"clientId": "x", "secret": "y", "serviceAccountsEnabled": true});

    let res = http.post(&base).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = http
        .post(&base)
        .bearer_auth("not-a-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // A client without the manage-clients role is forbidden.
    let admin = idp.admin_token().await.unwrap();
    let res = http
        .put(format!("{}/clients/plain", idp.issuer))
        .bearer_auth(&admin)
        .json(
            &json!({"client_id": "plain", "client_secret": "plain-secret", "client_name": null,
            "redirect_uris": [], "grant_types": ["client_credentials"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let plain = idp
        .client_credentials_token("plain", "plain-secret")
        .await
        .unwrap();
    let res = http
        .post(&base)
        .bearer_auth(&plain)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // The REST protocol refuses wrong Basic credentials.
    let res = http
        .delete(format!("{}/clients/plain", idp.issuer))
        .basic_auth("zync", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(idp
        .client_credentials_token("plain", "plain-secret")
        .await
        .is_ok());
}

#[tokio::test]
async fn rest_protocol_creates_a_client_that_gets_tokens_and_deletes_it() {
    let idp = idp().await;
    let http = reqwest::Client::new();
    let url = format!("{}/clients/rest-app", idp.issuer);
    let body = json!({"client_id": "rest-app", "client_secret": "rest-secret", "client_name": "REST app",
        "redirect_uris": ["http://example.com"], "grant_types": ["client_credentials", "password"]});

    let res = http
        .put(&url)
        .basic_auth("zync", Some("zync-secret"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = http
        .put(&url)
        .bearer_auth(idp.admin_token().await.unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a second PUT updates");

    let token = idp
        .client_credentials_token("rest-app", "rest-secret")
        .await
        .expect("client_credentials");
    assert_eq!(idp.verify(&token).await.unwrap()["azp"], "rest-app");
    let token = idp
        .password_token("rest-app", "rest-secret", "alice", "alice-password")
        .await
        .expect("password grant");
    let claims = idp.verify(&token).await.unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["azp"], "rest-app");
    assert!(idp
        .password_token("rest-app", "rest-secret", "alice", "wrong")
        .await
        .is_err());

    let res = http
        .delete(&url)
        .basic_auth("zync", Some("zync-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(idp
        .client_credentials_token("rest-app", "rest-secret")
        .await
        .is_err());
    // Deleting again is not an error, so zync does not retry forever.
    let res = http
        .delete(&url)
        .basic_auth("zync", Some("zync-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

#[tokio::test]
async fn key_rotation_changes_the_kid_and_retires_the_old_key() {
    let idp = idp().await;
    let before = idp.admin_token().await.unwrap();
    let old_kid = kid(&before);
    idp.verify(&before).await.expect("verifies before rotation");

    let new_kid = idp.rotate_keys().await.unwrap();
    assert_ne!(new_kid, old_kid);
    let after = idp.admin_token().await.unwrap();
    assert_eq!(kid(&after), new_kid);
    idp.verify(&after).await.expect("new token verifies");
    assert!(
        idp.verify(&before).await.is_err(),
        "the retired key is gone from the JWKS"
    );

    // Adding a key without retiring keeps the previous one published.
    let third = idp.add_signing_key().await.unwrap();
    let jwks = idp.jwks().await.unwrap();
    assert!(jwks.find(&third).is_some());
    assert!(jwks.find(&new_kid).is_some());
    idp.verify(&after).await.expect("still verifies");
    assert_eq!(kid(&idp.admin_token().await.unwrap()), third);
}

#[tokio::test]
async fn discovery_has_keycloak_paths() {
    let idp = idp().await;
    let doc: Value = reqwest::get(format!("{}/.well-known/openid-configuration", idp.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], idp.issuer);
    assert_eq!(doc["token_endpoint"], idp.token_endpoint());
    assert_eq!(doc["jwks_uri"], idp.jwks_uri());
}

#[tokio::test]
async fn a_restart_keeps_the_port_the_signing_keys_and_the_clients() {
    let mut idp = idp().await;
    let http = reqwest::Client::new();
    let res = http
        .put(format!("{}/clients/kept", idp.issuer))
        .basic_auth("zync", Some("zync-secret"))
        .json(
            &json!({"client_id": "kept", "client_secret": "kept-secret", "client_name": null,
            "redirect_uris": [], "grant_types": ["client_credentials"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let before = idp
        .client_credentials_token("kept", "kept-secret")
        .await
        .unwrap();
    let (port, issuer) = (idp.port, idp.issuer.clone());

    idp.stop().await;
    assert!(!idp.is_running());
    assert!(
        http.get(format!("{}/test-idp/health", idp.base_url))
            .send()
            .await
            .is_err(),
        "a stopped IdP refuses connections"
    );

    idp.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(idp.is_running());
    assert_eq!((idp.port, idp.issuer.as_str()), (port, issuer.as_str()));
    idp.verify(&before)
        .await
        .expect("a token from before the restart verifies: same keys");
    let after = idp
        .client_credentials_token("kept", "kept-secret")
        .await
        .expect("the client survived the restart");
    assert_eq!(kid(&after), kid(&before));
    let clients = idp.clients().await.unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["client_id"], "kept");
}

#[tokio::test]
async fn okta_shaped_tokens_carry_the_client_id_only_in_the_extra_claim() {
    let idp = TestIdp::start(IdpOptions {
        azp: false,
        ..IdpOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let claims = idp.verify(&idp.admin_token().await.unwrap()).await.unwrap();
    assert!(claims.get("azp").is_none(), "{claims}");
    assert_eq!(claims["appid"], "zync");
}
