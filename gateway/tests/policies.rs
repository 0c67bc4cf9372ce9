//! Black-box tests of the chain policies (`headers`, `cors`, `upstream`, `url_rewriting`, `default_credentials`)
//! and of debug headers, over real sockets with the recording stand-in backend and echo upstream.

use gateway::apicast::compile;
use gateway::Config;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

mod support;
use support::*;

async fn body(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    let values: Vec<_> = r
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

async fn with_chain(chain: Value, extra: Value) -> (Stand, SocketAddr, SocketAddr) {
    let (stand, backend, upstream) = stand_ins().await;
    let mut proxy = json!({ "policy_chain": chain });
    if let Value::Object(map) = extra {
        for (k, v) in map {
            proxy[k] = v;
        }
    }
    let (_state, gw) = gateway(
        Config::default(),
        json!({"services": [service(backend, upstream, proxy)]}),
    )
    .await;
    (stand, gw, upstream)
}

#[tokio::test]
async fn headers_policy_changes_requests_and_responses_in_chain_order() {
    let (stand, gw, _) = with_chain(
        json!([
            {"name": "headers", "configuration": {"request": [
                {"op": "set", "header": "X-Key", "value": "good-from-policy"},
                {"op": "set", "header": "X-Replaced", "value": "new"},
                {"op": "set", "header": "X-Emptied", "value": ""},
                {"op": "push", "header": "X-Pushed", "value": "b"},
                {"op": "push", "header": "X-Created", "value": "c"},
                {"op": "add", "header": "X-Added", "value": "d"},
                {"op": "add", "header": "X-Not-There", "value": "never"},
                {"op": "delete", "header": "X-Deleted"},
                {"op": "set", "header": "X-Liquid", "value_type": "liquid",
                 "value": "{{ service.id }} {{ http_method }} {{ uri }}{{ nope }} {{ host }}"}
            ]}},
            {"name": "apicast.policy.apicast"},
            {"name": "headers", "configuration": {"response": [
                {"op": "push", "header": "X-Upstream", "value": "also"},
                {"op": "set", "header": "X-Resp", "value": "r"},
                {"op": "add", "header": "X-Resp-Missing", "value": "never"}
            ]}}
        ]),
        json!({"credentials_location": "headers", "auth_user_key": "x-key"}),
    )
    .await;
    let r = client()
        .get(format!("http://{gw}/hits"))
        .header("host", "api.test")
        .header("x-replaced", "old")
        .header("x-emptied", "gone")
        .header("x-pushed", "a")
        .header("x-added", "c")
        .header("x-deleted", "bye")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the key set before apicast authenticates");
    assert_eq!(header(&r, "x-upstream").as_deref(), Some("yes, also"));
    assert_eq!(header(&r, "x-resp").as_deref(), Some("r"));
    assert_eq!(header(&r, "x-resp-missing"), None);
    let seen = body(r).await["headers"].clone();
    assert_eq!(seen["x-key"], "good-from-policy");
    assert_eq!(seen["x-replaced"], "new");
    assert!(seen.get("x-emptied").is_none());
    assert_eq!(seen["x-pushed"], "a, b");
    assert_eq!(seen["x-created"], "c");
    assert_eq!(seen["x-added"], "c, d");
    assert!(seen.get("x-not-there").is_none());
    assert!(seen.get("x-deleted").is_none());
    assert_eq!(seen["x-liquid"], "42 GET /hits api.test");
    let calls = stand.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["user_key"], "good-from-policy");

    // A header set only after apicast does not count as credentials.
    let (stand, gw, _) = with_chain(
        json!([
            {"name": "apicast"},
            {"name": "headers", "configuration": {"request": [{"op": "set", "header": "X-Key", "value": "good-late"}]}}
        ]),
        json!({"credentials_location": "headers", "auth_user_key": "x-key"}),
    )
    .await;
    let r = gw_get(gw, "/hits").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "Authentication parameters missing");
    assert!(stand.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cors_answers_preflights_and_decorates_answers() {
    let (stand, gw, _) = with_chain(
        json!([
            {"name": "cors", "configuration": {
                "allow_origin": "https://.*\\.example\\.com",
                "allow_methods": ["GET", "POST"],
                "allow_credentials": true,
                "max_age": 100
            }},
            {"name": "apicast"}
        ]),
        json!({}),
    )
    .await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, format!("http://{gw}/hits"))
        .header("host", "api.test")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-custom")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(&preflight, "access-control-allow-methods").as_deref(),
        Some("GET, POST")
    );
    assert_eq!(
        header(&preflight, "access-control-allow-headers").as_deref(),
        Some("x-custom"),
        "echoed when not configured"
    );
    assert_eq!(
        header(&preflight, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&preflight, "access-control-max-age").as_deref(),
        Some("100")
    );
    assert!(
        stand.calls.lock().unwrap().is_empty(),
        "a preflight is not authorized"
    );
    assert_eq!(stand.upstream_hits.load(Ordering::SeqCst), 0);

    let get = |origin: &'static str, path: &'static str| async move {
        client()
            .get(format!("http://{gw}{path}"))
            .header("host", "api.test")
            .header("origin", origin)
            .send()
            .await
            .unwrap()
    };
    let r = get("https://app.example.com", "/hits?user_key=good-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    let r = get("https://app.example.com", "/hits").await;
    assert_eq!(r.status(), 401, "error answers carry CORS headers too");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    let r = get("https://evil.test", "/hits?user_key=good-1").await;
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://.*\\.example\\.com"),
        "an origin that does not match is not echoed"
    );
    // Without Origin there are no CORS headers, and a plain OPTIONS goes through authorization.
    let r = gw_get(gw, "/hits?user_key=good-1").await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("http://{gw}/hits"))
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn upstream_policy_picks_the_target_by_path() {
    let (stand, backend, upstream) = stand_ins().await;
    let mut svc = service(
        backend,
        upstream,
        json!({
            "api_backend": null,
            "hostname_rewrite": "ignored.test",
            "policy_chain": [
                {"name": "upstream", "configuration": {"rules": [
                    {"regex": "^/hits/\\d+", "url": format!("http://{upstream}/alt")}
                ]}},
                {"name": "apicast"}
            ]
        }),
    );
    svc["id"] = json!(42);
    let (_state, gw) = gateway(Config::default(), json!({"services": [svc]})).await;
    let r = gw_get(gw, "/hits/7?user_key=good-1&q=1").await;
    assert_eq!(r.status(), 200);
    let seen = body(r).await;
    assert_eq!(seen["uri"], "/alt/hits/7?user_key=good-1&q=1");
    assert_eq!(seen["headers"]["host"], upstream.to_string());
    assert_eq!(seen["headers"]["x-3scale-proxy-secret-token"], "s3cret");
    // No rule matches and the service has no api_backend: 404 after authorization, as APIcast.
    let r = gw_get(gw, "/hits?user_key=good-1").await;
    assert_eq!(r.status(), 404);
    assert_eq!(stand.calls.lock().unwrap().len(), 2);
    assert_eq!(stand.upstream_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn url_rewriting_before_apicast_changes_what_mapping_rules_see() {
    let (stand, gw, _) = with_chain(
        json!([
            {"name": "url_rewriting", "configuration": {"commands": [
                {"op": "sub", "regex": "^/v1/", "replace": "/"},
                {"op": "gsub", "regex": "ITEM-(\\d+)", "replace": "$1", "options": "i"}
            ]}},
            {"name": "apicast"},
            {"name": "url_rewriting", "configuration": {
                "commands": [{"op": "sub", "regex": "^/hits", "replace": "/items", "methods": ["GET"]}],
                "query_args_commands": [
                    {"op": "delete", "arg": "user_key"},
                    {"op": "push", "arg": "via", "value": "gw"},
                    {"op": "add", "arg": "absent", "value": "never"},
                    {"op": "set", "arg": "q", "value": "{{ service.id }}", "value_type": "liquid"}
                ]
            }}
        ]),
        json!({}),
    )
    .await;
    let r = gw_get(gw, "/v1/hits/item-7?user_key=good-1&q=x").await;
    assert_eq!(r.status(), 200);
    let seen = body(r).await;
    assert_eq!(seen["uri"], "/base/items/7?via=gw&q=42");
    let calls = stand.calls.lock().unwrap().clone();
    assert_eq!(
        calls[0]["usage[hits]"], "3",
        "`/hits` and `/hits/{{id}}$` matched the rewritten path"
    );
    assert_eq!(
        calls[0]["user_key"], "good-1",
        "the key was deleted only after apicast"
    );

    // Rewriting after apicast: mapping rules see the client's path.
    let (_stand, gw, _) = with_chain(
        json!([
            {"name": "apicast"},
            {"name": "url_rewriting", "configuration": {"commands": [{"op": "sub", "regex": "^/v1/", "replace": "/"}]}}
        ]),
        json!({}),
    )
    .await;
    let r = gw_get(gw, "/v1/hits?user_key=good-1").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "No Mapping Rule matched");
}

#[tokio::test]
async fn default_credentials_are_used_only_when_the_request_has_none() {
    let (stand, gw, _) = with_chain(
        json!([
            {"name": "default_credentials", "configuration": {"auth_type": "user_key", "user_key": "good-anon"}},
            {"name": "apicast"}
        ]),
        json!({}),
    )
    .await;
    assert_eq!(gw_get(gw, "/hits").await.status(), 200);
    assert_eq!(gw_get(gw, "/hits?user_key=good-own").await.status(), 200);
    let keys: Vec<String> = stand
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c["user_key"].clone())
        .collect();
    assert_eq!(keys, vec!["good-anon", "good-own"]);
}

