//! Black-box tests over real sockets: the gateway router on port 0 in front of a recording stand-in backend
//! (answering like Apisonator), an echo upstream, and a JWKS endpoint for OIDC.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use gateway::apicast::{compile, CachingMode};
use gateway::{AppState, Config};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod support;
use support::*;

#[tokio::test]
async fn user_key_flow_errors_and_upstream() {
    let (stand, backend, upstream) = stand_ins().await;
    let (_state, gw) = gateway(
        Config::default(),
        json!({"services": [service(backend, upstream, json!({}))]}),
    )
    .await;

    let r = client()
        .get(format!("http://{gw}/hits"))
        .header("host", "unknown.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "");

    let r = gw_get(gw, "/hits").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "Authentication parameters missing");

    let r = gw_get(gw, "/nothing?user_key=good").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "No Mapping Rule matched");

    let r = gw_get(gw, "/hits/7?user_key=good1&x=y").await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["uri"], "/base/hits/7?user_key=good1&x=y");
    assert_eq!(echo["headers"]["x-3scale-proxy-secret-token"], "s3cret");
    assert_eq!(echo["headers"]["host"], format!("{upstream}"));
    assert_eq!(echo["headers"]["x-real-ip"], "127.0.0.1");
    {
        let calls = stand.calls.lock().unwrap();
        let call = calls.last().unwrap();
        assert_eq!(call["service_id"], "42");
        assert_eq!(call["service_token"], "tok");
        assert_eq!(call["user_key"], "good1");
        assert_eq!(call["usage[hits]"], "3", "deltas summed: {call:?}");
        assert_eq!(
            call["3scale-options"],
            "rejection_reason_header=1&limit_headers=1&no_body=1"
        );
    }

    let r = gw_get(gw, "/hits?user_key=bad").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "Authentication failed");
    let r = gw_get(gw, "/hits?user_key=limited").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "42");
    assert_eq!(r.text().await.unwrap(), "Limits exceeded");
    let r = gw_get(gw, "/hits?user_key=disabled").await;
    assert_eq!(r.status(), 403);

    // Credentials in a urlencoded POST body.
    let r = client()
        .post(format!("http://{gw}/submit"))
        .header("host", "api.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user_key=good2&a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["body"], "user_key=good2&a=b");
    assert_eq!(echo["method"], "POST");
}

