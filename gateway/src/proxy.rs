//! The request path, in APIcast's order: service by host (or path) → credentials → OIDC → mapping rules →
//! authorization (cache, then backend) → upstream, with the service's error answers at each step.

use crate::apicast::{AuthMode, CachingMode, ErrorAnswer, Service};
use crate::backend::{AuthCache, AuthCall, BackendAnswer, Lookup};
use crate::credentials::{self, Credentials, RequestParts};
use crate::mapping::{self, Args, Usage};
use crate::policies;
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::TryStreamExt;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Bodies larger than this are streamed and never searched for credentials (nginx spills them to disk too).
const MAX_INSPECTED_BODY: u64 = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let response = process(&state, req).await;
    metrics::histogram!("total_response_time_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("apicast_status", "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}

fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

fn error_answer(answer: &ErrorAnswer) -> Response {
    let mut response = Response::new(Body::from(answer.body.clone()));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::FORBIDDEN);
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// nginx's `$host`: the request line's host, else `Host`, lower-cased without port.
fn request_host(req: &Request) -> String {
    let raw = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let host = if raw.starts_with('[') {
        raw.split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or("").to_owned()
    };
    host.to_ascii_lowercase()
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .contains("application/x-www-form-urlencoded")
        })
}

/// Requests whose header section is larger than this get 431 (nginx's `large_client_header_buffers 4 8k`).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Requests with more header fields than this get 431.
pub const MAX_HEADER_COUNT: usize = 100;

fn headers_too_large(headers: &HeaderMap) -> bool {
    if headers.len() > MAX_HEADER_COUNT {
        return true;
    }
    let mut total = 0;
    for (name, value) in headers {
        total += name.as_str().len() + value.len() + 4;
        if total > MAX_HEADER_BYTES {
            return true;
        }
    }
    false
}

