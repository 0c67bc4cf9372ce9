//! The request path, in APIcast's order: service by host (or path) → credentials → OIDC → mapping rules →
//! authorization (cache, then backend) → upstream, with the service's error answers at each step.

use crate::apicast::{AuthMode, CachingMode, ErrorAnswer, Service};
use crate::backend::{AuthCache, AuthCall, BackendAnswer, Lookup};
use crate::credentials::{self, Credentials, RequestParts};
use crate::mapping::{self, Args, Usage};
use crate::policies;
use crate::upstream::{Origin, Upstream, UpstreamError};
use crate::AppState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bodies larger than this are streamed and never searched for credentials (nginx spills them to disk too).
const MAX_INSPECTED_BODY: u64 = 64 * 1024;

/// What one proxy worker's requests share: the gateway's state and the worker's own upstream connections. Each
/// worker thread has its own pool, so a connection is only ever driven by the thread that uses it, and its own `Arc`,
/// cloned per request by that thread only (cloning the process-wide `AppState` instead would bounce its reference
/// count between the workers' cores on every request).
#[derive(Clone)]
pub struct Worker(Arc<WorkerParts>);

pub struct WorkerParts {
    app: AppState,
    upstream: Upstream,
}

impl Worker {
    pub fn new(app: AppState) -> Self {
        let upstream = Upstream::new(Duration::from_secs(10), app.config.upstream_timeout);
        Self(Arc::new(WorkerParts { app, upstream }))
    }
}

impl std::ops::Deref for Worker {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0.app
    }
}

/// One proxied request, from a worker's HTTP/1.1 connections; a panic becomes a 500.
pub async fn serve_request(worker: Worker, peer: Option<IpAddr>, req: Request) -> Response {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(handle(&worker, peer, req))
        .catch_unwind()
        .await
        .unwrap_or_else(platform::http::panic_response)
}

async fn handle(state: &Worker, peer: Option<IpAddr>, mut req: Request) -> Response {
    let started = Instant::now();
    let request_id = match req.headers().get(&platform::http::REQUEST_ID) {
        Some(given) => given.clone(),
        None => {
            let id = next_request_id();
            req.headers_mut()
                .insert(platform::http::REQUEST_ID, id.clone());
            id
        }
    };
    let mut response = process(state, peer, req).await;
    response
        .headers_mut()
        .insert(platform::http::REQUEST_ID, request_id);
    state
        .metrics
        .total_time
        .record(started.elapsed().as_secs_f64());
    state
        .metrics
        .status(response.status().as_u16())
        .increment(1);
    response
}

/// A request id for a request that came without one: UUID-shaped, unique per process start (a random prefix) and
/// cheap (a counter, no system call per request as `Uuid::new_v4` would make).
fn next_request_id() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let id = uuid::Uuid::from_u64_pair(prefix, COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text);
    // One allocation, shared by the copy sent upstream and the one in the answer (a copied value would be promoted
    // to a shared one, a second allocation, at its first clone).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The request's id for log lines (the proxy has no per-request span).
