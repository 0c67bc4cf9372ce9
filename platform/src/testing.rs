//! Test helpers: a fresh Postgres database per test, a service binary run as a child process, and a test CA with
//! HTTPS servers for the services' TLS client tests.
//!
//! Postgres comes from `DATABASE_URL` when set, else the local server at 127.0.0.1:5432; when nothing answers
//! there and the PostgreSQL server binaries are installed, a throwaway cluster is started in a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const HOW_TO_GET_POSTGRES: &str = "no PostgreSQL server answered and none could be started.\n\
     Either run one and point DATABASE_URL at it (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres),\n\
     or install the server binaries (Debian/Ubuntu: apt-get install postgresql) so tests can start a throwaway cluster.";

/// A database that exists for one test and is dropped when this value is dropped.
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates `t_<prefix>_<random>` on the test server.
    pub async fn new(prefix: &str) -> Self {
        let admin_url = admin_url().await;
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(20)
            .collect();
        let name = format!("t_{clean}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test server failed: {e}"));
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let mut url = url::Url::parse(&admin_url).expect("admin url parses");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            name,
            admin_url,
        }
    }

    /// A pool on this database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime; a thread with its own runtime can block safely.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = conn
                        .execute(
                            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// The URL of a maintenance database on a server tests may use, starting a throwaway cluster if needed.
pub async fn admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    if let Some(url) = URL.get() {
        return url.clone();
    }
    let url = match std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()) {
        Some(url) => {
            // Tests create databases beside the one named; use the maintenance database of that server.
            let mut parsed =
                url::Url::parse(&url).unwrap_or_else(|e| panic!("DATABASE_URL is not a URL: {e}"));
            parsed.set_path("postgres");
            let url = parsed.to_string();
            if !answers(&url).await {
                panic!(
                    "DATABASE_URL is set but its server does not answer.\n{HOW_TO_GET_POSTGRES}"
                );
            }
            url
        }
        None if answers(DEFAULT_ADMIN_URL).await => DEFAULT_ADMIN_URL.to_owned(),
        None => {
            let cluster = tokio::task::spawn_blocking(start_throwaway_cluster)
                .await
                .expect("cluster thread")
                .unwrap_or_else(|why| panic!("{HOW_TO_GET_POSTGRES}\n({why})"));
            cluster
        }
    };
    URL.get_or_init(|| url).clone()
}

async fn answers(url: &str) -> bool {
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), options.connect()).await,
        Ok(Ok(_))
    )
}

fn find_pg_bin(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Starts `initdb` + `pg_ctl` in a temp dir on a free port. A watchdog process stops the cluster and removes its
/// files when this test process exits, since Rust runs no destructors for statics.
fn start_throwaway_cluster() -> Result<String, String> {
    let initdb = find_pg_bin("initdb").ok_or("initdb not found")?;
    let pg_ctl = find_pg_bin("pg_ctl").ok_or("pg_ctl not found")?;
    let dir = std::env::temp_dir().join(format!("pg-test-{}", uuid::Uuid::new_v4().simple()));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let status = Command::new(&initdb)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("initdb: {e}"))?;
    if !status.success() {
        return Err("initdb failed (it refuses to run as root)".into());
    }
    let port = free_port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
        dir.display()
    );
    let status = Command::new(&pg_ctl)
        .args(["-w", "-D"])
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("log"))
        .arg("start")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("pg_ctl: {e}"))?;
    if !status.success() {
        return Err(format!(
            "pg_ctl start failed; see {}",
            dir.join("log").display()
        ));
    }
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("watchdog: {e}"))?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A service binary running as a child process, killed when dropped.
pub struct ServiceProcess {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with `env` (plus `LISTEN_ADDR` on a free port), logging to a temp file.
    pub fn spawn(name: &str, binary: &Path, env: &[(&str, String)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log =
            std::env::temp_dir().join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(binary);
        cmd.env("LISTEN_ADDR", addr.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            name: name.to_owned(),
            child,
            addr,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What the process has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `url` until it answers 200, or panics with the process' logs after `deadline`.
    pub async fn wait_ready(&mut self, url: &str, deadline: Duration) -> Duration {
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited early with {status}\n--- logs ---\n{}",
                    self.name,
                    self.logs()
                );
            }
            if let Ok(res) = client
                .get(url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                if res.status().is_success() {
                    return started.elapsed();
                }
            }
            if started.elapsed() > deadline {
                panic!(
                    "{} not ready at {url} within {deadline:?}\n--- logs ---\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status.
    pub async fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if started.elapsed() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resident memory in kB, from /proc.
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "--- {} logs ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// Checks the operational contract of a service binary: it starts against a fresh database, answers
/// `/status/live`, `/status/ready` and `/metrics`, and exits 0 within a second of SIGTERM.
pub async fn assert_lifecycle(
    name: &str,
    binary: &Path,
    env: &[(&str, String)],
    mgmt_path_base: Option<SocketAddr>,
) {
    let mut service = ServiceProcess::spawn(name, binary, env);
    let base = mgmt_path_base.unwrap_or(service.addr);
    let ready = format!("http://{base}/status/ready");
    service.wait_ready(&ready, Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let live: serde_json::Value = client
        .get(format!("http://{base}/status/live"))
        .send()
        .await
        .expect("live answers")
        .json()
        .await
        .expect("live is JSON");
    assert_eq!(live, serde_json::json!({"status": "live", "success": true}));
    let metrics = client
        .get(format!("http://{base}/metrics"))
        .send()
        .await
        .expect("metrics answers");
    assert_eq!(metrics.status(), 200);
    let status = service
        .terminate(Duration::from_secs(1))
        .await
        .unwrap_or_else(|| {
            panic!(
                "{name} did not exit within 1s of SIGTERM\n{}",
                service.logs()
            )
        });
    assert!(
        status.success(),
        "{name} exited with {status}\n{}",
        service.logs()
    );
}

/// A test certificate authority and a server certificate it signed for `127.0.0.1`.
pub struct TestPki {
    /// The CA certificate, for `SSL_CERT_FILE`.
    pub ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestPki {
    /// A fresh CA named `ca_name` and a leaf for `127.0.0.1` (server authentication).
    pub fn new(ca_name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");

        let key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("server certificate");
        Self {
            ca_pem: ca_cert.pem(),
            cert: leaf_cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// Serves `app` over HTTPS on 127.0.0.1 with the leaf certificate; connections whose handshake fails are
    /// dropped.
    pub async fn serve(&self, app: axum::Router) -> SocketAddr {
        // ring is the only provider built in, so it is the one picked.
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        addr
    }
}
