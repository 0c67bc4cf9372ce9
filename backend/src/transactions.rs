//! The Service Management API: authorize, authrep (and their OAuth variants), report, in apisonator's check
//! order with its status codes, error codes and XML.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use std::sync::Arc;

use crate::config::{Application, Limit, Service};
use crate::counters::{CellKey, Op};
use crate::params::{self, Param, Parsed};
use crate::period::Period;
use crate::xml::{self, OauthApp, StatusDoc, UsageReport};
use crate::AppState;

pub const CONTENT_TYPE: &str = "application/vnd.3scale-v2.0+xml";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Authorize,
    Authrep,
    OauthAuthorize,
    OauthAuthrep,
}

impl Endpoint {
    fn is_oauth(self) -> bool {
        matches!(self, Endpoint::OauthAuthorize | Endpoint::OauthAuthrep)
    }

    fn reports(self) -> bool {
        matches!(self, Endpoint::Authrep | Endpoint::OauthAuthrep)
    }
}

/// A non-authorization failure, answered with an `<error>` document.
#[derive(Debug)]
pub struct TxError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `not_valid_data` and Rack parse errors keep their body even with `no_body`.
    pub keep_body: bool,
}

#[derive(Debug)]
pub enum Failure {
    Error(TxError),
    /// A status without a body (e.g. `usage` that is not a hash).
    Bare(StatusCode),
    Internal(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Internal(e)
    }
}

fn fail(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    Failure::Error(TxError {
        status,
        code,
        message: message.into(),
        keep_body: false,
    })
}

/// A failed validator: the 409 reason.
#[derive(Debug, Clone)]
struct Rejection {
    code: &'static str,
    message: String,
}

fn reject(code: &'static str, message: impl Into<String>) -> Option<Rejection> {
    Some(Rejection {
        code,
        message: message.into(),
    })
}

/// The `3scale-options` extensions.
#[derive(Default, Debug, Clone, Copy)]
pub struct Options {
    pub no_body: bool,
    pub rejection_reason_header: bool,
    pub limit_headers: bool,
    pub hierarchy: bool,
    pub flat_usage: bool,
    pub list_app_keys: bool,
}

impl Options {
    pub fn read(headers: &HeaderMap, params: &Parsed) -> Self {
        let ext = headers
            .get("3scale-options")
            .and_then(|v| params::parse(v.as_bytes()).ok())
            .unwrap_or_else(Parsed::empty);
        let on = |k: &str| matches!(ext.get(k).and_then(Param::as_str), Some("1") | Some("true"));
        let url_no_body =
            matches!(params.get("no_body"), Some(Param::Str(v)) if v != "0" && v != "false");
        Self {
            no_body: on("no_body") || url_no_body,
            rejection_reason_header: on("rejection_reason_header"),
            limit_headers: on("limit_headers"),
            hierarchy: on("hierarchy"),
            flat_usage: on("flat_usage"),
            list_app_keys: on("list_app_keys"),
        }
    }
}

fn base_headers(res: &mut Response) {
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("ETag, Link, 3scale-rejection-reason"),
    );
}

pub fn failure_response(f: Failure, no_body: bool) -> Response {
    match f {
        Failure::Error(e) => {
            let body = if no_body && !e.keep_body {
                String::new()
            } else {
                xml::error(e.code, &e.message)
            };
            let mut res = (e.status, body).into_response();
            base_headers(&mut res);
            res
        }
        Failure::Bare(status) => {
            let mut res = status.into_response();
            base_headers(&mut res);
            res
        }
        Failure::Internal(e) if platform::db::is_unavailable(&e) => {
            tracing::warn!(error = %e, "database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, platform::db::RETRY_AFTER_SECONDS)],
                "Service Unavailable\n",
            )
                .into_response()
        }
        Failure::Internal(e) => {
            tracing::error!(error = %e, "database error");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n").into_response()
        }
    }
}

/// 404 with an empty body for unknown routes.
pub async fn not_found() -> Response {
    let mut res = StatusCode::NOT_FOUND.into_response();
    base_headers(&mut res);
    res
}

