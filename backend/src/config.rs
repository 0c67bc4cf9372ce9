//! Configuration read on the hot path (services, metrics, applications, limits, tokens), cached in memory with a
//! bound and a TTL, and dropped whenever any replica's internal API changes it (Postgres `LISTEN/NOTIFY`).

use sqlx::PgPool;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::period::Period;

/// The channel the internal API notifies after every change.
pub const CHANNEL: &str = "backend_config";
/// Entries per map; a full map is cleared rather than grown.
const MAX_ENTRIES: usize = 100_000;
/// A safety net in case a notification is lost while the listener reconnects.
const TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Metric {
    pub id: Arc<str>,
    pub name: String,
    pub parent_id: Option<String>,
}

#[derive(Debug)]
pub struct Service {
    pub id: String,
    pub provider_key: String,
    pub backend_version: Option<String>,
    pub referrer_filters_required: bool,
    pub active: bool,
    /// Ordered by id (numerically when ids are numbers), which fixes the order of usage reports.
    pub metrics: Vec<Metric>,
}

impl Service {
    pub fn metric_by_name(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    pub fn metric(&self, id: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| &*m.id == id)
    }

    /// The metric itself followed by its ancestors (cycles are cut).
    pub fn ancestry(&self, id: &str) -> Vec<&Metric> {
        let mut out: Vec<&Metric> = Vec::new();
        let mut next = self.metric(id);
        while let Some(m) = next {
            if out.iter().any(|seen| seen.id == m.id) {
                break;
            }
            out.push(m);
            next = m.parent_id.as_deref().and_then(|p| self.metric(p));
        }
        out
    }

    pub fn children(&self, id: &str) -> Vec<&Metric> {
        self.metrics
            .iter()
            .filter(|m| m.parent_id.as_deref() == Some(id))
            .collect()
    }

    pub fn is_v1(&self) -> bool {
        self.backend_version.as_deref().map(str::trim) == Some("1")
    }

    pub fn is_oauth(&self) -> bool {
        self.backend_version.as_deref() == Some("oauth")
    }
}

#[derive(Debug)]
pub struct Application {
    pub id: String,
    pub state: String,
    pub plan_id: Option<String>,
    pub plan_name: Option<String>,
    pub redirect_url: Option<String>,
    pub keys: Vec<String>,
    pub referrer_filters: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Limit {
    pub metric_id: Arc<str>,
    pub period: Period,
    pub max: i64,
}

struct Entry<V> {
    at: Instant,
    value: V,
}

struct Map<K, V>(RwLock<HashMap<K, Entry<V>>>);

impl<K: Hash + Eq, V: Clone> Map<K, V> {
    fn new() -> Self {
        Self(RwLock::new(HashMap::new()))
    }

    fn get<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
    {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(k)
            .filter(|e| e.at.elapsed() < TTL)
            .map(|e| e.value.clone())
    }

    fn insert(&self, k: K, v: V) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            k,
            Entry {
                at: Instant::now(),
                value: v,
            },
        );
    }

    fn clear(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A map keyed by two strings, looked up without allocating a key (it runs several times per request).
struct Map2<V>(RwLock<(Nested<V>, usize)>);

/// first key → second key → entry.
type Nested<V> = HashMap<String, HashMap<String, Entry<V>>>;

impl<V: Clone> Map2<V> {
    fn new() -> Self {
        Self(RwLock::new((HashMap::new(), 0)))
    }

    fn get(&self, a: &str, b: &str) -> Option<V> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.0
            .get(a)?
            .get(b)
            .filter(|e| e.at.elapsed() < TTL)
            .map(|e| e.value.clone())
    }

    fn insert(&self, a: &str, b: &str, v: V) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.1 >= MAX_ENTRIES {
            *map = (HashMap::new(), 0);
        }
        let entry = Entry {
            at: Instant::now(),
            value: v,
        };
        let added = map
            .0
            .entry(a.to_owned())
            .or_default()
            .insert(b.to_owned(), entry)
            .is_none();
        map.1 += usize::from(added);
    }

    fn clear(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = (HashMap::new(), 0);
    }
}
/// state, plan_id, plan_name, redirect_url, keys, referrer filters
type AppRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<String>,
    Vec<String>,
);

/// The cache. Loads that started before an invalidation are not stored, so a change is never hidden.
pub struct ConfigCache {
    generation: AtomicU64,
    services: Map<String, Option<Arc<Service>>>,
    defaults: Map<String, Option<String>>,
    tokens: Map2<bool>,
    apps: Map2<Option<Arc<Application>>>,
    user_keys: Map2<Option<String>>,
    limits: Map2<Arc<Vec<Limit>>>,
}

impl Default for ConfigCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigCache {
    pub fn new() -> Self {
        Self {
            generation: AtomicU64::new(0),
            services: Map::new(),
            defaults: Map::new(),
            tokens: Map2::new(),
            apps: Map2::new(),
            user_keys: Map2::new(),
            limits: Map2::new(),
        }
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.services.clear();
        self.defaults.clear();
        self.tokens.clear();
        self.apps.clear();
        self.user_keys.clear();
        self.limits.clear();
    }

