//! Benchmark: a small upstream, the real backend, the real gateway (user_key service, 3 mapping rules) and Debian's
//! nginx doing a plain `proxy_pass`, each driven by wrk with the same connections and duration in alternating
//! rounds. Prints requests/s, p50/p99, the ratios and the gateway's resident memory. Not a test: it asserts nothing.
//!
//! Run after `cargo build --release -p gateway -p backend --bins`:
//! `target/release/gateway-bench` (knobs: `BENCH_SECONDS`, `BENCH_CONNECTIONS`, `BENCH_THREADS`, `BENCH_ROUNDS`,
//! `DATABASE_URL` for backend, `NGINX` for the nginx binary).

use anyhow::{bail, Context as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Polls `url` until it answers 2xx, for at most `within`.
async fn wait_ready(url: &str, within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One wrk run's figures.
#[derive(Clone, Copy, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_duration_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> anyhow::Result<Run> {
    let mut run = Run::default();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse()?,
            ["50%", v] => run.p50_ms = parse_duration_ms(v).unwrap_or(0.0),
            ["99%", v] => run.p99_ms = parse_duration_ms(v).unwrap_or(0.0),
            _ => {}
        }
    }
    if run.rps == 0.0 {
        bail!("could not read wrk's output:\n{out}");
    }
    Ok(run)
}

async fn wrk(
    url: &str,
    host: &str,
    threads: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Run> {
    let out = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "-H",
            &format!("Host: {host}"),
            url,
        ])
        .output()
        .await
        .context("running wrk (apt-get install -y wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        bail!("wrk saw non-2xx answers from {url}:\n{text}");
    }
    parse_wrk(&text)
}