fn request_id(headers: &HeaderMap) -> &str {
    headers
        .get(&platform::http::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
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
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or_default();
    let host = match raw.strip_prefix('[') {
        // An IPv6 literal keeps its brackets and loses the port after them.
        Some(inner) => inner
            .split_once(']')
            .map_or(raw, |(address, _)| &raw[..address.len() + 2]),
        None => raw.split(':').next().unwrap_or(""),
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

async fn process(state: &Worker, peer: Option<IpAddr>, req: Request) -> Response {
    if req.uri().path() == "/_threescale/healthz" {
        return empty(StatusCode::OK);
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
                tracing::warn!(host = %host, request_id = request_id(req.headers()), "could not find service for host");
                return empty(StatusCode::NOT_FOUND);
            }
        }
    };
    drop(config);

    let (parts, body) = req.into_parts();
    if service.policies.steps.is_empty() {
        let target = RequestTarget {
            path: None,
            query: None,
            upstream: None,
            peer,
        };
        return serve(
            state, &service, parts, body, &path, query_args, None, target,
        )
        .await;
    }

    // Boxed: most services have no chain, and this path's extra state would otherwise widen every request's future.
    Box::pin(process_with_policies(
        state, &service, &host, &path, &method, peer, parts, body, query_args,
    ))
    .await
}

/// The request path of a service with a policy chain.
#[allow(clippy::too_many_arguments)]
async fn process_with_policies(
    state: &Worker,
    service: &Arc<Service>,
    host: &str,
    path: &str,
    method: &Method,
    peer: Option<IpAddr>,
    mut parts: http::request::Parts,
    body: Body,
    query_args: Args,
) -> Response {
    // The chain changes the request: run every policy's rewrite phase in order, then the rest, then let the
    // response-side policies see whatever answer came out (error answers included, as in APIcast).
    let steps = &service.policies.steps;
    let client_headers = parts.headers.clone();
    let vars = policies::Vars {
        uri: path,
        host,
        remote_addr: peer,
        method: method.as_str(),
        service_id: &service.id,
        service_name: &service.system_name,
    };
    let mut request = policies::RequestState {
        method: method.clone(),
        path: path.to_owned(),
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
                query: Some(request.query),
                upstream: request.upstream,
                peer,
            };
            match snapshot {
                Some(seen) => {
                    let args = Args::from_query(seen.query.as_deref());
                    let view = AuthView {
                        path: seen.path,
                        headers: seen.headers,
                    };
                    serve(state, service, parts, body, "", args, Some(view), target).await
                }
                None => serve(state, service, parts, body, path, query_args, None, target).await,
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
    /// A query set by the chain (`Some(None)`: removed); `None` keeps the client's.
    query: Option<Option<String>>,
    /// Chosen by the `upstream` policy.
    upstream: Option<url::Url>,
    /// The client's address, sent upstream as `X-Real-IP`.
    peer: Option<IpAddr>,
}

/// The request as the `apicast` policy saw it, when policies before it changed it.
struct AuthView {
    path: String,
    headers: HeaderMap,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    state: &Worker,
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
        match Box::pin(http_body_util::Limited::new(body, MAX_INSPECTED_BODY as usize).collect())
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

    let chosen;
    let (upstream_base, origin) =
        match (&target.upstream, &service.api_backend, &service.api_origin) {
            (Some(url), _, _) => match Origin::of(url) {
                Some(origin) => {
                    chosen = origin;
                    (url, &chosen)
                }
                None => return empty(StatusCode::BAD_GATEWAY),
            },
            (None, Some(url), Some(origin)) => (url, origin),
            _ => return empty(StatusCode::NOT_FOUND),
        };
    let Some(request_target) = upstream_request_target(
        upstream_base,
        target.path.as_deref().unwrap_or(parts.uri.path()),
        match &target.query {
            Some(set) => set.as_deref(),
            None => parts.uri.query(),
        },
    ) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let policy_host = target.upstream.is_some();
    let mut response = forward(
        state,
        service,
        origin,
        policy_host,
        target.peer,
        &request_target,
        parts,
        body,
    )
    .await;
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
                tracing::warn!(service_id = %service.id, request_id = request_id(headers), "cannot get credentials");
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
        // A token verified before is found without building the verification's future; that future is boxed, as
        // are the other rarely-suspending steps below, so the request future stays small (it is moved by value).
        let verified = match state.oidc.cached(&service.id, token) {
            Some(client_id) => Ok(client_id),
            None => {
                Box::pin(state.oidc.verify(
                    &service.id,
                    oidc.supplied.as_ref(),
                    oidc.issuer_endpoint.as_deref(),
                    &oidc.client_id_claim,
                    token,
                ))
                .await
            }
        };
        match verified {
            // The cache key names the application as APIcast's does (its credentials for backend), not the token:
            // a short key, and one entry for every token of the same client.
            Ok(client_id) => (
                vec![("app_id", client_id.to_string())],
                client_id.to_string(),
            ),
            Err(e) => {
                tracing::info!(service_id = %service.id, request_id = request_id(headers), reason = %e, "JWT rejected");
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

    let merged;
    let args = match body_args {
        None => query_args,
        Some(body) => {
            // Body args override query args of the same name (last value wins).
            let mut args = query_args.clone();
            args.merge(body);
            merged = args;
            &merged
        }
    };
    let (usage, matched) = mapping::usage_for(&service.rules, method.as_str(), path, args);
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
        Lookup::Miss => Box::pin(state.reporter.flush_for(service, &backend_credentials)).await,
    };
    let call = AuthCall {
        service,
        credentials: backend_credentials.clone(),
        usage: &usage,
        extra: &extra,
        oauth: matches!(service.auth_mode, AuthMode::Oidc | AuthMode::OAuth),
    };
    let answer = if backend_took_pending {
        Box::pin(state.backend.authrep(&call)).await
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

/// Headers that belong to one connection and are not passed on (`Host` is set separately).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const DEBUG_HEADER: HeaderName = HeaderName::from_static("x-3scale-debug");

/// Removes the hop-by-hop headers (and `also`, when given). Usually none is there: one pass over the few headers a
/// request has is cheaper than a lookup per name.
fn strip_hop_by_hop(headers: &mut HeaderMap, also: Option<&HeaderName>) {
    let doomed = |name: &HeaderName| HOP_BY_HOP.contains(name) || also == Some(name);
    if headers.keys().any(doomed) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
        if let Some(name) = also {
            headers.remove(name);
        }
    }
}

/// The upstream path and query: `api_backend`'s path joined with the request path; the request's query unless
/// `api_backend` has its own.
pub fn upstream_target(api_backend: &url::Url, request_path: &str, query: Option<&str>) -> String {
    let base = api_backend.path();
    let query = api_backend.query().or(query);
    let mut target = String::with_capacity(
        base.len() + request_path.len() + query.map_or(0, |q| q.len() + 1) + 1,
    );
    if base.is_empty() || base == "/" {
        target.push_str(request_path);
    } else if request_path == "/" || request_path.is_empty() {
        target.push_str(base);
    } else {
        target.push_str(base.trim_end_matches('/'));
        target.push_str(request_path);
    }
    if !target.starts_with('/') {
        target.insert(0, '/');
    }
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    target
}

/// The upstream request target (path and query). A path rewritten by a policy may hold bytes a request line
/// cannot: those are percent-encoded.
fn upstream_request_target(
    api_backend: &url::Url,
    request_path: &str,
    query: Option<&str>,
) -> Option<String> {
    let target = upstream_target(api_backend, request_path, query);
    if target
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b'#')
    {
        return Some(target);
    }
    let (path, query) = target
        .split_once('?')
        .map_or((target.as_str(), None), |(p, q)| (p, Some(q)));
    let mut url = api_backend.clone();
    url.set_path(path);
    url.set_query(query);
    let encoded = &url[url::Position::BeforePath..];
    encoded
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b'#')
        .then(|| encoded.to_owned())
}

/// `X-Real-IP` for `peer`. Most requests on a thread come from the client before them (keep-alive connections,
/// a few load balancers), so the last value is kept rather than formatted again.
fn real_ip(peer: IpAddr) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((ip, value)) if *ip == peer => value.clone(),
            _ => {
                let value = HeaderValue::from_str(&peer.to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                *last = Some((peer, value.clone()));
                value
            }
        }
    })
}

