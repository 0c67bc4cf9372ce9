//! Benchmark: runs the real `backend` binary as its own process, seeds 100 services × 100 applications with
//! limits, drives `authrep.xml` from this (separate) process over keep-alive connections, and prints requests/s,
//! p50/p99 latency and backend's own resident memory; then stops backend (SIGTERM, graceful flush) and checks that
//! the stored counters equal the authorized calls.
//!
//! ```text
//! cargo build --release -p backend --bins && target/release/backend-bench
//! ```
//! Environment: `DATABASE_URL` (`postgres://postgres@127.0.0.1:5432/backend_bench`, recreated empty),
//! `BENCH_SECONDS` (10), `BENCH_WARMUP` (1: first one call to each application, the cold path, printed
//! separately; 0 to skip), `BENCH_CONNECTIONS` (64),
//! `BENCH_GENERATOR_THREADS` (1), `BENCH_PORT` (3901), `BACKEND_BIN` (the `backend` next to this binary).
//!
//! Sub-commands for other load generators (e.g. `wrk -s backend/bench/authrep.lua`): `backend-bench seed URL`
//! seeds a running backend; `backend-bench load URL` drives it and prints the numbers.
//!
//! The load generator writes pre-built requests on raw TCP and reads each response's head and `Content-Length`
//! body, so it costs far less CPU than an HTTP client library; every request it starts is completed and counted.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVICES: u64 = 100;
const APPS: u64 = 100;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: usize = env_or("BENCH_GENERATOR_THREADS", 1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.first().map(String::as_str) {
            Some("seed") => seed(args.get(1).map_or("http://127.0.0.1:3001", String::as_str)).await,
            Some("load") => {
                let addr = args.get(1).map_or("http://127.0.0.1:3001", String::as_str);
                let (_, ok) =
                    load_and_print(addr, Load::Seconds(env_or("BENCH_SECONDS", 10)), "run").await?;
                println!("authorized: {ok}");
                Ok(())
            }
            None | Some("run") => run().await,
            Some(other) => {
                anyhow::bail!("unknown sub-command {other:?}: use run, seed URL or load URL")
            }
        }
    })
}

/// The whole benchmark with backend as a child process.
async fn run() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/backend_bench".into());
    let port: u16 = env_or("BENCH_PORT", 3901);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let warmup = env_or("BENCH_WARMUP", 1) != 0;
    let binary = std::env::var("BACKEND_BIN")
        .map(Into::into)
        .unwrap_or_else(|_| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("backend")))
                .unwrap_or_else(|| "backend".into())
        });
    recreate_database(&url).await?;
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(&binary)
        .env("DATABASE_URL", &url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
    let pid = child.id();
    let result = async {
        wait_ready(&base).await?;
        eprintln!("backend pid {pid} ({}) ready; seeding ...", binary.display());
        seed(&base).await?;
        let (rss, _) = memory_kb(pid);
        eprintln!("seeded; backend RSS {} MB", rss / 1024);
        let mut authorized = 0;
        if warmup {
            let (_, ok) = load_and_print(&base, Load::OnePass, "warm-up: one call to each application").await?;
            authorized += ok;
        }
        let cpu_before = cpu_seconds(pid);
        let (total, ok) = load_and_print(&base, Load::Seconds(seconds), "measured").await?;
        authorized += ok;
        let cpu = cpu_seconds(pid) - cpu_before;
        let (rss, hwm) = memory_kb(pid);
        println!(
            "backend:    RSS {:.1} MB (peak {:.1} MB); {cpu:.2} CPU-s in the measured run, {:.1} µs per request",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            cpu * 1e6 / total.max(1) as f64
        );
        Ok::<u64, anyhow::Error>(authorized)
    }
    .await;
    stop(&mut child)?;
    let authorized = result?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let (stored,): (Option<i64>,) =
        sqlx::query_as("SELECT sum(value)::bigint FROM counters WHERE period = 'eternity'")
            .fetch_one(&pool)
            .await?;
    let stored = stored.unwrap_or(0);
    println!("stored eternity counters: {stored} (authorized {authorized})");
    anyhow::ensure!(
        stored == authorized as i64,
        "stored counters differ from authorized calls"
    );
    Ok(())
}

