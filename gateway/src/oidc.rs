//! OpenID Connect: issuer discovery, JWKS (refetched on an unknown `kid`, rate-limited per issuer), JWT
//! verification pinned to asymmetric algorithms matching the key type, client id extraction, verified-token cache.

use crate::apicast::ClientIdClaim;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use url::Url;

/// Why a token was refused (logged; the client sees the service's auth-failed answer).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("JWT not valid: {0}")]
    Malformed(String),
    #[error("[jwt] algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("OpenID Connect provider unavailable: {0}")]
    Provider(String),
    #[error("[jwk] not found, token might belong to a different realm")]
    UnknownKey,
    #[error("[jwt] key type does not match algorithm")]
    KeyMismatch,
    #[error("[jwt] {0}")]
    Invalid(String),
    #[error("client id claim missing")]
    NoClientId,
}

struct Jwk {
    kty: String,
    crv: Option<String>,
    alg: Option<String>,
    key: DecodingKey,
}

/// An issuer with its keys.
pub struct Provider {
    issuer: String,
    algs: Option<Vec<String>>,
    jwks_uri: Option<Url>,
    keys: RwLock<Arc<HashMap<String, Jwk>>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// From a configuration's `oidc[i]` entry: `{issuer, config{...}, keys{kid: {pem|n,e|x,y, alg, kty}}}`.
    pub fn from_supplied(value: &Value) -> Result<Self, String> {
        let issuer = value
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or("oidc entry has no issuer")?
            .to_owned();
        let config = value.get("config").cloned().unwrap_or(Value::Null);
        let mut keys = HashMap::new();
        if let Some(map) = value.get("keys").and_then(Value::as_object) {
            for (kid, jwk) in map {
                keys.insert(kid.clone(), parse_jwk(jwk)?);
            }
        }
        Ok(Self::new(issuer, &config, keys))
    }

    fn new(issuer: String, config: &Value, keys: HashMap<String, Jwk>) -> Self {
        let algs = config
            .get("id_token_signing_alg_values_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            });
        let jwks_uri = config
            .get("jwks_uri")
            .and_then(Value::as_str)
            .and_then(|u| Url::parse(u).ok());
        Self {
            issuer,
            algs,
            jwks_uri,
            keys: RwLock::new(Arc::new(keys)),
            last_fetch: Mutex::new(None),
        }
    }

    fn keys(&self) -> Arc<HashMap<String, Jwk>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn parse_jwk(jwk: &Value) -> Result<Jwk, String> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str).map(str::to_owned);
    let alg = s("alg");
    let kty = s("kty").unwrap_or_else(|| {
        if alg.as_deref().is_some_and(|a| a.starts_with("ES")) {
            "EC".into()
        } else {
            "RSA".into()
        }
    });
    let crv = s("crv");
    let key = if let Some(pem) = s("pem") {
        match kty.as_str() {
            "EC" => DecodingKey::from_ec_pem(pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .map_err(|e| format!("invalid pem: {e}"))?
    } else {
        match kty.as_str() {
            "RSA" => DecodingKey::from_rsa_components(
                &s("n").ok_or("RSA JWK without n")?,
                &s("e").ok_or("RSA JWK without e")?,
            )
            .map_err(|e| format!("invalid RSA JWK: {e}"))?,
            "EC" => DecodingKey::from_ec_components(
                &s("x").ok_or("EC JWK without x")?,
                &s("y").ok_or("EC JWK without y")?,
            )
            .map_err(|e| format!("invalid EC JWK: {e}"))?,
            other => return Err(format!("unsupported key type {other:?}")),
        }
    };
    Ok(Jwk { kty, crv, alg, key })
}

fn parse_jwks(doc: &Value) -> HashMap<String, Jwk> {
    let mut keys = HashMap::new();
    for (i, jwk) in doc
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if jwk.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        let kid = jwk
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("#{i}"));
        match parse_jwk(jwk) {
            Ok(parsed) => {
                keys.insert(kid, parsed);
            }
            Err(e) => tracing::debug!(kid = %kid, error = %e, "skipping JWK"),
        }
    }
    keys
}