#[tokio::test]
async fn cached_authorizations_report_in_batches_and_caching_modes() {
    let (stand, backend, upstream) = stand_ins().await;
    let (state, gw) = gateway(
        Config {
            auth_cache_ttl: Duration::from_secs(60),
            ..Config::default()
        },
        json!({"services": [
            service(backend, upstream, json!({})),
            service(backend, upstream, json!({"hosts": ["resilient.test"],
                "policy_chain": [{"name": "apicast"}, {"name": "apicast.policy.caching", "configuration": {"caching_type": "resilient"}}]}))
                .as_object().map(|o| { let mut o = o.clone(); o.insert("id".into(), json!(43)); Value::Object(o) }).unwrap()
        ]}),
    )
    .await;
    assert_eq!(state.store.get().unwrap().services.len(), 2);
    for _ in 0..3 {
        assert_eq!(gw_get(gw, "/hits?user_key=good-c").await.status(), 200);
    }
    assert_eq!(
        stand.calls.lock().unwrap().len(),
        1,
        "one authrep, then cache hits"
    );
    wait_for("a batched report", || {
        stand.reports.lock().unwrap().iter().any(|r| {
            r.contains("transactions%5B0%5D%5Buser_key%5D=good-c")
                && r.contains("%5Busage%5D%5Bhits%5D=")
        })
    })
    .await;
    let _ = &stand.reports;

    // Backend down: strict denies unseen keys; resilient keeps serving keys it has seen.
    let resilient = |key: &'static str| async move {
        client()
            .get(format!("http://{gw}/hits?user_key={key}"))
            .header("host", "resilient.test")
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(resilient("good-r").await, 200);
    state.cache.handle(
        &gateway::backend::AuthCache::key(
            &state.store.get().unwrap().services[1],
            "good-r",
            &gateway::mapping::Usage([("hits".to_owned(), 1)].into_iter().collect()),
            &[],
        ),
        CachingMode::Resilient,
        &gateway::backend::BackendAnswer {
            status: 200,
            ..Default::default()
        },
    );
    stand.down.store(true, Ordering::SeqCst);
    assert_eq!(gw_get(gw, "/hits?user_key=good-new").await.status(), 403);
    assert_eq!(resilient("good-unseen").await, 403);
    assert_eq!(resilient("good-r").await, 200);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rsa_jwk(name: &str, kid: &str) -> Value {
    let all: Value = serde_json::from_str(include_str!("fixtures/rsa_components.json")).unwrap();
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": all[name]["n"], "e": all[name]["e"]})
}

fn sign(pem: &str, kid: &str, claims: Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn oidc_tokens_are_verified_and_keys_rotate() {
    let (stand, backend, upstream) = stand_ins().await;
    *stand.jwks.lock().unwrap() = json!({"keys": [rsa_jwk("rsa1", "k1")]});
    let issuer = format!("http://{backend}");
    let svc = |id: u32, host: &str, extra: Value| {
        let mut s = service(backend, upstream, extra);
        s["id"] = json!(id);
        s["backend_version"] = json!("oauth");
        s["proxy"]["hosts"] = json!([host]);
        s["proxy"]["authentication_method"] = json!("oidc");
        s["proxy"]["oidc_issuer_endpoint"] = json!(format!("http://client:secret@{backend}"));
        s
    };
    let (_state, gw) = gateway(
        Config {
            jwks_min_refresh: Duration::ZERO,
            ..Config::default()
        },
        json!({"services": [
            svc(50, "api.test", json!({})),
            svc(51, "custom.test", json!({"jwt_claim_with_client_id": "{{ custom | first }}", "jwt_claim_with_client_id_type": "liquid"}))
        ]}),
    )
    .await;
    let k1 = include_str!("fixtures/rsa1.pem");
    let k2 = include_str!("fixtures/rsa2.pem");
    let call = |token: String, host: &'static str| async move {
        client()
            .get(format!("http://{gw}/hits"))
            .header("host", host)
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap()
    };
    let good = json!({"iss": issuer, "azp": "client-1", "exp": now() + 300, "sub": "u"});
    let r = call(sign(k1, "k1", good.clone()), "api.test").await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert!(echo["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));
    {
        let calls = stand.calls.lock().unwrap();
        assert_eq!(calls.last().unwrap()["app_id"], "client-1");
    }
    assert_eq!(
        gw_get(gw, "/hits").await.status(),
        401,
        "no token: auth missing"
    );
    for (name, claims) in [
        (
            "expired",
            json!({"iss": issuer, "azp": "client-1", "exp": now() - 10}),
        ),
        (
            "nbf",
            json!({"iss": issuer, "azp": "client-1", "exp": now() + 300, "nbf": now() + 300}),
        ),
        (
            "wrong iss",
            json!({"iss": "http://evil", "azp": "client-1", "exp": now() + 300}),
        ),
        ("no client id", json!({"iss": issuer, "exp": now() + 300})),
    ] {
        let r = call(sign(k1, "k1", claims), "api.test").await;
        assert_eq!(r.status(), 403, "{name}");
        assert_eq!(r.text().await.unwrap(), "Authentication failed");
    }
    assert_eq!(
        call("garbage.token.x".into(), "api.test").await.status(),
        403
    );
    // alg none and HS256 signed with the public key are refused outright.
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "k1"})),
        b64(good.clone())
    );
    assert_eq!(call(none, "api.test").await.status(), 403);
    let mut hs = Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &good,
        &EncodingKey::from_secret(include_bytes!("fixtures/rsa1.pub.pem")),
    )
    .unwrap();
    assert_eq!(call(confused, "api.test").await.status(), 403);

    // Rotation: a token with an unknown kid fails until the IdP publishes the key, then works without restart.
    let rotated = sign(k2, "k2", good.clone());
    assert_eq!(call(rotated.clone(), "api.test").await.status(), 403);
    *stand.jwks.lock().unwrap() = json!({"keys": [rsa_jwk("rsa1", "k1"), rsa_jwk("rsa2", "k2")]});
    assert_eq!(call(rotated, "api.test").await.status(), 200);

    // Custom client-id claim through a liquid template.
    let custom = json!({"iss": issuer, "custom": ["custom-client", "x"], "exp": now() + 300});
    assert_eq!(
        call(sign(k1, "k1", custom), "custom.test").await.status(),
        200
    );
    assert_eq!(
        stand.calls.lock().unwrap().last().unwrap()["app_id"],
        "custom-client"
    );
}

