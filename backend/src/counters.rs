//! Usage counters aggregated in memory per application and flushed to Postgres in batches.
//!
//! Every check-and-count for one application runs under that application's lock, so one process never
//! overshoots a limit. Pending usage is written at least every second and on shutdown; after each flush a
//! counter's value is re-read from the database (`RETURNING`), which folds in other replicas' usage.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::period::Period;

/// A change to a counter: `+n` or `#n` (set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add(i64),
    Set(i64),
}

impl Op {
    pub fn apply(self, current: i64) -> i64 {
        match self {
            Op::Add(n) => current.saturating_add(n),
            Op::Set(n) => n,
        }
    }

    /// `self` followed by `later`.
    pub fn then(self, later: Op) -> Op {
        match (self, later) {
            (_, Op::Set(n)) => Op::Set(n),
            (Op::Add(a), Op::Add(b)) => Op::Add(a.saturating_add(b)),
            (Op::Set(a), Op::Add(b)) => Op::Set(a.saturating_add(b)),
        }
    }
}

/// One counter of an application: a metric in one period instance (`start` in UNIX seconds).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CellKey {
    pub metric_id: Arc<str>,
    pub period: Period,
    pub start: i64,
}

impl CellKey {
    /// The counter of `metric_id` in the instance of `period` that contains `ts` (UNIX seconds).
    pub fn new(metric_id: &Arc<str>, period: Period, ts: i64) -> Self {
        Self {
            metric_id: metric_id.clone(),
            period,
            start: period.start_ts(ts),
        }
    }
}

#[derive(Default, Debug)]
struct Cell {
    /// The value including everything pending, once read from the database.
    known: Option<i64>,
    pending: Option<Op>,
    in_flight: Option<Op>,
    /// When `known` was last read from or written to the database.
    refreshed: Option<Instant>,
}

/// One application's counters; locked for a whole check-and-count.
#[derive(Default, Debug)]
pub struct AppCounters {
    cells: HashMap<CellKey, Cell>,
}

impl AppCounters {
    /// Applies `op` without needing the current value.
    pub fn apply(&mut self, key: CellKey, op: Op) {
        let cell = self.cells.entry(key).or_default();
        cell.known = cell.known.map(|v| op.apply(v));
        cell.pending = Some(match cell.pending {
            Some(p) => p.then(op),
            None => op,
        });
    }

    /// The current value of a loaded cell.
    pub fn value(&self, key: &CellKey) -> i64 {
        self.cells.get(key).and_then(|c| c.known).unwrap_or(0)
    }

    fn is_known(&self, key: &CellKey) -> bool {
        self.cells.get(key).is_some_and(|c| c.known.is_some())
    }
}

#[derive(Default)]
struct Slot {
    /// Held only for synchronous work (never across an await), so the hot path never yields while holding it.
    counters: Mutex<AppCounters>,
    /// One database read at a time per application, so a burst on a cold application reads once.
    loading: tokio::sync::Mutex<()>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, AppCounters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a counter value read from the database is trusted without a write refreshing it.
const STALE_AFTER: Duration = Duration::from_secs(1);
/// Rows per `INSERT` statement of a flush.
const CHUNK: usize = 5_000;
/// Applications (or rows) a flush handles between two yields to the scheduler.
const YIELD_EVERY: usize = 256;

/// service id → application id → counters.
type Apps = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Slot>>>;

#[derive(Default)]
pub struct Counters {
    apps: RwLock<Apps>,
    flush_lock: tokio::sync::Mutex<()>,
    flushes: AtomicUsize,
}

impl Counters {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, service_id: &str, app_id: &str) -> Arc<Slot> {
        {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = apps.get(service_id).and_then(|a| a.get(app_id)) {
                return slot.clone();
            }
        }
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        apps.entry(Arc::from(service_id))
            .or_default()
            .entry(Arc::from(app_id))
            .or_default()
            .clone()
    }