/// Discovery results per issuer endpoint and a cache of verified tokens.
pub struct Oidc {
    client: reqwest::Client,
    providers: RwLock<HashMap<String, Arc<Provider>>>,
    failures: Mutex<HashMap<String, Instant>>,
    discovery: tokio::sync::Mutex<()>,
    /// Verified tokens: the token → the service it was verified for, its client id and `exp`. Keyed by the token
    /// alone so a hit hashes it once and builds no key (with foldhash, seeded per process: a JWT is long).
    tokens: Cache<String, (Arc<str>, Arc<str>, u64), foldhash::fast::RandomState>,
    min_refresh: Duration,
}

impl Oidc {
    pub fn new(min_refresh: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a reqwest client builds with static settings"),
            providers: RwLock::default(),
            failures: Mutex::default(),
            discovery: tokio::sync::Mutex::new(()),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build_with_hasher(foldhash::fast::RandomState::default()),
            min_refresh,
        }
    }

    /// The client id of a token already verified for this service and not expired yet.
    pub fn cached(&self, service_id: &str, token: &str) -> Option<Arc<str>> {
        let (service, client_id, exp) = self.tokens.get(token)?;
        if exp <= unix_now() {
            self.tokens.invalidate(token);
            return None;
        }
        (&*service == service_id).then_some(client_id)
    }

    /// Verifies `token` for a service; returns the client id.
    pub async fn verify(
        &self,
        service_id: &str,
        supplied: Option<&Arc<Provider>>,
        issuer_endpoint: Option<&str>,
        claim: &ClientIdClaim,
        token: &str,
    ) -> Result<Arc<str>, VerifyError> {
        if let Some(client_id) = self.cached(service_id, token) {
            return Ok(client_id);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let family = match header.alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => "RSA",
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => "RSA",
            Algorithm::ES256 | Algorithm::ES384 => "EC",
            other => return Err(VerifyError::Algorithm(format!("{other:?}"))),
        };
        let provider = match supplied {
            Some(p) => p.clone(),
            None => {
                let endpoint = issuer_endpoint
                    .ok_or_else(|| VerifyError::Provider("no oidc_issuer_endpoint".into()))?;
                self.provider(endpoint).await?
            }
        };
        let alg_name = format!("{:?}", header.alg);
        if let Some(algs) = &provider.algs {
            if !algs.is_empty() && !algs.contains(&alg_name) {
                return Err(VerifyError::Algorithm(alg_name));
            }
        }
        let kid = header.kid.clone();
        let mut keys = provider.keys();
        if find_key(&keys, kid.as_deref()).is_none() {
            self.refresh_keys(&provider).await;
            keys = provider.keys();
        }
        let jwk = find_key(&keys, kid.as_deref()).ok_or(VerifyError::UnknownKey)?;
        let curve_ok = match header.alg {
            Algorithm::ES256 => jwk.crv.as_deref().is_none_or(|c| c == "P-256"),
            Algorithm::ES384 => jwk.crv.as_deref().is_none_or(|c| c == "P-384"),
            _ => true,
        };
        if jwk.kty != family || !curve_ok {
            return Err(VerifyError::KeyMismatch);
        }
        if jwk.alg.as_deref().is_some_and(|a| a != alg_name) {
            return Err(VerifyError::KeyMismatch);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[provider.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &jwk.key, &validation)
            .map_err(|e| VerifyError::Invalid(e.to_string()))?;
        let client_id: Arc<str> = client_id(&data.claims, claim)
            .ok_or(VerifyError::NoClientId)?
            .into();
        let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        self.tokens.insert(
            token.to_owned(),
            (service_id.into(), client_id.clone(), exp),
        );
        Ok(client_id)
    }

    /// The discovered provider for an issuer endpoint (credentials in its userinfo are dropped).
    pub async fn provider(&self, endpoint: &str) -> Result<Arc<Provider>, VerifyError> {
        if let Some(p) = self
            .providers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            return Ok(p.clone());
        }
        let _guard = self.discovery.lock().await;
        if let Some(p) = self
            .providers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            return Ok(p.clone());
        }
        if let Some(at) = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            if at.elapsed() < Duration::from_secs(1) {
                return Err(VerifyError::Provider("discovery failed recently".into()));
            }
        }
        match self.discover(endpoint).await {
            Ok(provider) => {
                let provider = Arc::new(provider);
                self.providers
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(endpoint.to_owned(), provider.clone());
                Ok(provider)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not get OpenID Connect configuration");
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(endpoint.to_owned(), Instant::now());
                Err(VerifyError::Provider(e))
            }
        }
    }

    async fn discover(&self, endpoint: &str) -> Result<Provider, String> {
        let mut base = Url::parse(endpoint).map_err(|e| format!("issuer endpoint: {e}"))?;
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&format!("{path}/.well-known/openid-configuration"));
        base.set_query(None);
        let config: Value = self.get_json(base).await?;
        let issuer = config
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or("discovery document has no issuer")?
            .to_owned();
        let provider = Provider::new(issuer, &config, HashMap::new());
        let jwks_uri = provider.jwks_uri.clone().ok_or("no jwks_uri")?;
        let jwks = self.get_json(jwks_uri).await?;
        *provider.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parse_jwks(&jwks));
        *provider
            .last_fetch
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(provider)
    }

    async fn get_json(&self, url: Url) -> Result<Value, String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        response
            .json()
            .await
            .map_err(|e| format!("invalid JSON: {}", e.without_url()))
    }

    /// Refetches an issuer's JWKS, at most once per `min_refresh`, so key rotation works without a restart.
    async fn refresh_keys(&self, provider: &Provider) {
        let Some(uri) = provider.jwks_uri.clone() else {
            return;
        };
        {
            let mut last = provider
                .last_fetch
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.min_refresh) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.get_json(uri).await {
            Ok(jwks) => {
                let keys = parse_jwks(&jwks);
                tracing::info!(issuer = %provider.issuer, keys = keys.len(), "refreshed JWKS after an unknown kid");
                *provider.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
            }
            Err(e) => tracing::warn!(issuer = %provider.issuer, error = %e, "JWKS refresh failed"),
        }
    }
}

