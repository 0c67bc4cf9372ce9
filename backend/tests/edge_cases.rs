//! Edge cases of the Service Management API over real HTTP and a real database: calendar period boundaries,
//! bad input (apisonator's answers, never a 500), limit headers and `no_body`.

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;

use common::Harness;

impl Harness {
    /// Service 1 (provider key `pk`), metric 10 `hits`, application `a1` on plan `p1` with `limits` on hits.
    async fn fixtures(&self, limits: &[(&str, i64)]) {
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
            "/internal/services/1/applications/a1",
            json!({"application": {"state": "active", "plan_id": "p1", "plan_name": "Basic"}}),
        )
        .await;
        for (period, max) in limits {
            self.put(
                &format!("/internal/services/1/plans/p1/usagelimits/10/{period}"),
                json!({"usagelimit": {*period: max}}),
            )
            .await;
        }
    }

    async fn report(&self, body: impl Into<reqwest::Body>) -> (u16, String) {
        let res = self
            .client
            .post(format!("{}/transactions.xml", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn errors(&self) -> Value {
        let res = self
            .client
            .get(format!("{}/internal/services/1/errors/", self.base))
            .send()
            .await
            .unwrap();
        res.json().await.unwrap()
    }
}

const PERIODS: [&str; 7] = ["eternity", "year", "month", "week", "day", "hour", "minute"];

/// The start of the period instance containing `t`, computed with chrono's calendar (independently of backend).
fn start_of(period: &str, t: DateTime<Utc>) -> DateTime<Utc> {
    let date = t.date_naive();
    let midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap());
    match period {
        "minute" => t.with_second(0).unwrap().with_nanosecond(0).unwrap(),
        "hour" => midnight(date) + Span::hours(t.hour() as i64),
        "day" => midnight(date),
        "week" => midnight(date - Span::days(date.weekday().num_days_from_monday() as i64)),
        "month" => midnight(date.with_day(1).unwrap()),
        "year" => midnight(NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap()),
        _ => DateTime::UNIX_EPOCH,
    }
}

/// The start of the next instance.
fn next_start(period: &str, t: DateTime<Utc>) -> DateTime<Utc> {
    let start = start_of(period, t);
    match period {
        "minute" => start + Span::minutes(1),
        "hour" => start + Span::hours(1),
        "day" => start + Span::days(1),
        "week" => start + Span::weeks(1),
        "month" => start_of("month", start + Span::days(32)),
        "year" => start_of("year", start + Span::days(367)),
        _ => start,
    }
}

fn fmt(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S +0000").to_string()
}

fn current_value(body: &str, period: &str) -> i64 {
    let report = body
        .split(&format!(r#"period="{period}""#))
        .nth(1)
        .unwrap_or_else(|| panic!("no {period} report in {body}"));
    report
        .split("<current_value>")
        .nth(1)
        .and_then(|v| v.split('<').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no current value in {body}"))
}

#[tokio::test]
async fn every_period_is_calendar_aligned_weeks_start_on_monday_and_end_at_the_next_start() {
    let h = Harness::new("backend_periods", 10).await;
    let limits: Vec<(&str, i64)> = PERIODS.iter().map(|p| (*p, 1000)).collect();
    h.fixtures(&limits).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = Utc::now();
        let (status, _, body) = h
            .call(
                "/transactions/authorize.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=1",
                None,
            )
            .await;
        let after = Utc::now();
        assert_eq!(status, 200, "{body}");
        // A minute boundary between the two clocks makes the expectation ambiguous: ask again.
        if start_of("minute", before) != start_of("minute", after) {
            assert!(Instant::now() < deadline, "kept crossing minute boundaries");
            continue;
        }
        let mut expected = String::from(
            r#"<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Basic</plan><usage_reports>"#,
        );
        for period in PERIODS {
            expected.push_str(&format!(
                r#"<usage_report metric="hits" period="{period}">"#
            ));
            if period != "eternity" {
                expected.push_str(&format!(
                    "<period_start>{}</period_start><period_end>{}</period_end>",
                    fmt(start_of(period, before)),
                    fmt(next_start(period, before))
                ));
            }
            expected.push_str(
                "<max_value>1000</max_value><current_value>0</current_value></usage_report>",
            );
        }
        expected.push_str("</usage_reports></status>");
        assert_eq!(body, expected);
        let week_start = body
            .split(r#"period="week"><period_start>"#)
            .nth(1)
            .and_then(|r| r.get(..10))
            .unwrap();
        let monday = NaiveDate::parse_from_str(week_start, "%Y-%m-%d").unwrap();
        assert_eq!(monday.weekday(), Weekday::Mon);
        break;
    }
}

#[tokio::test]
async fn reported_usage_counts_in_the_period_instance_of_its_timestamp() {
    let h = Harness::new("backend_period_reports", 10).await;
    let limits: Vec<(&str, i64)> = PERIODS.iter().map(|p| (*p, 1_000_000)).collect();
    h.fixtures(&limits).await;
    let reported_at = Utc::now();
    let hour = start_of("hour", reported_at);
    let last_second_before = hour - Span::seconds(1);
    // 5 in the previous hour's last second, 3 at the exact start of this hour, 7 now.
    let (s, _) = h
        .report(format!(
            "provider_key=pk&transactions[0][app_id]=a1&transactions[0][usage][hits]=5&transactions[0][timestamp]={}\
             &transactions[1][app_id]=a1&transactions[1][usage][hits]=3&transactions[1][timestamp]={}\
             &transactions[2][app_id]=a1&transactions[2][usage][hits]=7",
            last_second_before.timestamp(),
            hour.format("%Y-%m-%d+%H:%M:%S"),
        ))
        .await;
    assert_eq!(s, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (_, _, body) = h
            .call(
                "/transactions/authorize.xml?provider_key=pk&app_id=a1",
                None,
            )
            .await;
        if current_value(&body, "eternity") == 15 {
            break body;
        }
        assert!(Instant::now() < deadline, "report not applied: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let checked_at = Utc::now();
    let mut checked = 0;
    for period in &PERIODS[1..] {
        // Only periods whose instance did not change while the test ran have one right answer.
        if start_of(period, reported_at) != start_of(period, checked_at) {
            continue;
        }
        let current = start_of(period, reported_at);
        let expected: i64 = [(last_second_before, 5), (hour, 3), (reported_at, 7)]
            .iter()
            .filter(|(t, _)| start_of(period, *t) == current)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(current_value(&body, period), expected, "{period}: {body}");
        checked += 1;
    }
    assert!(checked >= 3, "too few periods checked");
    // The hour instance starts exactly at its start (inclusive) and the previous one ended there (exclusive).
    if start_of("hour", checked_at) == hour {
        assert_eq!(current_value(&body, "hour"), 10, "{body}");
    }
}

fn error_xml(code: &str, msg: &str) -> String {
    format!(r#"<?xml version="1.0" encoding="UTF-8"?><error code="{code}">{msg}</error>"#)
}

#[tokio::test]
async fn bad_input_gets_apisonators_answers() {
    let h = Harness::new("backend_bad_input", 10).await;
    h.fixtures(&[("day", 100)]).await;
    let auth = "/transactions/authorize.xml?provider_key=pk&app_id=a1";
    let invalid_usage = |v: &str| {
        error_xml(
            "usage_value_invalid",
            &format!("usage value \"{v}\" for metric \"hits\" is invalid"),
        )
    };
    let cases: Vec<(String, u16, String)> = vec![
        (
            format!("{auth}&usage%5Bhits%5D=abc"),
            403,
            invalid_usage("abc"),
        ),
        (
            format!("{auth}&usage%5Bhits%5D=1.5"),
            403,
            invalid_usage("1.5"),
        ),
        (
            format!("{auth}&usage%5Bhits%5D=-%232"),
            403,
            invalid_usage("-#2"),
        ),
        (
            format!("{auth}&usage%5Bhits%5D=%23%233"),
            403,
            invalid_usage("##3"),
        ),
        (format!("{auth}&usage%5Bhits%5D=+2+"), 200, String::new()),
        (
            format!("{auth}&usage%5B%ff%5D=1"),
            422,
            error_xml("not_valid_data", "all data must be valid UTF8"),
        ),
        (
            format!("{auth}&referrer=%C0%AF"),
            422,
            error_xml("not_valid_data", "all data must be valid UTF8"),
        ),
        (
            format!("{auth}&usage%5Bhits%5D=%2"),
            400,
            error_xml(
                "bad_request",
                "Invalid query parameters: invalid %-encoding",
            ),
        ),
        (
            format!("{auth}&usage%5Bhits%5D=1&usage%5Bhits%5D%5Bx%5D=1"),
            400,
            error_xml(
                "bad_request",
                "request contains syntax errors, should not be repeated without modification",
            ),
        ),
        (
            format!("{auth}&user_key=k"),
            403,
            error_xml(
                "authentication_error",
                "either app_id or user_key is allowed, not both",
            ),
        ),
        (
            format!("{auth}&user_id=u"),
            400,
            error_xml(
                "end_users_no_longer_supported",
                "End-users are no longer supported, do not specify the user_id parameter",
            ),
        ),
    ];
    for (path, status, body) in &cases {
        let (s, _, b) = h.call(path, None).await;
        assert_eq!(s, *status, "{path}: {b}");
        if !body.is_empty() {
            assert_eq!(&b, body, "{path}");
        }
    }
    // no_body drops error bodies, except for invalid UTF-8 and Rack's parse errors.
    let (s, _, b) = h
        .call(&format!("{auth}&usage%5Bhits%5D=abc"), Some("no_body=1"))
        .await;
    assert_eq!((s, b.as_str()), (403, ""));
    let (s, _, b) = h
        .call(&format!("{auth}&app_key=%ff"), Some("no_body=1"))
        .await;
    assert_eq!(
        (s, b),
        (
            422,
            error_xml("not_valid_data", "all data must be valid UTF8")
        )
    );

    // 5,000 parameters in a report body.
    let many = format!("provider_key=pk&{}", vec!["x=1"; 5000].join("&"));
    let (s, b) = h.report(many).await;
    assert_eq!(s, 400);
    assert_eq!(
        b,
        error_xml(
            "bad_request",
            "total number of query parameters (5000) exceeds limit (4096)"
        )
    );
    // A report body over Rack's 4 MiB.
    let huge = format!(
        "provider_key=pk&transactions[0][app_id]=a1&pad={}",
        "x".repeat(4 * 1024 * 1024)
    );
    let size = huge.len();
    let (s, b) = h.report(huge).await;
    assert_eq!(s, 400);
    assert_eq!(
        b,
        error_xml(
            "bad_request",
            &format!("total query size ({size}) exceeds limit (4194304)")
        )
    );
    // A 4 MiB query string is refused by the HTTP layer before the application (as Puma's URI limit does).
    let url = format!("{}{auth}&pad={}", h.base, "x".repeat(4 * 1024 * 1024));
    match h.client.get(url).send().await {
        Ok(res) => assert!(res.status().is_client_error(), "{}", res.status()),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    // Report shape errors.
    let (s, b) = h
        .report("provider_key=pk&transactions[0][app_id]=a1&transactions[0][user_id]=u")
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            error_xml(
                "end_users_no_longer_supported",
                "End-users are no longer supported, do not specify the user_id parameter"
            )
        )
    );
    let (s, b) = h.report("provider_key=pk&transactions=1").await;
    assert_eq!(
        (s, b),
        (
            400,
            error_xml(
                "transactions_format_invalid",
                "transactions format is invalid"
            )
        )
    );
    let (s, b) = h.report("provider_key=pk").await;
    assert_eq!(
        (s, b),
        (
            400,
            error_xml("transactions_is_blank", "transactions parameter is blank")
        )
    );
    let (s, b) = h.report("provider_key=pk&transactions[0]").await;
    assert_eq!(
        (s, b),
        (
            400,
            error_xml(
                "transactions_has_nil_transaction",
                "transactions has a nil transaction"
            )
        )
    );
    let (s, b) = h
        .report("provider_key=pk&transactions[0][app_id]=a1&transactions[0][usage][hits]=%zz")
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            error_xml(
                "bad_request",
                "Invalid query parameters: invalid %-encoding"
            )
        )
    );
    let (s, b) = h
        .report("provider_key=pk&transactions[0][app_id]=%ff&transactions[0][usage][hits]=1")
        .await;
    assert_eq!(
        (s, b),
        (
            422,
            error_xml("not_valid_data", "all data must be valid UTF8")
        )
    );
    // Asynchronous errors: both credentials, a negative value; each drops its batch and is recorded.
    let (s, _) = h
        .report("provider_key=pk&transactions[0][app_id]=a1&transactions[0][user_key]=k&transactions[0][usage][hits]=1")
        .await;
    assert_eq!(s, 202);
    let (s, _) = h
        .report("provider_key=pk&transactions[0][app_id]=a1&transactions[0][usage][hits]=-1")
        .await;
    assert_eq!(s, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = h.errors().await;
        if v["count"] == 2 {
            let codes: Vec<&str> = v["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["code"].as_str().unwrap())
                .collect();
            assert!(codes.contains(&"authentication_error"), "{v}");
            assert!(codes.contains(&"usage_value_invalid"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing of the rejected batches was counted.
    let (_, _, body) = h.call(auth, None).await;
    assert_eq!(current_value(&body, "day"), 0, "{body}");
}

#[tokio::test]
async fn random_queries_never_get_a_500() {
    use rand::{Rng, SeedableRng};
    let h = Harness::new("backend_fuzz", 10).await;
    h.fixtures(&[("day", 100), ("minute", 50)]).await;
    let pieces = [
        "provider_key=pk",
        "provider_key=",
        "service_id=1",
        "service_id=2",
        "service_token=t",
        "app_id=a1",
        "app_id=",
        "app_key=k",
        "user_key=u",
        "user_id=1",
        "usage[hits]=1",
        "usage[hits]=#3",
        "usage[hits]=-1",
        "usage[hits]=",
        "usage[]=1",
        "usage=1",
        "usage[hits][x]=1",
        "usage[nope]=1",
        "usage[hits]=%ff",
        "%",
        "%zz",
        "[",
        "]",
        "=",
        "&&",
        "referrer=*",
        "referrer=%C3%A9",
        "redirect_url=x",
        "no_body=1",
        "a[b][c][d]=1",
        "transactions[0][app_id]=a1",
        "transactions[0][usage][hits]=2",
        "transactions[]=1",
        "log[code]=200",
        "transactions[0][timestamp]=junk",
        "transactions[0]",
        "transactions=x",
    ];
    let endpoints = [
        "/transactions/authorize.xml",
        "/transactions/authrep.xml",
        "/transactions/oauth_authorize.xml",
        "/transactions/oauth_authrep.xml",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ca1e);
    for round in 0..300 {
        let n = rng.gen_range(0..8);
        let query: Vec<&str> = (0..n)
            .map(|_| pieces[rng.gen_range(0..pieces.len())])
            .collect();
        let query = query.join("&");
        let options = [
            "",
            "no_body=1",
            "limit_headers=1&hierarchy=1&list_app_keys=1",
            "flat_usage=1&%ff",
        ][rng.gen_range(0..4)];
        let (status, body) = if round % 3 == 2 {
            let res = h
                .client
                .post(format!("{}/transactions.xml", h.base))
                .header("3scale-options", options)
                .body(query.clone())
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        } else {
            let path = format!("{}?{query}", endpoints[rng.gen_range(0..endpoints.len())]);
            let (s, _, b) = h.call(&path, Some(options)).await;
            (s, b)
        };
        assert!(
            matches!(status, 200 | 202 | 400 | 403 | 404 | 409 | 422),
            "{query} ({options}): {status} {body}"
        );
        assert!(
            body.is_empty() || body.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn limit_headers_and_no_body() {
    let h = Harness::new("backend_limit_headers", 10).await;
    h.fixtures(&[("day", 10), ("eternity", 1000)]).await;
    let authrep = "/transactions/authrep.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=3";
    let opts = "limit_headers=1&rejection_reason_header=1";
    let before = Utc::now();
    let (s, headers, body) = h.call(authrep, Some(opts)).await;
    let after = Utc::now();
    assert_eq!(s, 200, "{body}");
    // 10 - 3 = 7 left for calls of 3: 2 more; the day limit is the most constrained.
    assert_eq!(headers["3scale-limit-remaining"], "2");
    assert_eq!(headers["3scale-limit-max-value"], "10");
    let reset: i64 = headers["3scale-limit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let to_end = |t: DateTime<Utc>| (next_start("day", t) - t).num_milliseconds();
    assert!(
        reset * 1000 >= to_end(after) && (reset - 1) * 1000 <= to_end(before),
        "reset {reset}"
    );
    assert!(headers.get("3scale-rejection-reason").is_none());
    // Authorize predicts without counting: 7 left, calls of 3 → 2.
    let (s, headers, _) = h
        .call(
            "/transactions/authorize.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=3",
            Some(opts),
        )
        .await;
    assert_eq!(
        (s, headers["3scale-limit-remaining"].to_str().unwrap()),
        (200, "2")
    );
    // Without usage nothing is constrained by a call size: -1, -1 and no max value.
    let (s, headers, _) = h
        .call(
            "/transactions/authorize.xml?provider_key=pk&app_id=a1",
            Some(opts),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(headers["3scale-limit-remaining"], "-1");
    assert_eq!(headers["3scale-limit-reset"], "-1");
    assert!(headers.get("3scale-limit-max-value").is_none());
    // no_body (header or URL) keeps status and headers, drops the document.
    let (s, headers, body) = h.call(authrep, Some("limit_headers=1&no_body=1")).await;
    assert_eq!((s, body.as_str()), (200, ""));
    assert_eq!(headers["3scale-limit-remaining"], "1");
    assert_eq!(headers["content-type"], "application/vnd.3scale-v2.0+xml");
    let (s, headers, _) = h.call(authrep, Some(opts)).await;
    assert_eq!(
        (s, headers["3scale-limit-remaining"].to_str().unwrap()),
        (200, "0")
    );
    // 9 used: a call of 3 exceeds the day limit.
    let (s, headers, body) = h.call(&format!("{authrep}&no_body=true"), Some(opts)).await;
    assert_eq!((s, body.as_str()), (409, ""));
    assert_eq!(headers["3scale-rejection-reason"], "limits_exceeded");
    assert_eq!(headers["3scale-limit-remaining"], "0");
    assert_eq!(headers["3scale-limit-max-value"], "10");
    // `no_body=0` is off.
    let (s, _, body) = h.call(&format!("{authrep}&no_body=0"), None).await;
    assert_eq!(s, 409);
    assert!(
        body.contains("<reason>usage limits are exceeded</reason>"),
        "{body}"
    );
    assert!(
        body.contains(r#"<usage_report metric="hits" period="day"><period_start>"#),
        "{body}"
    );
    // Rejections other than limits carry no limit headers.
    h.put(
        "/internal/services/1/applications/a1",
        json!({"application": {"state": "suspended", "plan_id": "p1", "plan_name": "Basic"}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, headers, _) = h.call(authrep, Some(opts)).await;
        if headers
            .get("3scale-rejection-reason")
            .is_some_and(|r| r == "application_not_active")
        {
            assert_eq!(s, 409);
            assert!(headers.get("3scale-limit-remaining").is_none());
            break;
        }
        assert!(Instant::now() < deadline, "state change not visible");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn only_eternity_and_limited_periods_are_stored() {
    let h = Harness::new("backend_stored_periods", 10).await;
    h.fixtures(&[("day", 100)]).await;
    for _ in 0..2 {
        let (s, _, body) = h
            .call(
                "/transactions/authrep.xml?provider_key=pk&app_id=a1&usage%5Bhits%5D=1",
                None,
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let pool = h.db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT period, value FROM counters WHERE app_id = 'a1' AND metric_id = '10' ORDER BY period",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if rows.iter().all(|(_, v)| *v == 2) && rows.len() == 2 {
            break rows;
        }
        assert!(Instant::now() < deadline, "stored {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        rows,
        vec![("day".to_owned(), 2), ("eternity".to_owned(), 2)]
    );
}
