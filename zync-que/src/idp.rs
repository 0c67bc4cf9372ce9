//! The two identity-provider adapters zync-que pushes OAuth clients to: Keycloak's default client registration
//! API (`keycloak`) and the generic REST protocol (`rest`), with issuer URL parsing and a bounded token cache.

use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use platform::Secret;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Characters left as they are in a client id used as a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The two kinds of OIDC issuer system can name on a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerKind {
    Keycloak,
    Rest,
}

impl IssuerKind {
    /// `oidc_issuer_type`; a missing value means Keycloak, as in zync.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("keycloak") => Ok(Self::Keycloak),
            Some("rest") => Ok(Self::Rest),
            Some(other) => Err(format!("unknown oidc_issuer_type {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keycloak => "keycloak",
            Self::Rest => "rest",
        }
    }
}

/// An issuer URL split into its base (no credentials, one trailing slash) and the credentials of its userinfo.
#[derive(Clone)]
pub struct Issuer {
    pub kind: IssuerKind,
    pub base: url::Url,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} issuer {}", self.kind.as_str(), self.base)
    }
}

impl Issuer {
    pub fn parse(kind: IssuerKind, endpoint: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(endpoint.trim())
            .map_err(|e| format!("the OIDC issuer endpoint is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("the OIDC issuer endpoint must be an http(s) URL".into());
        }
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let client_id = Some(decode(url.username())).filter(|s| !s.is_empty());
        let client_secret = url.password().map(decode).map(Secret::new);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self {
            kind,
            base: url,
            client_id,
            client_secret,
        })
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn cache_key(&self) -> String {
        format!(
            "{}|{}",
            self.base,
            self.client_id.as_deref().unwrap_or_default()
        )
    }
}

/// Which OAuth flows the service allows, from the application's `oidc_configuration`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flows {
    pub standard: Option<bool>,
    pub implicit: Option<bool>,
    pub service_accounts: Option<bool>,
    pub direct_access_grants: Option<bool>,
}

/// The OAuth client an application should be, as read from system's current state.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub redirect_url: Option<String>,
    pub enabled: Option<bool>,
    pub flows: Flows,
}

impl fmt::Debug for ClientSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.client_id)
    }
}

impl ClientSpec {
    /// From a `find.json` application object; `None` when it carries no client id at all.
    pub fn from_application(app: &Value, fallback_id: &str) -> Self {
        let text = |key: &str| {
            app.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .filter(|s| !s.is_empty())
        };
        let oidc = app.get("oidc_configuration");
        let flag = |key: &str| oidc.and_then(|o| o.get(key)).and_then(Value::as_bool);
        let enabled = match app.get("enabled") {
            Some(Value::Bool(b)) => Some(*b),
            _ => text("state").map(|s| s == "live"),
        };
        Self {
            client_id: text("client_id")
                .or_else(|| text("application_id"))
                .unwrap_or_else(|| fallback_id.to_owned()),
            client_secret: text("client_secret"),
            name: text("name"),
            description: text("description"),
            redirect_url: text("redirect_url"),
            enabled,
            flows: Flows {
                standard: flag("standard_flow_enabled"),
                implicit: flag("implicit_flow_enabled"),
                service_accounts: flag("service_accounts_enabled"),
                direct_access_grants: flag("direct_access_grants_enabled"),
            },
        }
    }

    /// Whether the client should exist at this kind of IdP: Keycloak keeps a client while the app has a key (a
    /// suspended app stays, disabled); the REST protocol keeps only enabled apps. This is zync's rule.
    pub fn should_exist(&self, kind: IssuerKind) -> bool {
        match kind {
            IssuerKind::Keycloak => self.client_secret.is_some(),
            IssuerKind::Rest => self.enabled == Some(true),
        }
    }

