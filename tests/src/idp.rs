//! The test identity provider (`tests/idp/server.js`, npm `oidc-provider` behind a Keycloak-shaped realm) run as a
//! child process, with helpers to get tokens, verify them against its JWKS, manage clients and rotate keys.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// What CI runs once to install the IdP's dependencies from the committed lockfile.
pub const INSTALL_COMMAND: &str = "npm ci --prefix tests/idp";

/// How to start the IdP.
#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// 0 = any free port.
    pub port: u16,
    pub realm: String,
    pub admin_client_id: String,
    pub admin_client_secret: String,
    /// Claim that carries the client id besides `azp` (None = none).
    pub extra_claim: Option<String>,
    /// `user:password` pairs for the password grant.
    pub users: Vec<(String, String)>,
    pub token_ttl_secs: u64,
    /// Put the client id in `azp`; false gives Okta-shaped tokens where only `extra_claim` carries it.
    pub azp: bool,
}

impl Default for IdpOptions {
    fn default() -> Self {
        Self {
            port: 0,
            realm: "myrealm".into(),
            admin_client_id: "zync".into(),
            admin_client_secret: "zync-secret".into(),
            extra_claim: Some("appid".into()),
            users: vec![("alice".into(), "alice-password".into())],
            token_ttl_secs: 300,
            azp: true,
        }
    }
}

/// A running test IdP; killed when dropped (its output is printed if the thread is panicking).
pub struct TestIdp {
    child: Child,
    /// Where the IdP keeps its signing keys and clients, so a restart finds them again (removed on drop).
    state_file: PathBuf,
    pub options: IdpOptions,
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// `http://127.0.0.1:PORT/realms/<realm>`
    pub issuer: String,
    pub port: u16,
    /// From spawn to the "listening" line.
    pub time_to_ready: Duration,
    output: Arc<Mutex<String>>,
    http: reqwest::Client,
}

/// The IdP's folder in this repository.
pub fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp")
}

static INSTALL: Mutex<()> = Mutex::new(());

/// Checks that Node is present and the IdP's dependencies are installed, running `npm ci` once if they are not.
/// The error says what to install.
pub fn ensure_installed() -> anyhow::Result<()> {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => bail!(
            "the test IdP needs Node.js (version 20 or later) on PATH, and `node` was not found.\n\
             Install Node.js, then run `{INSTALL_COMMAND}` from the repository root (CI does this before the tests)."
        ),
    }
    let dir = idp_dir();
    if dir.join("node_modules").join("oidc-provider").is_dir() {
        return Ok(());
    }
    eprintln!(
        "test IdP: node_modules missing, running `npm ci` in {}",
        dir.display()
    );
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow!("cannot run npm ({e}); install npm and run `{INSTALL_COMMAND}` from the repository root")
        })?;
    if !out.status.success() {
        bail!(
            "`npm ci` failed in {} ({}); run `{INSTALL_COMMAND}` by hand to see why.\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn pump(stream: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
            out.push_str(&line);
            out.push('\n');
        }
    });
}