fn find_key<'a>(keys: &'a HashMap<String, Jwk>, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => keys.get(kid),
        None if keys.len() == 1 => keys.values().next(),
        None => None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The client id from verified claims; an array yields its first element.
pub fn client_id(claims: &Map<String, Value>, claim: &ClientIdClaim) -> Option<String> {
    let value = match claim {
        ClientIdClaim::Plain(name) | ClientIdClaim::Liquid { claim: name, .. } => {
            claims.get(name.as_str())?
        }
    };
    let value = match value {
        Value::Array(items) => items.first()?,
        other => other,
    };
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_id_claims() {
        let claims = json!({"azp": "abc", "aud": ["x", "y"], "n": 5, "empty": ""});
        let claims = claims.as_object().unwrap();
        assert_eq!(
            client_id(claims, &ClientIdClaim::Plain("azp".into())).as_deref(),
            Some("abc")
        );
        assert_eq!(
            client_id(claims, &ClientIdClaim::Plain("aud".into())).as_deref(),
            Some("x")
        );
        assert_eq!(
            client_id(
                claims,
                &ClientIdClaim::Liquid {
                    claim: "n".into(),
                    first: false
                }
            )
            .as_deref(),
            Some("5")
        );
        assert_eq!(
            client_id(claims, &ClientIdClaim::Plain("empty".into())),
            None
        );
        assert_eq!(
            client_id(claims, &ClientIdClaim::Plain("missing".into())),
            None
        );
    }

    #[test]
    fn supplied_provider_parses_pem_keys() {
        let pem = include_str!("../tests/fixtures/rsa1.pub.pem");
        let p = Provider::from_supplied(
            &json!({"issuer": "http://idp", "keys": {"k1": {"pem": pem, "alg": "RS256"}}}),
        )
        .unwrap();
        assert_eq!(p.keys().len(), 1);
        assert!(Provider::from_supplied(&json!({"keys": {}})).is_err());
    }
}