async fn process(state: &AppState, req: Request) -> Response {
    if req.uri().path() == "/_threescale/healthz" {
        return empty(StatusCode::OK);
    }
    if headers_too_large(req.headers()) {
        return empty(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let host = request_host(&req);
    let Some(config) = state.store.get() else {
        return empty(StatusCode::NOT_FOUND);
    };
    let method = req.method().clone();
    let path = mapping::normalize_path(req.uri().path());
    let query_args = Args::from_query(req.uri().query());
    let service = {
        let mut candidates = config.services_for_host(&host);
        let found = if state.config.path_routing {
            let routed = config.services_for_host(&host).find(|s| {
                !mapping::usage_for(&s.rules, method.as_str(), &path, &query_args)
                    .0
                    .is_empty()
            });
            match routed {
                Some(s) => Some(s),
                None if state.config.path_routing_only => None,
                None => candidates.next(),
            }
        } else {
            candidates.next()
        };
        match found {
            Some(s) => s.clone(),
            None => {
                tracing::warn!(host = %host, "could not find service for host");
                return empty(StatusCode::NOT_FOUND);
            }
        }
    };
    drop(config);

    let (mut parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if service.policies.steps.is_empty() {
        let target = RequestTarget {
            path: None,
            query: parts.uri.query().map(str::to_owned),
            upstream: None,
        };
        return serve(
            state, &service, parts, body, &path, query_args, None, target,
        )
        .await;
    }

    // The chain changes the request: run every policy's rewrite phase in order, then the rest, then let the
    // response-side policies see whatever answer came out (error answers included, as in APIcast).
    let steps = &service.policies.steps;
    let client_headers = parts.headers.clone();
    let vars = policies::Vars {
        uri: &path,
        host: &host,
        remote_addr: peer,
        method: method.as_str(),
        service_id: &service.id,
        service_name: &service.system_name,
    };
    let mut request = policies::RequestState {
        method: method.clone(),
        path: path.clone(),
        path_rewritten: false,
        query: parts.uri.query().map(str::to_owned),
        headers: std::mem::take(&mut parts.headers),
        upstream: None,
    };
    let mut response = match policies::rewrite(steps, &mut request, &vars) {
        policies::Rewritten::Preflight => empty(StatusCode::NO_CONTENT),
        policies::Rewritten::Continue(snapshot) => {
            parts.headers = request.headers;
            let target = RequestTarget {
                path: request.path_rewritten.then_some(request.path.clone()),
                query: request.query,
                upstream: request.upstream,
            };
            match snapshot {
                Some(seen) => {
                    let args = Args::from_query(seen.query.as_deref());
                    let view = AuthView {
                        path: seen.path,
                        headers: seen.headers,
                    };
                    serve(state, &service, parts, body, "", args, Some(view), target).await
                }
                None => {
                    serve(
                        state, &service, parts, body, &path, query_args, None, target,
                    )
                    .await
                }
            }
        }
    };
    policies::filter_response(steps, &client_headers, response.headers_mut(), &vars);
    response
}

/// Where the request goes upstream, after the chain's policies.
struct RequestTarget {
    /// A path rewritten by `url_rewriting` (else the client's raw path is joined with `api_backend`'s).
    path: Option<String>,
    query: Option<String>,
    /// Chosen by the `upstream` policy.
    upstream: Option<url::Url>,
}

/// The request as the `apicast` policy saw it, when policies before it changed it.
struct AuthView {
    path: String,
    headers: HeaderMap,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    state: &AppState,
    service: &Arc<Service>,
    parts: http::request::Parts,
    body: Body,
    path: &str,
    query_args: Args,
    view: Option<AuthView>,
    target: RequestTarget,
) -> Response {
    // Small urlencoded bodies of POST/PUT/PATCH may carry credentials and arguments.
    let wants_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
        && is_form(&parts.headers)
        && service.policies.apicast
        && parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len <= MAX_INSPECTED_BODY);
    let (body, body_args) = if wants_body {
        match http_body_util::Limited::new(body, MAX_INSPECTED_BODY as usize)
            .collect()
            .await
        {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let mut args = Args::default();
                args.extend_from(&bytes);
                (Body::from(bytes), Some(args))
            }
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        }
    } else {
        (body, None)
    };

    let mut report: Option<(Vec<(&'static str, String)>, Usage)> = None;
    let mut debug: Option<DebugInfo> = None;
    if service.policies.apicast {
        let (path, headers) = match &view {
            Some(v) => (v.path.as_str(), &v.headers),
            None => (path, &parts.headers),
        };
        let wants_debug = debug_requested(service, headers);
        match authorize(
            state,
            service,
            &parts.method,
            headers,
            path,
            &query_args,
            body_args.as_ref(),
            wants_debug,
        )
        .await
        {
            Ok(outcome) => {
                report = outcome.report;
                debug = outcome.debug;
            }
            Err(response) => return response,
        }
    }

    let upstream_base = match (&target.upstream, service.api_backend.as_ref()) {
        (Some(chosen), _) => chosen,
        (None, Some(api_backend)) => api_backend,
        (None, None) => return empty(StatusCode::NOT_FOUND),
    };
    let url = upstream_url(
        upstream_base,
        target.path.as_deref().unwrap_or(parts.uri.path()),
        target.query.as_deref(),
    );
    let policy_host = target.upstream.is_some();
    let mut response = forward(state, service, upstream_base, policy_host, url, parts, body).await;
    if let Some((credentials, usage)) = report {
        state.reporter.enqueue(service, credentials, &usage);
    }
    if let Some(debug) = debug {
        debug.write(service, response.headers_mut());
    }
    response
}

/// `X-3scale-debug` equal to the service's `backend_authentication_value` asks for debug headers.
fn debug_requested(service: &Service, headers: &HeaderMap) -> bool {
    match (headers.get("x-3scale-debug"), &service.backend_auth) {
        (Some(given), Some((_, expected))) => given.as_bytes() == expected.as_bytes(),
        _ => false,
    }
}

/// What APIcast's debug headers show.
struct DebugInfo {
    matched: String,
    credentials: String,
    usage: String,
}

impl DebugInfo {
    fn write(&self, service: &Service, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        put("x-3scale-matched-rules", &self.matched);
        put("x-3scale-credentials", &self.credentials);
        put("x-3scale-usage", &self.usage);
        put("x-3scale-hostname", &hostname());
        put("x-3scale-service-id", &service.id);
        put("x-3scale-service-name", &service.system_name);
    }
}

/// The machine's host name (nginx's `$hostname`).
fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_default()
    })
    .clone()
}