fn parse_query(uri: &Uri) -> Result<Parsed, Failure> {
    params::parse(uri.query().unwrap_or("").as_bytes()).map_err(|e| {
        Failure::Error(TxError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: e.to_string(),
            keep_body: true,
        })
    })
}

/// `strip`ped, empty → none (apisonator's `normalize_non_empty_keys!`).
fn norm(p: &Parsed, key: &str) -> Option<String> {
    p.get(key)
        .and_then(Param::as_str)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn utf8_check(p: &Parsed) -> Result<(), Failure> {
    if p.valid_utf8 {
        Ok(())
    } else {
        Err(Failure::Error(TxError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "not_valid_data",
            message: "all data must be valid UTF8".into(),
            keep_body: true,
        }))
    }
}

/// The tenant credential: `provider_key`, or a registered `service_token` + `service_id` pair.
async fn provider_key(state: &AppState, p: &Parsed) -> Result<String, Failure> {
    if let Some(pk) = norm(p, "provider_key") {
        return Ok(pk);
    }
    let token = p
        .get("service_token")
        .and_then(Param::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let sid = norm(p, "service_id");
    if let (Some(token), Some(sid)) = (token, sid.as_deref()) {
        if state
            .config
            .token_exists(state.db.pool(), token, sid)
            .await?
        {
            if let Some(svc) = state.config.service(state.db.pool(), sid).await? {
                return Ok(svc.provider_key.clone());
            }
        }
    }
    match (token, sid) {
        (None, _) => Err(fail(
            StatusCode::FORBIDDEN,
            "provider_key_or_service_token_required",
            "Provider key or service token are required",
        )),
        (Some(_), None) => Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "service_id_missing",
            "Service ID is missing",
        )),
        (Some(token), Some(sid)) => Err(fail(
            StatusCode::FORBIDDEN,
            "service_token_invalid",
            format!("service token \"{token}\" or service id \"{sid}\" is invalid"),
        )),
    }
}

/// `Service.load_with_provider_key!`.
async fn resolve_service(
    state: &AppState,
    provider_key: &str,
    service_id: Option<String>,
) -> Result<Arc<Service>, Failure> {
    let pool = state.db.pool();
    let id = match service_id {
        Some(id) => id,
        None => state
            .config
            .default_service(pool, provider_key)
            .await?
            .ok_or_else(|| {
                fail(
                    StatusCode::FORBIDDEN,
                    "provider_key_invalid_or_service_missing",
                    format!("provider key \"{provider_key}\" invalid and/or service ID missing"),
                )
            })?,
    };
    let service = state.config.service(pool, &id).await?.ok_or_else(|| {
        fail(
            StatusCode::FORBIDDEN,
            "service_id_invalid",
            format!("service id \"{id}\" is invalid"),
        )
    })?;
    if service.provider_key != provider_key {
        if state
            .config
            .default_service(pool, provider_key)
            .await?
            .is_none()
        {
            return Err(fail(
                StatusCode::FORBIDDEN,
                "provider_key_invalid",
                format!("provider key \"{provider_key}\" is invalid"),
            ));
        }
        return Err(fail(
            StatusCode::FORBIDDEN,
            "service_id_invalid",
            format!("service id \"{id}\" is invalid"),
        ));
    }
    Ok(service)
}

fn app_not_found(id: Option<&str>) -> Failure {
    match id {
        Some(id) => fail(
            StatusCode::NOT_FOUND,
            "application_not_found",
            format!("application with id=\"{id}\" was not found"),
        ),
        None => fail(
            StatusCode::NOT_FOUND,
            "application_not_found",
            "application id is missing",
        ),
    }
}

/// Usage values: `\A\s*#?\d+\s*\Z`.
fn parse_value(raw: &str) -> Option<Op> {
    let t = raw.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\u{b}');
    let (set, digits) = match t.strip_prefix('#') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    Some(if set { Op::Set(n) } else { Op::Add(n) })
}