    fn gen(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn still(&self, gen: u64) -> bool {
        self.gen() == gen
    }

    pub async fn service(
        &self,
        pool: &PgPool,
        id: &str,
    ) -> Result<Option<Arc<Service>>, sqlx::Error> {
        if let Some(v) = self.services.get(id) {
            return Ok(v);
        }
        let gen = self.gen();
        let row: Option<(String, Option<String>, bool, String)> = sqlx::query_as(
            "SELECT provider_key, backend_version, referrer_filters_required, state FROM services WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        let value = match row {
            None => None,
            Some((provider_key, backend_version, referrer_filters_required, state)) => {
                let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                    "SELECT id, name, parent_id FROM metrics WHERE service_id = $1 ORDER BY length(id), id",
                )
                .bind(id)
                .fetch_all(pool)
                .await?;
                Some(Arc::new(Service {
                    id: id.to_owned(),
                    provider_key,
                    backend_version,
                    referrer_filters_required,
                    active: state == "active",
                    metrics: rows
                        .into_iter()
                        .map(|(id, name, parent_id)| Metric {
                            id: Arc::from(id),
                            name,
                            parent_id,
                        })
                        .collect(),
                }))
            }
        };
        if self.still(gen) {
            self.services.insert(id.to_owned(), value.clone());
        }
        Ok(value)
    }

    pub async fn default_service(
        &self,
        pool: &PgPool,
        provider_key: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        if let Some(v) = self.defaults.get(provider_key) {
            return Ok(v);
        }
        let gen = self.gen();
        let row: Option<(String,)> =
            sqlx::query_as("SELECT service_id FROM provider_defaults WHERE provider_key = $1")
                .bind(provider_key)
                .fetch_optional(pool)
                .await?;
        let value = row.map(|(id,)| id);
        if self.still(gen) {
            self.defaults.insert(provider_key.to_owned(), value.clone());
        }
        Ok(value)
    }

    pub async fn token_exists(
        &self,
        pool: &PgPool,
        token: &str,
        service_id: &str,
    ) -> Result<bool, sqlx::Error> {
        if let Some(v) = self.tokens.get(token, service_id) {
            return Ok(v);
        }
        let gen = self.gen();
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM service_tokens WHERE token = $1 AND service_id = $2")
                .bind(token)
                .bind(service_id)
                .fetch_optional(pool)
                .await?;
        if self.still(gen) {
            self.tokens.insert(token, service_id, row.is_some());
        }
        Ok(row.is_some())
    }

    pub async fn app_id_for_user_key(
        &self,
        pool: &PgPool,
        service_id: &str,
        user_key: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        if let Some(v) = self.user_keys.get(service_id, user_key) {
            return Ok(v);
        }
        let gen = self.gen();
        let row: Option<(String,)> =
            sqlx::query_as("SELECT app_id FROM user_keys WHERE service_id = $1 AND user_key = $2")
                .bind(service_id)
                .bind(user_key)
                .fetch_optional(pool)
                .await?;
        let value = row.map(|(id,)| id);
        if self.still(gen) {
            self.user_keys.insert(service_id, user_key, value.clone());
        }
        Ok(value)
    }

    pub async fn application(
        &self,
        pool: &PgPool,
        service_id: &str,
        app_id: &str,
    ) -> Result<Option<Arc<Application>>, sqlx::Error> {
        if let Some(v) = self.apps.get(service_id, app_id) {
            return Ok(v);
        }
        let gen = self.gen();
        // One round trip: a cold application costs one query.
        let row: Option<AppRow> = sqlx::query_as(
            "SELECT a.state, a.plan_id, a.plan_name, a.redirect_url,
                    ARRAY(SELECT k.value FROM application_keys k
                          WHERE k.service_id = a.service_id AND k.app_id = a.id ORDER BY k.value),
                    ARRAY(SELECT r.value FROM referrer_filters r
                          WHERE r.service_id = a.service_id AND r.app_id = a.id ORDER BY r.value)
             FROM applications a WHERE a.service_id = $1 AND a.id = $2",
        )
        .bind(service_id)
        .bind(app_id)
        .fetch_optional(pool)
        .await?;
        let value = row.map(
            |(state, plan_id, plan_name, redirect_url, keys, referrer_filters)| {
                Arc::new(Application {
                    id: app_id.to_owned(),
                    state,
                    plan_id,
                    plan_name,
                    redirect_url,
                    keys,
                    referrer_filters,
                })
            },
        );
        if self.still(gen) {
            self.apps.insert(service_id, app_id, value.clone());
        }
        Ok(value)
    }

    /// The limits of a plan, in metric order then longest period first.
    pub async fn limits(
        &self,
        pool: &PgPool,
        service: &Service,
        plan_id: &str,
    ) -> Result<Arc<Vec<Limit>>, sqlx::Error> {
        if let Some(v) = self.limits.get(&service.id, plan_id) {
            return Ok(v);
        }
        let gen = self.gen();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT metric_id, period, value FROM usage_limits WHERE service_id = $1 AND plan_id = $2",
        )
        .bind(&service.id)
        .bind(plan_id)
        .fetch_all(pool)
        .await?;
        let mut limits: Vec<(usize, Limit)> = rows
            .into_iter()
            .filter_map(|(metric_id, period, max)| {
                let order = service.metrics.iter().position(|m| *m.id == *metric_id)?;
                Some((
                    order,
                    Limit {
                        metric_id: service.metrics[order].id.clone(),
                        period: Period::parse(&period)?,
                        max,
                    },
                ))
            })
            .collect();
        limits.sort_by_key(|(order, l)| (*order, l.period));
        let value = Arc::new(limits.into_iter().map(|(_, l)| l).collect::<Vec<_>>());
        if self.still(gen) {
            self.limits.insert(&service.id, plan_id, value.clone());
        }
        Ok(value)
    }
}

/// Listens for configuration changes from every replica until shutdown, reconnecting with backoff.
pub async fn listen(pool: PgPool, cache: Arc<ConfigCache>, shutdown: platform::Shutdown) {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            // Changes made while disconnected were missed.
            cache.invalidate_all();
            loop {
                listener.recv().await?;
                cache.invalidate_all();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            result = attempt => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "config listener lost its connection");
                }
                cache.invalidate_all();
            }
            _ = shutdown.wait() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
