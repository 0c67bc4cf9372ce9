//! Benchmark: 1,000 application notifications through zync's API and the worker, to a fast REST IdP stand-in.
//! It prints notification-to-IdP latency p50/p99, jobs/s, and how many IdP calls 100 notifications for one
//! application cause. zync's API and the workers each get their own pool, as the two processes would, sized as
//! by default unless `DATABASE_POOL_SIZE` is set; `ZYNC_QUE_WORKERS` (or `BENCH_WORKERS`) sets the worker count
//! (default: zync-que's). Uses `DATABASE_URL` (default: local server, database `zync_bench`, dropped and created
//! afresh).

use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use platform::db::{Database, DbConfig};
use platform::{EnvReader, Secret, Shutdown};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const APPS: i64 = 1000;

#[derive(Default)]
struct Idp {
    first_put: Mutex<HashMap<String, Instant>>,
    puts: AtomicUsize,
}

async fn serve(app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

#[derive(serde::Deserialize)]
struct Find {
    application_id: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut env = EnvReader::from_env();
    let pool_size_set = env.raw("DATABASE_POOL_SIZE").is_some();
    let workers: usize = ["ZYNC_QUE_WORKERS", "BENCH_WORKERS"]
        .iter()
        .find_map(|name| env.raw(name).and_then(|v| v.parse().ok()))
        .unwrap_or(zync_que::WorkerConfig::default().workers)
        .max(1);
    let config = DbConfig::read(&mut env, "zync_bench");
    // A fresh database each run, so an older schema never gets in the way.
    if let Some(name) = config.url.database().map(str::to_owned) {
        use sqlx::{Connection, Executor};
        let mut admin = config.url.url().clone();
        admin.set_path("postgres");
        let mut conn = sqlx::PgConnection::connect(admin.as_str()).await?;
        conn.execute(
            format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                name.replace('"', "")
            )
            .as_str(),
        )
        .await?;
    }
    let db = Database::connect(&config, &zync_que::MIGRATOR).await?;
    let mut que_config = config.clone();
    if !pool_size_set {
        que_config.max_connections = zync_que::default_pool_size(workers);
    }
    let que_db = Database::connect(&que_config, &zync_que::MIGRATOR).await?;

    let idp = Arc::new(Idp::default());
    let idp_addr = serve(
        Router::new()
            .route(
                "/clients/{id}",
                put(
                    |State(s): State<Arc<Idp>>, Path(id): Path<String>| async move {
                        s.puts.fetch_add(1, Ordering::Relaxed);
                        s.first_put
                            .lock()
                            .unwrap()
                            .entry(id)
                            .or_insert_with(Instant::now);
                        Json(json!({}))
                    },
                ),
            )
            .with_state(idp.clone()),
    )
    .await?;
    let issuer = format!("http://zync:pw@{idp_addr}/");
    let system_addr = serve(
        Router::new()
            .route(
                "/admin/api/applications/find.json",
                get(|Query(q): Query<Find>| async move {
                    Json(json!({"application": {"id": q.application_id, "service_id": 1, "enabled": true,
                        "client_id": format!("c{}", q.application_id), "client_secret": "s", "name": "n",
                        "oidc_configuration": {"standard_flow_enabled": true}}}))
                }),
            )
            .route(
                "/admin/api/services/{id}/proxy.json",
                get(move |Path(id): Path<i64>| {
                    let issuer = issuer.clone();
                    async move {
                        Json(json!({"proxy": {"service_id": id, "authentication_method": "oidc",
                            "oidc_issuer_endpoint": issuer, "oidc_issuer_type": "rest"}}))
                    }
                }),
            ),
    )
    .await?;
    let zync_addr = serve(zync::router(zync::AppState {
        db: db.clone(),
        token: Some(Secret::new("bench")),
    }))
    .await?;

    let http = zync_que::http_client(None, Duration::from_secs(10))?;
    let shutdown = Shutdown::new();
    let worker_config = zync_que::WorkerConfig {
        workers,
        ..Default::default()
    };
    let worker = tokio::spawn(zync_que::run(
        que_db.pool().clone(),
        worker_config,
        http,
        shutdown.clone(),
    ));

    let client = reqwest::Client::new();
    let put = move |path: &'static str, body: Value| {
        let client = client.clone();
        async move {
            let res = client
                .put(format!("http://{zync_addr}{path}"))
                .header("authorization", "Token token=\"bench\"")
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(res.status().is_success(), "{path}: {}", res.status());
            Ok::<_, anyhow::Error>(())
        }
    };
    put(
        "/tenant",
        json!({"id": 1, "endpoint": format!("http://{system_addr}/"), "access_token": "t"}),
    )
    .await?;
    put(
        "/notification",
        json!({"type": "Service", "id": 1, "tenant_id": 1}),
    )
    .await?;

    // 1,000 notifications, 8 in flight at a time, as system's Sidekiq would send them.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(1));
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (sent, next, put) = (sent.clone(), next.clone(), put.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed) as i64;
                if id > APPS {
                    return Ok::<_, anyhow::Error>(());
                }
                sent.lock()
                    .unwrap()
                    .insert(format!("c{id}"), Instant::now());
                put(
                    "/notification",
                    json!({"type": "Application", "id": id, "service_id": 1, "tenant_id": 1}),
                )
                .await?;
            }
        }));
    }
    for s in senders {
        s.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while idp.first_put.lock().unwrap().len() < APPS as usize {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all clients reached the IdP in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = {
        let sent = sent.lock().unwrap();
        let arrived = idp.first_put.lock().unwrap();
        arrived
            .iter()
            .map(|(id, at)| at.saturating_duration_since(sent[id]))
            .collect()
    };
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];

    // 100 notifications for one application not synced before, so the identical-push rule cannot hide calls:
    // what keeps the count down is the one job row per application.
    let before = idp.puts.load(Ordering::Relaxed);
    for _ in 0..100 {
        put(
            "/notification",
            json!({"type": "Application", "id": APPS + 1, "service_id": 1, "tenant_id": 1}),
        )
        .await?;
    }
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'pending'")
            .fetch_one(db.pool())
            .await?;
        if pending == 0 || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let burst_calls = idp.puts.load(Ordering::Relaxed) - before;

    println!(
        "notifications: {APPS}, workers: {workers}, pools: zync {} / zync-que {}",
        config.max_connections, que_config.max_connections
    );
    println!("notification-to-IdP latency p50: {:?}", pct(0.50));
    println!("notification-to-IdP latency p99: {:?}", pct(0.99));
    println!(
        "throughput: {:.0} jobs/s",
        APPS as f64 / elapsed.as_secs_f64()
    );
    println!("IdP calls for 100 notifications of one application: {burst_calls}");
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(2), worker).await;
    Ok(())
}