async fn recreate_database(url: &str) -> anyhow::Result<()> {
    let (admin, name) = url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("DATABASE_URL has no database name"))?;
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name {name:?} must be alphanumeric"
    );
    let pool = sqlx::PgPool::connect(&format!("{admin}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(format!("{base}/status/ready")).send().await {
            if res.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "backend not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then wait for the graceful shutdown (which flushes every pending counter).
fn stop(child: &mut Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "backend exited with {status}");
            return Ok(());
        }
        if Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("backend did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 100 services, each with metric `hits` limited per minute and per day, and 100 active applications.
async fn seed(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for s in 1..=SERVICES {
        let put = |path: String, body: serde_json::Value| {
            let client = client.clone();
            async move {
                let res = client
                    .put(format!("{base}{path}"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(res.status().is_success(), "{path}: {}", res.status());
                Ok::<(), anyhow::Error>(())
            }
        };
        put(
            format!("/internal/services/{s}"),
            serde_json::json!({"service": {"id": s.to_string(), "provider_key": format!("pk{s}")}}),
        )
        .await?;
        put(
            format!("/internal/services/{s}/metrics/1"),
            serde_json::json!({"metric": {"name": "hits"}}),
        )
        .await?;
        put(
            format!("/internal/services/{s}/plans/p/usagelimits/1/minute"),
            serde_json::json!({"usagelimit": {"minute": 1_000_000}}),
        )
        .await?;
        put(
            format!("/internal/services/{s}/plans/p/usagelimits/1/day"),
            serde_json::json!({"usagelimit": {"day": 100_000_000}}),
        )
        .await?;
        let batch: Vec<serde_json::Value> = (1..=APPS)
            .map(|a| serde_json::json!({"id": format!("a{a}"), "state": "active", "plan_id": "p", "plan_name": "Bench"}))
            .collect();
        put(
            format!("/internal/services/{s}/applications/batch"),
            serde_json::json!({"applications": batch}),
        )
        .await?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Load {
    Seconds(u64),
    /// One request to each application.
    OnePass,
}

/// Runs the load, prints its numbers, returns (requests, authorized).
async fn load_and_print(base: &str, load: Load, label: &str) -> anyhow::Result<(u64, u64)> {
    let connections: usize = env_or("BENCH_CONNECTIONS", 64);
    let addr = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("URL must start with http://"))?
        .trim_end_matches('/')
        .to_owned();
    let started = Instant::now();
    let (deadline, count) = match load {
        Load::Seconds(s) => (started + Duration::from_secs(s), u64::MAX),
        Load::OnePass => (started + Duration::from_secs(3600), SERVICES * APPS),
    };
    let mut workers = Vec::new();
    for w in 0..connections {
        let addr = addr.clone();
        workers.push(tokio::spawn(async move {
            drive(
                &addr,
                w as u64,
                connections as u64,
                started,
                deadline,
                count,
            )
            .await
        }));
    }
    let mut latencies: Vec<u32> = Vec::new();
    let mut timeline: Vec<(u32, u32)> = Vec::new();
    let (mut ok, mut other) = (0u64, 0u64);
    for w in workers {
        let done = w.await??;
        timeline.extend(
            done.sent_ms
                .iter()
                .copied()
                .zip(done.latencies_us.iter().copied()),
        );
        latencies.extend(done.latencies_us);
        ok += done.ok;
        other += done.other;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    let total = latencies.len() as u64;
    let mut out = std::io::stdout().lock();
    if env_or("BENCH_TIMELINE", 0) != 0 {
        // Where the slow requests are: per 250 ms window, requests and p99.
        let mut windows: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for (at, latency) in timeline {
            windows.entry(at / 250).or_default().push(latency);
        }
        for (window, mut l) in windows {
            l.sort_unstable();
            let p99 = l[(l.len() * 99 / 100).min(l.len() - 1)];
            writeln!(
                out,
                "  {:>6} ms: {:>6} requests, p99 {:.2} ms",
                window * 250,
                l.len(),
                p99 as f64 / 1000.0
            )?;
        }
    }
    writeln!(out, "== {label}: {elapsed:.1} s, {connections} connections")?;
    writeln!(
        out,
        "requests:   {total} ({ok} authorized, {other} other statuses)"
    )?;
    writeln!(out, "req/s:      {:.0}", total as f64 / elapsed)?;
    writeln!(
        out,
        "latency:    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    )?;
    Ok((total, ok))
}

struct Driven {
    latencies_us: Vec<u32>,
    /// When each request was sent, in ms since the load started (for `BENCH_TIMELINE`).
    sent_ms: Vec<u32>,
    ok: u64,
    other: u64,
}

/// One keep-alive connection sending authreps in turn to every application until `deadline` (or `count` calls
/// across all connections).
async fn drive(
    addr: &str,
    first: u64,
    step: u64,
    started: Instant,
    deadline: Instant,
    count: u64,
) -> anyhow::Result<Driven> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Driven {
        latencies_us: Vec::with_capacity(1 << 16),
        sent_ms: Vec::with_capacity(1 << 16),
        ok: 0,
        other: 0,
    };
    let mut i = first;
    let mut request = Vec::with_capacity(256);
    while i < count && Instant::now() < deadline {
        let s = i % SERVICES + 1;
        let a = (i / SERVICES) % APPS + 1;
        i += step;
        request.clear();
        write!(
            request,
            "GET /transactions/authrep.xml?provider_key=pk{s}&service_id={s}&app_id=a{a}&usage%5Bhits%5D=1 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )?;
        let sent = Instant::now();
        stream.write_all(&request).await?;
        let status = read_response(&mut stream, &mut buf).await?;
        out.latencies_us
            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        out.sent_ms
            .push(sent.saturating_duration_since(started).as_millis() as u32);
        if status == 200 {
            out.ok += 1;
        } else {
            out.other += 1;
        }
    }
    Ok(out)
}

/// Reads one response (head plus a `Content-Length` body) and returns its status code.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        anyhow::ensure!(n > 0, "connection closed by backend");
        filled += n;
        let Some(head_end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..head_end])?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let total = head_end + 4 + length;
        while filled < total {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = stream.read(&mut buf[filled..]).await?;
            anyhow::ensure!(n > 0, "connection closed by backend");
            filled += n;
        }
        anyhow::ensure!(filled == total, "unexpected bytes after a response");
        return Ok(status);
    }
}