#[tokio::test]
async fn debug_headers_need_the_service_token() {
    let (_stand, gw, _) = with_chain(json!([{"name": "apicast"}]), json!({})).await;
    let send = |debug: &'static str, path: &'static str| async move {
        client()
            .get(format!("http://{gw}{path}"))
            .header("host", "api.test")
            .header("x-3scale-debug", debug)
            .send()
            .await
            .unwrap()
    };
    let r = send("tok", "/hits/5?user_key=good-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-3scale-matched-rules").as_deref(),
        Some("/hits, /hits/{id}$")
    );
    assert_eq!(
        header(&r, "x-3scale-credentials").as_deref(),
        Some("user_key=good-1")
    );
    assert_eq!(
        header(&r, "x-3scale-usage").as_deref(),
        Some("usage%5Bhits%5D=3")
    );
    assert_eq!(header(&r, "x-3scale-service-id").as_deref(), Some("42"));
    assert!(header(&r, "x-3scale-hostname").is_some());
    let seen = body(r).await;
    assert!(
        seen["headers"].get("x-3scale-debug").is_none(),
        "never forwarded upstream"
    );
    let r = send("wrong", "/hits?user_key=good-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-3scale-usage"), None);
}

#[tokio::test]
async fn policy_problems_are_reported_at_load_time() {
    let err = |chain: Value| {
        compile(
            json!({"services": [{"id": 1, "proxy": {"policy_chain": chain}}]}),
            &Default::default(),
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        err(json!([{"name": "apicast"}, {"name": "made_up"}])),
        "services[0].proxy.policy_chain[1].name: unknown policy \"made_up\""
    );
    assert_eq!(
        err(json!([{"name": "headers", "configuration": {"request": [{"op": "set"}]}}])),
        "services[0].proxy.policy_chain[0].configuration.request[0].header: is required (policy headers)"
    );
    assert!(err(json!([{"name": "url_rewriting", "configuration": {"commands": [{"op": "sub", "regex": "(a"}]}}]))
        .starts_with("services[0].proxy.policy_chain[0].configuration.commands[0].regex"));
    // A disabled entry (system's `enabled: false`) is skipped, even when unknown.
    assert!(compile(
        json!({"services": [{"proxy": {"policy_chain": [{"name": "made_up", "enabled": false}, {"name": "apicast"}]}}]}),
        &Default::default(),
    )
    .is_ok());
}