/// Spawns `node server.js` with the options as environment; its output goes to `output`.
fn spawn(
    options: &IdpOptions,
    port: u16,
    state_file: &std::path::Path,
    output: &Arc<Mutex<String>>,
) -> anyhow::Result<Child> {
    let users = options
        .users
        .iter()
        .map(|(u, p)| format!("{u}:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new("node")
        .arg("server.js")
        .arg(port.to_string())
        .current_dir(idp_dir())
        .env("IDP_HOST", "127.0.0.1")
        .env("IDP_REALM", &options.realm)
        .env("IDP_ADMIN_CLIENT_ID", &options.admin_client_id)
        .env("IDP_ADMIN_CLIENT_SECRET", &options.admin_client_secret)
        .env(
            "IDP_EXTRA_CLAIM",
            options.extra_claim.clone().unwrap_or_default(),
        )
        .env("IDP_USERS", users)
        .env("IDP_TOKEN_TTL", options.token_ttl_secs.to_string())
        .env("IDP_AZP", options.azp.to_string())
        .env("IDP_STATE_FILE", state_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start node for the test IdP")?;
    pump(child.stdout.take().expect("piped"), output.clone());
    pump(child.stderr.take().expect("piped"), output.clone());
    Ok(child)
}

/// Waits for the "listening" line printed after byte `from` of the output; returns the base URL and the issuer.
async fn wait_listening(
    child: &mut Child,
    output: &Arc<Mutex<String>>,
    from: usize,
    started: Instant,
) -> anyhow::Result<(String, String)> {
    let deadline = Duration::from_secs(20);
    loop {
        let ready = {
            let out = output.lock().unwrap_or_else(|e| e.into_inner());
            out.get(from..).unwrap_or_default().lines().find_map(|l| {
                let rest = l.strip_prefix("test-idp listening on ")?;
                let (base, issuer) = rest.split_once(" issuer=")?;
                Some((base.to_owned(), issuer.to_owned()))
            })
        };
        if let Some(found) = ready {
            return Ok(found);
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the test IdP exited early with {status}\n--- test IdP output ---\n{}",
                output.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the test IdP did not start within {deadline:?}\n--- test IdP output ---\n{}",
                output.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestIdp {
    /// Starts the IdP and waits for it to listen (20 s at most).
    pub async fn start(options: IdpOptions) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(ensure_installed).await??;
        let state_file =
            std::env::temp_dir().join(format!("test-idp-{}.json", uuid::Uuid::new_v4().simple()));
        let output = Arc::new(Mutex::new(String::new()));
        let started = Instant::now();
        let mut child = spawn(&options, options.port, &state_file, &output)?;
        let (base_url, issuer) = match wait_listening(&mut child, &output, 0, started).await {
            Ok(found) => found,
            Err(err) => {
                let _ = std::fs::remove_file(&state_file);
                return Err(err);
            }
        };
        let port = base_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("unexpected IdP URL {base_url}"))?;
        Ok(Self {
            child,
            state_file,
            options,
            base_url,
            issuer,
            port,
            time_to_ready: started.elapsed(),
            output,
            http: reqwest::Client::new(),
        })
    }

    /// Starts the IdP again after [`TestIdp::stop`], on the same port and from the state it kept (signing keys and
    /// clients), as a Keycloak comes back with its database. Waits for it to listen (20 s at most).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.stop().await;
        }
        let from = self.output.lock().unwrap_or_else(|e| e.into_inner()).len();
        let started = Instant::now();
        self.child = spawn(&self.options, self.port, &self.state_file, &self.output)?;
        let (base_url, issuer) =
            wait_listening(&mut self.child, &self.output, from, started).await?;
        if base_url != self.base_url || issuer != self.issuer {
            bail!(
                "the test IdP came back as {base_url} (issuer {issuer}), not {} ({})",
                self.base_url,
                self.issuer
            );
        }
        Ok(())
    }

    /// Whether the IdP process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the IdP printed so far.
    pub fn logs(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The process id (for RSS reports).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The issuer with client credentials as userinfo, the form 3scale's OIDC issuer endpoint takes
    /// (`http://<client>:<secret>@host/realms/<realm>`).
    pub fn issuer_with_credentials(&self, client_id: &str, secret: &str) -> String {
        let rest = self.issuer.strip_prefix("http://").unwrap_or(&self.issuer);
        format!("http://{client_id}:{secret}@{rest}")
    }

    /// The issuer with the admin client's credentials: what zync is configured with.
    pub fn admin_issuer(&self) -> String {
        self.issuer_with_credentials(
            &self.options.admin_client_id,
            &self.options.admin_client_secret,
        )
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer)
    }

    /// An access token by client_credentials (credentials in the form body, as zync sends them).
    pub async fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
    ) -> anyhow::Result<String> {
        self.token(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
        ])
        .await
    }

    /// An access token by the password grant (Keycloak's direct access grants).
    pub async fn password_token(
        &self,
        client_id: &str,
        secret: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<String> {
        self.token(&[
            ("grant_type", "password"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("username", username),
            ("password", password),
        ])
        .await
    }

    /// A token of the admin client, which carries the realm-management roles the management APIs require.
    pub async fn admin_token(&self) -> anyhow::Result<String> {
        self.client_credentials_token(
            &self.options.admin_client_id,
            &self.options.admin_client_secret,
        )
        .await
    }

    async fn token(&self, form: &[(&str, &str)]) -> anyhow::Result<String> {
        let res = self
            .http
            .post(self.token_endpoint())
            .form(form)
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("token request refused: {status} {body}");
        }
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("token response without access_token: {body}"))
    }

    pub async fn jwks(&self) -> anyhow::Result<JwkSet> {
        Ok(self
            .http
            .get(self.jwks_uri())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Verifies `token` against the IdP's current JWKS (RS256, issuer, expiry) and returns its claims.
    pub async fn verify(&self, token: &str) -> anyhow::Result<Value> {
        let header = jsonwebtoken::decode_header(token)?;
        let kid = header.kid.ok_or_else(|| anyhow!("token has no kid"))?;
        let jwks = self.jwks().await?;
        let jwk = jwks
            .find(&kid)
            .ok_or_else(|| anyhow!("kid {kid} is not in the JWKS"))?;
        let key = DecodingKey::from_jwk(jwk)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)?;
        Ok(data.claims)
    }

    /// Adds a new signing key and retires the old ones (dropped from the JWKS). Returns the new `kid`.
    pub async fn rotate_keys(&self) -> anyhow::Result<String> {
        self.rotate(true).await
    }

    /// Adds a new signing key and keeps the old ones published for verification. Returns the new `kid`.
    pub async fn add_signing_key(&self) -> anyhow::Result<String> {
        self.rotate(false).await
    }

    async fn rotate(&self, retire_old: bool) -> anyhow::Result<String> {
        let body: Value = self
            .http
            .post(format!(
                "{}/test-idp/keys/rotate?retire_old={retire_old}",
                self.base_url
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        body["signing_kid"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("unexpected rotation answer {body}"))
    }

    /// Every client created through the management APIs, with the representation last written.
    pub async fn clients(&self) -> anyhow::Result<Vec<Value>> {
        let body: Value = self
            .http
            .get(format!("{}/test-idp/clients", self.base_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(body["clients"].as_array().cloned().unwrap_or_default())
    }

    /// Stops the IdP (SIGTERM, then SIGKILL after a second). Its keys and clients stay in its state file for
    /// [`TestIdp::restart`].
    pub async fn stop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.state_file);
        let _ = std::fs::remove_file(self.state_file.with_extension("json.tmp"));
        if std::thread::panicking() {
            eprintln!("--- test IdP output ---\n{}", self.logs());
        }
    }
}
