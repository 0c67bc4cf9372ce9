//! End to end with real Postgres and real HTTP: notifications into zync, the worker in-process, system and IdP
//! stand-ins that record calls. Covers both adapters, fallbacks, outages, crashes, duplicates and issuer changes.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn rest_adapter_creates_updates_and_deletes_with_basic_fallback() {
    let mut h = Harness::new("que_rest").await;
    let idp = Idp::start().await;
    h.start_worker(fast_config());
    h.oidc_service(7, "rest", &idp.rest_issuer()).await;
    h.system.set_app(42, oidc_app(42, 7, "first"));
    h.notify_app(42, 7).await;
    eventually(WAIT, "client created", || async {
        idp.client("client-42").is_some()
    })
    .await;
    assert_eq!(
        idp.client("client-42").unwrap(),
        json!({"client_id": "client-42", "client_secret": "secret-42", "client_name": "first",
               "redirect_uris": ["https://app.example.com/cb"], "grant_types": ["authorization_code", "client_credentials"]})
    );
    // Discovery answered 404, so the issuer URL's (percent-decoded) credentials go as Basic.
    let put = idp.calls().into_iter().find(|c| c.method == "PUT").unwrap();
    assert_eq!(put.auth.as_deref(), Some("Basic enluYzpzM2NyL2V0"));
    // System was called back with the tenant's token as Basic ":token".
    assert!(h
        .system
        .state
        .auth_seen
        .lock()
        .unwrap()
        .iter()
        .all(|a| a == "Basic OnRlbmFudC1yby10b2tlbg=="));

    h.system.set_app(42, oidc_app(42, 7, "renamed"));
    h.notify_app(42, 7).await;
    eventually(WAIT, "client renamed", || async {
        idp.client("client-42")
            .is_some_and(|c| c["client_name"] == "renamed")
    })
    .await;

    h.system.remove_app(42);
    h.notify_app(42, 7).await;
    eventually(WAIT, "client deleted", || async {
        idp.client_ids().is_empty()
    })
    .await;
    eventually(WAIT, "jobs done", || async { h.all_done().await }).await;
    let view = h.sync_view().await;
    assert_eq!(view[0]["state"], "in_sync");
    assert!(!view.iter().any(|v| v.to_string().contains("secret-42")));
    h.stop_worker().await;
}

#[tokio::test]
async fn rest_adapter_uses_client_credentials_when_the_idp_offers_oauth() {
    let mut h = Harness::new("que_rest_oauth").await;
    let idp = Idp::start().await;
    idp.state
        .rest_oauth
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.start_worker(fast_config());
    h.oidc_service(7, "rest", &idp.rest_issuer()).await;
    for id in 1..=3 {
        h.system.set_app(id, oidc_app(id, 7, "app"));
        h.notify_app(id, 7).await;
    }
    eventually(WAIT, "3 clients", || async { idp.client_ids().len() == 3 }).await;
    assert!(idp
        .calls()
        .iter()
        .filter(|c| c.method == "PUT")
        .all(|c| c.auth.as_deref() == Some("Bearer tok-1")));
    assert_eq!(
        idp.state
            .tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "token cached"
    );
    h.stop_worker().await;
}

#[tokio::test]
async fn keycloak_adapter_caches_its_token_and_handles_404s() {
    let mut h = Harness::new("que_keycloak").await;
    let idp = Idp::start().await;
    h.start_worker(fast_config());
    h.oidc_service(7, "keycloak", &idp.keycloak_issuer(true))
        .await;
    for id in 1..=5 {
        h.system.set_app(id, oidc_app(id, 7, "kc"));
        h.notify_app(id, 7).await;
    }
    eventually(WAIT, "5 Keycloak clients", || async {
        idp.client_ids().len() == 5
    })
    .await;
    assert_eq!(
        idp.state
            .tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one token for all"
    );
    let body = idp.client("client-1").unwrap();
    assert_eq!(
        body,
        json!({"name": "kc", "description": "desc", "clientId": "client-1", "secret": "secret-1",
               "redirectUris": ["https://app.example.com/cb"], "attributes": {"3scale": true}, "enabled": true,
               "standardFlowEnabled": true, "implicitFlowEnabled": false, "serviceAccountsEnabled": true,
               "directAccessGrantsEnabled": false})
    );
    // Creates went PUT (404) then POST.
    let calls = idp.calls();
    assert_eq!(calls.iter().filter(|c| c.method == "POST").count(), 5);
    assert!(calls
        .iter()
        .all(|c| c.auth.as_deref() == Some("Bearer tok-1")));

    // The IdP lost client 2 already: the delete's 404 counts as done.
    idp.state.clients.lock().unwrap().remove("client-2");
    h.system.remove_app(2);
    h.notify_app(2, 7).await;
    // An update of a client Keycloak lost falls back to create.
    idp.state.clients.lock().unwrap().remove("client-3");
    h.system.set_app(3, oidc_app(3, 7, "back"));
    h.notify_app(3, 7).await;
    eventually(WAIT, "converged", || async {
        h.all_done().await && idp.client("client-3").is_some_and(|c| c["name"] == "back")
    })
    .await;
    assert_eq!(
        idp.client_ids(),
        vec!["client-1", "client-3", "client-4", "client-5"]
    );
    h.stop_worker().await;
}

