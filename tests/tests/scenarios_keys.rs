//! Scenarios of the 3scale guides about keys, driven through system's admin API and the gateway only: an API key
//! in a custom header with a rate limit, suspension and key rotation; app id and keys; referrer filtering.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tests::scenario::{
    create_app, create_limit, create_plan, create_service, eventually, field, hits_id,
    set_policies, signup, update_proxy, GatewayClient, PROPAGATION,
};
use tests::{Platform, PlatformOptions};

/// Every request is authorized by backend (no cached authorization), so a suspension or a deleted key takes
/// effect on the very next request; with the gateway's default cache a known key keeps passing for up to
/// `GATEWAY_AUTH_CACHE_TTL_SECONDS` (10 s), as with APIcast's batcher. (Limits hold either way: the cache spends
/// only the calls backend's limit headers allow, tested in `gateway/tests/limits.rs`.)
fn options() -> PlatformOptions {
    PlatformOptions {
        idp: false,
        require_idp: false,
        gateway_extra_env: vec![("GATEWAY_AUTH_CACHE_TTL_SECONDS", "0".into())],
        ..PlatformOptions::default()
    }
}

fn second_of_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        % 60
}

fn minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        / 60
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key() {
    const HOST: &str = "api-key-staging.example.test";
    let platform = Platform::start(options()).await;
    let admin = platform.admin();
    let gateway = GatewayClient::new(platform.url("gateway", ""));

    // An API in user_key mode with the key in a header named `API-key`.
    let sid = create_service(&admin, "api_key", &[("backend_version", "1")]).await;
    update_proxy(
        &admin,
        sid,
        &[
            ("api_backend", &platform.echo.url("")),
            ("credentials_location", "headers"),
            ("auth_user_key", "API-key"),
            ("sandbox_endpoint", &format!("https://{HOST}:443")),
            ("endpoint", "https://api-key.example.test:443"),
        ],
    )
    .await;
    let hits = hits_id(&admin, sid).await;
    let plan = create_plan(&admin, sid, "basic").await;
    let limit = create_limit(&admin, plan, hits, "minute", 5).await;
    let account = signup(&admin, "keys-developer").await;
    let app = create_app(&admin, account, plan, &[("name", "limited")]).await;
    let app_id = field(&app, "id");
    let user_key = field(&app, "user_key");
    // A second application, created after the first, tells when both have reached backend and the gateway has
    // the configuration, without spending the first one's hits (system delivers changes to backend in order).
    let probe = create_app(&admin, account, plan, &[("name", "probe")]).await;
    let probe_key = field(&probe, "user_key");
    gateway
        .until_status(200, HOST, "/widgets", &[("API-key", probe_key.as_str())])
        .await;

    // Wrong or missing keys are refused without reaching the upstream.
    assert_eq!(
        gateway
            .get(HOST, "/widgets", &[("API-key", "not-a-key")])
            .await
            .status,
        403
    );
    assert_eq!(gateway.get(HOST, "/widgets", &[]).await.status, 403);
    // The key is read from the configured header only.
    assert_eq!(
        gateway
            .get(HOST, &format!("/widgets?user_key={user_key}"), &[])
            .await
            .status,
        403
    );

    // Five calls a minute: they must all fall in one minute, so start in a fresh one when this one is nearly over.
    if second_of_minute() >= 50 {
        let now = minute();
        eventually(
            "the next minute starts",
            Duration::from_secs(15),
            || async {
                (minute() != now)
                    .then_some(())
                    .ok_or_else(|| "same minute".to_owned())
            },
        )
        .await;
    }
    let started_in = minute();
    for n in 1..=5 {
        let answer = gateway
            .get(
                HOST,
                &format!("/widgets/{n}?colour=red"),
                &[("API-key", user_key.as_str())],
            )
            .await;
        assert_eq!(answer.status, 200, "call {n}: {}", answer.body);
        assert_eq!(
            answer.body["method"], "GET",
            "call {n} reached the upstream"
        );
        assert_eq!(answer.body["path"], format!("/widgets/{n}"));
        assert_eq!(answer.body["args"]["colour"], "red");
    }
    let sixth = gateway
        .get(HOST, "/widgets/6", &[("API-key", user_key.as_str())])
        .await;
    assert_eq!(
        minute(),
        started_in,
        "the six calls spanned two minutes; the machine stalled for seconds"
    );
    assert_eq!(sixth.status, 429, "the 6th call: {}", sixth.body);
    let retry_after: u64 = sixth
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {:?}", sixth.headers));
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After {retry_after} is within the minute"
    );
    assert_ne!(
        sixth.body["method"], "GET",
        "the refused call did not reach the upstream"
    );
    // The other application of the same plan has its own counter.
    assert_eq!(
        gateway
            .get(HOST, "/widgets", &[("API-key", probe_key.as_str())])
            .await
            .status,
        200
    );

    // The provider raises the limit; the application is allowed again.
    admin
        .put(
            &format!("/admin/api/application_plans/{plan}/metrics/{hits}/limits/{limit}.json"),
            &[("value", "1000")],
        )
        .await;
    gateway
        .until_status(200, HOST, "/widgets", &[("API-key", user_key.as_str())])
        .await;

    // Suspend → 403; resume → 200.
    let app_path = format!("/admin/api/accounts/{account}/applications/{app_id}");
    let suspended = admin.put(&format!("{app_path}/suspend.json"), &[]).await;
    assert_eq!(suspended["application"]["state"], "suspended");
    let refused = gateway
        .until_status(403, HOST, "/widgets", &[("API-key", user_key.as_str())])
        .await;
    assert_eq!(refused.body, "Authentication failed");
    let resumed = admin.put(&format!("{app_path}/resume.json"), &[]).await;
    assert_eq!(resumed["application"]["state"], "live");
    gateway
        .until_status(200, HOST, "/widgets", &[("API-key", user_key.as_str())])
        .await;

    // A new user_key: the old one is refused, the new one accepted.
    let new_key = "rotated-key-0123456789abcdef";
    let updated = admin
        .put(&format!("{app_path}.json"), &[("user_key", new_key)])
        .await;
    assert_eq!(updated["application"]["user_key"], new_key);
    gateway
        .until_status(403, HOST, "/widgets", &[("API-key", user_key.as_str())])
        .await;
    let answer = gateway
        .until_status(200, HOST, "/widgets", &[("API-key", new_key)])
        .await;
    assert_eq!(answer.body["path"], "/widgets");

    let problems = platform.shutdown().await;
    assert!(problems.is_empty(), "unclean shutdown: {problems:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn app_id_and_keys() {
    const HOST: &str = "app-keys-staging.example.test";
    const OPEN_HOST: &str = "app-id-only-staging.example.test";
    let platform = Platform::start(options()).await;
    let admin = platform.admin();
    let gateway = GatewayClient::new(platform.url("gateway", ""));
    let echo = platform.echo.url("");

    // An API in app_id/app_key mode (keys in the query, APIcast's default).
    let sid = create_service(&admin, "app_keys", &[("backend_version", "2")]).await;
    update_proxy(
        &admin,
        sid,
        &[
            ("api_backend", &echo),
            ("sandbox_endpoint", &format!("https://{HOST}:443")),
            ("endpoint", "https://app-keys.example.test:443"),
        ],
    )
    .await;
    let plan = create_plan(&admin, sid, "keys").await;
    let account = signup(&admin, "app-keys-developer").await;
    let app = create_app(
        &admin,
        account,
        plan,
        &[
            ("name", "two keys"),
            ("application_key[]", "first-key-1111"),
            ("application_key[]", "second-key-2222"),
        ],
    )
    .await;
    let app_id = field(&app, "application_id");
    let keys_path = format!(
        "/admin/api/accounts/{account}/applications/{}/keys",
        field(&app, "id")
    );
    let keys = admin.get(&format!("{keys_path}.json"), &[]).await;
    let values: Vec<_> = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| k["key"]["value"].clone())
        .collect();
    assert_eq!(values, [json!("first-key-1111"), json!("second-key-2222")]);

    let path = |key: &str| format!("/things?app_id={app_id}&app_key={key}");
    // Backend learns the application before its keys, and an application without keys passes with any key:
    // wait until both keys work and a wrong one is refused.
    eventually(
        "both keys work and a wrong one is refused",
        PROPAGATION,
        || async {
            let statuses = [
                gateway.get(HOST, &path("first-key-1111"), &[]).await.status,
                gateway
                    .get(HOST, &path("second-key-2222"), &[])
                    .await
                    .status,
                gateway.get(HOST, &path("wrong-key-0000"), &[]).await.status,
            ];
            if statuses == [200, 200, 403] {
                Ok(())
            } else {
                Err(format!("{statuses:?}"))
            }
        },
    )
    .await;
    let answer = gateway.get(HOST, &path("first-key-1111"), &[]).await;
    assert_eq!(answer.body["path"], "/things");
    // A wrong key, or none on a service with mandatory app keys, is refused.
    assert_eq!(
        gateway.get(HOST, &path("wrong-key-0000"), &[]).await.status,
        403
    );
    assert_eq!(
        gateway
            .get(HOST, &format!("/things?app_id={app_id}"), &[])
            .await
            .status,
        403
    );

    // Add a third key, delete the first: the first is refused, the others work.
    admin
        .post(&format!("{keys_path}.json"), &[("key", "third-key-3333")])
        .await;
    admin
        .delete(&format!("{keys_path}/first-key-1111.json"), &[])
        .await;
    gateway
        .until_status(403, HOST, &path("first-key-1111"), &[])
        .await;
    gateway
        .until_status(200, HOST, &path("third-key-3333"), &[])
        .await;
    assert_eq!(
        gateway
            .get(HOST, &path("second-key-2222"), &[])
            .await
            .status,
        200
    );

    // A service without mandatory app keys: an application with no keys authenticates by its app id alone.
    let open = create_service(
        &admin,
        "app_id_only",
        &[("backend_version", "2"), ("mandatory_app_key", "false")],
    )
    .await;
    update_proxy(
        &admin,
        open,
        &[
            ("api_backend", &echo),
            ("sandbox_endpoint", &format!("https://{OPEN_HOST}:443")),
            ("endpoint", "https://app-id-only.example.test:443"),
        ],
    )
    .await;
    let open_plan = create_plan(&admin, open, "open").await;
    let keyless = create_app(&admin, account, open_plan, &[("name", "no keys")]).await;
    let keyless_keys = admin
        .get(
            &format!(
                "/admin/api/accounts/{account}/applications/{}/keys.json",
                field(&keyless, "id")
            ),
            &[],
        )
        .await;
    assert_eq!(
        keyless_keys["keys"],
        json!([]),
        "the application has no keys"
    );
    let keyless_id = field(&keyless, "application_id");
    let answer = gateway
        .until_status(200, OPEN_HOST, &format!("/open?app_id={keyless_id}"), &[])
        .await;
    assert_eq!(answer.body["path"], "/open");
    assert_eq!(
        gateway
            .get(OPEN_HOST, "/open?app_id=unknown-app", &[])
            .await
            .status,
        403
    );

    let problems = platform.shutdown().await;
    assert!(problems.is_empty(), "unclean shutdown: {problems:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn referrer_filtering() {
    const HOST: &str = "referrer-staging.example.test";
    let platform = Platform::start(options()).await;
    let admin = platform.admin();
    let gateway = GatewayClient::new(platform.url("gateway", ""));

    // A user_key API that requires referrer filtering, with the 3scale Referrer policy in its chain.
    let sid = create_service(
        &admin,
        "referrer",
        &[
            ("backend_version", "1"),
            ("referrer_filters_required", "true"),
        ],
    )
    .await;
    update_proxy(
        &admin,
        sid,
        &[
            ("api_backend", &platform.echo.url("")),
            ("sandbox_endpoint", &format!("https://{HOST}:443")),
            ("endpoint", "https://referrer.example.test:443"),
        ],
    )
    .await;
    set_policies(
        &admin,
        sid,
        json!([
            {"name": "3scale_referrer", "version": "builtin", "configuration": {}, "enabled": true},
            {"name": "apicast", "version": "builtin", "configuration": {}, "enabled": true},
        ]),
    )
    .await;
    let plan = create_plan(&admin, sid, "referrers").await;
    let account = signup(&admin, "referrer-developer").await;
    let filtered = create_app(&admin, account, plan, &[("name", "filtered")]).await;
    let filters_path = format!(
        "/admin/api/accounts/{account}/applications/{}/referrer_filters.json",
        field(&filtered, "id")
    );
    admin
        .post(&filters_path, &[("referrer_filter", "*.example.com")])
        .await;
    let filters = admin.get(&filters_path, &[]).await;
    assert_eq!(
        filters["referrer_filters"][0]["referrer_filter"]["value"], "*.example.com",
        "filter stored: {filters}"
    );
    let unfiltered = create_app(&admin, account, plan, &[("name", "unfiltered")]).await;
    let filtered_path = format!("/data?user_key={}", field(&filtered, "user_key"));
    let unfiltered_path = format!("/data?user_key={}", field(&unfiltered, "user_key"));

    // The application without filters was created last: once it passes, everything has reached backend and the
    // gateway has the chain with the referrer policy.
    let answer = gateway.until_status(200, HOST, &unfiltered_path, &[]).await;
    assert_eq!(answer.body["path"], "/data");
    let answer = gateway
        .until_status(200, HOST, &filtered_path, &[("Referer", "api.example.com")])
        .await;
    assert_eq!(answer.body["path"], "/data");
    assert_eq!(
        gateway
            .get(HOST, &filtered_path, &[("Referer", "evil.com")])
            .await
            .status,
        403
    );
    assert_eq!(gateway.get(HOST, &filtered_path, &[]).await.status, 403);
    // The filter is a wildcard on subdomains, not a suffix match on anything.
    assert_eq!(
        gateway
            .get(
                HOST,
                &filtered_path,
                &[("Referer", "api.example.com.evil.com")]
            )
            .await
            .status,
        403
    );
    assert_eq!(
        gateway
            .get(HOST, &unfiltered_path, &[("Referer", "evil.com")])
            .await
            .status,
        200
    );

    let problems = platform.shutdown().await;
    assert!(problems.is_empty(), "unclean shutdown: {problems:?}");
}
