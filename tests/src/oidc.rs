//! The OpenID provider the OIDC scenarios run against: the test IdP by default, or a real Keycloak when
//! `KEYCLOAK_URL` is set. Both are driven through the same public APIs (token endpoint, Keycloak's default client
//! registration provider, zync's REST protocol), so one scenario proves both.

use std::time::Duration;

use anyhow::{anyhow, bail};
use reqwest::StatusCode;
use serde_json::Value;

use crate::idp::{IdpOptions, TestIdp};
use crate::stack::{Platform, PlatformOptions};

/// A real Keycloak to use instead of the test IdP, from the environment:
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `KEYCLOAK_URL` | – (unset = the test IdP) | base URL, e.g. `http://127.0.0.1:8180` (with `/auth` for the legacy layout) |
/// | `KEYCLOAK_REALM` | `3scale` | realm (the one of `deploy/keycloak/realm.json`) |
/// | `KEYCLOAK_ADMIN_CLIENT_ID` | `zync` | confidential client with service accounts and the `realm-management` role `manage-clients` |
/// | `KEYCLOAK_ADMIN_CLIENT_SECRET` | `zync-secret` | its secret |
#[derive(Debug, Clone)]
pub struct KeycloakSettings {
    pub url: String,
    pub realm: String,
    pub admin_client_id: String,
    pub admin_client_secret: String,
}

impl KeycloakSettings {
    /// `Some` when `KEYCLOAK_URL` is set and not empty.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = var("KEYCLOAK_URL")?;
        Some(Self {
            url: url.trim().trim_end_matches('/').to_owned(),
            realm: var("KEYCLOAK_REALM").unwrap_or_else(|| "3scale".into()),
            admin_client_id: var("KEYCLOAK_ADMIN_CLIENT_ID").unwrap_or_else(|| "zync".into()),
            admin_client_secret: var("KEYCLOAK_ADMIN_CLIENT_SECRET")
                .unwrap_or_else(|| "zync-secret".into()),
        })
    }
}

/// A client as an IdP holds it, read back through the management API it was written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpClient {
    pub client_id: String,
    pub secret: Option<String>,
    pub redirect_uris: Vec<String>,
    /// Keycloak's `enabled`; REST clients have no such flag (always true).
    pub enabled: bool,
}

/// The provider of one scenario.
pub struct OidcIdp {
    /// `http://host:port/realms/<realm>`
    pub issuer: String,
    pub admin_client_id: String,
    pub admin_client_secret: String,
    /// The test IdP's base URL (for its test controls); `None` for a real Keycloak.
    test_idp_base: Option<String>,
    http: reqwest::Client,
}

/// Starts the platform for an OIDC scenario: with the test IdP (started with `idp_options`), or without it and
/// pointed at the real Keycloak of `KEYCLOAK_URL`.
pub async fn start_platform(idp_options: IdpOptions) -> (Platform, OidcIdp) {
    match KeycloakSettings::from_env() {
        Some(keycloak) => {
            eprintln!(
                "OIDC scenario against the real Keycloak at {} (realm {})",
                keycloak.url, keycloak.realm
            );
            let platform = Platform::start(PlatformOptions {
                idp: false,
                require_idp: false,
                ..PlatformOptions::default()
            })
            .await;
            (platform, OidcIdp::keycloak(&keycloak))
        }
        None => {
            let platform = Platform::start(PlatformOptions {
                idp_options,
                ..PlatformOptions::default()
            })
            .await;
            let idp = OidcIdp::test_idp(platform.idp());
            (platform, idp)
        }
    }
}

impl OidcIdp {
    pub fn test_idp(idp: &TestIdp) -> Self {
        Self {
            issuer: idp.issuer.clone(),
            admin_client_id: idp.options.admin_client_id.clone(),
            admin_client_secret: idp.options.admin_client_secret.clone(),
            test_idp_base: Some(idp.base_url.clone()),
            http: http_client(),
        }
    }

    pub fn keycloak(settings: &KeycloakSettings) -> Self {
        Self {
            issuer: format!("{}/realms/{}", settings.url, settings.realm),
            admin_client_id: settings.admin_client_id.clone(),
            admin_client_secret: settings.admin_client_secret.clone(),
            test_idp_base: None,
            http: http_client(),
        }
    }

    /// True for a real Keycloak: the test IdP's controls (key rotation, token lifetime, stop) are unavailable.
    pub fn is_real_keycloak(&self) -> bool {
        self.test_idp_base.is_none()
    }

    /// Prints why a step is skipped against a real Keycloak; returns true when it is.
    pub fn skip_on_keycloak(&self, step: &str) -> bool {
        if self.is_real_keycloak() {
            eprintln!("NOTE: skipped against a real Keycloak: {step}");
        }
        self.is_real_keycloak()
    }