/// Maps `usage[name]=value` to metric ids, then propagates through the hierarchy (unless `flat`).
pub fn expand_usage(
    service: &Service,
    usage: &[(String, Param)],
    flat: bool,
) -> Result<Vec<(Arc<str>, Op)>, Failure> {
    let mut expanded: Vec<(Arc<str>, Op)> = Vec::new();
    for (name, value) in usage {
        let metric = service.metric_by_name(name).ok_or_else(|| {
            fail(
                StatusCode::NOT_FOUND,
                "metric_invalid",
                format!("metric \"{name}\" is invalid"),
            )
        })?;
        let op = match value {
            Param::Null => None,
            Param::Str(s) if s.is_empty() => None,
            Param::Str(s) => Some(parse_value(s).ok_or_else(|| {
                fail(
                    StatusCode::FORBIDDEN,
                    "usage_value_invalid",
                    format!("usage value \"{s}\" for metric \"{name}\" is invalid"),
                )
            })?),
            _ => {
                return Err(fail(
                    StatusCode::FORBIDDEN,
                    "usage_value_invalid",
                    format!("usage value \"\" for metric \"{name}\" is invalid"),
                ))
            }
        }
        .ok_or_else(|| {
            fail(
                StatusCode::FORBIDDEN,
                "usage_value_invalid",
                format!("usage value for metric \"{name}\" can not be empty"),
            )
        })?;
        let targets: Vec<Arc<str>> = if flat {
            vec![metric.id.clone()]
        } else {
            service
                .ancestry(&metric.id)
                .iter()
                .map(|m| m.id.clone())
                .collect()
        };
        for id in targets {
            match expanded.iter_mut().find(|(m, _)| *m == id) {
                Some((_, existing)) => *existing = existing.then(op),
                None => expanded.push((id, op)),
            }
        }
    }
    Ok(expanded)
}