#[tokio::test]
async fn converges_after_an_idp_outage() {
    let mut h = Harness::new("que_outage").await;
    let idp = Idp::start().await;
    h.start_worker(fast_config());
    h.oidc_service(7, "keycloak", &idp.keycloak_issuer(false))
        .await;
    eventually(WAIT, "proxy synced", || async { h.all_done().await }).await;
    idp.set_down(true);
    for id in 1..=50 {
        h.system.set_app(id, oidc_app(id, 7, "v1"));
        h.notify_app(id, 7).await;
    }
    for id in 1..=20 {
        h.system.set_app(id, oidc_app(id, 7, "v2"));
        h.notify_app(id, 7).await;
    }
    for id in 41..=50 {
        h.system.remove_app(id);
        h.notify_app(id, 7).await;
    }
    eventually(WAIT, "failures visible", || async {
        h.sync_view()
            .await
            .iter()
            .filter(|a| a["state"] == "failing")
            .count()
            >= 10
    })
    .await;
    let failing = h
        .sync_view()
        .await
        .into_iter()
        .find(|a| a["state"] == "failing")
        .unwrap();
    assert!(
        failing["last_error"].as_str().unwrap().contains("503"),
        "{failing}"
    );
    assert!(
        !failing.to_string().contains("s3cr"),
        "no issuer secret in the view"
    );
    idp.set_down(false);
    eventually(
        Duration::from_secs(40),
        "IdP holds system's set",
        || async { idp.client_ids().len() == 40 && h.all_done().await },
    )
    .await;
    let mut expected: Vec<String> = (1..=40).map(|id| format!("client-{id}")).collect();
    expected.sort();
    assert_eq!(idp.client_ids(), expected);
    assert_eq!(idp.client("client-5").unwrap()["name"], "v2");
    assert_eq!(idp.client("client-30").unwrap()["name"], "v1");
    h.stop_worker().await;
}

#[tokio::test]
async fn bursts_coalesce_and_out_of_order_notifications_converge() {
    let mut h = Harness::new("que_burst").await;
    let idp = Idp::start().await;
    h.oidc_service(7, "rest", &idp.rest_issuer()).await;
    h.system.set_app(42, oidc_app(42, 7, "final"));
    // A deletion notification arriving before the creation one does no harm: the worker reads the current state.
    for _ in 0..100 {
        h.notify_app(42, 7).await;
    }
    h.start_worker(fast_config());
    eventually(WAIT, "synced", || async {
        h.all_done().await && idp.client("client-42").is_some()
    })
    .await;
    let puts = idp.calls().iter().filter(|c| c.method == "PUT").count();
    assert!(puts <= 3, "100 notifications gave {puts} IdP calls");
    assert_eq!(idp.client("client-42").unwrap()["client_name"], "final");
    h.stop_worker().await;
}

#[tokio::test]
async fn a_job_of_a_crashed_worker_is_taken_again_after_its_lease() {
    let mut h = Harness::new("que_crash").await;
    let idp = Idp::start().await;
    h.oidc_service(7, "rest", &idp.rest_issuer()).await;
    h.system.set_app(42, oidc_app(42, 7, "a"));
    h.notify_app(42, 7).await;
    // A worker claims every job with a 1 s lease and dies without finishing.
    let mut crashed_config = fast_config();
    crashed_config.lease = Duration::from_secs(1);
    let crashed = zync_que::Worker::new(h.pool.clone(), crashed_config, reqwest::Client::new());
    let mut claimed = 0;
    while crashed.claim().await.unwrap().is_some() {
        claimed += 1;
    }
    assert_eq!(claimed, 2);
    drop(crashed);
    h.start_worker(fast_config());
    eventually(WAIT, "job finished by another worker", || async {
        idp.client("client-42").is_some()
    })
    .await;
    h.stop_worker().await;
}

#[tokio::test]
async fn an_issuer_change_moves_clients_and_non_oidc_services_are_left_alone() {
    let mut h = Harness::new("que_issuer").await;
    let old = Idp::start().await;
    let new = Idp::start().await;
    h.start_worker(fast_config());
    h.oidc_service(7, "rest", &old.rest_issuer()).await;
    for id in 1..=3 {
        h.system.set_app(id, oidc_app(id, 7, "x"));
        h.notify_app(id, 7).await;
    }
    eventually(WAIT, "clients at the old IdP", || async {
        old.client_ids().len() == 3
    })
    .await;
    // Only the proxy notification: its applications are re-synced by the worker.
    h.oidc_service(7, "keycloak", &new.keycloak_issuer(false))
        .await;
    eventually(WAIT, "clients moved", || async {
        new.client_ids().len() == 3 && old.client_ids().is_empty() && h.all_done().await
    })
    .await;

    // A non-OIDC service: nothing reaches any IdP.
    h.system
        .set_proxy(8, json!({"service_id": 8, "authentication_method": "1"}));
    h.notify(json!({"type": "Service", "id": 8, "tenant_id": 2}))
        .await;
    let mut plain = oidc_app(80, 8, "plain");
    plain.as_object_mut().unwrap().remove("oidc_configuration");
    h.system.set_app(80, plain);
    let before = old.calls().len() + new.calls().len();
    h.notify_app(80, 8).await;
    eventually(WAIT, "done", || async { h.all_done().await }).await;
    assert_eq!(old.calls().len() + new.calls().len(), before);
    h.stop_worker().await;
}