#[tokio::test]
async fn referrer_is_sent_and_config_swaps_atomically() {
    let (stand, backend, upstream) = stand_ins().await;
    let doc = |host: &str| {
        json!({"services": [service(backend, upstream, json!({"hosts": [host],
            "policy_chain": [{"name": "apicast.policy.3scale_referrer"}, {"name": "apicast"}]}))]})
    };
    let (state, gw) = gateway(Config::default(), doc("api.test")).await;
    let r = client()
        .get(format!("http://{gw}/hits?user_key=good-ref"))
        .header("host", "api.test")
        .header("referer", "https://shop.example/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        stand.calls.lock().unwrap().last().unwrap()["referrer"],
        "https://shop.example/page"
    );
    state
        .store
        .set(compile(doc("new.test"), &Default::default()).unwrap());
    assert_eq!(gw_get(gw, "/hits?user_key=good-ref").await.status(), 404);
    let r = client()
        .get(format!("http://{gw}/hits?user_key=good-ref"))
        .header("host", "new.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

type SystemState = (Arc<Mutex<String>>, Arc<Mutex<String>>);

/// How many times the fake system of `portal_changes_are_picked_up_and_broken_ones_rejected` was polled.
static PORTAL_POLLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn next_portal_poll() {
    let seen = PORTAL_POLLS.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while PORTAL_POLLS.load(std::sync::atomic::Ordering::SeqCst) == seen {
        assert!(Instant::now() < deadline, "system is not polled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn portal_changes_are_picked_up_and_broken_ones_rejected() {
    let (_stand, backend, upstream) = stand_ins().await;
    let body = Arc::new(Mutex::new(String::new()));
    let auth_seen = Arc::new(Mutex::new(String::new()));
    let proxy_configs = |host: &str| {
        json!({"proxy_configs": [{"proxy_config": {"id": 1, "version": 1, "environment": "production",
            "content": service(backend, upstream, json!({"hosts": [host]}))}}]})
        .to_string()
    };
    *body.lock().unwrap() = proxy_configs("first.test");
    let system = Router::new().route(
        "/admin/api/account/proxy_configs/production.json",
        get(
            |State((body, auth_seen)): State<SystemState>, headers: HeaderMap| async move {
                PORTAL_POLLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                *auth_seen.lock().unwrap() = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                body.lock().unwrap().clone()
            },
        ),
    );
    let system = serve(system.with_state((body.clone(), auth_seen.clone()))).await;
    let config = Config {
        source: gateway::store::Source::Portal(
            url::Url::parse(&format!("http://secrettoken@{system}")).unwrap(),
        ),
        // The default interval: a promoted change must be served within a second of it.
        ..Config::default()
    };
    let state = AppState::new(config.clone());
    let shutdown = platform::Shutdown::new();
    state.boot(shutdown.clone()).await.unwrap();
    let gw = support::serve_gateway(state.clone()).await;
    let mgmt = serve(gateway::management::router(
        state.clone(),
        platform::metrics::Metrics::global(),
    ))
    .await;
    let on = |host: &'static str| async move {
        client()
            .get(format!("http://{gw}/hits?user_key=good-p"))
            .header("host", host)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while on("first.test").await != 200 {
        assert!(
            Instant::now() < deadline,
            "first configuration never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*auth_seen.lock().unwrap(), "Basic c2VjcmV0dG9rZW46");
    let ready = client()
        .get(format!("http://{mgmt}/status/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready", "success": true})
    );

    // A promoted change is noticed within a second, even when it lands just after a poll.
    next_portal_poll().await;
    *body.lock().unwrap() = proxy_configs("second.test");
    let changed = Instant::now();
    while on("second.test").await != 200 {
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "change not picked up within 1s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on("first.test").await, 404);

    // A broken configuration is rejected and the previous one keeps serving.
    *body.lock().unwrap() =
        r#"{"proxy_configs": [{"proxy_config": {"content": {"proxy": {"hosts": 5}}}}]}"#.into();
    next_portal_poll().await;
    next_portal_poll().await;
    assert_eq!(on("second.test").await, 200);
    shutdown.trigger();
}

#[tokio::test]
async fn management_api_statuses_and_debug_config() {
    let config = Config {
        management: gateway::ManagementMode::Debug,
        ..Config::default()
    };
    let state = AppState::new(config);
    let mgmt = serve(gateway::management::router(
        state.clone(),
        platform::metrics::Metrics::global(),
    ))
    .await;
    let url = |p: &str| format!("http://{mgmt}{p}");
    assert_eq!(
        client()
            .get(url("/status/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        412
    );
    let r = client()
        .put(url("/config"))
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .put(url("/config"))
        .body(r#"{"services": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    let r = client()
        .put(url("/config"))
        .body(r#"{"services": [{"id": 9, "proxy": {"hosts": ["x.test"]}}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["services"], 1);
    let ready: Value = client()
        .get(url("/status/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"status": "ready", "success": true}));
    let got: Value = client()
        .get(url("/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["services"][0]["id"], 9);
}

#[tokio::test]
async fn es256_tokens_and_path_routing() {
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let (stand, backend, upstream) = stand_ins().await;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    *stand.jwks.lock().unwrap() = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "e1", "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        rsa_jwk("rsa1", "k1")
    ]});
    let issuer = format!("http://{backend}");
    let mut oidc = service(
        backend,
        upstream,
        json!({"authentication_method": "oidc",
        "oidc_issuer_endpoint": issuer.clone(), "hosts": ["shared.test"],
        "proxy_rules": [{"http_method": "GET", "pattern": "/oidc", "metric_system_name": "hits", "delta": 1}]}),
    );
    oidc["backend_version"] = json!("oauth");
    let mut keyed = service(
        backend,
        upstream,
        json!({"hosts": ["shared.test"],
        "proxy_rules": [{"http_method": "GET", "pattern": "/keyed", "metric_system_name": "hits", "delta": 1}]}),
    );
    keyed["id"] = json!(77);
    let config = Config {
        path_routing: true,
        compile: gateway::apicast::CompileOptions {
            path_routing: true,
            ..Default::default()
        },
        ..Config::default()
    };
    let (_state, gw) = gateway(config, json!({"services": [oidc, keyed]})).await;
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("e1".into());
    let claims = json!({"iss": issuer, "azp": "client-1", "exp": now() + 300});
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    let send = |path: &'static str, auth: Option<String>| async move {
        let mut r = client()
            .get(format!("http://{gw}{path}"))
            .header("host", "shared.test");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().await.unwrap().status().as_u16()
    };
    assert_eq!(send("/oidc", Some(format!("Bearer {token}"))).await, 200);
    // An ES256 header over an RSA key is a key-type mismatch.
    let mut wrong = Header::new(jsonwebtoken::Algorithm::ES256);
    wrong.kid = Some("k1".into());
    let mismatched =
        jsonwebtoken::encode(&wrong, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    assert_eq!(
        send("/oidc", Some(format!("Bearer {mismatched}"))).await,
        403
    );
    // Path routing picks the second service on the same host by its mapping rules.
    assert_eq!(send("/keyed?user_key=good-pr", None).await, 200);
    assert_eq!(
        stand.calls.lock().unwrap().last().unwrap()["service_id"],
        "77"
    );
}

#[tokio::test]
async fn missing_or_unreachable_upstream() {
    let (_stand, backend, upstream) = stand_ins().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut none = service(
        backend,
        upstream,
        json!({"hosts": ["none.test"], "api_backend": null}),
    );
    none["id"] = json!(1);
    let mut down = service(backend, closed, json!({"hosts": ["down.test"]}));
    down["id"] = json!(2);
    let (_state, gw) = gateway(Config::default(), json!({"services": [none, down]})).await;
    let send = |host: &'static str| async move {
        client()
            .get(format!("http://{gw}/hits?user_key=good-u"))
            .header("host", host)
            .send()
            .await
            .unwrap()
    };
    let r = send("none.test").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "");
    assert_eq!(send("down.test").await.status(), 502);
}
