//! Failure scenarios: backend stops (SIGTERM) while the gateway serves traffic. A gateway in `resilient` caching
//! mode keeps serving the keys it has seen and refuses keys it has not; `strict` refuses both; once backend is
//! back, new keys work and the usage let through meanwhile is counted.

use serde_json::json;
use tests::scenario::{
    backend_internal_get, create_app, create_limit, create_plan, create_service, eventually, field,
    hits_id, set_policies, signup, update_proxy, utilization, GatewayClient, PROPAGATION,
};
use tests::{Admin, Platform, PlatformOptions};

/// Every request asks backend while it is up, so what happens while it is down is the caching mode's decision
/// and not a still-fresh cache entry.
fn options() -> PlatformOptions {
    PlatformOptions {
        idp: false,
        require_idp: false,
        gateway_extra_env: vec![("GATEWAY_AUTH_CACHE_TTL_SECONDS", "0".into())],
        ..PlatformOptions::default()
    }
}

/// A user_key API on `host` whose chain carries the caching policy in `mode`; returns (service id, plan id).
async fn api_with_caching(
    platform: &Platform,
    admin: &Admin,
    name: &str,
    host: &str,
    mode: &str,
) -> (i64, i64) {
    let sid = create_service(admin, name, &[("backend_version", "1")]).await;
    update_proxy(
        admin,
        sid,
        &[
            ("api_backend", &platform.echo.url("")),
            ("sandbox_endpoint", &format!("https://{host}:443")),
            ("endpoint", &format!("https://production.{host}:443")),
        ],
    )
    .await;
    set_policies(
        admin,
        sid,
        json!([
            {"name": "apicast", "version": "builtin", "configuration": {}, "enabled": true},
            {"name": "caching", "version": "builtin", "configuration": {"caching_type": mode}, "enabled": true},
        ]),
    )
    .await;
    let plan = create_plan(admin, sid, name).await;
    // A limit makes the hits counter visible in backend's utilization.
    create_limit(admin, plan, hits_id(admin, sid).await, "day", 1_000_000).await;
    (sid, plan)
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_stopped() {
    const RESILIENT: &str = "resilient-staging.example.test";
    const STRICT: &str = "strict-staging.example.test";
    let mut platform = Platform::start(options()).await;
    let admin = platform.admin();
    let gateway = GatewayClient::new(platform.url("gateway", ""));

    let (resilient, resilient_plan) =
        api_with_caching(&platform, &admin, "resilient", RESILIENT, "resilient").await;
    let (_, strict_plan) = api_with_caching(&platform, &admin, "strict", STRICT, "strict").await;
    let account = signup(&admin, "failures-developer").await;
    let seen = create_app(&admin, account, resilient_plan, &[("name", "seen")]).await;
    let unseen = create_app(&admin, account, resilient_plan, &[("name", "unseen")]).await;
    let strict_seen = create_app(&admin, account, strict_plan, &[("name", "strict")]).await;
    let seen_path = format!("/orders?user_key={}", field(&seen, "user_key"));
    let unseen_path = format!("/orders?user_key={}", field(&unseen, "user_key"));
    let strict_path = format!("/orders?user_key={}", field(&strict_seen, "user_key"));

    // Both gateways' services see their key once while backend is up (the strict app was created last, so once
    // it passes backend knows every application).
    gateway.until_status(200, STRICT, &strict_path, &[]).await;
    gateway.until_status(200, RESILIENT, &seen_path, &[]).await;

    let status = platform.stop_service("backend").await;
    assert!(
        status.success(),
        "backend exits cleanly on SIGTERM: {status}"
    );

    // Resilient: the key seen keeps working and reaches the upstream; the key never seen is refused.
    for n in 1..=3 {
        let answer = gateway.get(RESILIENT, &seen_path, &[]).await;
        assert_eq!(answer.status, 200, "seen key, call {n}: {}", answer.body);
        assert_eq!(answer.body["path"], "/orders");
    }
    let refused = gateway.get(RESILIENT, &unseen_path, &[]).await;
    assert_eq!(refused.status, 403, "unseen key: {}", refused.body);
    assert_ne!(refused.body["path"], "/orders", "not forwarded");
    // Strict: even the key seen is refused while backend is down.
    assert_eq!(gateway.get(STRICT, &strict_path, &[]).await.status, 403);

    // Backend returns: the new key is accepted, and the three calls let through meanwhile are counted.
    platform.restart_service("backend").await;
    gateway
        .until_status(200, RESILIENT, &unseen_path, &[])
        .await;
    let lookup = backend_internal_get(
        &platform,
        &format!(
            "/internal/services/{resilient}/applications/key/{}",
            field(&seen, "user_key")
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("backend knows the user key: {e}"));
    let seen_id = field(&lookup["application"], "id");
    eventually(
        "backend counted the calls served while it was down",
        PROPAGATION,
        || async {
            let values = utilization(&platform, resilient, &seen_id).await?;
            if values == json!({"hits": 4}) {
                Ok(())
            } else {
                Err(values.to_string())
            }
        },
    )
    .await;

    let problems = platform.shutdown().await;
    assert!(problems.is_empty(), "unclean shutdown: {problems:?}");
}
