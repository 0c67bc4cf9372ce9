//! Benchmark: a small upstream, the real backend, the real gateway (a user_key service and an OpenID Connect service,
//! 3 mapping rules each) and Debian's nginx doing a plain `proxy_pass`, each driven by wrk with the same connections
//! and duration in alternating rounds, then at a fixed 1,000 requests/s by an open-loop generator. Prints requests/s,
//! p50/p99, CPU time per request, the ratios and the gateway's resident memory. Not a test: it asserts nothing.
//!
//! Run after `cargo build --release -p gateway -p backend --bins`:
//! `target/release/gateway-bench` (knobs: `BENCH_SECONDS`, `BENCH_CONNECTIONS`, `BENCH_THREADS`, `BENCH_ROUNDS`,
//! `BENCH_RATE`, `DATABASE_URL` for backend, `NGINX` for the nginx binary; needs `wrk`, `nginx` and `openssl`).

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

/// What wrk drives: a URL, the `Host` header and one optional extra header (`Authorization` for OIDC).
#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    host: &'static str,
    header: Option<String>,
    /// Processes whose CPU time is charged to this target (nginx master and workers, or the gateway).
    pids: Vec<u32>,
}

impl Target {
    /// The extra header as name and value, for clients other than wrk.
    fn header_pair(&self) -> Option<(&str, &str)> {
        self.header.as_deref().and_then(|h| h.split_once(": "))
    }
}