fn spawn(program: &Path, envs: &[(&str, String)], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    let mut cmd = Command::new(program);
    cmd.envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Stops nginx when the benchmark ends, on success or error. Killing only the master would leave its workers
/// running as orphans, so the master is asked to quit (`nginx -s quit`) and given a few seconds to stop them.
struct NginxGuard {
    child: Child,
    program: String,
    prefix: PathBuf,
    conf: PathBuf,
}

impl Drop for NginxGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.program)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "quit"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.start_kill();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let connections: usize = env_or("BENCH_CONNECTIONS", 64);
    let threads: usize = env_or("BENCH_THREADS", 2);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let nginx = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/gateway_bench".into());
    let bin_dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("the benchmark binary has a directory")?
        .to_owned();
    let work = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    // The upstream: a tiny HTTP server answering 200 "ok", on its own runtime threads.
    let upstream_addr = free_port()?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let app = axum::Router::new().fallback(|| async { "ok" });
            let listener = tokio::net::TcpListener::bind(upstream_addr)
                .await
                .expect("upstream port");
            axum::serve(listener, app).await.expect("upstream serves");
        });
    });
    wait_ready(&format!("http://{upstream_addr}/"), Duration::from_secs(10)).await?;

    // The real backend, seeded with one service, one metric and one application with a user key.
    let backend_addr = free_port()?;
    let _backend = spawn(
        &bin_dir.join("backend"),
        &[
            ("LISTEN_ADDR", backend_addr.to_string()),
            ("DATABASE_URL", database_url.clone()),
            ("RUST_LOG", "warn".into()),
        ],
        &work.join("backend.log"),
    )?;
    let backend = format!("http://{backend_addr}");
    wait_ready(&format!("{backend}/status"), Duration::from_secs(60)).await?;
    let client = reqwest::Client::new();
    for (path, body) in [
        (
            "/internal/services/1".to_owned(),
            serde_json::json!({"service": {"id": "1", "provider_key": "bench-pk", "backend_version": "1"}}),
        ),
        (
            "/internal/services/1/metrics/1".to_owned(),
            serde_json::json!({"metric": {"name": "hits"}}),
        ),
        (
            "/internal/services/1/applications/bench-app".to_owned(),
            serde_json::json!({"application": {"id": "bench-app", "state": "active", "plan_id": "p", "plan_name": "Bench"}}),
        ),
        (
            "/internal/services/1/applications/bench-app/key/bench-key".to_owned(),
            serde_json::json!({}),
        ),
    ] {
        // backend answers /status before its migrations ran (and Postgres may be short of connections): retry.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status = client
                .put(format!("{backend}{path}"))
                .json(&body)
                .send()
                .await
                .map(|r| r.status());
            match status {
                Ok(s) if s.is_success() => break,
                other if Instant::now() > deadline => bail!("seeding backend {path}: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    // The gateway: one user_key service with three mapping rules.
    let gateway_addr = free_port()?;
    let management_addr = free_port()?;
    let config = serde_json::json!({"services": [{
        "id": 1, "backend_version": 1,
        "backend_authentication_type": "provider_key", "backend_authentication_value": "bench-pk",
        "proxy": {
            "hosts": ["bench.test"],
            "api_backend": format!("http://{upstream_addr}"),
            "backend": {"endpoint": backend},
            "proxy_rules": [
                {"http_method": "GET", "pattern": "/bench", "metric_system_name": "hits", "delta": 1},
                {"http_method": "GET", "pattern": "/bench/{id}$", "metric_system_name": "hits", "delta": 1},
                {"http_method": "POST", "pattern": "/other", "metric_system_name": "hits", "delta": 1}
            ]
        }
    }]});
    let config_path = work.join("apicast.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let gateway = spawn(
        &bin_dir.join("gateway"),
        &[
            ("LISTEN_ADDR", gateway_addr.to_string()),
            ("MANAGEMENT_LISTEN_ADDR", management_addr.to_string()),
            ("THREESCALE_CONFIG_FILE", config_path.display().to_string()),
            ("RUST_LOG", "warn".into()),
        ],
        &work.join("gateway.log"),
    )?;
    let gateway_pid = gateway.id().context("gateway pid")?;
    wait_ready(
        &format!("http://{management_addr}/status/ready"),
        Duration::from_secs(30),
    )
    .await?;

    // nginx: plain proxy_pass with upstream keep-alive, as a reverse proxy is usually set up.
    let nginx_addr = free_port()?;
    let nginx_conf = format!(
        "worker_processes auto;\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {work}/body;\n  proxy_temp_path {work}/proxy;\n\
         fastcgi_temp_path {work}/fastcgi;\n  uwsgi_temp_path {work}/uwsgi;\n  scgi_temp_path {work}/scgi;\n\
         upstream api {{ server {upstream_addr}; keepalive 256; }}\n\
         server {{\n    listen {nginx_addr};\n    location / {{\n      proxy_pass http://api;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        work = work.display()
    );
    let conf_path = work.join("nginx.conf");
    std::fs::write(&conf_path, nginx_conf)?;
    let mut nginx_cmd = Command::new(&nginx);
    nginx_cmd
        .args([
            "-p",
            &work.display().to_string(),
            "-c",
            &conf_path.display().to_string(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let nginx_guard = NginxGuard {
        child: nginx_cmd
            .spawn()
            .with_context(|| format!("starting {nginx} (apt-get install -y nginx)"))?,
        program: nginx.clone(),
        prefix: work.clone(),
        conf: conf_path.clone(),
    };
    wait_ready(&format!("http://{nginx_addr}/"), Duration::from_secs(10)).await?;

    let path = "/bench/42?user_key=bench-key";
    let targets = [
        ("direct", format!("http://{upstream_addr}{path}")),
        ("nginx", format!("http://{nginx_addr}{path}")),
        ("gateway", format!("http://{gateway_addr}{path}")),
    ];
    for (name, url) in &targets {
        let r = client.get(url).header("host", "bench.test").send().await?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "{name}: {url} answered {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
    }
    // Warm up: the first gateway request fills the authorization cache, the others open connections.
    for (_, url) in &targets {
        wrk(url, "bench.test", 1, 4, 2).await?;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "{rounds} rounds x {seconds}s, {connections} connections, {threads} wrk threads; load before: {}",
        load.trim()
    );
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        // Rotate the order so no target always runs first or last.
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let (name, url) = &targets[i];
            let run = wrk(url, "bench.test", threads, connections, seconds).await?;
            eprintln!(
                "round {} {name:8} {:>10.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                round + 1,
                run.rps,
                run.p50_ms,
                run.p99_ms
            );
            results[i].push(run);
        }
    }
    let rss_after = rss_kb(gateway_pid, "VmRSS:");
    let wide = 256;
    let wide_run = wrk(&targets[2].1, "bench.test", threads, wide, seconds.min(5)).await?;
    let rss_wide = rss_kb(gateway_pid, "VmRSS:");
    let hwm = rss_kb(gateway_pid, "VmHWM:");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let summary: Vec<(f64, f64, f64)> = results
        .iter()
        .map(|runs| {
            (
                median(runs.iter().map(|r| r.rps).collect()),
                median(runs.iter().map(|r| r.p50_ms).collect()),
                median(runs.iter().map(|r| r.p99_ms).collect()),
            )
        })
        .collect();
    println!("\nmedian of {rounds} rounds, {seconds}s each, {connections} connections, {threads} wrk threads");
    println!("| target | req/s | p50 | p99 | req/s vs direct | req/s vs nginx |");
    println!("|---|---|---|---|---|---|");
    for (i, (name, _)) in targets.iter().enumerate() {
        let (rps, p50, p99) = summary[i];
        println!(
            "| {name} | {rps:.0} | {p50:.2} ms | {p99:.2} ms | {:.2}x | {:.2}x |",
            rps / summary[0].0,
            rps / summary[1].0
        );
    }
    println!(
        "\ngateway RSS: {:.1} MB after the rounds; {:.1} MB after {wide} connections ({:.0} req/s); peak {:.1} MB",
        rss_after as f64 / 1024.0,
        rss_wide as f64 / 1024.0,
        wide_run.rps,
        hwm as f64 / 1024.0
    );
    println!("load average at the end: {}", load.trim());
    drop(nginx_guard);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