/// What a successful authorization leaves to do after the response.
struct Outcome {
    /// A cache hit (or a request let through while backend is down) whose usage must still be reported.
    report: Option<(Vec<(&'static str, String)>, Usage)>,
    debug: Option<DebugInfo>,
}

/// Runs credentials → OIDC → mapping rules → authorization. `report` is set for a cache hit whose usage must be
/// reported after the response; it is empty when backend already counted this request.
#[allow(clippy::too_many_arguments)]
async fn authorize(
    state: &AppState,
    service: &Arc<Service>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query_args: &Args,
    body_args: Option<&Args>,
    wants_debug: bool,
) -> Result<Outcome, Response> {
    let request_parts = RequestParts {
        headers,
        query: query_args,
        body: body_args,
    };
    let credentials = match credentials::extract(service, &request_parts) {
        Some(c) => c,
        None => match &service.policies.default_credentials {
            Some(pairs) => default_credentials(pairs),
            None => {
                tracing::warn!(service_id = %service.id, "cannot get credentials");
                return Err(error_answer(&service.errors.auth_missing));
            }
        },
    };
    let (backend_credentials, cache_part) = if service.auth_mode == AuthMode::Oidc {
        let Credentials::Token(token) = &credentials else {
            return Err(error_answer(&service.errors.auth_failed));
        };
        let Some(oidc) = service.oidc.as_ref() else {
            return Err(error_answer(&service.errors.auth_failed));
        };
        match state
            .oidc
            .verify(
                &service.id,
                oidc.supplied.as_ref(),
                oidc.issuer_endpoint.as_deref(),
                &oidc.client_id_claim,
                token,
            )
            .await
        {
            Ok(client_id) => (vec![("app_id", client_id.to_string())], token.clone()),
            Err(e) => {
                tracing::info!(service_id = %service.id, reason = %e, "JWT rejected");
                return Err(error_answer(&service.errors.auth_failed));
            }
        }
    } else {
        let params = credentials
            .backend_params()
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        (params, credentials.cache_key_part())
    };

    let mut args = query_args.clone();
    if let Some(body) = body_args {
        // Body args override query args of the same name (last value wins).
        args.merge(body);
    }
    let (usage, matched) = mapping::usage_for(&service.rules, method.as_str(), path, &args);
    if usage.is_empty() {
        let mut response = error_answer(&service.errors.no_match);
        if wants_debug {
            response
                .headers_mut()
                .insert("x-3scale-matched-rules", HeaderValue::from_static(""));
        }
        return Err(response);
    }
    let debug = wants_debug.then(|| DebugInfo {
        matched: matched.join(", "),
        credentials: form_urlencoded::Serializer::new(String::new())
            .extend_pairs(backend_credentials.iter().map(|(k, v)| (*k, v.as_str())))
            .finish(),
        usage: usage.encoded(),
    });

    let mut extra = Vec::new();
    if service.policies.referrer {
        if let Some(referer) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
            extra.push(("referrer".to_owned(), referer.to_owned()));
        }
    }
    let mode = service
        .policies
        .caching
        .unwrap_or(state.config.default_caching);
    let key = AuthCache::key(service, &cache_part, &usage, &extra);
    let backend_took_pending = match state.cache.lookup(&key, mode) {
        Lookup::Hit => {
            return Ok(Outcome {
                report: Some((backend_credentials, usage)),
                debug,
            })
        }
        Lookup::Exhausted(answer) => return Err(rejection(service, &answer, mode)),
        Lookup::Miss => {
            state
                .reporter
                .flush_for(service, &backend_credentials)
                .await
        }
    };
    let call = AuthCall {
        service,
        credentials: backend_credentials.clone(),
        usage: &usage,
        extra: &extra,
        oauth: matches!(service.auth_mode, AuthMode::Oidc | AuthMode::OAuth),
    };
    let answer = if backend_took_pending {
        state.backend.authrep(&call).await
    } else {
        BackendAnswer::default()
    };
    let authorized = state.cache.handle(&key, mode, &answer);
    if authorized {
        // Backend down but the caching mode let the request through: its usage still has to be reported.
        return Ok(Outcome {
            report: answer.is_down().then_some((backend_credentials, usage)),
            debug,
        });
    }
    Err(rejection(service, &answer, mode))
}

fn default_credentials(pairs: &[(String, String)]) -> Credentials {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if pairs.iter().any(|(k, _)| k == "user_key") {
        Credentials::UserKey(get("user_key"))
    } else {
        Credentials::AppIdKey {
            app_id: get("app_id"),
            app_key: Some(get("app_key")),
        }
    }
}

/// Backend said no (or could not answer and the caching mode denies): APIcast's mapping to client answers.
fn rejection(service: &Service, answer: &BackendAnswer, _mode: CachingMode) -> Response {
    if answer.status == 409 && answer.rejection_reason.as_deref() == Some("limits_exceeded") {
        if answer.limit_max_value.as_deref() == Some("0") {
            return error_answer(&service.errors.auth_failed);
        }
        let mut response = error_answer(&service.errors.limits_exceeded);
        if let Some(reset) = answer
            .limit_reset
            .as_deref()
            .and_then(|r| HeaderValue::from_str(r).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, reset);
        }
        return response;
    }
    error_answer(&service.errors.auth_failed)
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The upstream URL: `api_backend`'s path joined with the request path; the request's query unless
/// `api_backend` has its own.
pub fn upstream_url(api_backend: &url::Url, request_path: &str, query: Option<&str>) -> url::Url {
    let mut url = api_backend.clone();
    let base = api_backend.path();
    let joined = if base.is_empty() || base == "/" {
        request_path.to_owned()
    } else if request_path == "/" || request_path.is_empty() {
        base.to_owned()
    } else {
        format!("{}{}", base.trim_end_matches('/'), request_path)
    };
    url.set_path(&joined);
    if api_backend.query().is_none() {
        url.set_query(query);
    }
    url
}

/// Sends the request to `url` and streams the answer back. `policy_host`: the `upstream` policy chose the
/// target, so `Host` is the target's even when the service has `hostname_rewrite`.
async fn forward(
    state: &AppState,
    service: &Service,
    api_backend: &url::Url,
    policy_host: bool,
    url: url::Url,
    parts: http::request::Parts,
    body: Body,
) -> Response {
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 3);
    for (name, value) in parts.headers.iter() {
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "x-3scale-debug" {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let host = match service.hostname_rewrite.as_ref().filter(|_| !policy_host) {
        Some(h) => h.clone(),
        None => match (api_backend.host_str(), api_backend.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        },
    };
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, v);
    }
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.insert("x-real-ip", v);
        }
    }
    if let Some(secret) = &service.secret_token {
        if let Ok(v) = HeaderValue::from_str(secret) {
            headers.insert("x-3scale-proxy-secret-token", v);
        }
    }
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    let mut request = state
        .upstream
        .request(parts.method.clone(), url)
        .headers(headers);
    if has_body {
        request = request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let started = Instant::now();
    let result = tokio::time::timeout(state.config.upstream_timeout, request.send()).await;
    metrics::histogram!("upstream_response_time_seconds").record(started.elapsed().as_secs_f64());
    let upstream = match result {
        Err(_) => {
            tracing::warn!(service_id = %service.id, "upstream timed out");
            metrics::counter!("upstream_status", "status" => "504").increment(1);
            return empty(StatusCode::GATEWAY_TIMEOUT);
        }
        Ok(Err(err)) => {
            tracing::warn!(service_id = %service.id, error = %err.without_url(), "upstream failed");
            metrics::counter!("upstream_status", "status" => "502").increment(1);
            return empty(StatusCode::BAD_GATEWAY);
        }
        Ok(Ok(r)) => r,
    };
    metrics::counter!("upstream_status", "status" => upstream.status().as_u16().to_string())
        .increment(1);
    let mut response = Response::builder().status(upstream.status());
    if let Some(h) = response.headers_mut() {
        for (name, value) in upstream.headers() {
            if HOP_BY_HOP.contains(&name.as_str()) {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
    }
    let stream = upstream.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| empty(StatusCode::BAD_GATEWAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths_join_like_apicast() {
        let base = url::Url::parse("http://up:8080/foo").unwrap();
        let u = |s: &str| {
            let uri = s.parse::<http::Uri>().unwrap();
            (uri.path().to_owned(), uri.query().map(str::to_owned))
        };
        let upstream_url = |base: &url::Url, (path, query): &(String, Option<String>)| {
            upstream_url(base, path, query.as_deref())
        };
        assert_eq!(
            upstream_url(&base, &u("/bar?a=1")).as_str(),
            "http://up:8080/foo/bar?a=1"
        );
        assert_eq!(upstream_url(&base, &u("/")).as_str(), "http://up:8080/foo");
        let root = url::Url::parse("http://up").unwrap();
        assert_eq!(
            upstream_url(&root, &u("/x/y?q")).as_str(),
            "http://up/x/y?q"
        );
        let with_query = url::Url::parse("http://up/p?fixed=1").unwrap();
        assert_eq!(
            upstream_url(&with_query, &u("/x?client=2")).as_str(),
            "http://up/p/x?fixed=1"
        );
    }
}