    /// The issuer with the admin client's credentials as userinfo: what a service's `oidc_issuer_endpoint` takes
    /// so that zync can manage clients (`http://<client>:<secret>@host/realms/<realm>`).
    pub fn admin_issuer(&self) -> String {
        let (scheme, rest) = self
            .issuer
            .split_once("://")
            .unwrap_or(("http", &self.issuer));
        format!(
            "{scheme}://{}:{}@{rest}",
            enc(&self.admin_client_id),
            enc(&self.admin_client_secret)
        )
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer)
    }

    /// An access token by client_credentials; the error carries the IdP's answer.
    pub async fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
    ) -> anyhow::Result<String> {
        let res = self
            .http
            .post(self.token_endpoint())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ])
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

    async fn admin_token(&self) -> anyhow::Result<String> {
        self.client_credentials_token(&self.admin_client_id, &self.admin_client_secret)
            .await
    }

    /// A client through Keycloak's default client registration provider (`None` = 404), read with the admin
    /// client's token, the way zync writes it.
    pub async fn keycloak_client(&self, client_id: &str) -> anyhow::Result<Option<IdpClient>> {
        let token = self.admin_token().await?;
        let req = self
            .http
            .get(format!(
                "{}/clients-registrations/default/{}",
                self.issuer,
                enc(client_id)
            ))
            .bearer_auth(token);
        let Some(body) = fetch_client(req, client_id).await? else {
            return Ok(None);
        };
        Ok(Some(IdpClient {
            client_id: body["clientId"].as_str().unwrap_or_default().to_owned(),
            secret: body["secret"].as_str().map(str::to_owned),
            redirect_uris: strings(&body["redirectUris"]),
            enabled: body["enabled"].as_bool().unwrap_or(true),
        }))
    }

    /// A client through zync's REST protocol (`None` = 404), read with the admin client's Basic credentials.
    pub async fn rest_client(&self, client_id: &str) -> anyhow::Result<Option<IdpClient>> {
        let req = self
            .http
            .get(format!("{}/clients/{}", self.issuer, enc(client_id)))
            .basic_auth(&self.admin_client_id, Some(&self.admin_client_secret));
        let Some(body) = fetch_client(req, client_id).await? else {
            return Ok(None);
        };
        Ok(Some(IdpClient {
            client_id: body["client_id"].as_str().unwrap_or_default().to_owned(),
            secret: body["client_secret"].as_str().map(str::to_owned),
            redirect_uris: strings(&body["redirect_uris"]),
            enabled: true,
        }))
    }

    /// Every client the test IdP's management APIs hold (test control; the test IdP only).
    pub async fn all_clients(&self) -> anyhow::Result<Vec<IdpClient>> {
        let base = self
            .test_idp_base
            .as_ref()
            .ok_or_else(|| anyhow!("listing every client needs the test IdP"))?;
        let body: Value = self
            .http
            .get(format!("{base}/test-idp/clients"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let clients = body["clients"].as_array().cloned().unwrap_or_default();
        Ok(clients
            .iter()
            .map(|c| {
                let rep = &c["representation"];
                let keycloak = c["api"] == "keycloak";
                IdpClient {
                    client_id: c["client_id"].as_str().unwrap_or_default().to_owned(),
                    secret: rep[if keycloak { "secret" } else { "client_secret" }]
                        .as_str()
                        .map(str::to_owned),
                    redirect_uris: strings(
                        &rep[if keycloak {
                            "redirectUris"
                        } else {
                            "redirect_uris"
                        }],
                    ),
                    enabled: rep["enabled"].as_bool().unwrap_or(true),
                }
            })
            .collect())
    }

    /// Makes the test IdP sign with a new key and drop the old ones from its JWKS; `None` (with a note) for a
    /// real Keycloak, whose keys the suite does not touch.
    pub async fn rotate_keys(&self) -> anyhow::Result<Option<String>> {
        let Some(base) = &self.test_idp_base else {
            eprintln!("NOTE: skipped against a real Keycloak: signing key rotation");
            return Ok(None);
        };
        let body: Value = self
            .http
            .post(format!("{base}/test-idp/keys/rotate?retire_old=true"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        body["signing_kid"]
            .as_str()
            .map(|kid| Some(kid.to_owned()))
            .ok_or_else(|| anyhow!("unexpected rotation answer {body}"))
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes everything but unreserved characters (for userinfo and path segments).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One client document from an IdP's management API; `None` when it answers 404.
async fn fetch_client(
    req: reqwest::RequestBuilder,
    client_id: &str,
) -> anyhow::Result<Option<Value>> {
    let res = req.send().await?;
    if res.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("GET client {client_id}: {status} {body}");
    }
    Ok(Some(body))
}
