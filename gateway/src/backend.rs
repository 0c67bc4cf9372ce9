//! Talking to 3scale backend (Apisonator): `authrep.xml`/`oauth_authrep.xml` with APIcast's parameters and
//! headers, the bounded authorization cache with its caching modes, and the batched, retried usage reporter.

use crate::apicast::{CachingMode, Service};
use crate::mapping::Usage;
use moka::sync::Cache;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What backend said about one authrep; `status` 0 means it could not be reached.
#[derive(Debug, Clone, Default)]
pub struct BackendAnswer {
    pub status: u16,
    pub rejection_reason: Option<String>,
    pub limit_reset: Option<String>,
    pub limit_max_value: Option<String>,
    /// `3scale-limit-remaining`: how many more identical calls fit in the most constrained limit (-1 = no limit).
    pub limit_remaining: Option<i64>,
}

impl BackendAnswer {
    /// Unreachable, timed out, or a server error: the caching mode decides.
    pub fn is_down(&self) -> bool {
        self.status == 0 || self.status >= 499
    }
}

/// The HTTP client for backend calls; keeps pooled keep-alive connections.
#[derive(Clone)]
pub struct BackendClient {
    client: reqwest::Client,
    user_agent: String,
}

/// Parameters that identify one authorization.
pub struct AuthCall<'a> {
    pub service: &'a Service,
    pub credentials: Vec<(&'static str, String)>,
    pub usage: &'a Usage,
    /// Extra parameters such as `referrer`.
    pub extra: &'a [(String, String)],
    pub oauth: bool,
}

impl BackendClient {
    pub fn new(timeout: Duration, environment: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .expect("a reqwest client builds with static settings");
        Self {
            client,
            user_agent: format!(
                "APIcast/3.16.0 ({}; {}; env:{environment})",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
        }
    }

    pub async fn authrep(&self, call: &AuthCall<'_>) -> BackendAnswer {
        let service = call.service;
        let endpoint = if call.oauth {
            "transactions/oauth_authrep.xml"
        } else {
            "transactions/authrep.xml"
        };
        let mut url = service.backend.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{endpoint}"));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("service_id", &service.id);
            if let Some((kind, value)) = &service.backend_auth {
                q.append_pair(kind, value);
            }
            for (metric, delta) in &call.usage.0 {
                q.append_pair(&format!("usage[{metric}]"), &delta.to_string());
            }
            for (k, v) in &call.credentials {
                q.append_pair(k, v);
            }
            for (k, v) in call.extra {
                q.append_pair(k, v);
            }
        }
        let mut request = self
            .client
            .get(url)
            .header(http::header::USER_AGENT, &self.user_agent)
            .header(
                "3scale-options",
                "rejection_reason_header=1&limit_headers=1&no_body=1",
            );
        if let Some(host) = &service.backend.host {
            request = request.header(http::header::HOST, host);
        }
        let answer = match request.send().await {
            Ok(response) => {
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let mut answer = BackendAnswer {
                    status: response.status().as_u16(),
                    rejection_reason: header("3scale-rejection-reason"),
                    limit_reset: header("3scale-limit-reset"),
                    limit_max_value: header("3scale-limit-max-value"),
                    limit_remaining: header("3scale-limit-remaining").and_then(|v| v.parse().ok()),
                };
                // A backend that ignores no_body still tells us why in the XML.
                if answer.rejection_reason.is_none() && answer.status == 409 {
                    if let Ok(body) = response.text().await {
                        if body.contains("usage limits are exceeded") {
                            answer.rejection_reason = Some("limits_exceeded".into());
                        }
                    }
                }
                answer
            }
            Err(err) => {
                tracing::warn!(error = %err.without_url(), service_id = %service.id, "backend authrep failed");
                BackendAnswer::default()
            }
        };
        record_backend_call("authrep", answer.status);
        answer
    }