    /// A digest of the body this client would be pushed with (it covers the secret, so none is stored).
    pub fn digest(&self, kind: IssuerKind) -> String {
        use sha2::Digest;
        let body = match kind {
            IssuerKind::Keycloak => keycloak_body(self),
            IssuerKind::Rest => rest_body(self),
        };
        let hash = sha2::Sha256::digest(body.as_bytes());
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn redirect_uris(&self) -> Vec<String> {
        self.redirect_url.iter().cloned().collect()
    }
}

/// Keycloak's ClientRepresentation, keys in zync's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeycloakClient<'a> {
    name: Option<&'a str>,
    description: Option<&'a str>,
    client_id: &'a str,
    secret: Option<&'a str>,
    redirect_uris: Vec<String>,
    attributes: Value,
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    standard_flow_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    implicit_flow_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_accounts_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direct_access_grants_enabled: Option<bool>,
}

/// Serialized straight from the struct, so the keys keep zync's order on the wire.
pub fn keycloak_body(spec: &ClientSpec) -> String {
    serde_json::to_string(&KeycloakClient {
        name: spec.name.as_deref(),
        description: spec.description.as_deref(),
        client_id: &spec.client_id,
        secret: spec.client_secret.as_deref(),
        redirect_uris: spec.redirect_uris(),
        attributes: serde_json::json!({"3scale": true}),
        enabled: spec.enabled,
        standard_flow_enabled: spec.flows.standard,
        implicit_flow_enabled: spec.flows.implicit,
        service_accounts_enabled: spec.flows.service_accounts,
        direct_access_grants_enabled: spec.flows.direct_access_grants,
    })
    .unwrap_or_default()
}

/// The REST protocol's body, keys in zync's order.
#[derive(Serialize)]
struct RestClient<'a> {
    client_id: &'a str,
    client_secret: Option<&'a str>,
    client_name: Option<&'a str>,
    redirect_uris: Vec<String>,
    grant_types: Vec<&'static str>,
}

/// The REST protocol's body. Grant types come in a fixed order (zync follows system's key order, which a sorted
/// JSON map cannot keep).
pub fn rest_body(spec: &ClientSpec) -> String {
    let f = &spec.flows;
    let grants: Vec<&str> = [
        (f.standard, "authorization_code"),
        (f.implicit, "implicit"),
        (f.service_accounts, "client_credentials"),
        (f.direct_access_grants, "password"),
    ]
    .into_iter()
    .filter(|(on, _)| *on == Some(true))
    .map(|(_, grant)| grant)
    .collect();
    serde_json::to_string(&RestClient {
        client_id: &spec.client_id,
        client_secret: spec.client_secret.as_deref(),
        client_name: spec.name.as_deref(),
        redirect_uris: spec.redirect_uris(),
        grant_types: grants,
    })
    .unwrap_or_default()
}

#[derive(Clone)]
enum CachedAuth {
    Bearer(String),
    /// Discovery or the token request failed: the REST adapter falls back to Basic for a while.
    NoOAuth,
}

/// Access tokens per issuer, kept until shortly before they expire; bounded in size.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (CachedAuth, Instant)>>,
}

const TOKEN_CACHE_MAX: usize = 1024;
/// Tokens are dropped this long before their `expires_in` so a request never carries an expired one.
const TOKEN_SKEW: Duration = Duration::from_secs(30);
/// How long a REST IdP without working OAuth is not asked again.
const NO_OAUTH_TTL: Duration = Duration::from_secs(60);

