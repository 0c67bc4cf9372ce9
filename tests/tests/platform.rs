//! Boots the whole platform (Postgres, test IdP, echo upstream, five services) and checks each part answers,
//! then that every service stops cleanly on SIGTERM; and that the local stack's demo seed works.

use std::time::Duration;

use serde_json::Value;
use tests::{Platform, PlatformOptions, SERVICES};

#[tokio::test(flavor = "multi_thread")]
async fn whole_platform_boots_and_every_part_answers() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let http = reqwest::Client::new();

    for name in SERVICES {
        let service = platform.service(name);
        for path in ["/status/live", "/status/ready", "/metrics"] {
            let res = http
                .get(service.health_url(path))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name} {path}: {e}"));
            assert_eq!(res.status(), 200, "{name} {path}");
        }
        assert!(
            service.time_to_ready.is_some(),
            "{name} has a time to ready"
        );
    }

    // The echo upstream reports what it received.
    let echoed: Value = http
        .post(platform.echo.url("/v1/things?a=1&b=two"))
        .header("X-Probe", "42")
        .body("hello")
        .send()
        .await
        .expect("echo answers")
        .json()
        .await
        .expect("echo answers JSON");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/v1/things");
    assert_eq!(echoed["query"], "a=1&b=two");
    assert_eq!(echoed["args"]["b"], "two");
    assert_eq!(echoed["headers"]["x-probe"], "42");
    assert_eq!(echoed["body"], "hello");

    // A token from the IdP verifies against its JWKS and carries the claims gateways read.
    let idp = platform.idp();
    let token = idp.admin_token().await.expect("admin token");
    let claims = idp.verify(&token).await.expect("token verifies");
    assert_eq!(claims["azp"], idp.options.admin_client_id);
    assert_eq!(claims["appid"], idp.options.admin_client_id);
    assert_eq!(claims["typ"], "Bearer");
    assert_eq!(claims["iss"], idp.issuer);

    let problems = tokio::time::timeout(Duration::from_secs(15), platform.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(problems.is_empty(), "unclean shutdown: {problems:?}");
}

/// The local stack's demo: seeded through the admin API, it answers through the gateway and reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn the_stack_demo_answers_through_the_gateway() {
    let platform = Platform::start(PlatformOptions {
        idp: false,
        require_idp: false,
        ..PlatformOptions::default()
    })
    .await;
    let demo = tests::demo::seed(&platform, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", platform.logs()));
    let http = reqwest::Client::new();
    let res = http.get(&demo.gateway_url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let echoed: Value = res.json().await.unwrap();
    assert_eq!(echoed["path"], "/hello");
    assert_eq!(echoed["args"]["user_key"], demo.user_key);
    // A wrong key is refused by backend through the gateway.
    let wrong = demo.gateway_url.replace(&demo.user_key, "not-a-key");
    let res = http.get(&wrong).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(demo.curl().starts_with("curl "));
}
