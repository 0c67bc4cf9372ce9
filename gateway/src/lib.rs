//! gateway: mirrors APIcast, 3scale's API gateway. Proxy traffic arrives on `LISTEN_ADDR`; health, metrics and the
//! management API live on `MANAGEMENT_LISTEN_ADDR`.

pub mod apicast;
pub mod backend;
pub mod credentials;
pub mod http1;
pub mod management;
pub mod mapping;
pub mod oidc;
pub mod policies;
pub mod proxy;
pub mod proxy_metrics;
pub mod store;
pub mod upstream;

use apicast::{CachingMode, CompileOptions};
use platform::{Context, EnvReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::{ConfigStore, Loader, Source};
use url::Url;

/// `APICAST_CONFIGURATION_LOADER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderMode {
    Boot,
    Lazy,
}

/// `APICAST_MANAGEMENT_API`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagementMode {
    Disabled,
    Status,
    Policies,
    Debug,
}

/// Everything `gateway` reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub management_listen_addr: SocketAddr,
    pub source: Source,
    pub deployment_env: String,
    pub loader: LoaderMode,
    /// `APICAST_CONFIGURATION_CACHE`: negative means the configuration is loaded once and never refreshed.
    pub configuration_cache: i64,
    pub poll_interval: Duration,
    pub compile: CompileOptions,
    pub path_routing: bool,
    pub path_routing_only: bool,
    pub management: ManagementMode,
    pub default_caching: CachingMode,
    pub auth_cache_ttl: Duration,
    pub auth_cache_stale: Duration,
    pub auth_cache_size: u64,
    pub report_interval: Duration,
    pub backend_timeout: Duration,
    pub upstream_timeout: Duration,
    pub jwks_min_refresh: Duration,
    /// `GATEWAY_WORKERS`: proxy threads, each with its own listener socket (`SO_REUSEPORT`) and upstream pool.
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            management_listen_addr: SocketAddr::from(([0, 0, 0, 0], 8090)),
            source: Source::None,
            deployment_env: "production".into(),
            loader: LoaderMode::Boot,
            configuration_cache: 300,
            // A promoted change must be served within a second of the promotion, fetch time included.
            poll_interval: Duration::from_millis(500),
            compile: CompileOptions::default(),
            path_routing: false,
            path_routing_only: false,
            management: ManagementMode::Status,
            default_caching: CachingMode::Strict,
            auth_cache_ttl: Duration::from_secs(10),
            auth_cache_stale: Duration::from_secs(3600),
            auth_cache_size: 100_000,
            report_interval: Duration::from_secs(1),
            backend_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            jwks_min_refresh: Duration::from_secs(5),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