impl TokenCache {
    fn get(&self, key: &str) -> Option<CachedAuth> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(auth, _)| auth.clone())
    }

    fn put(&self, key: String, auth: CachedAuth, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= TOKEN_CACHE_MAX {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(key, (auth, Instant::now() + ttl));
    }

    fn forget(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Pushes and removes clients at IdPs.
pub struct IdpClient {
    http: reqwest::Client,
    tokens: TokenCache,
    /// Held while a token is fetched, so workers missing the cache together ask the IdP once.
    fetching: tokio::sync::Mutex<()>,
}

/// A failed IdP call, with a message safe to log and show (no secrets, no tokens).
pub type IdpResult<T> = Result<T, String>;

impl IdpClient {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            tokens: TokenCache::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Creates or updates the client.
    pub async fn upsert(&self, issuer: &Issuer, spec: &ClientSpec) -> IdpResult<()> {
        match issuer.kind {
            IssuerKind::Keycloak => self.keycloak_upsert(issuer, spec).await,
            IssuerKind::Rest => self.rest_upsert(issuer, spec).await,
        }
    }

    /// Removes the client; one the IdP does not know counts as removed.
    pub async fn delete(&self, issuer: &Issuer, client_id: &str) -> IdpResult<()> {
        let id = utf8_percent_encode(client_id, SEGMENT).to_string();
        let (url, auth) = match issuer.kind {
            IssuerKind::Keycloak => (
                issuer.at(&format!("clients-registrations/default/{id}")),
                Some(self.bearer(issuer).await?),
            ),
            IssuerKind::Rest => (
                issuer.at(&format!("clients/{id}")),
                self.rest_auth(issuer).await,
            ),
        };
        let res = self.send(Method::DELETE, &url, auth.as_ref(), None).await?;
        match res.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(()),
            s => Err(self.failure(issuer, "delete client", s, &res.body, &[])),
        }
    }

    async fn keycloak_upsert(&self, issuer: &Issuer, spec: &ClientSpec) -> IdpResult<()> {
        let auth = Some(self.bearer(issuer).await?);
        let body = keycloak_body(spec);
        let id = utf8_percent_encode(&spec.client_id, SEGMENT).to_string();
        let put_url = issuer.at(&format!("clients-registrations/default/{id}"));
        let secrets: Vec<&str> = spec.client_secret.iter().map(String::as_str).collect();
        let res = self
            .send(Method::PUT, &put_url, auth.as_ref(), Some(&body))
            .await?;
        if res.ok_json() {
            return Ok(());
        }
        if res.status != StatusCode::NOT_FOUND {
            return Err(self.failure(issuer, "update client", res.status, &res.body, &secrets));
        }
        let post_url = issuer.at("clients-registrations/default");
        let res = self
            .send(Method::POST, &post_url, auth.as_ref(), Some(&body))
            .await?;
        if res.ok_json() {
            return Ok(());
        }
        Err(self.failure(issuer, "create client", res.status, &res.body, &secrets))
    }

    async fn rest_upsert(&self, issuer: &Issuer, spec: &ClientSpec) -> IdpResult<()> {
        let auth = self.rest_auth(issuer).await;
        let id = utf8_percent_encode(&spec.client_id, SEGMENT).to_string();
        let url = issuer.at(&format!("clients/{id}"));
        let res = self
            .send(Method::PUT, &url, auth.as_ref(), Some(&rest_body(spec)))
            .await?;
        if res.ok_json() {
            return Ok(());
        }
        let secrets: Vec<&str> = spec.client_secret.iter().map(String::as_str).collect();
        Err(self.failure(issuer, "put client", res.status, &res.body, &secrets))
    }

    fn failure(
        &self,
        issuer: &Issuer,
        op: &str,
        status: StatusCode,
        body: &str,
        secrets: &[&str],
    ) -> String {
        if status == StatusCode::UNAUTHORIZED {
            // The cached token may have been revoked: get a fresh one next time.
            self.tokens.forget(&issuer.cache_key());
        }
        if status.is_success() {
            return format!("{op}: IdP answered {status} without a JSON body");
        }
        format!(
            "{op}: IdP answered {status}: {}",
            safe_snippet(body, secrets)
        )
    }

    /// The Keycloak token: client_credentials at the realm's token endpoint, cached until it expires.
    async fn bearer(&self, issuer: &Issuer) -> IdpResult<String> {
        if let Some(CachedAuth::Bearer(token)) = self.tokens.get(&issuer.cache_key()) {
            return Ok(format!("Bearer {token}"));
        }
        let _fetching = self.fetching.lock().await;
        if let Some(CachedAuth::Bearer(token)) = self.tokens.get(&issuer.cache_key()) {
            return Ok(format!("Bearer {token}"));
        }
        let (token, ttl) = self.fetch_token(issuer).await?;
        self.tokens
            .put(issuer.cache_key(), CachedAuth::Bearer(token.clone()), ttl);
        Ok(format!("Bearer {token}"))
    }

    /// The REST adapter's header: a client_credentials token when the IdP offers OAuth, else Basic with the
    /// issuer URL's credentials, else nothing.
    async fn rest_auth(&self, issuer: &Issuer) -> Option<String> {
        let key = issuer.cache_key();
        let _fetching = match self.tokens.get(&key) {
            Some(_) => None,
            None => Some(self.fetching.lock().await),
        };
        let cached = match self.tokens.get(&key) {
            Some(auth) => auth,
            None => match self.fetch_token(issuer).await {
                Ok((token, ttl)) => {
                    self.tokens.put(key, CachedAuth::Bearer(token.clone()), ttl);
                    CachedAuth::Bearer(token)
                }
                Err(why) => {
                    tracing::debug!(issuer = %issuer.base, why, "no OAuth token from REST IdP, using Basic");
                    self.tokens.put(key, CachedAuth::NoOAuth, NO_OAUTH_TTL);
                    CachedAuth::NoOAuth
                }
            },
        };
        match cached {
            CachedAuth::Bearer(token) => Some(format!("Bearer {token}")),
            CachedAuth::NoOAuth => {
                let id = issuer.client_id.as_deref()?;
                let secret = issuer
                    .client_secret
                    .as_ref()
                    .map(Secret::expose)
                    .unwrap_or("");
                let raw =
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
                Some(format!("Basic {raw}"))
            }
        }
    }

    async fn fetch_token(&self, issuer: &Issuer) -> IdpResult<(String, Duration)> {
        let (Some(id), Some(secret)) = (&issuer.client_id, &issuer.client_secret) else {
            return Err("the issuer URL carries no client credentials".into());
        };
        let discovery = self
            .send(
                Method::GET,
                &issuer.at(".well-known/openid-configuration"),
                None,
                None,
            )
            .await?;
        let token_endpoint = if discovery.status.is_success() {
            serde_json::from_str::<Value>(&discovery.body)
                .ok()
                .and_then(|d| d.get("token_endpoint")?.as_str().map(str::to_owned))
                .ok_or("OIDC discovery has no token_endpoint")?
        } else {
            return Err(format!("OIDC discovery answered {}", discovery.status));
        };
        // The endpoint may be relative to the issuer.
        let token_url = issuer
            .base
            .join(&token_endpoint)
            .map_err(|e| format!("bad token_endpoint ({e})"))?;
        let res = self
            .http
            .post(token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.expose()),
            ])
            .send()
            .await
            .map_err(|e| format!("token request failed: {}", describe(e)))?;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "token request answered {status}: {}",
                safe_snippet(&body, &[secret.expose()])
            ));
        }
        let parsed: Value = serde_json::from_str(&body).unwrap_or_else(|_| {
            // Some IdPs answer form-encoded.
            let map: serde_json::Map<String, Value> = url::form_urlencoded::parse(body.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect();
            Value::Object(map)
        });
        let token = parsed
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or("token response has no access_token")?
            .to_owned();
        let expires_in = match parsed.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(60);
        let ttl = Duration::from_secs(expires_in)
            .saturating_sub(TOKEN_SKEW)
            .max(Duration::from_secs(1));
        Ok((token, ttl))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        auth: Option<&String>,
        body: Option<&str>,
    ) -> IdpResult<Reply> {
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(auth) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_owned());
        }
        let res = req
            .send()
            .await
            .map_err(|e| format!("{method} {url} failed: {}", describe(e)))?;
        let status = res.status();
        let json = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| ct.to_ascii_lowercase().contains("json"));
        let body = res.text().await.unwrap_or_default();
        Ok(Reply { status, body, json })
    }
}

