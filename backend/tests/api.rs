//! The Service Management API and the internal API over real HTTP against a real Postgres database.

use backend::period::{xml_time, Period};
use platform::testing::TestDb;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;

use common::{spawn, Harness};

impl Harness {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    /// Service 1 (provider pk, v2) with metrics hits and its child search, app a1 on plan p1 with limits.
    async fn fixtures(&self) {
        self.put(
            "/internal/services/1",
            json!({"service": {"id": "1", "provider_key": "pk", "backend_version": "2"}}),
        )
        .await;
        self.put(
            "/internal/services/1/metrics/10",
            json!({"metric": {"name": "hits"}}),
        )
        .await;
        self.put(
            "/internal/services/1/metrics/11",
            json!({"metric": {"name": "search", "parent_id": "10"}}),
        )
        .await;
        self.put(
            "/internal/services/1/applications/a1",
            json!({"application": {"state": "active", "plan_id": "p1", "plan_name": "Basic"}}),
        )
        .await;
        self.put(
            "/internal/services/1/plans/p1/usagelimits/10/day",
            json!({"usagelimit": {"day": 5}}),
        )
        .await;
    }
}

fn error_xml(code: &str, msg: &str) -> String {
    format!(r#"<?xml version="1.0" encoding="UTF-8"?><error code="{code}">{msg}</error>"#)
}

#[tokio::test]
async fn authorize_returns_the_exact_status_document() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    let now = chrono::Utc::now();
    let (status, headers, body) = h
        .call(
            "/transactions/authorize.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=1",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/vnd.3scale-v2.0+xml");
    let expected = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Basic</plan><usage_reports><usage_report metric="hits" period="day"><period_start>{}</period_start><period_end>{}</period_end><max_value>5</max_value><current_value>0</current_value></usage_report></usage_reports></status>"#,
        xml_time(Period::Day.start(now)),
        xml_time(Period::Day.end(now))
    );
    assert_eq!(body, expected);
}

#[tokio::test]
async fn error_codes_and_bodies() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    let cases: Vec<(&str, u16, String)> = vec![
        (
            "app_id=a1",
            403,
            error_xml(
                "provider_key_or_service_token_required",
                "Provider key or service token are required",
            ),
        ),
        (
            "provider_key=nope&app_id=a1",
            403,
            error_xml(
                "provider_key_invalid_or_service_missing",
                "provider key \"nope\" invalid and/or service ID missing",
            ),
        ),
        (
            "provider_key=nope&service_id=1&app_id=a1",
            403,
            error_xml("provider_key_invalid", "provider key \"nope\" is invalid"),
        ),
        (
            "provider_key=pk&service_id=9&app_id=a1",
            403,
            error_xml("service_id_invalid", "service id \"9\" is invalid"),
        ),
        (
            "service_token=t&app_id=a1",
            422,
            error_xml("service_id_missing", "Service ID is missing"),
        ),
        (
            "service_token=t&service_id=1&app_id=a1",
            403,
            error_xml(
                "service_token_invalid",
                "service token \"t\" or service id \"1\" is invalid",
            ),
        ),
        (
            "provider_key=pk&app_id=boo",
            404,
            error_xml(
                "application_not_found",
                "application with id=\"boo\" was not found",
            ),
        ),
        (
            "provider_key=pk",
            404,
            error_xml("application_not_found", "application id is missing"),
        ),
        (
            "provider_key=pk&app_id=a1&user_key=u",
            403,
            error_xml(
                "authentication_error",
                "either app_id or user_key is allowed, not both",
            ),
        ),
        (
            "provider_key=pk&app_id=a1&usage%5Bnope%5D=1",
            404,
            error_xml("metric_invalid", "metric \"nope\" is invalid"),
        ),
        (
            "provider_key=pk&app_id=a1&usage%5Bhits%5D=-1",
            403,
            error_xml(
                "usage_value_invalid",
                "usage value \"-1\" for metric \"hits\" is invalid",
            ),
        ),
        (
            "provider_key=pk&app_id=a1&usage%5Bhits%5D=",
            403,
            error_xml(
                "usage_value_invalid",
                "usage value for metric \"hits\" can not be empty",
            ),
        ),
        (
            "provider_key=pk&app_id=a1&user_id=x",
            400,
            error_xml(
                "end_users_no_longer_supported",
                "End-users are no longer supported, do not specify the user_id parameter",
            ),
        ),
        (
            "provider_key=pk&app_id=a1&usage[]=1&usage[hits]=1",
            400,
            error_xml(
                "bad_request",
                "request contains syntax errors, should not be repeated without modification",
            ),
        ),
        (
            "provider_key=pk&app_id=%zz",
            400,
            error_xml(
                "bad_request",
                "Invalid query parameters: invalid %-encoding",
            ),
        ),
        (
            "provider_key=pk&app_id=%ff",
            422,
            error_xml("not_valid_data", "all data must be valid UTF8"),
        ),
        ("provider_key=pk&app_id=a1&usage=1", 403, String::new()),
    ];
    for (query, status, body) in cases {
        let (s, _, b) = h
            .call(&format!("/transactions/authorize.xml?{query}"), None)
            .await;
        assert_eq!((s, b.as_str()), (status, body.as_str()), "{query}");
    }
    // A service token registered through the internal API works like the provider key.
    let (s, _) = h
        .post(
            "/internal/service_tokens/",
            json!({"service_tokens": {"tok": {"service_id": "1"}}}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _, _) = h
        .call(
            "/transactions/authorize.xml?service_token=tok&service_id=1&app_id=a1",
            None,
        )
        .await;
    assert_eq!(s, 200);
    // 5,000 parameters and unknown routes.
    let many = vec!["x=1"; 5000].join("&");
    let (s, _, b) = h
        .call(&format!("/transactions/authorize.xml?{many}"), None)
        .await;
    assert_eq!(s, 400);
    assert!(
        b.contains("total number of query parameters (4999) exceeds limit (4096)"),
        "{b}"
    );
    let (s, _, b) = h.call("/transactions/nope.xml", None).await;
    assert_eq!((s, b.as_str()), (404, ""));
    // no_body drops the error document but keeps the status.
    let (s, _, b) = h
        .call(
            "/transactions/authorize.xml?provider_key=pk&app_id=boo",
            Some("no_body=1"),
        )
        .await;
    assert_eq!((s, b.as_str()), (404, ""));
}