fn truthy(env: &EnvReader, name: &str) -> bool {
    env.raw(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

impl Config {
    pub fn read(env: &mut EnvReader) -> Option<Self> {
        let d = Self::default();
        let listen_addr = env.or("LISTEN_ADDR", "host:port", d.listen_addr);
        let management_listen_addr = env.or(
            "MANAGEMENT_LISTEN_ADDR",
            "host:port",
            d.management_listen_addr,
        );
        let file: Option<PathBuf> = env.optional("THREESCALE_CONFIG_FILE", "a file path");
        let portal: Option<Url> = env.optional(
            "THREESCALE_PORTAL_ENDPOINT",
            "an http(s) URL with the token as userinfo",
        );
        let source = match (file, portal) {
            (Some(file), _) => Source::File(file),
            (None, Some(url)) => Source::Portal(url),
            (None, None) => Source::None,
        };
        let deployment_env = env
            .raw("THREESCALE_DEPLOYMENT_ENV")
            .unwrap_or("production")
            .trim()
            .to_owned();
        let loader = match env.choice("APICAST_CONFIGURATION_LOADER", &["boot", "lazy"], "boot") {
            "lazy" => LoaderMode::Lazy,
            _ => LoaderMode::Boot,
        };
        let configuration_cache = env.or(
            "APICAST_CONFIGURATION_CACHE",
            "a number of seconds (negative: never refresh)",
            d.configuration_cache,
        );
        let poll_interval = env.seconds("GATEWAY_CONFIG_POLL_SECONDS", d.poll_interval);
        let services_list = env
            .raw("APICAST_SERVICES_LIST")
            .or(env.raw("APICAST_SERVICES"))
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
        let filter_by_url = match env.raw("APICAST_SERVICES_FILTER_BY_URL").map(str::to_owned) {
            None => None,
            Some(re) => match regex::Regex::new(&re) {
                Ok(re) => Some(re),
                Err(e) => {
                    env.error(format!(
                        "APICAST_SERVICES_FILTER_BY_URL: not a valid regular expression ({e})"
                    ));
                    None
                }
            },
        };
        let backend_endpoint_override: Option<Url> =
            env.optional("BACKEND_ENDPOINT_OVERRIDE", "an http(s) URL");
        let path_routing_only = truthy(env, "APICAST_PATH_ROUTING_ONLY");
        let path_routing = truthy(env, "APICAST_PATH_ROUTING")
            || truthy(env, "APICAST_PATH_ROUTING_ENABLED")
            || path_routing_only;
        let management = match env.choice(
            "APICAST_MANAGEMENT_API",
            &["disabled", "status", "policies", "debug"],
            "status",
        ) {
            "disabled" => ManagementMode::Disabled,
            "policies" => ManagementMode::Policies,
            "debug" => ManagementMode::Debug,
            _ => ManagementMode::Status,
        };
        let default_caching = match env.choice(
            "APICAST_BACKEND_CACHE_HANDLER",
            &["strict", "resilient"],
            "strict",
        ) {
            "resilient" => CachingMode::Resilient,
            _ => CachingMode::Strict,
        };
        Some(Self {
            listen_addr,
            management_listen_addr,
            source,
            deployment_env,
            loader,
            configuration_cache,
            poll_interval,
            compile: CompileOptions {
                services_list,
                filter_by_url,
                backend_endpoint_override,
                path_routing,
            },
            path_routing,
            path_routing_only,
            management,
            default_caching,
            auth_cache_ttl: env.seconds("GATEWAY_AUTH_CACHE_TTL_SECONDS", d.auth_cache_ttl),
            auth_cache_stale: env.seconds("GATEWAY_AUTH_CACHE_STALE_SECONDS", d.auth_cache_stale),
            auth_cache_size: env.or(
                "GATEWAY_AUTH_CACHE_SIZE",
                "a number of entries",
                d.auth_cache_size,
            ),
            report_interval: env.seconds("GATEWAY_REPORT_INTERVAL_SECONDS", d.report_interval),
            backend_timeout: env.seconds("GATEWAY_BACKEND_TIMEOUT_SECONDS", d.backend_timeout),
            upstream_timeout: env.seconds("GATEWAY_UPSTREAM_TIMEOUT_SECONDS", d.upstream_timeout),
            jwks_min_refresh: env.seconds("GATEWAY_JWKS_MIN_REFRESH_SECONDS", d.jwks_min_refresh),
            workers: {
                let workers = env.or("GATEWAY_WORKERS", "a number of threads from 1", d.workers);
                if workers == 0 {
                    env.error("GATEWAY_WORKERS: expected at least 1");
                }
                workers.max(1)
            },
        })
    }
}

/// Shared by every request.
pub struct Inner {
    pub config: Config,
    pub store: ConfigStore,
    pub backend: backend::BackendClient,
    pub cache: backend::AuthCache,
    pub reporter: backend::Reporter,
    pub oidc: oidc::Oidc,
    pub metrics: proxy_metrics::ProxyMetrics,
    pub loader: Loader,
}

/// The gateway's state: cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let backend = backend::BackendClient::new(config.backend_timeout, &config.deployment_env);
        let loader = Loader {
            source: config.source.clone(),
            environment: config.deployment_env.clone(),
            options: config.compile.clone(),
            client: reqwest::Client::new(),
        };
        Self(Arc::new(Inner {
            store: ConfigStore::new(),
            cache: backend::AuthCache::new(
                config.auth_cache_size,
                config.auth_cache_ttl,
                config.auth_cache_stale,
            ),
            reporter: backend::Reporter::new(backend.clone(), 100_000),
            oidc: oidc::Oidc::new(config.jwks_min_refresh),
            backend,
            metrics: proxy_metrics::ProxyMetrics::new(),
            loader,
            config,
        }))
    }

    /// Loads the boot configuration and starts the background tasks (config polling, reporting).
    /// A file that cannot be loaded stops the start with a message naming the field.
    pub async fn boot(&self, shutdown: platform::Shutdown) -> anyhow::Result<()> {
        match self.config.source.clone() {
            Source::None => {
                tracing::warn!(
                    "no THREESCALE_CONFIG_FILE or THREESCALE_PORTAL_ENDPOINT: serving no services"
                );
                self.store.set(apicast::Configuration::default());
            }
            Source::File(path) => {
                let config = self.loader.load_file(&path).map_err(|e| {
                    anyhow::anyhow!("THREESCALE_CONFIG_FILE {}: {e}", path.display())
                })?;
                tracing::info!(
                    services = config.services.len(),
                    "loaded configuration file"
                );
                self.prewarm_oidc(&config);
                self.store.set(config);
            }
            Source::Portal(endpoint) => {
                let interval = if self.config.configuration_cache < 0 {
                    Duration::from_secs(u64::MAX / 4)
                } else {
                    self.config.poll_interval
                };
                let state = self.clone();
                tokio::spawn(store::poll_portal(
                    self.loader.clone(),
                    endpoint,
                    self.store.clone(),
                    interval,
                    move |config| state.prewarm_oidc(config),
                    shutdown.clone(),
                ));
            }
        }
        tokio::spawn(
            self.reporter
                .clone()
                .run(self.config.report_interval, shutdown),
        );
        Ok(())
    }

    /// Starts discovery for each OIDC issuer of a new configuration so the first request does not wait for it.
    fn prewarm_oidc(&self, config: &apicast::Configuration) {
        for service in &config.services {
            if let Some(endpoint) = service
                .oidc
                .as_ref()
                .filter(|o| o.supplied.is_none())
                .and_then(|o| o.issuer_endpoint.clone())
            {
                let state = self.clone();
                tokio::spawn(async move {
                    let _ = state.oidc.provider(&endpoint).await;
                });
            }
        }
    }

    /// Whether `/status/ready` is 200: a configuration is loaded (lazy loading counts as ready at once).
    pub fn is_configured(&self) -> bool {
        self.config.loader == LoaderMode::Lazy || self.store.get().is_some()
    }
}