    /// Runs `f` on an application's counters with `keys` loaded, under the application's lock, so a
    /// check-and-count done by `f` is atomic.
    pub async fn with<R>(
        &self,
        pool: &PgPool,
        service_id: &str,
        app_id: &str,
        keys: &[CellKey],
        f: impl FnOnce(&mut AppCounters) -> R,
    ) -> Result<R, sqlx::Error> {
        let slot = self.slot(service_id, app_id);
        loop {
            let (missing, in_flight) = {
                let mut counters = slot.lock();
                if keys.iter().all(|k| counters.is_known(k)) {
                    return Ok(f(&mut counters));
                }
                let missing: Vec<CellKey> = keys
                    .iter()
                    .filter(|k| !counters.is_known(k))
                    .cloned()
                    .collect();
                let in_flight = missing
                    .iter()
                    .any(|k| counters.cells.get(k).is_some_and(|c| c.in_flight.is_some()));
                (missing, in_flight)
            };
            // While a flush writes a cell, the stored value may or may not include it yet: wait for the flush.
            if in_flight {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let _loading = slot.loading.lock().await;
            // Another request may have loaded them while this one waited.
            if keys.iter().all(|k| slot.lock().is_known(k)) {
                continue;
            }
            let stored = read(pool, service_id, app_id, &missing).await?;
            let mut counters = slot.lock();
            for key in missing {
                let base = stored.get(&key).copied().unwrap_or(0);
                let cell = counters.cells.entry(key).or_default();
                // A flush that started since the read knows better (it sets the value when it completes).
                if cell.known.is_none() && cell.in_flight.is_none() {
                    cell.known = Some(cell.pending.map_or(base, |p| p.apply(base)));
                    cell.refreshed = Some(Instant::now());
                }
            }
        }
    }

    /// The value of one counter (for utilization), through the same consistent path.
    pub async fn current(
        &self,
        pool: &PgPool,
        service_id: &str,
        app_id: &str,
        metric_id: &str,
        period: Period,
        at: DateTime<Utc>,
    ) -> Result<i64, sqlx::Error> {
        let key = CellKey::new(&Arc::from(metric_id), period, at.timestamp());
        self.with(pool, service_id, app_id, std::slice::from_ref(&key), |c| {
            c.value(&key)
        })
        .await
    }

    /// Writes everything pending. On failure the usage stays pending for the next flush.
    pub async fn flush(&self, pool: &PgPool) -> Result<usize, sqlx::Error> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let slots: Vec<(Arc<str>, Arc<str>, Arc<Slot>)> = {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            apps.iter()
                .flat_map(|(sid, of_service)| {
                    of_service
                        .iter()
                        .map(|(aid, slot)| (sid.clone(), aid.clone(), slot.clone()))
                })
                .collect()
        };
        // Collect and mark in flight: (slot index, counter, value).
        let mut adds: Vec<(usize, CellKey, i64)> = Vec::new();
        let mut sets: Vec<(usize, CellKey, i64)> = Vec::new();
        for (i, (_, _, slot)) in slots.iter().enumerate() {
            // A flush touches every active application: let requests run in between, for their latency.
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            let mut counters = slot.lock();
            // Values not refreshed for a while are dropped, so they are re-read with other replicas' usage.
            counters.cells.retain(|_, c| {
                c.pending.is_some()
                    || c.in_flight.is_some()
                    || c.refreshed.is_some_and(|t| t.elapsed() < STALE_AFTER)
            });
            for (key, cell) in counters.cells.iter_mut() {
                if let Some(op) = cell.pending.take() {
                    cell.in_flight = Some(op);
                    match op {
                        Op::Add(n) => adds.push((i, key.clone(), n)),
                        Op::Set(n) => sets.push((i, key.clone(), n)),
                    }
                }
            }
        }
        let written = adds.len() + sets.len();
        let result = async {
            let added = write(pool, &slots, &adds, false).await?;
            let set = write(pool, &slots, &sets, true).await?;
            Ok::<_, sqlx::Error>((added, set))
        }
        .await;
        match result {
            Ok((added, set)) => {
                let done = adds.iter().zip(added).chain(sets.iter().zip(set));
                for (n, ((i, key, _), fresh)) in done.enumerate() {
                    if n % YIELD_EVERY == YIELD_EVERY - 1 {
                        tokio::task::yield_now().await;
                    }
                    let mut counters = slots[*i].2.lock();
                    if let Some(cell) = counters.cells.get_mut(key) {
                        cell.in_flight = None;
                        if let Some(v) = fresh {
                            cell.known = Some(cell.pending.map_or(v, |p| p.apply(v)));
                            cell.refreshed = Some(Instant::now());
                        }
                    }
                }
            }
            Err(e) => {
                for (_, _, slot) in &slots {
                    let mut counters = slot.lock();
                    for cell in counters.cells.values_mut() {
                        if let Some(done) = cell.in_flight.take() {
                            cell.pending = Some(match cell.pending {
                                Some(later) => done.then(later),
                                None => done,
                            });
                        }
                    }
                }
                return Err(e);
            }
        }
        drop(slots);
        // Forget applications without counters so the map stays bounded by recent traffic. Under the write lock
        // nobody can take a new reference, and a slot referenced only by the map has no request in progress.
        // That lock stops every request for a moment, so it is taken on every tenth flush only.
        if self
            .flushes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(10)
        {
            let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
            apps.retain(|_, of_service| {
                of_service
                    .retain(|_, slot| Arc::strong_count(slot) > 1 || !slot.lock().cells.is_empty());
                !of_service.is_empty()
            });
        }
        Ok(written)
    }
}