/// Sends the request for `request_target` to `origin` and streams the answer back. `policy_host`: the `upstream` policy chose the
/// target, so `Host` is the target's even when the service has `hostname_rewrite`.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &Worker,
    service: &Service,
    origin: &Origin,
    policy_host: bool,
    peer: Option<IpAddr>,
    request_target: &str,
    parts: http::request::Parts,
    body: Body,
) -> Response {
    let http::request::Parts {
        method,
        mut headers,
        ..
    } = parts;
    let has_body = !http_body::Body::is_end_stream(&body);
    strip_hop_by_hop(&mut headers, Some(&DEBUG_HEADER));
    let host = match service.hostname_rewrite.as_ref().filter(|_| !policy_host) {
        Some(h) => HeaderValue::from_str(h).ok(),
        None => Some(origin.host.clone()),
    };
    match host {
        Some(host) => {
            headers.insert(header::HOST, host);
        }
        None => {
            headers.remove(header::HOST);
        }
    }
    if let Some(peer) = peer {
        headers.insert("x-real-ip", real_ip(peer));
    }
    if let Some(secret) = &service.secret_token {
        headers.insert("x-3scale-proxy-secret-token", secret.clone());
    }
    let rid = request_id(&headers);
    let started = Instant::now();
    let body = if has_body { body } else { Body::empty() };
    let result = state
        .0
        .upstream
        .send(origin, &method, request_target, &headers, body)
        .await;
    state
        .metrics
        .upstream_time
        .record(started.elapsed().as_secs_f64());
    let mut upstream = match result {
        Err(UpstreamError::Timeout) => {
            tracing::warn!(service_id = %service.id, request_id = %rid, "upstream timed out");
            state.metrics.upstream_status(504).increment(1);
            return empty(StatusCode::GATEWAY_TIMEOUT);
        }
        Err(err) => {
            tracing::warn!(service_id = %service.id, request_id = %rid, error = %err, "upstream failed");
            state.metrics.upstream_status(502).increment(1);
            return empty(StatusCode::BAD_GATEWAY);
        }
        Ok(r) => r,
    };
    state
        .metrics
        .upstream_status(upstream.status().as_u16())
        .increment(1);
    strip_hop_by_hop(upstream.headers_mut(), None);
    upstream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths_join_like_apicast() {
        let base = url::Url::parse("http://up:8080/foo").unwrap();
        let target = |base: &url::Url, s: &str| {
            let uri = s.parse::<http::Uri>().unwrap();
            upstream_target(base, uri.path(), uri.query())
        };
        assert_eq!(target(&base, "/bar?a=1"), "/foo/bar?a=1");
        assert_eq!(target(&base, "/"), "/foo");
        let root = url::Url::parse("http://up").unwrap();
        assert_eq!(target(&root, "/x/y?q"), "/x/y?q");
        let with_query = url::Url::parse("http://up/p?fixed=1").unwrap();
        assert_eq!(target(&with_query, "/x?client=2"), "/p/x?fixed=1");
    }

    #[test]
    fn hosts_are_lower_cased_without_port() {
        let host = |value: &str| {
            let req = Request::builder()
                .uri("/x")
                .header(header::HOST, value)
                .body(Body::empty())
                .unwrap();
            request_host(&req)
        };
        assert_eq!(host("API.Example.com:8080"), "api.example.com");
        assert_eq!(host("api.example.com"), "api.example.com");
        assert_eq!(host("[::1]:8080"), "[::1]");
        assert_eq!(host("[::1]"), "[::1]");
        let absolute = Request::builder()
            .uri("http://Line.Example:81/x")
            .header(header::HOST, "header.example")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            request_host(&absolute),
            "line.example",
            "the request line wins"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_not_passed_on() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-3scale-debug", HeaderValue::from_static("secret"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut headers, Some(&DEBUG_HEADER));
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["authorization"]);

        let mut answer = HeaderMap::new();
        answer.insert(
            "x-3scale-debug",
            HeaderValue::from_static("kept in answers"),
        );
        answer.insert("upgrade", HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut answer, None);
        let left: Vec<&str> = answer.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-3scale-debug"]);
    }

    #[test]
    fn rewritten_paths_with_spaces_are_encoded() {
        let base = url::Url::parse("http://up:8080/foo").unwrap();
        let target = upstream_request_target(&base, "/a b", Some("q=1")).unwrap();
        assert_eq!(target, "/foo/a%20b?q=1");
        assert_eq!(
            upstream_request_target(&base, "/plain", None).unwrap(),
            "/foo/plain"
        );
    }
}