/// Runs the proxy and management listeners until shutdown is requested.
pub async fn start(config: Config, ctx: Context) -> anyhow::Result<()> {
    let state = AppState::new(config.clone());
    state.boot(ctx.shutdown.clone()).await?;
    let management = management::router(state.clone(), ctx.metrics.clone());
    let proxy = serve_proxy(&ctx, &config, state);
    let mgmt = ctx.serve(config.management_listen_addr, management);
    tokio::try_join!(proxy, mgmt)?;
    Ok(())
}

/// Serves the proxy on `config.workers` threads, nginx's model: each thread runs its own single-threaded runtime,
/// accepts on its own `SO_REUSEPORT` socket and keeps its own upstream connections, so a request is read, authorized,
/// forwarded and answered on one thread without waking another. Shutdown and drain as in [`Context::serve`], with a
/// lean middleware: the proxy sets request ids and records APIcast's metrics itself (see proxy.rs), and a tracing span
/// per request would cost more than the rest of a cached request's work.
async fn serve_proxy(ctx: &Context, config: &Config, state: AppState) -> anyhow::Result<()> {
    let listeners = bind_shared(config.listen_addr, config.workers)?;
    tracing::info!(addr = %listeners[0].local_addr()?, workers = listeners.len(), "listening");
    let mut finished = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let (done, result) = tokio::sync::oneshot::channel();
        let state = state.clone();
        let shutdown = ctx.shutdown.clone();
        let drain = ctx.drain;
        std::thread::Builder::new()
            .name(format!("proxy-{index}"))
            .spawn(move || {
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|runtime| {
                        runtime.block_on(proxy_worker(listener, state, shutdown, drain))
                    });
                let _ = done.send(outcome);
            })?;
        finished.push(result);
    }
    // The first thread to fail (or die) stops the gateway, whichever it is.
    futures::future::try_join_all(finished.into_iter().map(|result| async move {
        result
            .await
            .map_err(|_| anyhow::anyhow!("a proxy thread stopped unexpectedly"))?
    }))
    .await?;
    Ok(())
}