/// Anchored glob match where `*` is any sequence and everything else is literal.
pub fn referrer_matches(filter: &str, referrer: &str) -> bool {
    let parts: Vec<&str> = filter.split('*').collect();
    if parts.len() == 1 {
        return filter == referrer;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !referrer.starts_with(first) || referrer.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &referrer[first.len()..];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn check_referrer(
    service: &Service,
    app: &Application,
    referrer: Option<&str>,
) -> Option<Rejection> {
    if !service.referrer_filters_required || app.referrer_filters.is_empty() {
        return None;
    }
    match referrer {
        Some("*") => None,
        None | Some("") => reject("referrer_not_allowed", "referrer is missing"),
        Some(r) if app.referrer_filters.iter().any(|f| referrer_matches(f, r)) => None,
        Some(r) => reject(
            "referrer_not_allowed",
            format!("referrer \"{r}\" is not allowed"),
        ),
    }
}

fn check_key(service: &Service, app: &Application, app_key: Option<&str>) -> Option<Rejection> {
    if service.is_v1()
        || app.keys.is_empty()
        || app_key.is_some_and(|k| app.keys.iter().any(|a| a == k))
    {
        return None;
    }
    match app_key {
        None | Some("") => reject("application_key_invalid", "application key is missing"),
        Some(k) => reject(
            "application_key_invalid",
            format!("application key \"{k}\" is invalid"),
        ),
    }
}

fn check_oauth_key(app: &Application, app_key: Option<&str>) -> Option<Rejection> {
    match app_key {
        None => None,
        Some("") => reject("application_key_invalid", "application key is missing"),
        Some(k) if app.keys.iter().any(|a| a == k) => None,
        Some(k) => reject(
            "application_key_invalid",
            format!("application key \"{k}\" is invalid"),
        ),
    }
}

// The request is taken whole (not `HeaderMap` + `Uri`, which axum would clone) as this is the hot path.
pub async fn authorize(State(s): State<AppState>, req: Request) -> Response {
    handle(s, Endpoint::Authorize, req).await
}
pub async fn authrep(State(s): State<AppState>, req: Request) -> Response {
    handle(s, Endpoint::Authrep, req).await
}
pub async fn oauth_authorize(State(s): State<AppState>, req: Request) -> Response {
    handle(s, Endpoint::OauthAuthorize, req).await
}
pub async fn oauth_authrep(State(s): State<AppState>, req: Request) -> Response {
    handle(s, Endpoint::OauthAuthrep, req).await
}

async fn handle(state: AppState, endpoint: Endpoint, req: Request) -> Response {
    let (headers, uri) = (req.headers(), req.uri());
    let parsed = match parse_query(uri) {
        Ok(p) => p,
        Err(f) => return failure_response(f, false),
    };
    let opts = Options::read(headers, &parsed);
    match auth(&state, endpoint, &parsed, opts).await {
        Ok(res) => res,
        Err(f) => failure_response(f, opts.no_body),
    }
}

async fn auth(
    state: &AppState,
    endpoint: Endpoint,
    p: &Parsed,
    opts: Options,
) -> Result<Response, Failure> {
    let pool = state.db.pool();
    utf8_check(p)?;
    let provider_key = provider_key(state, p).await?;
    if p.get("user_id").is_some_and(|v| !matches!(v, Param::Null)) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "end_users_no_longer_supported",
            "End-users are no longer supported, do not specify the user_id parameter",
        ));
    }
    let usage: Option<&[(String, Param)]> = match p.get("usage") {
        None | Some(Param::Null) => None,
        Some(Param::Map(entries)) => Some(entries.as_slice()),
        Some(_) => return Err(Failure::Bare(StatusCode::FORBIDDEN)),
    };
    let service = resolve_service(state, &provider_key, norm(p, "service_id")).await?;

    // Credentials.
    let app_id = norm(p, "app_id");
    let user_key = norm(p, "user_key");
    let app_key: Option<String> = p
        .get("app_key")
        .and_then(Param::as_str)
        .map(|s| s.trim().to_owned());
    if endpoint.is_oauth() && app_id.is_none() {
        return Err(app_not_found(None));
    }
    if app_id.is_some() && user_key.is_some() {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "authentication_error",
            "either app_id or user_key is allowed, not both",
        ));
    }
    let app_id = if service.is_v1() && !endpoint.is_oauth() {
        let Some(uk) = user_key else {
            return Err(fail(
                StatusCode::FORBIDDEN,
                "user_key_invalid",
                "user key is missing",
            ));
        };
        state
            .config
            .app_id_for_user_key(pool, &service.id, &uk)
            .await?
            .ok_or_else(|| {
                fail(
                    StatusCode::FORBIDDEN,
                    "user_key_invalid",
                    format!("user key \"{uk}\" is invalid"),
                )
            })?
    } else {
        app_id.ok_or_else(|| app_not_found(None))?
    };
    let app = state
        .config
        .application(pool, &service.id, &app_id)
        .await?
        .ok_or_else(|| app_not_found(Some(&app_id)))?;

    let usage = usage.filter(|u| !u.is_empty());
    // With no_body, unknown metrics fail before the validators.
    let mut expanded = None;
    if opts.no_body {
        if let Some(u) = usage {
            expanded = Some(expand_usage(&service, u, opts.flat_usage)?);
        }
    }

    // Validators, first failure wins.
    let referrer = p.get("referrer").and_then(Param::as_str);
    let redirect_url = p
        .get("redirect_url")
        .and_then(Param::as_str)
        .filter(|s| !s.is_empty());
    let redirect_uri = p
        .get("redirect_uri")
        .and_then(Param::as_str)
        .filter(|s| !s.is_empty());
    let mut rejection = None;
    if endpoint.is_oauth() {
        if !service.is_oauth() {
            rejection = reject("oauth_not_enabled", "oauth is not enabled");
        }
        rejection = rejection.or_else(|| check_oauth_key(&app, app_key.as_deref()));
        if rejection.is_none() {
            let (given, code, word) = match (redirect_url, redirect_uri) {
                (Some(u), _) => (Some(u), "redirect_url_invalid", "redirect_url"),
                (None, Some(u)) => (Some(u), "redirect_uri_invalid", "redirect_uri"),
                _ => (None, "", ""),
            };
            if let Some(u) = given {
                if app.redirect_url.as_deref() != Some(u) {
                    rejection = reject(code, format!("{word} \"{u}\" is invalid"));
                }
            }
        }
    } else if service.is_oauth() {
        rejection = check_oauth_key(&app, app_key.as_deref());
    } else {
        rejection = check_key(&service, &app, app_key.as_deref());
    }
    rejection = rejection
        .or_else(|| check_referrer(&service, &app, referrer))
        .or_else(|| {
            (app.state != "active").then(|| Rejection {
                code: "application_not_active",
                message: "application is not active".into(),
            })
        })
        .or_else(|| {
            (!service.active).then(|| Rejection {
                code: "service_not_active",
                message: "service is not active".into(),
            })
        });

    if rejection.is_none() && expanded.is_none() {
        if let Some(u) = usage {
            expanded = Some(expand_usage(&service, u, opts.flat_usage)?);
        }
    }

    // Limits: an atomic check-and-count under the application's lock.
    let now = Utc::now();
    let now_ts = now.timestamp();
    let limits = state
        .config
        .limits(pool, &service, app.plan_id.as_deref().unwrap_or(""))
        .await?;
    let keys: Vec<CellKey> = limits
        .iter()
        .map(|l| CellKey::new(&l.metric_id, l.period, now_ts))
        .collect();
    let op_for = |metric_id: &str| -> Option<Op> {
        expanded
            .as_ref()?
            .iter()
            .find(|(m, _)| **m == *metric_id)
            .map(|(_, op)| *op)
    };
    let counting = endpoint.reports() && rejection.is_none();
    let writes: Vec<(CellKey, Op)> = match &expanded {
        Some(ops) if counting => counted_cells(ops, &limits, now_ts),
        _ => Vec::new(),
    };
    let (stored, rejection) = state
        .counters
        .with(pool, &service.id, &app.id, &keys, |counters| {
            let stored: Vec<i64> = keys.iter().map(|k| counters.value(k)).collect();
            let mut rejection = rejection;
            if rejection.is_none() {
                let over = limits
                    .iter()
                    .zip(&stored)
                    .any(|(l, current)| match &expanded {
                        Some(_) => {
                            op_for(&l.metric_id).is_some_and(|op| op.apply(*current) > l.max)
                        }
                        None => *current > l.max,
                    });
                if over {
                    rejection = reject("limits_exceeded", "usage limits are exceeded");
                }
            }
            if rejection.is_none() {
                for (key, op) in &writes {
                    counters.apply(key.clone(), *op);
                }
            }
            (stored, rejection)
        })
        .await?;
    let authorized = rejection.is_none();
    let counted = authorized && endpoint.reports();

    let shown: Vec<i64> = limits
        .iter()
        .zip(&stored)
        .map(|(l, current)| match (counted, op_for(&l.metric_id)) {
            (true, Some(op)) => op.apply(*current),
            _ => *current,
        })
        .collect();

    let mut res = if opts.no_body {
        Response::new(Body::empty())
    } else {
        let reports: Vec<UsageReport> = limits
            .iter()
            .zip(stored.iter().zip(&shown))
            .filter_map(|(l, (stored, shown))| {
                Some(UsageReport {
                    metric: &service.metric(&l.metric_id)?.name,
                    period: l.period,
                    max: l.max,
                    current: *shown,
                    exceeded: *stored > l.max,
                    at: now_ts,
                })
            })
            .collect();
        let hierarchy = opts.hierarchy.then(|| {
            limits
                .iter()
                .filter_map(|l| {
                    let m = service.metric(&l.metric_id)?;
                    Some((
                        m.name.clone(),
                        service
                            .children(&m.id)
                            .iter()
                            .map(|c| c.name.clone())
                            .collect(),
                    ))
                })
                .collect()
        });
        let doc = StatusDoc {
            authorized,
            reason: rejection.as_ref().map(|r| r.message.clone()),
            application: endpoint.is_oauth().then(|| OauthApp {
                id: app.id.clone(),
                key: app.keys.first().cloned().unwrap_or_default(),
                url_tag: if redirect_url.is_none() && redirect_uri.is_some() {
                    "redirect_uri"
                } else {
                    "redirect_url"
                },
                url: app.redirect_url.clone().unwrap_or_default(),
            }),
            plan: app.plan_name.as_deref().unwrap_or_default(),
            reports,
            app_keys: opts
                .list_app_keys
                .then(|| (app.id.clone(), service.id.clone(), app.keys.clone())),
            hierarchy,
        };
        Response::new(Body::from(doc.render()))
    };
    *res.status_mut() = if authorized {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    base_headers(&mut res);
    res.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'"),
    );
    if let Some(r) = &rejection {
        if opts.rejection_reason_header {
            res.headers_mut()
                .insert("3scale-rejection-reason", HeaderValue::from_static(r.code));
        }
    }
    let limited = rejection
        .as_ref()
        .is_none_or(|r| r.code == "limits_exceeded");
    if opts.limit_headers && limited {
        let relevant: Vec<&str> = match &expanded {
            Some(ops) if !opts.flat_usage => ops.iter().map(|(m, _)| &**m).collect(),
            Some(ops) => ops
                .iter()
                .flat_map(|(m, _)| service.ancestry(m).into_iter().map(|a| &*a.id))
                .collect(),
            None => limits.iter().map(|l| &*l.metric_id).collect(),
        };
        // (same_calls, period, max) of the most constrained limit.
        let mut best: Option<(i64, Period, i64)> = None;
        for (l, current) in limits.iter().zip(&shown) {
            if !relevant.contains(&&*l.metric_id) {
                continue;
            }
            let remaining = (l.max - current).max(0);
            let usage = match op_for(&l.metric_id) {
                Some(Op::Add(n)) | Some(Op::Set(n)) => n,
                None => 0,
            };
            let same = if remaining == 0 {
                0
            } else if usage == 0 {
                -1
            } else {
                remaining / usage
            };
            if same < 0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((b, p, _)) => same < b || (same == b && l.period < p),
            };
            if better {
                best = Some((same, l.period, l.max));
            }
        }
        let h = res.headers_mut();
        match best {
            Some((same, period, max)) => {
                let reset = if period == Period::Eternity {
                    -1
                } else {
                    let ms = period.end_ts(now_ts) * 1000 - now.timestamp_millis();
                    (ms + 999) / 1000
                };
                h.insert("3scale-limit-remaining", HeaderValue::from(same));
                h.insert("3scale-limit-reset", HeaderValue::from(reset));
                h.insert("3scale-limit-max-value", HeaderValue::from(max));
            }
            None => {
                h.insert("3scale-limit-remaining", HeaderValue::from(-1));
                h.insert("3scale-limit-reset", HeaderValue::from(-1));
            }
        }
    }
    Ok(res)
}