async fn wrk(
    target: &Target,
    threads: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Run> {
    let mut args = vec![
        "--latency".to_owned(),
        "-t".to_owned(),
        threads.to_string(),
        "-c".to_owned(),
        connections.to_string(),
        "-d".to_owned(),
        format!("{seconds}s"),
        "-H".to_owned(),
        format!("Host: {}", target.host),
    ];
    if let Some(header) = &target.header {
        args.push("-H".to_owned());
        args.push(header.clone());
    }
    args.push(target.url.clone());
    let url = &target.url;
    let out = Command::new("wrk")
        .args(&args)
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

/// User plus system CPU time, in clock ticks, of `pids` and their child processes (nginx's workers).
fn cpu_ticks(pids: &[u32]) -> u64 {
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut queue: Vec<u32> = pids.to_vec();
    while let Some(pid) = queue.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name (which may hold spaces): utime is the 14th field, stime the 15th.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let get = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                total += get(11) + get(12);
            }
        }
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            queue.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    total
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// An RS256 key pair made with the openssl command: (private PEM, public PEM).
fn rsa_key_pair(dir: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let private = dir.join("oidc-key.pem");
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .context("running openssl (apt-get install -y openssl)")?;
    if !status.success() {
        bail!("openssl genrsa failed");
    }
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .stderr(Stdio::null())
        .output()?;
    if !public.status.success() {
        bail!("openssl rsa -pubout failed");
    }
    Ok((std::fs::read(&private)?, String::from_utf8(public.stdout)?))
}

/// Latency percentiles of an open-loop run at a fixed rate, measured from each request's scheduled start so that a
/// stall delays (and counts against) every request scheduled during it.
#[derive(Clone, Copy, Default)]
struct Fixed {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: usize,
}

async fn fixed_rate(target: &Target, rate: u64, seconds: u64) -> anyhow::Result<Fixed> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
    let uri: http::Uri = target.url.parse()?;
    let total = rate * seconds;
    // The schedule is kept by a plain thread (sleeps are precise to tens of microseconds; tokio's timer wheel has a
    // 1 ms granularity, which would swamp the latencies being measured).
    let (ticks, mut scheduled_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(10);
        for i in 0..total {
            let at = start + period * i as u32;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if ticks.send(at).is_err() {
                return;
            }
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(scheduled) = scheduled_rx.recv().await {
        let client = client.clone();
        let mut request = http::Request::get(uri.clone()).header("host", target.host);
        if let Some((name, value)) = target.header_pair() {
            request = request.header(name, value);
        }
        let request = request.body(http_body_util::Empty::new())?;
        tasks.spawn(async move {
            let ok = match client.request(request).await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    ok && response.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            (scheduled.elapsed(), ok)
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (latency, ok) = done?;
        if !ok {
            errors += 1;
        }
        latencies.push(latency.as_secs_f64() * 1000.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Fixed {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        errors,
    })
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
        (
            "/internal/services/2".to_owned(),
            serde_json::json!({"service": {"id": "2", "provider_key": "bench-pk", "backend_version": "oauth"}}),
        ),
        (
            "/internal/services/2/metrics/1".to_owned(),
            serde_json::json!({"metric": {"name": "hits"}}),
        ),
        (
            "/internal/services/2/applications/bench-client".to_owned(),
            serde_json::json!({"application": {"id": "bench-client", "state": "active", "plan_id": "p", "plan_name": "Bench"}}),
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

    // The gateway: a user_key service and an OpenID Connect service, three mapping rules each. The OIDC service's
    // issuer and key come in the configuration (APIcast's `oidc[]`), as system would supply them.
    let (private_pem, public_pem) = rsa_key_pair(&work)?;
    let issuer = "https://idp.bench.test/realms/bench";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("bench-kid".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
        },
        &serde_json::json!({"iss": issuer, "azp": "bench-client", "sub": "bench", "iat": now, "exp": now + 86_400}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private_pem)?,
    )?;
    let gateway_addr = free_port()?;
    let management_addr = free_port()?;
    let rules = serde_json::json!([
        {"http_method": "GET", "pattern": "/bench", "metric_system_name": "hits", "delta": 1},
        {"http_method": "GET", "pattern": "/bench/{id}$", "metric_system_name": "hits", "delta": 1},
        {"http_method": "POST", "pattern": "/other", "metric_system_name": "hits", "delta": 1}
    ]);
    let config = serde_json::json!({
        "services": [
            {
                "id": 1, "backend_version": 1,
                "backend_authentication_type": "provider_key", "backend_authentication_value": "bench-pk",
                "proxy": {
                    "hosts": ["bench.test"],
                    "api_backend": format!("http://{upstream_addr}"),
                    "backend": {"endpoint": backend},
                    "proxy_rules": rules
                }
            },
            {
                "id": 2, "backend_version": "oauth",
                "backend_authentication_type": "provider_key", "backend_authentication_value": "bench-pk",
                "proxy": {
                    "hosts": ["oidc.bench.test"],
                    "authentication_method": "oidc",
                    "oidc_issuer_endpoint": issuer,
                    "api_backend": format!("http://{upstream_addr}"),
                    "backend": {"endpoint": backend},
                    "proxy_rules": rules
                }
            }
        ],
        "oidc": [
            {},
            {"issuer": issuer, "config": {"issuer": issuer}, "keys": {"bench-kid": {"pem": public_pem, "alg": "RS256"}}}
        ]
    });
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

    let nginx_pid = nginx_guard.child.id().context("nginx pid")?;
    let target = |name, url: String, host, header: Option<String>, pids: Vec<u32>| Target {
        name,
        url,
        host,
        header,
        pids,
    };
    let targets = [
        target(
            "direct",
            format!("http://{upstream_addr}/bench/42?user_key=bench-key"),
            "bench.test",
            None,
            vec![],
        ),
        target(
            "nginx",
            format!("http://{nginx_addr}/bench/42?user_key=bench-key"),
            "bench.test",
            None,
            vec![nginx_pid],
        ),
        target(
            "gateway (user_key)",
            format!("http://{gateway_addr}/bench/42?user_key=bench-key"),
            "bench.test",
            None,
            vec![gateway_pid],
        ),
        target(
            "gateway (OIDC)",
            format!("http://{gateway_addr}/bench/42"),
            "oidc.bench.test",
            Some(format!("Authorization: Bearer {token}")),
            vec![gateway_pid],
        ),
    ];
    for t in &targets {
        let mut request = client.get(&t.url).header("host", t.host);
        if let Some((name, value)) = t.header_pair() {
            request = request.header(name, value);
        }
        let r = request.send().await?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "{}: {} answered {status}: {}",
                t.name,
                t.url,
                r.text().await.unwrap_or_default()
            );
        }
    }
    // Warm up: the first gateway request of each service fills the authorization cache, the others open connections.
    for t in &targets {
        wrk(t, 1, 4, 2).await?;
    }
    let tick = ticks_per_second();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "{rounds} rounds x {seconds}s, {connections} connections, {threads} wrk threads; load before: {}",
        load.trim()
    );
    let mut results: Vec<Vec<(Run, f64)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        // Rotate the order so no target always runs first or last.
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let t = &targets[i];
            let before = cpu_ticks(&t.pids);
            let run = wrk(t, threads, connections, seconds).await?;
            let cpu_us =
                (cpu_ticks(&t.pids) - before) as f64 / tick * 1e6 / (run.rps * seconds as f64);
            eprintln!(
                "round {} {:20} {:>10.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  cpu {:>5.1} us/req",
                round + 1,
                t.name,
                run.rps,
                run.p50_ms,
                run.p99_ms,
                cpu_us
            );
            results[i].push((run, cpu_us));
        }
    }
    let rss_after = rss_kb(gateway_pid, "VmRSS:");

    // 256 connections, with the gateway's resident memory sampled while they are open.
    let wide = 256;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut max = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_kb(gateway_pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };
    let wide_run = wrk(&targets[2], threads, wide, seconds.min(5)).await?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss_wide = sampler.await?;

    // Open loop at a fixed rate: the latency the gateway adds when the machine is not saturated.
    let rate: u64 = env_or("BENCH_RATE", 1000);
    let fixed_seconds = seconds.min(10);
    let mut fixed = Vec::new();
    for t in &targets {
        // One discarded second first, so each target starts with its connections open.
        fixed_rate(t, rate, 1).await?;
        let f = fixed_rate(t, rate, fixed_seconds).await?;
        eprintln!(
            "fixed {rate}/s {:20} p50 {:>6.3} ms  p99 {:>6.3} ms  p99.9 {:>6.3} ms  errors {}",
            t.name, f.p50_ms, f.p99_ms, f.p999_ms, f.errors
        );
        fixed.push(f);
    }
    let hwm = rss_kb(gateway_pid, "VmHWM:");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let summary: Vec<(f64, f64, f64, f64)> = results
        .iter()
        .map(|runs| {
            (
                median(runs.iter().map(|(r, _)| r.rps).collect()),
                median(runs.iter().map(|(r, _)| r.p50_ms).collect()),
                median(runs.iter().map(|(r, _)| r.p99_ms).collect()),
                median(runs.iter().map(|(_, c)| *c).collect()),
            )
        })
        .collect();
    println!("\nmedian of {rounds} rounds, {seconds}s each, {connections} connections, {threads} wrk threads");
    println!("| target | req/s | p50 | p99 | CPU per request | req/s vs direct | req/s vs nginx |");
    println!("|---|---|---|---|---|---|---|");
    for (i, t) in targets.iter().enumerate() {
        let (rps, p50, p99, cpu) = summary[i];
        let cpu = if t.pids.is_empty() {
            "-".to_owned()
        } else {
            format!("{cpu:.1} us")
        };
        println!(
            "| {} | {rps:.0} | {p50:.2} ms | {p99:.2} ms | {cpu} | {:.2}x | {:.2}x |",
            t.name,
            rps / summary[0].0,
            rps / summary[1].0
        );
    }
    println!(
        "\nOIDC vs user_key throughput: {:.2}x",
        summary[3].0 / summary[2].0
    );
    println!(
        "\nopen loop at {rate} requests/s for {fixed_seconds}s (latency from the scheduled start)"
    );
    println!("| target | p50 | p99 | p99.9 | added p99 vs direct | errors |");
    println!("|---|---|---|---|---|---|");
    for (i, t) in targets.iter().enumerate() {
        let f = fixed[i];
        println!(
            "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:+.3} ms | {} |",
            t.name,
            f.p50_ms,
            f.p99_ms,
            f.p999_ms,
            f.p99_ms - fixed[0].p99_ms,
            f.errors
        );
    }
    println!(
        "\ngateway RSS: {:.1} MB after the rounds; {:.1} MB at most while {wide} connections were open ({:.0} req/s); \
         peak {:.1} MB",
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