/// Binds `count` listening sockets on one address with `SO_REUSEPORT` (the kernel spreads connections over them).
/// Port 0 resolves on the first socket; the others take the same port.
fn bind_shared(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket
            .bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        addr = socket.local_addr()?;
        // Registered with this runtime only until `into_std`; each worker registers its socket with its own.
        listeners.push(socket.listen(4096)?.into_std()?);
    }
    Ok(listeners)
}

/// A connection that completes no request head for this long is closed, keep-alive idle time included (30–60 s
/// after its last request; slow-header attacks hold no connection longer).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// One proxy thread: accepts on its socket until shutdown.
async fn proxy_worker(
    listener: std::net::TcpListener,
    state: AppState,
    shutdown: platform::Shutdown,
    drain: Duration,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    serve_proxy_on(listener, state, shutdown, drain).await
}

/// Serves the proxy on `listener` with the gateway's own HTTP/1.1 server (every request goes to the proxy, with no
/// router in between). On shutdown it stops accepting and closes idle connections; requests in flight get up to
/// `drain` to finish. The gateway runs one per proxy thread; tests run one on their own runtime.
pub async fn serve_proxy_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: platform::Shutdown,
    drain: Duration,
) -> anyhow::Result<()> {
    let worker = proxy::Worker::new(state);
    let life = Arc::new(http1::server::Lifecycle::default());
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        // A proxy writes small answers as soon as they are ready; Nagle's algorithm would hold them for ACKs.
        let _ = stream.set_nodelay(true);
        let worker = worker.clone();
        let peer = Some(peer.ip());
        // The request future is returned as it is (no wrapping block): it is large, and every layer moves it.
        let handler = move |req| proxy::serve_request(worker.clone(), peer, req);
        connections.spawn(http1::server::serve_connection(
            stream,
            handler,
            life.clone(),
            HEADER_TIMEOUT,
        ));
    }
    // Closing the socket now makes new connections fail at once (the kernel would otherwise keep queueing them).
    drop(listener);
    life.close();
    connections.close();
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(drain_secs = drain.as_secs_f64(), "drain time over, closing remaining connections");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_share_one_port_even_when_it_is_chosen_by_the_kernel() {
        let listeners = bind_shared(SocketAddr::from(([127, 0, 0, 1], 0)), 3).unwrap();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(addrs.len(), 3);
        assert_ne!(addrs[0].port(), 0);
        assert!(addrs.iter().all(|a| *a == addrs[0]), "{addrs:?}");
        // Every connection lands on one of them.
        let mut accepted = 0;
        for _ in 0..6 {
            let _client = std::net::TcpStream::connect(addrs[0]).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            'wait: loop {
                for listener in &listeners {
                    if listener.accept().is_ok() {
                        accepted += 1;
                        break 'wait;
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "connection not accepted"
                );
                std::thread::yield_now();
            }
        }
        assert_eq!(accepted, 6);
    }
}