/// The counters a usage changes: for each metric, eternity (total usage) and each period its plan limits.
/// Periods without a limit are not kept: nothing reads them, and they would multiply the rows every flush
/// writes (a limit added later starts counting when it is added).
fn counted_cells(ops: &[(Arc<str>, Op)], limits: &[Limit], ts: i64) -> Vec<(CellKey, Op)> {
    let mut cells = Vec::with_capacity(ops.len() * 3);
    for (metric_id, op) in ops {
        if *op == Op::Add(0) {
            continue;
        }
        cells.push((CellKey::new(metric_id, Period::Eternity, ts), *op));
        for l in limits {
            if l.metric_id == *metric_id && l.period != Period::Eternity {
                cells.push((CellKey::new(metric_id, l.period, ts), *op));
            }
        }
    }
    cells
}

// ---------------------------------------------------------------- report

pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let raw = String::from_utf8_lossy(ct.as_bytes()).into_owned();
        let media = raw
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !media.is_empty()
            && media != "application/x-www-form-urlencoded"
            && media != "multipart/form-data"
        {
            return failure_response(
                fail(
                    StatusCode::BAD_REQUEST,
                    "content_type_invalid",
                    format!("invalid Content-Type: {raw}"),
                ),
                false,
            );
        }
    }
    let query = uri.query().unwrap_or("").as_bytes();
    let parsed = match params::parse_parts(&[query, &body]) {
        Ok(p) => p,
        Err(e) => {
            return failure_response(
                Failure::Error(TxError {
                    status: StatusCode::BAD_REQUEST,
                    code: "bad_request",
                    message: e.to_string(),
                    keep_body: true,
                }),
                false,
            )
        }
    };
    let opts = Options::read(&headers, &parsed);
    match accept_report(&state, &parsed, opts).await {
        Ok(()) => {
            let mut res = StatusCode::ACCEPTED.into_response();
            base_headers(&mut res);
            res
        }
        Err(f) => failure_response(f, opts.no_body),
    }
}