    /// `POST /transactions.xml` with the given transactions for one service; `true` when backend accepted them.
    async fn report(&self, target: &ReportTarget, transactions: &[PendingTx]) -> bool {
        let mut url = target.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/transactions.xml"));
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("service_id", &target.service_id);
            if let Some((kind, value)) = &target.backend_auth {
                form.append_pair(kind, value);
            }
            for (i, tx) in transactions.iter().enumerate() {
                for (k, v) in &tx.credentials {
                    form.append_pair(&format!("transactions[{i}][{k}]"), v);
                }
                for (metric, delta) in &tx.usage {
                    form.append_pair(
                        &format!("transactions[{i}][usage][{metric}]"),
                        &delta.to_string(),
                    );
                }
            }
            form.finish()
        };
        let mut request = self
            .client
            .post(url)
            .header(http::header::USER_AGENT, &self.user_agent)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        if let Some(host) = &target.host {
            request = request.header(http::header::HOST, host);
        }
        let status = match request.send().await {
            Ok(r) => r.status().as_u16(),
            Err(err) => {
                tracing::warn!(error = %err.without_url(), service_id = %target.service_id, "backend report failed");
                0
            }
        };
        record_backend_call("report", status);
        (200..300).contains(&status)
    }
}

fn record_backend_call(endpoint: &'static str, status: u16) {
    let class = match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "invalid_status",
    };
    metrics::counter!("threescale_backend_calls", "endpoint" => endpoint, "status" => class)
        .increment(1);
}

// ---------------------------------------------------------------------------------------------------------------

/// One remembered authorization result.
#[derive(Debug, Clone)]
struct CacheEntry {
    status: u16,
    stored: Instant,
    /// For a success under a limit: identical calls still allowed before the limit (shared by clones of the
    /// entry), when the limit resets, and its `max_value`. Without it the cache would let a key through for a
    /// whole TTL whatever its plan says.
    budget: Option<Arc<Budget>>,
    /// Set by the one request that asks backend again once the entry is older than the TTL (shared by clones).
    refreshing: Arc<AtomicBool>,
}

/// How long an expired success keeps serving the other requests while one request refreshes it. Past this (a slow
/// or hung backend, or a refreshing client that went away) every request asks backend again.
const REFRESH_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Budget {
    remaining: AtomicI64,
    resets_at: Option<Instant>,
    max_value: Option<String>,
}

/// What the cache says before calling backend.
pub enum Lookup {
    /// A fresh success: go upstream now and report later.
    Hit,
    /// The cached success has used up the calls its limit allowed and the period has not ended: answer
    /// `limits_exceeded` without asking backend, which has not seen the batched usage yet.
    Exhausted(BackendAnswer),
    Miss,
}

/// Authorization cache keyed like APIcast's (`<service>:<creds>:<usage>[:<extra>]`). Entries younger than `ttl`
/// answer without backend; older ones are kept (up to `stale_ttl`) so `resilient`/`allow` can serve when
/// backend is down.
#[derive(Clone)]
pub struct AuthCache {
    /// foldhash rather than SipHash: one hash per request, with a random seed per process.
    entries: Cache<String, CacheEntry, foldhash::fast::RandomState>,
    ttl: Duration,
}

