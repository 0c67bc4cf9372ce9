//! Scenarios about what the gateway routes and counts: mapping rules for two API versions counting on an endpoint
//! method and on a version metric (usage read back from backend's utilization), and a staging gateway next to a
//! production gateway, where a changed rule reaches production only when promoted, within a second.

use std::time::{Duration, Instant};

use reqwest::Method;
use tests::scenario::{
    create_app, create_limit, create_plan, create_service, eventually, field, hits_id, id_of,
    update_proxy, utilization, GatewayClient, PROPAGATION,
};
use tests::{Admin, Platform, PlatformOptions};

/// Every request is authorized (and counted) by backend at once, so usage can be compared exactly.
fn options() -> PlatformOptions {
    PlatformOptions {
        idp: false,
        require_idp: false,
        gateway_extra_env: vec![("GATEWAY_AUTH_CACHE_TTL_SECONDS", "0".into())],
        ..PlatformOptions::default()
    }
}

/// Deletes every mapping rule of the service (the default `GET /` one included), as the toolbox does on import.
async fn delete_mapping_rules(admin: &Admin, sid: i64) {
    let rules = admin
        .get(
            &format!("/admin/api/services/{sid}/proxy/mapping_rules.json"),
            &[],
        )
        .await;
    for rule in rules["mapping_rules"].as_array().into_iter().flatten() {
        let rid = id_of(rule, "mapping_rule");
        admin
            .delete(
                &format!("/admin/api/services/{sid}/proxy/mapping_rules/{rid}.json"),
                &[],
            )
            .await;
    }
}

async fn create_rule(admin: &Admin, sid: i64, method: &str, pattern: &str, metric: i64) -> i64 {
    id_of(
        &admin
            .post(
                &format!("/admin/api/services/{sid}/proxy/mapping_rules.json"),
                &[
                    ("http_method", method),
                    ("pattern", pattern),
                    ("delta", "1"),
                    ("metric_id", &metric.to_string()),
                ],
            )
            .await,
        "mapping_rule",
    )
}

