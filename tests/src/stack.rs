//! The whole platform on one machine: a database per service, the test IdP, the echo upstream and the five service
//! binaries wired with the environment of `platform-contract.md`; readiness, logs on failure, a resource report and
//! teardown (also when a test panics).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use platform::testing::{free_port, ServiceProcess, TestDb};

use crate::echo::EchoUpstream;
use crate::idp::{IdpOptions, TestIdp};

/// Ports used when a port is not free (or for tests, always): 0 = any free port.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub system: u16,
    pub backend: u16,
    pub zync: u16,
    pub zync_que: u16,
    pub gateway: u16,
    pub gateway_management: u16,
    pub echo: u16,
    pub idp: u16,
}

impl Ports {
    /// Every port chosen freely: what tests use.
    pub const ANY: Ports = Ports {
        system: 0,
        backend: 0,
        zync: 0,
        zync_que: 0,
        gateway: 0,
        gateway_management: 0,
        echo: 0,
        idp: 0,
    };

    /// The platform's default ports (`platform-contract.md`), plus ours for the echo upstream and the IdP.
    pub const DEFAULTS: Ports = Ports {
        system: 3000,
        backend: 3001,
        zync: 5000,
        zync_que: 9394,
        gateway: 8080,
        gateway_management: 8090,
        echo: 3100,
        idp: 8180,
    };
}

/// How to start the platform.
#[derive(Debug, Clone)]
pub struct PlatformOptions {
    /// Start the test IdP; when false (or when Node is missing and `require_idp` is false), OIDC is unavailable.
    pub idp: bool,
    /// Fail when the IdP cannot start (tests); the stack command only warns.
    pub require_idp: bool,
    pub idp_options: IdpOptions,
    pub ports: Ports,
    /// `THREESCALE_DEPLOYMENT_ENV` of the gateway.
    pub gateway_env: String,
    /// Deadline for every process to become ready.
    pub ready_deadline: Duration,
    /// Extra environment for every gateway process (also those started with [`Platform::start_gateway`]), e.g.
    /// `GATEWAY_AUTH_CACHE_TTL_SECONDS=0` so each request is authorized by backend.
    pub gateway_extra_env: Vec<(&'static str, String)>,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        Self {
            idp: true,
            require_idp: true,
            idp_options: IdpOptions::default(),
            ports: Ports::ANY,
            gateway_env: "staging".into(),
            ready_deadline: Duration::from_secs(30),
            gateway_extra_env: Vec::new(),
        }
    }
}

/// One running service binary.
pub struct Service {
    pub name: &'static str,
    pub process: ServiceProcess,
    /// The address serving `/status/*` and `/metrics` (the gateway's management address).
    pub health_addr: SocketAddr,
    pub spawned_at: Instant,
    pub time_to_ready: Option<Duration>,
    /// The binary and environment it was started with, to start it again after [`Platform::stop_service`].
    pub binary: &'static str,
    pub env: Vec<(&'static str, String)>,
    /// Stopped by [`Platform::stop_service`] and not started again.
    pub stopped: bool,
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        self.process.url(path)
    }

    pub fn health_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.health_addr)
    }
}

/// Shared secrets the services are wired with.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub admin_access_token: String,
    pub backend_internal_user: String,
    pub backend_internal_password: String,
    pub zync_token: String,
}