impl AuthCache {
    pub fn new(capacity: u64, ttl: Duration, stale_ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(stale_ttl.max(ttl).max(Duration::from_millis(1)))
                .build_with_hasher(foldhash::fast::RandomState::default()),
            ttl,
        }
    }

    pub fn key(
        service: &Service,
        credentials: &str,
        usage: &Usage,
        extra: &[(String, String)],
    ) -> String {
        let usage = usage.encoded();
        let mut key = String::with_capacity(service.id.len() + credentials.len() + usage.len() + 2);
        key.push_str(&service.id);
        key.push(':');
        key.push_str(credentials);
        key.push(':');
        key.push_str(&usage);
        if !extra.is_empty() {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in extra {
                ser.append_pair(k, v);
            }
            key.push(':');
            key.push_str(&ser.finish());
        }
        key
    }

    /// Forgets every remembered authorization (the next call of each key asks backend).
    pub fn invalidate_all(&self) {
        self.entries.invalidate_all();
    }

    pub fn lookup(&self, key: &str, mode: CachingMode) -> Lookup {
        if mode == CachingMode::None {
            return Lookup::Miss;
        }
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        if entry.status != 200 {
            return Lookup::Miss;
        }
        let age = entry.stored.elapsed();
        if age >= self.ttl {
            // One request refreshes an expired success; the ones arriving meanwhile keep using it, so a busy key
            // costs backend one call per TTL rather than one per request in flight when the entry expires.
            if self.ttl.is_zero()
                || age >= self.ttl + REFRESH_GRACE
                || !entry.refreshing.swap(true, Ordering::AcqRel)
            {
                return Lookup::Miss;
            }
        }
        let Some(budget) = &entry.budget else {
            return Lookup::Hit;
        };
        if budget.remaining.fetch_sub(1, Ordering::AcqRel) > 0 {
            return Lookup::Hit;
        }
        match budget.resets_at {
            Some(at) if at <= Instant::now() => Lookup::Miss,
            resets_at => Lookup::Exhausted(BackendAnswer {
                status: 409,
                rejection_reason: Some("limits_exceeded".into()),
                limit_reset: Some(
                    resets_at
                        .map(|at| at.saturating_duration_since(Instant::now()).as_secs() + 1)
                        .map_or_else(|| "-1".to_owned(), |s| s.to_string()),
                ),
                limit_max_value: budget.max_value.clone(),
                limit_remaining: Some(0),
            }),
        }
    }

    /// Feeds a backend answer through the caching mode; returns whether the request is authorized.
    pub fn handle(&self, key: &str, mode: CachingMode, answer: &BackendAnswer) -> bool {
        let now = Instant::now();
        let budget = answer
            .limit_remaining
            .filter(|remaining| *remaining >= 0)
            .map(|remaining| {
                Arc::new(Budget {
                    remaining: AtomicI64::new(remaining),
                    resets_at: answer
                        .limit_reset
                        .as_deref()
                        .and_then(|r| r.parse::<u64>().ok())
                        .map(|secs| now + Duration::from_secs(secs)),
                    max_value: answer.limit_max_value.clone(),
                })
            });
        let store = |status: u16| {
            self.entries.insert(
                key.to_owned(),
                CacheEntry {
                    status,
                    stored: now,
                    budget: if status == 200 { budget.clone() } else { None },
                    refreshing: Arc::default(),
                },
            )
        };
        if answer.status == 200 {
            if mode == CachingMode::None {
                self.entries.invalidate(key);
            } else {
                store(200);
            }
            return true;
        }
        if !answer.is_down() {
            match mode {
                CachingMode::Resilient | CachingMode::Allow => store(answer.status),
                CachingMode::Strict | CachingMode::None => self.entries.invalidate(key),
            }
            return false;
        }
        match mode {
            CachingMode::Strict | CachingMode::None => {
                self.entries.invalidate(key);
                false
            }
            CachingMode::Resilient => self.entries.get(key).is_some_and(|e| e.status == 200),
            CachingMode::Allow => match self.entries.get(key) {
                Some(e) => e.status == 200,
                None => {
                    store(200);
                    true
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------

/// Where a service's reports go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReportTarget {
    endpoint: url::Url,
    host: Option<String>,
    service_id: String,
    backend_auth: Option<(String, String)>,
}

impl ReportTarget {
    fn of(service: &Service) -> Self {
        Self {
            endpoint: service.backend.endpoint.clone(),
            host: service.backend.host.clone(),
            service_id: service.id.clone(),
            backend_auth: service.backend_auth.clone(),
        }
    }

    /// Whether `service` reports here, compared without building a target.
    fn is_of(&self, service: &Service) -> bool {
        self.service_id == service.id
            && self.endpoint == service.backend.endpoint
            && self.host == service.backend.host
            && self.backend_auth == service.backend_auth
    }
}

#[derive(Debug, Clone)]
struct PendingTx {
    credentials: Vec<(&'static str, String)>,
    usage: BTreeMap<String, i64>,
}

/// Adds one request's usage to an application's queued sums.
fn add_usage(sums: &mut BTreeMap<String, i64>, usage: &Usage) {
    for (metric, delta) in &usage.0 {
        match sums.get_mut(metric.as_str()) {
            Some(sum) => *sum += delta,
            None => {
                sums.insert(metric.clone(), *delta);
            }
        }
    }
}

/// Usage per application of one report target.
type Apps = HashMap<Vec<(&'static str, String)>, BTreeMap<String, i64>>;

/// The queue: by service id (a lookup without building a key), then by target (a service's endpoint or credentials
/// may change with a new configuration while its old usage is still queued). `apps` counts the queued applications.
#[derive(Default)]
struct Pending {
    by_service: HashMap<String, Vec<(ReportTarget, Apps)>>,
    apps: usize,
}

impl Pending {
    /// The applications queued for `service`'s target, created empty when there are none.
    fn apps_of(&mut self, service: &Service) -> &mut Apps {
        self.apps_where(
            &service.id,
            |t| t.is_of(service),
            || ReportTarget::of(service),
        )
    }

    /// The applications queued for `target`, created empty when there are none.
    fn apps_of_target(&mut self, target: &ReportTarget) -> &mut Apps {
        self.apps_where(&target.service_id, |t| t == target, || target.clone())
    }

    /// Finds the target of `service_id` that `matches`, or adds the one `make` builds. The service id is only
    /// copied when the service has nothing queued yet.
    fn apps_where(
        &mut self,
        service_id: &str,
        matches: impl Fn(&ReportTarget) -> bool,
        make: impl FnOnce() -> ReportTarget,
    ) -> &mut Apps {
        if !self.by_service.contains_key(service_id) {
            self.by_service.insert(service_id.to_owned(), Vec::new());
        }
        let targets = self.by_service.get_mut(service_id).expect("inserted above");
        let index = match targets.iter().position(|(t, _)| matches(t)) {
            Some(index) => index,
            None => {
                targets.push((make(), Apps::new()));
                targets.len() - 1
            }
        };
        &mut targets[index].1
    }

    /// Takes what is queued for one application of `service`, without creating anything when nothing is.
    fn remove(
        &mut self,
        service: &Service,
        credentials: &[(&'static str, String)],
    ) -> Option<BTreeMap<String, i64>> {
        let removed = self
            .by_service
            .get_mut(service.id.as_str())?
            .iter_mut()
            .find(|(t, _)| t.is_of(service))?
            .1
            .remove(credentials);
        if removed.is_some() {
            self.apps -= 1;
        }
        removed
    }

    fn take(&mut self) -> Vec<(ReportTarget, Apps)> {
        self.apps = 0;
        std::mem::take(&mut self.by_service)
            .into_values()
            .flatten()
            .collect()
    }
}

/// Usage of requests authorized from the cache, summed per application and sent in batches off the request path.
/// Failed batches are merged back and retried on the next flush.
#[derive(Clone)]
pub struct Reporter {
    pending: Arc<Mutex<Pending>>,
    client: BackendClient,
    max_pending: usize,
}

impl Reporter {
    pub fn new(client: BackendClient, max_pending: usize) -> Self {
        Self {
            pending: Arc::default(),
            client,
            max_pending,
        }
    }

    /// Queues usage for a later batch. Never blocks on I/O.
    pub fn enqueue(
        &self,
        service: &Service,
        credentials: Vec<(&'static str, String)>,
        usage: &Usage,
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let full = pending.apps >= self.max_pending;
        let apps = pending.apps_of(service);
        match apps.get_mut(&credentials) {
            Some(sums) => add_usage(sums, usage),
            None if full => {
                drop(pending);
                metrics::counter!("gateway_reports_dropped_total").increment(1);
                tracing::error!(service_id = %service.id, "report queue full: usage dropped");
            }
            None => {
                add_usage(apps.entry(credentials).or_default(), usage);
                pending.apps += 1;
            }
        }
    }

    /// Sends everything queued; what fails goes back into the queue.
    pub async fn flush(&self) {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for (target, apps) in taken {
            let txs: Vec<PendingTx> = apps
                .into_iter()
                .map(|(credentials, usage)| PendingTx { credentials, usage })
                .collect();
            for chunk in txs.chunks(500) {
                if !self.client.report(&target, chunk).await {
                    self.requeue(&target, chunk);
                }
            }
        }
    }

    /// Sends at once what is queued for one application, so that an authorization about to be asked of backend
    /// is judged with all the usage this gateway has already let through. False when backend could not take it
    /// (the usage stays queued), so the caller can treat backend as down without waiting a second time.
    pub async fn flush_for(
        &self,
        service: &Service,
        credentials: &[(&'static str, String)],
    ) -> bool {
        let usage = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service, credentials);
        let Some(usage) = usage else { return true };
        let target = ReportTarget::of(service);
        let tx = [PendingTx {
            credentials: credentials.to_vec(),
            usage,
        }];
        let sent = self.client.report(&target, &tx).await;
        if !sent {
            self.requeue(&target, &tx);
        }
        sent
    }

    /// Merges usage that failed to send back into the queue.
    fn requeue(&self, target: &ReportTarget, txs: &[PendingTx]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = 0;
        let apps = pending.apps_of_target(target);
        for tx in txs {
            let sums = apps.entry(tx.credentials.clone()).or_insert_with(|| {
                added += 1;
                BTreeMap::new()
            });
            for (metric, delta) in &tx.usage {
                *sums.entry(metric.clone()).or_default() += delta;
            }
        }
        pending.apps += added;
    }

    /// Flushes every `interval` until shutdown, then once more.
    pub async fn run(self, interval: Duration, shutdown: platform::Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.flush().await,
                _ = shutdown.wait() => {
                    let _ = tokio::time::timeout(Duration::from_millis(500), self.flush()).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> BackendAnswer {
        BackendAnswer {
            status,
            ..Default::default()
        }
    }

    #[test]
    fn caching_modes_when_backend_is_down() {
        let cache = AuthCache::new(100, Duration::from_secs(60), Duration::from_secs(3600));
        for mode in [
            CachingMode::Strict,
            CachingMode::Resilient,
            CachingMode::Allow,
        ] {
            let key = format!("{mode:?}");
            assert!(cache.handle(&key, mode, &answer(200)));
            assert!(matches!(cache.lookup(&key, mode), Lookup::Hit));
        }
        assert!(!cache.handle("Strict", CachingMode::Strict, &answer(0)));
        assert!(matches!(
            cache.lookup("Strict", CachingMode::Strict),
            Lookup::Miss
        ));
        assert!(cache.handle("Resilient", CachingMode::Resilient, &answer(503)));
        assert!(!cache.handle("unseen", CachingMode::Resilient, &answer(0)));
        assert!(cache.handle("new", CachingMode::Allow, &answer(0)));
        assert!(!cache.handle("denied", CachingMode::Allow, &answer(403)));
        assert!(!cache.handle("denied", CachingMode::Allow, &answer(0)));
        assert!(cache.handle("n", CachingMode::None, &answer(200)));
        assert!(matches!(cache.lookup("n", CachingMode::None), Lookup::Miss));
        assert!(!cache.handle("n", CachingMode::None, &answer(0)));
    }

    #[test]
    fn a_cached_success_spends_the_calls_its_limit_left() {
        let cache = AuthCache::new(100, Duration::from_secs(60), Duration::from_secs(3600));
        let limited = BackendAnswer {
            status: 200,
            limit_remaining: Some(2),
            limit_reset: Some("30".into()),
            limit_max_value: Some("3".into()),
            ..Default::default()
        };
        assert!(cache.handle("k", CachingMode::Strict, &limited));
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Hit
        ));
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Hit
        ));
        match cache.lookup("k", CachingMode::Strict) {
            Lookup::Exhausted(answer) => {
                assert_eq!(answer.status, 409);
                assert_eq!(answer.rejection_reason.as_deref(), Some("limits_exceeded"));
                let reset: u64 = answer.limit_reset.unwrap().parse().unwrap();
                assert!((1..=31).contains(&reset), "{reset}");
                assert_eq!(answer.limit_max_value.as_deref(), Some("3"));
            }
            _ => panic!("the third cached call exceeds the limit"),
        }
        // A period that has ended sends the next call to backend.
        let ended = BackendAnswer {
            limit_reset: Some("0".into()),
            limit_remaining: Some(0),
            ..limited.clone()
        };
        assert!(cache.handle("e", CachingMode::Strict, &ended));
        assert!(matches!(
            cache.lookup("e", CachingMode::Strict),
            Lookup::Miss
        ));
        // No limit (-1): the entry is a plain hit for its TTL.
        let unlimited = BackendAnswer {
            limit_remaining: Some(-1),
            ..limited
        };
        assert!(cache.handle("u", CachingMode::Strict, &unlimited));
        for _ in 0..10 {
            assert!(matches!(
                cache.lookup("u", CachingMode::Strict),
                Lookup::Hit
            ));
        }
    }

    #[test]
    fn one_request_refreshes_an_expired_success_while_the_others_use_it() {
        let ttl = Duration::from_millis(20);
        let cache = AuthCache::new(100, ttl, Duration::from_secs(3600));
        let expire = || {
            let until = Instant::now() + ttl;
            while Instant::now() < until {
                std::thread::yield_now();
            }
        };
        assert!(cache.handle("k", CachingMode::Strict, &answer(200)));
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Hit
        ));
        expire();
        assert!(
            matches!(cache.lookup("k", CachingMode::Strict), Lookup::Miss),
            "the first request after the TTL asks backend"
        );
        for _ in 0..5 {
            assert!(
                matches!(cache.lookup("k", CachingMode::Strict), Lookup::Hit),
                "the others are served from the entry meanwhile"
            );
        }
        // The refreshed answer starts a new TTL, and the next expiry again sends exactly one request to backend.
        assert!(cache.handle("k", CachingMode::Strict, &answer(200)));
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Hit
        ));
        expire();
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Miss
        ));
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Hit
        ));
        // A refresh that is refused ends the grace at once.
        assert!(!cache.handle("k", CachingMode::Strict, &answer(403)));
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Miss
        ));
        assert!(matches!(
            cache.lookup("k", CachingMode::Strict),
            Lookup::Miss
        ));
    }

    fn services(endpoint: &str) -> Vec<Arc<Service>> {
        let service = |id: u32| {
            serde_json::json!({
                "id": id, "backend_version": 1,
                "proxy": {"hosts": [format!("s{id}.test")], "api_backend": "http://up.test",
                    "backend": {"endpoint": endpoint},
                    "proxy_rules": [{"http_method": "GET", "pattern": "/", "metric_system_name": "hits", "delta": 1}]}
            })
        };
        let doc = serde_json::json!({"services": [service(1), service(2)]});
        crate::apicast::compile(doc, &Default::default())
            .unwrap()
            .services
    }

    fn queued(reporter: &Reporter) -> (usize, Vec<(String, usize)>) {
        let pending = reporter.pending.lock().unwrap();
        let mut per_service: Vec<(String, usize)> = pending
            .by_service
            .iter()
            .map(|(id, targets)| (id.clone(), targets.iter().map(|(_, a)| a.len()).sum()))
            .collect();
        per_service.sort();
        (pending.apps, per_service)
    }

    #[tokio::test]
    async fn the_report_queue_sums_per_application_and_stays_bounded() {
        // Nothing listens on port 9 of localhost: every report fails and its usage goes back into the queue.
        let reporter = Reporter::new(BackendClient::new(Duration::from_secs(2), "production"), 3);
        let services = services("http://127.0.0.1:9");
        let usage = Usage(BTreeMap::from([("hits".to_owned(), 2)]));
        let app = |key: &str| vec![("user_key", key.to_owned())];
        reporter.enqueue(&services[0], app("a"), &usage);
        reporter.enqueue(&services[0], app("a"), &usage);
        reporter.enqueue(&services[0], app("b"), &usage);
        reporter.enqueue(&services[1], app("a"), &usage);
        assert_eq!(
            queued(&reporter),
            (3, vec![("1".into(), 2), ("2".into(), 1)])
        );
        // Full: a new application is dropped, a queued one still adds up.
        reporter.enqueue(&services[1], app("c"), &usage);
        reporter.enqueue(&services[1], app("a"), &usage);
        assert_eq!(
            queued(&reporter),
            (3, vec![("1".into(), 2), ("2".into(), 1)])
        );
        {
            let pending = reporter.pending.lock().unwrap();
            let sums = &pending.by_service["1"][0].1[&app("a")];
            assert_eq!(sums["hits"], 4);
            assert_eq!(pending.by_service["2"][0].1[&app("a")]["hits"], 4);
        }
        // A report that fails keeps the usage and the count.
        assert!(!reporter.flush_for(&services[0], &app("a")).await);
        assert_eq!(
            queued(&reporter),
            (3, vec![("1".into(), 2), ("2".into(), 1)])
        );
        reporter.flush().await;
        assert_eq!(queued(&reporter).0, 3, "failed batches are requeued");
    }

    #[test]
    fn expired_entries_miss_but_still_rescue_resilient() {
        let cache = AuthCache::new(100, Duration::ZERO, Duration::from_secs(3600));
        assert!(cache.handle("k", CachingMode::Resilient, &answer(200)));
        assert!(matches!(
            cache.lookup("k", CachingMode::Resilient),
            Lookup::Miss
        ));
        assert!(cache.handle("k", CachingMode::Resilient, &answer(0)));
    }
}