async fn accept_report(state: &AppState, p: &Parsed, opts: Options) -> Result<(), Failure> {
    let provider_key = provider_key(state, p).await?;
    utf8_check(p)?;
    let transactions = match p.get("transactions") {
        None | Some(Param::Null) => None,
        Some(Param::Str(s)) if s.is_empty() => None,
        Some(Param::Map(m)) if m.is_empty() => None,
        Some(Param::List(l)) if l.is_empty() => None,
        Some(t) => Some(t),
    }
    .ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            "transactions_is_blank",
            "transactions parameter is blank",
        )
    })?;
    let Param::Map(transactions) = transactions else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "transactions_format_invalid",
            "transactions format is invalid",
        ));
    };
    if transactions.iter().any(|(_, t)| matches!(t, Param::Null)) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "transactions_has_nil_transaction",
            "transactions has a nil transaction",
        ));
    }
    if transactions.iter().any(|(_, t)| t.get("user_id").is_some()) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "end_users_no_longer_supported",
            "End-users are no longer supported, do not specify the user_id parameter",
        ));
    }
    let service = resolve_service(state, &provider_key, norm(p, "service_id")).await?;
    // Transactions whose usage is all zeros change nothing.
    let batch: Vec<Param> = transactions
        .iter()
        .map(|(_, t)| t.clone())
        .filter(|t| match t.get("usage") {
            Some(Param::Map(u)) => !u.iter().all(|(_, v)| v.as_str() == Some("0")),
            _ => true,
        })
        .collect();
    if batch.is_empty() {
        return Ok(());
    }
    let job_state = state.clone();
    let flat = opts.flat_usage;
    state.jobs.spawn(async move {
        let now = Utc::now();
        if let Err(e) = apply_report(&job_state, &service, &batch, flat, now).await {
            match e {
                Failure::Error(err) => {
                    let stored = sqlx::query(
                        "INSERT INTO integration_errors (service_id, code, message) VALUES ($1, $2, $3)",
                    )
                    .bind(&service.id)
                    .bind(err.code)
                    .bind(&err.message)
                    .execute(job_state.db.pool())
                    .await;
                    if let Err(e) = stored {
                        tracing::error!(error = %e, "cannot store an integration error");
                    }
                }
                Failure::Internal(e) => tracing::error!(error = %e, "applying a report failed"),
                Failure::Bare(_) => {}
            }
        }
    });
    Ok(())
}