/// The running platform. Dropping it prints the resource report and stops everything.
pub struct Platform {
    // Field order is drop order: processes stop before their databases are dropped.
    pub services: Vec<Service>,
    pub idp: Option<TestIdp>,
    /// Why there is no IdP, when there is none.
    pub idp_unavailable: Option<String>,
    pub echo: EchoUpstream,
    pub secrets: Secrets,
    pub databases: Vec<TestDb>,
    gateway_extra_env: Vec<(&'static str, String)>,
    reported: bool,
}

/// Connections per service pool; the services' own default is 10.
pub const DATABASE_POOL_SIZE: u32 = 5;

/// A service to spawn: name, listen address, health address, environment.
type Planned = (
    &'static str,
    SocketAddr,
    SocketAddr,
    Vec<(&'static str, String)>,
);

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A port to bind: `wanted` when free on 127.0.0.1, else any free port (0 = any).
pub fn port_or_free(wanted: u16) -> u16 {
    if wanted != 0 && TcpListener::bind(("127.0.0.1", wanted)).is_ok() {
        wanted
    } else {
        listen_port()
    }
}

/// A free port below the kernel's ephemeral range. A port from that range (what binding port 0 gives) can be
/// taken by an outgoing connection between the moment it is chosen and the moment the service binds it, which
/// happens when many platforms start side by side.
fn listen_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if ephemeral_low <= LOW + 1000 {
        return free_port();
    }
    for _ in 0..200 {
        let random = u16::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..2]
                .try_into()
                .expect("two bytes"),
        );
        let port = LOW + random % (ephemeral_low - LOW);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Platform {
    /// Starts everything and waits until every service is ready; panics with the logs of the processes otherwise.
    pub async fn start(options: PlatformOptions) -> Self {
        let secrets = Secrets {
            admin_access_token: random_token(),
            backend_internal_user: "system".into(),
            backend_internal_password: random_token(),
            zync_token: random_token(),
        };

        let (system_db, backend_db, zync_db) = tokio::join!(
            TestDb::new("e2e_system"),
            TestDb::new("e2e_backend"),
            TestDb::new("e2e_zync"),
        );

        let echo_port = port_or_free(options.ports.echo);
        let echo = EchoUpstream::start_on(loopback(echo_port))
            .await
            .unwrap_or_else(|e| panic!("cannot start the echo upstream: {e}"));

        // The IdP starts first: it takes about a second, which would otherwise count against the services.
        let (idp, idp_unavailable) = if options.idp {
            let mut idp_options = options.idp_options.clone();
            idp_options.port = port_or_free(options.ports.idp);
            match TestIdp::start(idp_options).await {
                Ok(idp) => (Some(idp), None),
                Err(err) if options.require_idp => {
                    panic!("the test IdP could not start:\n{err:#}")
                }
                Err(err) => (None, Some(format!("{err:#}"))),
            }
        } else {
            (None, Some("the test IdP was not requested".into()))
        };

        // Every process is spawned first and waited on together, so each time-to-ready is its own.
        let ports = options.ports;
        let addr = |p: u16| loopback(port_or_free(p));
        let backend_addr = addr(ports.backend);
        let zync_addr = addr(ports.zync);
        let zync_que_addr = addr(ports.zync_que);
        let system_addr = addr(ports.system);
        let gateway_addr = addr(ports.gateway);
        let gateway_mgmt = addr(ports.gateway_management);

        // Four pools of the default 10 make 40 connections a platform: two tests in parallel plus anything else on
        // the machine exhaust Postgres' default max_connections (100), and services answer 500 "pool timed out".
        let common = |listen: SocketAddr| {
            vec![
                ("LISTEN_ADDR", listen.to_string()),
                ("RUST_LOG", "info".to_owned()),
                ("DATABASE_POOL_SIZE", DATABASE_POOL_SIZE.to_string()),
            ]
        };
        let mut plan: Vec<Planned> = Vec::new();
        let mut env = common(backend_addr);
        env.extend([
            ("DATABASE_URL", backend_db.url.clone()),
            (
                "BACKEND_INTERNAL_API_USER",
                secrets.backend_internal_user.clone(),
            ),
            (
                "BACKEND_INTERNAL_API_PASSWORD",
                secrets.backend_internal_password.clone(),
            ),
        ]);
        plan.push(("backend", backend_addr, backend_addr, env));
        let mut env = common(zync_addr);
        env.extend([
            ("DATABASE_URL", zync_db.url.clone()),
            ("ZYNC_AUTHENTICATION_TOKEN", secrets.zync_token.clone()),
        ]);
        plan.push(("zync", zync_addr, zync_addr, env));
        let mut env = common(zync_que_addr);
        env.push(("DATABASE_URL", zync_db.url.clone()));
        plan.push(("zync-que", zync_que_addr, zync_que_addr, env));
        let mut env = common(system_addr);
        env.extend([
            ("DATABASE_URL", system_db.url.clone()),
            ("ADMIN_ACCESS_TOKEN", secrets.admin_access_token.clone()),
            ("BACKEND_URL", format!("http://{backend_addr}")),
            (
                "BACKEND_INTERNAL_API_USER",
                secrets.backend_internal_user.clone(),
            ),
            (
                "BACKEND_INTERNAL_API_PASSWORD",
                secrets.backend_internal_password.clone(),
            ),
            ("ZYNC_ENDPOINT", format!("http://{zync_addr}")),
            ("ZYNC_AUTHENTICATION_TOKEN", secrets.zync_token.clone()),
        ]);
        plan.push(("system", system_addr, system_addr, env));
        let mut env = gateway_env(
            gateway_addr,
            gateway_mgmt,
            system_addr,
            backend_addr,
            &secrets.admin_access_token,
            &options.gateway_env,
        );
        env.extend(options.gateway_extra_env.iter().cloned());
        plan.push(("gateway", gateway_addr, gateway_mgmt, env));

        let mut services = Vec::new();
        for (name, listen, health, env) in plan {
            let spawned_at = Instant::now();
            let mut process = ServiceProcess::spawn(name, &crate::binary(name), &env);
            // ServiceProcess picks its own port; the LISTEN_ADDR given above wins, so record it.
            process.addr = listen;
            services.push(Service {
                name,
                process,
                health_addr: health,
                spawned_at,
                time_to_ready: None,
                binary: name,
                env,
                stopped: false,
            });
        }

        let mut platform = Self {
            services,
            idp,
            idp_unavailable,
            echo,
            secrets,
            databases: vec![system_db, backend_db, zync_db],
            gateway_extra_env: options.gateway_extra_env,
            reported: false,
        };
        platform.wait_ready(options.ready_deadline).await;
        platform
    }

    /// Polls every service's `/status/ready` together until all answer 200; panics with logs after `deadline`.
    async fn wait_ready(&mut self, deadline: Duration) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let mut pending = 0;
            for service in self.services.iter_mut() {
                if service.time_to_ready.is_some() || service.stopped {
                    continue;
                }
                if let Ok(Some(status)) = service.process.child.try_wait() {
                    panic!(
                        "{} exited during start with {status}\n--- {} logs ---\n{}",
                        service.name,
                        service.name,
                        service.process.logs()
                    );
                }
                let ready = client
                    .get(service.health_url("/status/ready"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    service.time_to_ready = Some(service.spawned_at.elapsed());
                } else {
                    pending += 1;
                }
            }
            if pending == 0 {
                return;
            }
            if started.elapsed() > deadline {
                let waiting: Vec<_> = self
                    .services
                    .iter()
                    .filter(|s| s.time_to_ready.is_none() && !s.stopped)
                    .map(|s| s.name)
                    .collect();
                // Dropping the services while panicking prints their logs.
                panic!("not ready within {deadline:?}: {waiting:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts one more gateway (e.g. `"gateway-production"` with `deployment_env` `"production"`) on its own
    /// ports, wired to the same system and backend, and waits until it is ready.
    pub async fn start_gateway(&mut self, name: &'static str, deployment_env: &str) -> &Service {
        assert!(
            self.services.iter().all(|s| s.name != name),
            "a service named {name} already runs"
        );
        let listen = loopback(listen_port());
        let management = loopback(listen_port());
        let mut env = gateway_env(
            listen,
            management,
            self.service("system").process.addr,
            self.service("backend").process.addr,
            &self.secrets.admin_access_token,
            deployment_env,
        );
        env.extend(self.gateway_extra_env.iter().cloned());
        let spawned_at = Instant::now();
        let mut process = ServiceProcess::spawn(name, &crate::binary("gateway"), &env);
        process.addr = listen;
        self.services.push(Service {
            name,
            process,
            health_addr: management,
            spawned_at,
            time_to_ready: None,
            binary: "gateway",
            env,
            stopped: false,
        });
        self.wait_ready(Duration::from_secs(30)).await;
        self.service(name)
    }

    /// Stops a service with SIGTERM (as an operator or an orchestrator would) and waits for it to exit; panics
    /// when it is still running after 10 s. Its logs are kept for failure output.
    pub async fn stop_service(&mut self, name: &str) -> std::process::ExitStatus {
        let service = self.service_mut(name);
        assert!(!service.stopped, "{name} is already stopped");
        let status = service
            .process
            .terminate(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{name} did not exit within 10 s of SIGTERM"));
        service.stopped = true;
        status
    }

    /// Starts a stopped service again with the same binary, environment and address, and waits until it is
    /// ready. The old process' logs are lost from the failure output.
    pub async fn restart_service(&mut self, name: &str) {
        let service = self.service_mut(name);
        assert!(service.stopped, "{name} is not stopped");
        let listen = service.process.addr;
        let mut process =
            ServiceProcess::spawn(service.name, &crate::binary(service.binary), &service.env);
        process.addr = listen;
        service.process = process;
        service.spawned_at = Instant::now();
        service.time_to_ready = None;
        service.stopped = false;
        self.wait_ready(Duration::from_secs(30)).await;
    }

    pub fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service named {name}"))
    }

    pub fn service_mut(&mut self, name: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service named {name}"))
    }

    /// A URL on a service's main listener.
    pub fn url(&self, name: &str, path: &str) -> String {
        self.service(name).url(path)
    }

    /// An admin API client for system, holding the admin access token.
    pub fn admin(&self) -> crate::Admin {
        crate::Admin::new(self.url("system", ""), &self.secrets.admin_access_token)
    }

    /// The test IdP; panics with the reason when it is not running.
    pub fn idp(&self) -> &TestIdp {
        self.idp.as_ref().unwrap_or_else(|| {
            panic!(
                "the test IdP is not running: {}",
                self.idp_unavailable.as_deref().unwrap_or("unknown reason")
            )
        })
    }

    /// The test IdP, to stop and restart it; panics with the reason when it is not running.
    pub fn idp_mut(&mut self) -> &mut TestIdp {
        let reason = self.idp_unavailable.clone();
        self.idp.as_mut().unwrap_or_else(|| {
            panic!(
                "the test IdP is not running: {}",
                reason.as_deref().unwrap_or("unknown reason")
            )
        })
    }

    /// The logs of every process so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.services {
            let _ = writeln!(out, "--- {} logs ---\n{}", s.name, s.process.logs());
        }
        if let Some(idp) = &self.idp {
            let _ = writeln!(out, "--- test IdP output ---\n{}", idp.logs());
        }
        out
    }

    /// Resident memory and time-to-ready of each service, with the totals against the targets.
    pub fn report(&self) -> String {
        let mut out = String::from("service    RSS (MB)   ready after\n");
        let mut total_kb = 0;
        for s in &self.services {
            let rss = s.process.rss_kb();
            // The targets are about the five services; extra processes (a production gateway) are listed only.
            let counted = crate::SERVICES.contains(&s.name);
            if counted {
                total_kb += rss.unwrap_or(0);
            }
            let _ = writeln!(
                out,
                "{:<10} {:>8}   {}{}",
                s.name,
                rss.map_or("-".into(), |kb| format!("{:.1}", kb as f64 / 1024.0)),
                s.time_to_ready
                    .map_or("not ready".into(), |d| format!("{} ms", d.as_millis())),
                if counted {
                    ""
                } else {
                    "   (extra, not counted)"
                },
            );
        }
        let _ = writeln!(
            out,
            "{:<10} {:>8.1}   (targets: ≤ 150 MB together, each ready ≤ 1000 ms)",
            "total",
            total_kb as f64 / 1024.0
        );
        if let Some(idp) = &self.idp {
            let rss = rss_kb(idp.pid());
            let _ = writeln!(
                out,
                "{:<10} {:>8}   {} ms   (test IdP, not counted)",
                "idp",
                rss.map_or("-".into(), |kb| format!("{:.1}", kb as f64 / 1024.0)),
                idp.time_to_ready.as_millis()
            );
        }
        out
    }

    /// Prints the report straight to stderr, so it shows even when the test harness captures output.
    pub fn print_report(&mut self) {
        if self.reported {
            return;
        }
        self.reported = true;
        let _ = writeln!(
            std::io::stderr(),
            "\n=== platform resources ===\n{}",
            self.report()
        );
    }

    /// Stops every service with SIGTERM, checking each exits cleanly within a second; returns the problems.
    pub async fn shutdown(mut self) -> Vec<String> {
        self.print_report();
        let mut problems = Vec::new();
        for s in self.services.iter_mut().rev().filter(|s| !s.stopped) {
            match s.process.terminate(Duration::from_secs(1)).await {
                Some(status) if status.success() => {}
                Some(status) => problems.push(format!(
                    "{} exited with {status}; its last log lines:\n{}",
                    s.name,
                    last_lines(&s.process.logs(), 30)
                )),
                None => problems.push(format!(
                    "{} did not exit within 1s of SIGTERM; its last log lines:\n{}",
                    s.name,
                    last_lines(&s.process.logs(), 30)
                )),
            }
        }
        if let Some(idp) = self.idp.as_mut() {
            idp.stop().await;
        }
        // Each DROP DATABASE waits for a checkpoint (seconds on a busy server): drop them side by side.
        let drops: Vec<_> = std::mem::take(&mut self.databases)
            .into_iter()
            .map(|db| tokio::task::spawn_blocking(move || drop(db)))
            .collect();
        for handle in drops {
            let _ = handle.await;
        }
        problems
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.print_report();
    }
}

/// The gateway's environment: APIcast's variables pointing at system (with the admin token as userinfo) and
/// backend, reading the configuration lazily without caching so tests see changes at once.
pub fn gateway_env(
    listen: SocketAddr,
    management: SocketAddr,
    system: SocketAddr,
    backend: SocketAddr,
    admin_token: &str,
    deployment_env: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("LISTEN_ADDR", listen.to_string()),
        ("MANAGEMENT_LISTEN_ADDR", management.to_string()),
        ("RUST_LOG", "info".to_owned()),
        (
            "THREESCALE_PORTAL_ENDPOINT",
            format!("http://{admin_token}@{system}"),
        ),
        ("THREESCALE_DEPLOYMENT_ENV", deployment_env.to_owned()),
        ("APICAST_CONFIGURATION_LOADER", "lazy".to_owned()),
        ("APICAST_CONFIGURATION_CACHE", "0".to_owned()),
        ("BACKEND_ENDPOINT_OVERRIDE", format!("http://{backend}")),
    ]
}

/// The last `n` lines of `text`, for failure messages that must not drown in logs.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Resident memory of a process in kB, from /proc.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