/// Polls `GET path` every 10 ms until it answers 200; returns the time since `since` (panics after
/// `PROPAGATION`).
async fn served_after(gateway: &GatewayClient, host: &str, path: &str, since: Instant) -> Duration {
    loop {
        let answer = gateway.get(host, path, &[]).await;
        if answer.status == 200 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "{host}{path} never answered 200; last: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mapping_rules_and_versions() {
    const HOST: &str = "versions-staging.example.test";
    let platform = Platform::start(options()).await;
    let admin = platform.admin();
    let gateway = GatewayClient::new(platform.url("gateway", ""));

    let sid = create_service(&admin, "versions", &[("backend_version", "2")]).await;
    update_proxy(
        &admin,
        sid,
        &[
            ("api_backend", &platform.echo.url("")),
            ("sandbox_endpoint", &format!("https://{HOST}:443")),
            ("endpoint", "https://versions.example.test:443"),
        ],
    )
    .await;
    let hits = hits_id(&admin, sid).await;
    // An endpoint method under hits, and one metric per API version.
    let widgets = id_of(
        &admin
            .post(
                &format!("/admin/api/services/{sid}/metrics/{hits}/methods.json"),
                &[
                    ("friendly_name", "Get widgets"),
                    ("system_name", "get_widgets"),
                ],
            )
            .await,
        "method",
    );
    let mut versions = Vec::new();
    for v in ["1", "2"] {
        versions.push(id_of(
            &admin
                .post(
                    &format!("/admin/api/services/{sid}/metrics.json"),
                    &[
                        ("friendly_name", &format!("Version {v}")),
                        ("system_name", &format!("version_{v}")),
                        ("unit", "hit"),
                    ],
                )
                .await,
            "metric",
        ));
    }
    delete_mapping_rules(&admin, sid).await;
    create_rule(&admin, sid, "GET", "/v1/widgets", widgets).await;
    create_rule(&admin, sid, "GET", "/v1/", versions[0]).await;
    create_rule(&admin, sid, "GET", "/v2/widgets", widgets).await;
    create_rule(&admin, sid, "GET", "/v2/", versions[1]).await;

    // Utilization lists the metrics the plan limits; generous daily limits make every counter visible.
    let plan = create_plan(&admin, sid, "versions").await;
    for metric in [hits, widgets, versions[0], versions[1]] {
        create_limit(&admin, plan, metric, "day", 1_000_000).await;
    }
    let account = tests::scenario::signup(&admin, "versions-developer").await;
    let app = create_app(
        &admin,
        account,
        plan,
        &[
            ("name", "versions"),
            ("application_key[]", "versions-key-1"),
        ],
    )
    .await;
    let app_id = field(&app, "application_id");
    let probe = create_app(
        &admin,
        account,
        plan,
        &[("name", "probe"), ("application_key[]", "probe-key-1")],
    )
    .await;
    let probe_creds = format!(
        "app_id={}&app_key=probe-key-1",
        field(&probe, "application_id")
    );
    // The probe (created last) passing means backend knows both applications; an unmatched path refused means the
    // gateway serves these rules rather than the default `/` rule of an earlier version.
    gateway
        .until_status(200, HOST, &format!("/v2/widgets?{probe_creds}"), &[])
        .await;
    gateway
        .until_status(404, HOST, &format!("/v3/widgets?{probe_creds}"), &[])
        .await;

    let creds = format!("app_id={app_id}&app_key=versions-key-1");
    let calls = [("/v1/widgets", 3), ("/v2/widgets", 2), ("/v2/status", 1)];
    for (path, times) in calls {
        for _ in 0..times {
            let answer = gateway.get(HOST, &format!("{path}?{creds}"), &[]).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
            assert_eq!(answer.body["path"], path, "the upstream got the path");
        }
    }
    // No rule matches: refused, not forwarded, not counted.
    let unmatched = gateway
        .get(HOST, &format!("/v3/widgets?{creds}"), &[])
        .await;
    assert_eq!(unmatched.status, 404, "{}", unmatched.body);
    assert_eq!(unmatched.body, "No Mapping Rule matched");

    // Methods add up into their parent (hits); version metrics count every call of their version.
    let expected = serde_json::json!({
        "get_widgets": 5,
        "hits": 5,
        "version_1": 3,
        "version_2": 3,
    });
    eventually(
        "the application's utilization shows its usage",
        PROPAGATION,
        || async {
            let values = utilization(&platform, sid, &app_id).await?;
            if values == expected {
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

#[tokio::test(flavor = "multi_thread")]
async fn staging_and_production() {
    const STAGING: &str = "promote-staging.example.test";
    const PRODUCTION: &str = "promote.example.test";
    let mut platform = Platform::start(options()).await;
    platform
        .start_gateway("gateway-production", "production")
        .await;
    let admin = platform.admin();
    let staging = GatewayClient::new(platform.url("gateway", ""));
    let production = GatewayClient::new(platform.url("gateway-production", ""));

    let sid = create_service(&admin, "promote", &[("backend_version", "1")]).await;
    update_proxy(
        &admin,
        sid,
        &[
            ("api_backend", &platform.echo.url("")),
            ("sandbox_endpoint", &format!("https://{STAGING}:443")),
            ("endpoint", &format!("https://{PRODUCTION}:443")),
        ],
    )
    .await;
    let hits = hits_id(&admin, sid).await;
    delete_mapping_rules(&admin, sid).await;
    let rule = create_rule(&admin, sid, "GET", "/v1/widgets", hits).await;
    let plan = create_plan(&admin, sid, "promote").await;
    let account = tests::scenario::signup(&admin, "promote-developer").await;
    let app = create_app(&admin, account, plan, &[("name", "promote")]).await;
    let key = format!("user_key={}", field(&app, "user_key"));

    let promote = |admin: Admin| async move {
        let latest = admin
            .get(
                &format!("/admin/api/services/{sid}/proxy/configs/sandbox/latest.json"),
                &[],
            )
            .await;
        let version = latest["proxy_config"]["version"]
            .as_i64()
            .unwrap_or_else(|| panic!("no latest sandbox version: {latest}"));
        admin
            .post(
                &format!("/admin/api/services/{sid}/proxy/configs/sandbox/{version}/promote.json"),
                &[("to", "production")],
            )
            .await;
        version
    };

    // Nothing is in production until the first promotion. Staging must serve the one rule, not the default `/`
    // rule of an earlier version, or the changed rule below would be "served" by the catch-all.
    staging
        .until_status(200, STAGING, &format!("/v1/widgets?{key}"), &[])
        .await;
    staging
        .until_status(404, STAGING, &format!("/v1/gadgets?{key}"), &[])
        .await;
    assert_eq!(
        production
            .get(PRODUCTION, &format!("/v1/widgets?{key}"), &[])
            .await
            .status,
        404,
        "production serves nothing before a promotion"
    );
    promote(admin.clone()).await;
    let answer = production
        .until_status(200, PRODUCTION, &format!("/v1/widgets?{key}"), &[])
        .await;
    assert_eq!(answer.body["path"], "/v1/widgets");

    // A changed mapping rule is served by staging at once...
    admin
        .ok(
            Method::PATCH,
            &format!("/admin/api/services/{sid}/proxy/mapping_rules/{rule}.json"),
            &[("pattern", "/v1/gadgets")],
        )
        .await;
    let changed_at = Instant::now();
    let staged_after =
        served_after(&staging, STAGING, &format!("/v1/gadgets?{key}"), changed_at).await;
    eprintln!("staging served the changed rule {staged_after:?} after the change");
    assert!(
        staged_after <= Duration::from_secs(1),
        "staging served the changed rule only {staged_after:?} after the change"
    );
    assert_eq!(
        staging
            .get(STAGING, &format!("/v1/widgets?{key}"), &[])
            .await
            .status,
        404
    );
    // ...and not by production, which keeps the promoted rules.
    assert_eq!(
        production
            .get(PRODUCTION, &format!("/v1/gadgets?{key}"), &[])
            .await
            .status,
        404
    );
    assert_eq!(
        production
            .get(PRODUCTION, &format!("/v1/widgets?{key}"), &[])
            .await
            .status,
        200
    );

    // Once promoted, production serves the change within one second of the promote call.
    promote(admin.clone()).await;
    let promoted_at = Instant::now();
    let served_after = served_after(
        &production,
        PRODUCTION,
        &format!("/v1/gadgets?{key}"),
        promoted_at,
    )
    .await;
    eprintln!("production served the promoted rule {served_after:?} after the promote call");
    assert!(
        served_after <= Duration::from_secs(1),
        "production served the promoted rule only {served_after:?} after the promote call"
    );
    assert_eq!(
        production
            .get(PRODUCTION, &format!("/v1/widgets?{key}"), &[])
            .await
            .status,
        404
    );

    let problems = platform.shutdown().await;
    assert!(problems.is_empty(), "unclean shutdown: {problems:?}");
}