/// The stored values of `keys` of one application (absent rows are not in the map).
async fn read(
    pool: &PgPool,
    service_id: &str,
    app_id: &str,
    keys: &[CellKey],
) -> Result<HashMap<CellKey, i64>, sqlx::Error> {
    let metric_ids: Vec<&str> = keys.iter().map(|k| &*k.metric_id).collect();
    let periods: Vec<&str> = keys.iter().map(|k| k.period.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = keys
        .iter()
        .map(|k| DateTime::from_timestamp(k.start, 0).unwrap_or_default())
        .collect();
    let rows = sqlx::query(
        "SELECT c.metric_id, c.period, c.period_start, c.value FROM counters c
         JOIN UNNEST($3::text[], $4::text[], $5::timestamptz[]) AS k(m, p, s)
           ON c.metric_id = k.m AND c.period = k.p AND c.period_start = k.s
         WHERE c.service_id = $1 AND c.app_id = $2",
    )
    .bind(service_id)
    .bind(app_id)
    .bind(&metric_ids)
    .bind(&periods)
    .bind(&starts)
    .fetch_all(pool)
    .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in &rows {
        let metric_id: &str = row.try_get(0)?;
        let period: &str = row.try_get(1)?;
        let start: DateTime<Utc> = row.try_get(2)?;
        let value: i64 = row.try_get(3)?;
        let key = keys.iter().find(|k| {
            &*k.metric_id == metric_id
                && k.period.as_str() == period
                && k.start == start.timestamp()
        });
        if let Some(key) = key {
            stored.insert(key.clone(), value);
        }
    }
    Ok(stored)
}

/// Upserts `ops` (added, or set when `set`) and returns each one's stored value after the write.
async fn write(
    pool: &PgPool,
    slots: &[(Arc<str>, Arc<str>, Arc<Slot>)],
    ops: &[(usize, CellKey, i64)],
    set: bool,
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    let mut values = vec![None; ops.len()];
    let sql = if set { UPSERT_SET } else { UPSERT_ADD };
    for (n, chunk) in ops.chunks(CHUNK).enumerate() {
        let sids: Vec<&str> = chunk.iter().map(|(i, _, _)| &*slots[*i].0).collect();
        let aids: Vec<&str> = chunk.iter().map(|(i, _, _)| &*slots[*i].1).collect();
        let mids: Vec<&str> = chunk.iter().map(|(_, k, _)| &*k.metric_id).collect();
        let periods: Vec<&str> = chunk.iter().map(|(_, k, _)| k.period.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = chunk
            .iter()
            .map(|(_, k, _)| DateTime::from_timestamp(k.start, 0).unwrap_or_default())
            .collect();
        let deltas: Vec<i64> = chunk.iter().map(|(_, _, v)| *v).collect();
        let rows = sqlx::query(sql)
            .bind(&sids)
            .bind(&aids)
            .bind(&mids)
            .bind(&periods)
            .bind(&starts)
            .bind(&deltas)
            .fetch_all(pool)
            .await?;
        // RETURNING's row order is not guaranteed, so rows are matched back by their key.
        let index: HashMap<(&str, &str, &str, &str, i64), usize> = chunk
            .iter()
            .enumerate()
            .map(|(j, (i, k, _))| {
                (
                    (
                        &*slots[*i].0,
                        &*slots[*i].1,
                        &*k.metric_id,
                        k.period.as_str(),
                        k.start,
                    ),
                    n * CHUNK + j,
                )
            })
            .collect();
        for (r, row) in rows.iter().enumerate() {
            if r % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            let start: DateTime<Utc> = row.try_get(4)?;
            let key = (
                row.try_get::<&str, _>(0)?,
                row.try_get::<&str, _>(1)?,
                row.try_get::<&str, _>(2)?,
                row.try_get::<&str, _>(3)?,
                start.timestamp(),
            );
            if let Some(&at) = index.get(&key) {
                values[at] = Some(row.try_get(5)?);
            }
        }
    }
    Ok(values)
}

const UPSERT_ADD: &str = "INSERT INTO counters (service_id, app_id, metric_id, period, period_start, value)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[])
     ON CONFLICT (service_id, app_id, metric_id, period, period_start) DO UPDATE SET value = counters.value + EXCLUDED.value
     RETURNING service_id, app_id, metric_id, period, period_start, value";

const UPSERT_SET: &str = "INSERT INTO counters (service_id, app_id, metric_id, period, period_start, value)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[])
     ON CONFLICT (service_id, app_id, metric_id, period, period_start) DO UPDATE SET value = EXCLUDED.value
     RETURNING service_id, app_id, metric_id, period, period_start, value";

/// Flushes every `interval` until shutdown, then once more.
pub async fn flush_loop(
    pool: PgPool,
    counters: Arc<Counters>,
    interval: Duration,
    shutdown: platform::Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let started = Instant::now();
        match counters.flush(&pool).await {
            Ok(rows) => tracing::debug!(
                rows,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "flushed usage counters"
            ),
            Err(e) => tracing::warn!(error = %e, "flushing usage counters failed; retrying"),
        }
    }
}