async fn reason(h: &Harness, query: &str) -> (u16, String, String) {
    let (s, headers, body) = h
        .call(
            &format!("/transactions/authorize.xml?{query}"),
            Some("rejection_reason_header=1"),
        )
        .await;
    let code = headers
        .get("3scale-rejection-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let reason = body
        .split("<reason>")
        .nth(1)
        .and_then(|r| r.split("</reason>").next())
        .unwrap_or("")
        .to_owned();
    (s, code, reason)
}

#[tokio::test]
async fn rejection_reasons_and_referrers() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    h.put(
        "/internal/services/1",
        json!({"service": {"id": "1", "provider_key": "pk", "referrer_filters_required": true}}),
    )
    .await;
    // Without filters the referrer is not checked.
    assert_eq!(reason(&h, "provider_key=pk&app_id=a1").await.0, 200);
    let (s, _) = h
        .post(
            "/internal/services/1/applications/a1/keys/",
            json!({"application_key": {"value": "k1"}}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = h
        .post(
            "/internal/services/1/applications/a1/referrer_filters",
            json!({"referrer_filter": "*.example.org"}),
        )
        .await;
    assert_eq!((s, &v["referrer_filter"]), (201, &json!("*.example.org")));

    let ok = |r: (u16, String, String)| assert_eq!(r, (200, String::new(), String::new()));
    let no = |r: (u16, String, String), code: &str, msg: &str| {
        assert_eq!(r, (409, code.to_owned(), msg.to_owned()))
    };
    no(
        reason(&h, "provider_key=pk&app_id=a1").await,
        "application_key_invalid",
        "application key is missing",
    );
    no(
        reason(&h, "provider_key=pk&app_id=a1&app_key=bad").await,
        "application_key_invalid",
        "application key \"bad\" is invalid",
    );
    no(
        reason(&h, "provider_key=pk&app_id=a1&app_key=k1").await,
        "referrer_not_allowed",
        "referrer is missing",
    );
    no(
        reason(
            &h,
            "provider_key=pk&app_id=a1&app_key=k1&referrer=example.org",
        )
        .await,
        "referrer_not_allowed",
        "referrer \"example.org\" is not allowed",
    );
    ok(reason(
        &h,
        "provider_key=pk&app_id=a1&app_key=k1&referrer=foo.example.org",
    )
    .await);
    ok(reason(&h, "provider_key=pk&app_id=a1&app_key=k1&referrer=*").await);
    // oauth_* on a non-oauth service.
    let (s, headers, _) = h
        .call(
            "/transactions/oauth_authorize.xml?provider_key=pk&app_id=a1",
            Some("rejection_reason_header=1"),
        )
        .await;
    assert_eq!(
        (s, headers["3scale-rejection-reason"].to_str().unwrap()),
        (409, "oauth_not_enabled")
    );
    // Application and service state.
    h.put(
        "/internal/services/1/applications/a1",
        json!({"application": {"state": "suspended"}}),
    )
    .await;
    no(
        reason(&h, "provider_key=pk&app_id=a1&app_key=k1&referrer=*").await,
        "application_not_active",
        "application is not active",
    );
    h.put(
        "/internal/services/1/applications/a1",
        json!({"application": {"state": "active"}}),
    )
    .await;
    h.put(
        "/internal/services/1",
        json!({"service": {"state": "suspended"}}),
    )
    .await;
    no(
        reason(&h, "provider_key=pk&app_id=a1&app_key=k1&referrer=*").await,
        "service_not_active",
        "service is not active",
    );
}

#[tokio::test]
async fn authrep_counts_through_the_hierarchy_until_the_limit() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    // search counts on hits too: 2 + 2 = 4 of 5.
    for _ in 0..2 {
        let (s, _, _) = h
            .call(
                "/transactions/authrep.xml?provider_key=pk&app_id=a1&usage%5Bsearch%5D=2",
                None,
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, headers, body) = h
        .call(
            "/transactions/authrep.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=2",
            Some("rejection_reason_header=1&limit_headers=1&hierarchy=1"),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(headers["3scale-rejection-reason"], "limits_exceeded");
    assert_eq!(headers["3scale-limit-remaining"], "0");
    assert_eq!(headers["3scale-limit-max-value"], "5");
    assert!(body.contains("<current_value>4</current_value>"), "{body}");
    assert!(
        body.contains(r#"<hierarchy><metric name="hits" children="search"/></hierarchy>"#),
        "{body}"
    );
    // Authorize predicts: 1 more fits, and is not counted.
    let (s, headers, body) = h
        .call(
            "/transactions/authorize.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=1",
            Some("limit_headers=1"),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(headers["3scale-limit-remaining"], "1");
    assert!(body.contains("<current_value>4</current_value>"));
    // Authrep shows the value after this call.
    let (s, _, body) = h
        .call(
            "/transactions/authrep.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=1",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(body.contains("<current_value>5</current_value>"), "{body}");
    // A set value replaces the counter.
    let (s, _, body) = h
        .call(
            "/transactions/authrep.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=%232",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(body.contains("<current_value>2</current_value>"), "{body}");
    // Utilization reads the same counters.
    let (s, v) = h
        .get_json("/internal/services/1/applications/a1/utilization/")
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["utilization"][0]["current_value"], 2);
}

#[tokio::test]
async fn a_thousand_parallel_authreps_authorize_exactly_the_limit() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    h.put(
        "/internal/services/1/plans/p1/usagelimits/10/day",
        json!({"usagelimit": {"day": 100}}),
    )
    .await;
    let url = format!(
        "{}/transactions/authrep.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=1",
        h.base
    );
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (c, u) = (h.client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            c.get(u).send().await.unwrap().status().as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 100);
    // The flusher writes the usage within a second.
    let pool = h.db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT value FROM counters WHERE app_id = 'a1' AND metric_id = '10' AND period = 'day'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if row == Some((100,)) {
            break;
        }
        assert!(Instant::now() < deadline, "stored {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reports_are_applied_asynchronously_and_errors_recorded() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    let res = h
        .client
        .post(format!("{}/transactions.xml", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("provider_key=pk&transactions[0][app_id]=a1&transactions[0][usage][hits]=3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = h
            .get_json("/internal/services/1/applications/a1/utilization")
            .await;
        if v["utilization"][0]["current_value"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = h
        .client
        .post(format!("{}/transactions.xml", h.base))
        .body("provider_key=pk&transactions[0][app_id]=ghost&transactions[0][usage][hits]=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = h.get_json("/internal/services/1/errors/").await;
        if v["count"] == 1 {
            assert_eq!(v["errors"][0]["code"], "application_not_found");
            assert_eq!(
                v["errors"][0]["message"],
                "application with id=\"ghost\" was not found"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = h
        .client
        .post(format!("{}/transactions.xml", h.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.text().await.unwrap(),
        error_xml(
            "content_type_invalid",
            "invalid Content-Type: application/json"
        )
    );
}

#[tokio::test]
async fn internal_api_paths_bodies_and_basic_auth() {
    let db = TestDb::new("backend_internal").await;
    let (base, _state) = spawn(&db.url, Some(("system", "s3cret")), 20).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{base}/internal/services/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .post(format!("{base}/internal/services/"))
        .basic_auth("system", Some("s3cret"))
        .json(&json!({"service": {"id": "7", "provider_key": "pk7"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], "created");
    assert_eq!(v["service"]["default_service"], true);
    let v: Value = client
        .put(format!(
            "{base}/internal/services/7/plans/p/usagelimits/3/day"
        ))
        .basic_auth("system", Some("s3cret"))
        .json(&json!({"usagelimit": {"month": 2}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"], "missing parameter 'day'");
    let res = client
        .get(format!("{base}/internal/services/7/applications/nope"))
        .basic_auth("system", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v,
        json!({"status": "not_found", "error": "application not found"})
    );
}

#[tokio::test]
async fn configuration_changes_reach_other_replicas_within_a_second() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    let (other, _state) = spawn(&h.db.url, None, 20).await;
    let url = format!("{other}/transactions/authorize.xml?provider_key=pk&app_id=a1");
    assert_eq!(h.client.get(&url).send().await.unwrap().status(), 200);
    h.put(
        "/internal/services/1/applications/a1",
        json!({"application": {"state": "suspended"}}),
    )
    .await;
    let changed = Instant::now();
    loop {
        if h.client.get(&url).send().await.unwrap().status() == 409 {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "replica still serves the old state"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = &h.state;
}

#[tokio::test]
async fn user_keys_and_oauth_credentials() {
    let h = Harness::new("backend_api", 20).await;
    h.fixtures().await;
    h.put(
        "/internal/services/2",
        json!({"service": {"id": "2", "provider_key": "pk", "backend_version": "1"}}),
    )
    .await;
    h.put(
        "/internal/services/2/applications/u1",
        json!({"application": {"state": "active", "plan_name": "Free"}}),
    )
    .await;
    h.put("/internal/services/2/applications/u1/key/uk1", json!({}))
        .await;
    let (s, _, body) = h
        .call(
            "/transactions/authrep.xml?provider_key=pk&service_id=2&user_key=uk1",
            None,
        )
        .await;
    assert_eq!(
        (s, body.as_str()),
        (
            200,
            r#"<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Free</plan></status>"#
        )
    );
    let (s, _, body) = h
        .call(
            "/transactions/authrep.xml?provider_key=pk&service_id=2&user_key=nope",
            None,
        )
        .await;
    assert_eq!(
        (s, body),
        (
            403,
            error_xml("user_key_invalid", "user key \"nope\" is invalid")
        )
    );
    let (s, _, body) = h
        .call(
            "/transactions/authrep.xml?provider_key=pk&service_id=2&app_id=u1",
            None,
        )
        .await;
    assert_eq!(
        (s, body),
        (403, error_xml("user_key_invalid", "user key is missing"))
    );

    h.put(
        "/internal/services/3",
        json!({"service": {"id": "3", "provider_key": "pk", "backend_version": "oauth"}}),
    )
    .await;
    h.put(
        "/internal/services/3/applications/c1",
        json!({"application": {"state": "active", "plan_name": "Gold", "redirect_url": "http://example.com/cb?a=1&b=2"}}),
    )
    .await;
    let (s, _, body) = h
        .call(
            "/transactions/oauth_authorize.xml?provider_key=pk&service_id=3&app_id=c1&redirect_uri=http%3A%2F%2Fexample.com%2Fcb%3Fa%3D1%26b%3D2",
            Some("list_app_keys=1"),
        )
        .await;
    assert_eq!(
        (s, body.as_str()),
        (
            200,
            r#"<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><application><id>c1</id><key></key><redirect_uri>http://example.com/cb?a=1&amp;b=2</redirect_uri></application><plan>Gold</plan><app_keys app="c1" svc="3"></app_keys></status>"#
        )
    );
    let (s, headers, _) = h
        .call(
            "/transactions/oauth_authorize.xml?provider_key=pk&service_id=3&app_id=c1&redirect_url=http://evil",
            Some("rejection_reason_header=1"),
        )
        .await;
    assert_eq!(
        (s, headers["3scale-rejection-reason"].to_str().unwrap()),
        (409, "redirect_url_invalid")
    );
    // An empty app_key fails on OAuth services even when the app has no keys.
    let (s, _, body) = h
        .call(
            "/transactions/authorize.xml?provider_key=pk&service_id=3&app_id=c1&app_key=",
            None,
        )
        .await;
    assert_eq!(s, 409);
    assert!(
        body.contains("<reason>application key is missing</reason>"),
        "{body}"
    );
}