struct Reply {
    status: StatusCode,
    body: String,
    /// `None` when the reply had no Content-Type.
    json: Option<bool>,
}

impl Reply {
    /// Success as zync reads it: a 2xx whose content type, if any, is JSON (an empty body passes).
    fn ok_json(&self) -> bool {
        self.status.is_success() && (self.json != Some(false) || self.body.trim().is_empty())
    }
}

/// A transport error with its causes, which carry the useful part (a refused certificate, a refused connection):
/// reqwest's own text says only "error sending request". The URL is left out; callers name it without credentials.
pub fn describe(err: reqwest::Error) -> String {
    platform::telemetry::error_chain(&err.without_url())
}

/// A short excerpt of an IdP's answer for the error record: `error`/`error_description` when it is JSON, else the
/// first characters; any secret we sent is masked in case the IdP echoes it.
pub fn safe_snippet(body: &str, secrets: &[&str]) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(v) if v.get("error").is_some() => {
            let error = v.get("error").map(|e| e.to_string()).unwrap_or_default();
            match v.get("error_description") {
                Some(d) => format!("{error} {d}"),
                None => error,
            }
        }
        _ => body.chars().take(200).collect(),
    };
    let mut text = if text.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    };
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "[redacted]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn issuer_urls_lose_and_decode_their_credentials() {
        let issuer = Issuer::parse(
            IssuerKind::Keycloak,
            "https://zync:S3%2FCRET@sso.example.com/auth/realms/3scale",
        )
        .unwrap();
        assert_eq!(
            issuer.base.as_str(),
            "https://sso.example.com/auth/realms/3scale/"
        );
        assert_eq!(issuer.client_id.as_deref(), Some("zync"));
        assert_eq!(issuer.client_secret.as_ref().unwrap().expose(), "S3/CRET");
        assert!(!format!("{issuer:?}").contains("S3"));
        assert!(Issuer::parse(IssuerKind::Rest, "ftp://x/").is_err());
        assert_eq!(IssuerKind::parse(None).unwrap(), IssuerKind::Keycloak);
        assert!(IssuerKind::parse(Some("okta")).is_err());
    }

    #[test]
    fn bodies_match_zync() {
        let app = json!({"client_id": "two_id", "client_secret": "two_secret", "name": "client name",
            "description": "client description", "redirect_url": "http://example.com", "enabled": true,
            "oidc_configuration": {"standard_flow_enabled": true, "implicit_flow_enabled": true,
                "service_accounts_enabled": true, "direct_access_grants_enabled": true}});
        let spec = ClientSpec::from_application(&app, "9");
        assert_eq!(
            keycloak_body(&spec),
            r#"{"name":"client name","description":"client description","clientId":"two_id","secret":"two_secret","redirectUris":["http://example.com"],"attributes":{"3scale":true},"enabled":true,"standardFlowEnabled":true,"implicitFlowEnabled":true,"serviceAccountsEnabled":true,"directAccessGrantsEnabled":true}"#
        );
        assert_eq!(
            rest_body(&spec),
            r#"{"client_id":"two_id","client_secret":"two_secret","client_name":"client name","redirect_uris":["http://example.com"],"grant_types":["authorization_code","implicit","client_credentials","password"]}"#
        );
        let bare =
            ClientSpec::from_application(&json!({"client_id": "foo", "client_secret": "bar"}), "9");
        assert_eq!(
            keycloak_body(&bare),
            r#"{"name":null,"description":null,"clientId":"foo","secret":"bar","redirectUris":[],"attributes":{"3scale":true},"enabled":null}"#
        );
        assert!(bare.should_exist(IssuerKind::Keycloak));
        assert!(!bare.should_exist(IssuerKind::Rest));
    }

    #[test]
    fn snippets_hide_echoed_secrets() {
        assert_eq!(
            safe_snippet(r#"{"got":"my-secret"}"#, &["my-secret"]),
            r#"{"got":"[redacted]"}"#
        );
        assert_eq!(
            safe_snippet(
                r#"{"error":"invalid_client_metadata","error_description":"in use"}"#,
                &[]
            ),
            r#""invalid_client_metadata" "in use""#
        );
    }
}