/// Parses a report timestamp: UNIX seconds or a date string (UTC unless an offset is given); blank → now.
pub fn parse_timestamp(raw: Option<&str>, now: DateTime<Utc>) -> DateTime<Utc> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return now;
    };
    if let Ok(secs) = raw.parse::<i64>() {
        return DateTime::from_timestamp(secs, 0).unwrap_or(now);
    }
    let raw = raw.strip_suffix(" UTC").unwrap_or(raw);
    for fmt in [
        "%Y-%m-%d %H:%M:%S %z",
        "%Y-%m-%d %H:%M:%S%z",
        "%Y-%m-%dT%H:%M:%S%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(raw, fmt) {
            return t.with_timezone(&Utc);
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(raw, fmt) {
            return t.and_utc();
        }
    }
    now
}

/// (app id, counter changes) of one validated transaction.
type Planned = (String, Vec<(CellKey, Op)>);

/// The worker side of a report: validates the whole batch, then applies it; any error drops the batch.
async fn apply_report(
    state: &AppState,
    service: &Service,
    batch: &[Param],
    flat: bool,
    now: DateTime<Utc>,
) -> Result<(), Failure> {
    let pool = state.db.pool();
    let mut plan: Vec<Planned> = Vec::new();
    for t in batch {
        let app_id = t
            .get("app_id")
            .and_then(Param::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let user_key = t
            .get("user_key")
            .and_then(Param::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let app_id = match (app_id, user_key) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    StatusCode::FORBIDDEN,
                    "authentication_error",
                    "either app_id or user_key is allowed, not both",
                ))
            }
            (None, None) => return Err(app_not_found(None)),
            (Some(id), None) => id.to_owned(),
            (None, Some(uk)) => state
                .config
                .app_id_for_user_key(pool, &service.id, uk)
                .await?
                .ok_or_else(|| {
                    fail(
                        StatusCode::FORBIDDEN,
                        "user_key_invalid",
                        format!("user key \"{uk}\" is invalid"),
                    )
                })?,
        };
        let Some(app) = state.config.application(pool, &service.id, &app_id).await? else {
            return Err(app_not_found(Some(&app_id)));
        };
        let limits = state
            .config
            .limits(pool, service, app.plan_id.as_deref().unwrap_or(""))
            .await?;
        let ops = match t.get("usage") {
            Some(Param::Map(u)) => expand_usage(service, u, flat)?,
            _ => Vec::new(),
        };
        let at = parse_timestamp(t.get("timestamp").and_then(Param::as_str), now);
        if at < now - chrono::Duration::seconds(86_400) {
            return Err(fail(
                StatusCode::CONFLICT,
                "transaction_timestamp_too_old",
                "reporting transactions older than 86400 seconds is not allowed",
            ));
        }
        if at > now + chrono::Duration::seconds(3_600) {
            return Err(fail(
                StatusCode::CONFLICT,
                "transaction_timestamp_too_new",
                "reporting transactions more than 3600 seconds in the future is not allowed",
            ));
        }
        let cells = counted_cells(&ops, &limits, at.timestamp());
        plan.push((app_id, cells));
    }
    for (app_id, cells) in plan {
        state
            .counters
            .with(pool, &service.id, &app_id, &[], |counters| {
                for (key, op) in cells {
                    counters.apply(key, op);
                }
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrer_filters() {
        assert!(referrer_matches("*.example.org", "foo.bar.example.org"));
        assert!(!referrer_matches("*.example.org", "example.org"));
        assert!(!referrer_matches("fo.example.org", "forexample.org"));
        assert!(referrer_matches("*://example.com", "http://example.com"));
        assert!(!referrer_matches("*://example.com", "example.com"));
        assert!(!referrer_matches("example.com", "http://example.com"));
        assert!(!referrer_matches("example.com", "example.com:80"));
        assert!(referrer_matches("8.8.8.*", "8.8.8.8:443"));
        assert!(!referrer_matches("1.2.3.4", "1.2.3.4\n"));
        assert!(referrer_matches("a*b*c", "abc"));
        assert!(!referrer_matches("a*a", "a"));
    }

    #[test]
    fn usage_values() {
        assert_eq!(parse_value(" 3 "), Some(Op::Add(3)));
        assert_eq!(parse_value("#5"), Some(Op::Set(5)));
        assert_eq!(parse_value("3\n"), Some(Op::Add(3)));
        for bad in ["##3", "#", "-#55", "#.0", "-1", "", "1.5", "x"] {
            assert_eq!(parse_value(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        let now = Utc::now();
        let t = parse_timestamp(Some("2009-01-01 14:23:08"), now);
        assert_eq!(t.to_rfc3339(), "2009-01-01T14:23:08+00:00");
        let t = parse_timestamp(Some("2009-01-01 14:23:08 +0200"), now);
        assert_eq!(t.to_rfc3339(), "2009-01-01T12:23:08+00:00");
        assert_eq!(parse_timestamp(Some("junk"), now), now);
        assert_eq!(
            parse_timestamp(Some("1230819788"), now).timestamp(),
            1230819788
        );
    }
}
