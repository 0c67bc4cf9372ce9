//! The APIcast configuration JSON (`services[]`, `proxy{}`, `proxy_rules[]`, `policy_chain[]`, positional `oidc[]`)
//! parsed with APIcast's defaults and compiled into the typed, immutable [`Configuration`] the proxy serves from.

use crate::mapping::{MappingRule, MappingRuleError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use url::Url;

/// APIcast's built-in backend when a service names none (its mock answers 200 to authrep).
pub const DEFAULT_BACKEND: &str = "http://127.0.0.1:8081";

/// Why a configuration document was rejected; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

// The JSON document itself is `platform::apicast` (shared with system, which writes it).
use platform::apicast::{Document, Policy as PolicyDoc, Scalar, Service as ServiceDoc};

fn text(value: Option<Scalar>) -> Option<String> {
    value.map(|v| v.text())
}

// ---------------------------------------------------------------------------------------------------------------
// The compiled configuration.

/// How a service's clients authenticate (`backend_version`, overridden by `proxy.authentication_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `backend_version: 1`: `user_key`.
    UserKey,
    /// `backend_version: 2`: `app_id` + `app_key`.
    AppIdKey,
    /// `backend_version: oauth` without OIDC: an `access_token` checked by backend.
    OAuth,
    /// OpenID Connect: a JWT verified here, its client id sent as `app_id` to `oauth_authrep.xml`.
    Oidc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsLocation {
    Query,
    Headers,
    Authorization,
}

/// What the caching policy does when backend cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachingMode {
    Strict,
    Resilient,
    Allow,
    None,
}

impl CachingMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "strict" => Some(Self::Strict),
            "resilient" => Some(Self::Resilient),
            "allow" => Some(Self::Allow),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// One configured error answer: status, `Content-Type` and body.
#[derive(Debug, Clone)]
pub struct ErrorAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct ErrorAnswers {
    pub auth_failed: ErrorAnswer,
    pub auth_missing: ErrorAnswer,
    pub no_match: ErrorAnswer,
    pub limits_exceeded: ErrorAnswer,
}

/// Where a service's client id comes from in a verified JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdClaim {
    /// A claim name (default `azp`).
    Plain(String),
    /// `{{ claim }}` or `{{ claim | first }}`.
    Liquid { claim: String, first: bool },
}

/// A service's OpenID Connect settings.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// `proxy.oidc_issuer_endpoint`, possibly with credentials in its userinfo.
    pub issuer_endpoint: Option<String>,
    /// `oidc[i]` from the document, when it carries an issuer and keys (no discovery needed then).
    pub supplied: Option<Arc<crate::oidc::Provider>>,
    pub client_id_claim: ClientIdClaim,
}

/// The policies of a service's chain that change what the gateway does.
#[derive(Debug, Default)]
pub struct Policies {
    /// `apicast` is in the chain: 3scale authorization happens.
    pub apicast: bool,
    pub referrer: bool,
    pub caching: Option<CachingMode>,
    /// `default_credentials`: used when the request carries none.
    pub default_credentials: Option<Vec<(String, String)>>,
    /// Names in the chain this gateway recognises but does not run.
    pub ignored: Vec<String>,
    /// The request/response-changing steps in chain order (with the `apicast` position marked); empty when the
    /// chain has none of `cors`, `headers`, `upstream`, `url_rewriting`, so the fast path skips them.
    pub steps: Vec<crate::policies::Step>,
}

/// Where authrep calls for a service go.
#[derive(Debug, Clone)]
pub struct BackendTarget {
    pub endpoint: Url,
    pub host: Option<String>,
}

/// A service as the proxy uses it.
#[derive(Debug)]
pub struct Service {
    pub id: String,
    pub system_name: String,
    pub auth_mode: AuthMode,
    /// `<backend_authentication_type>=<value>`, sent on every backend call.
    pub backend_auth: Option<(String, String)>,
    pub hosts: Vec<String>,
    pub api_backend: Option<Url>,
    /// `api_backend`'s scheme and authority, parsed once.
    pub api_origin: Option<crate::upstream::Origin>,
    pub credentials_location: CredentialsLocation,
    pub auth_user_key: String,
    pub auth_app_id: String,
    pub auth_app_key: String,
    pub errors: ErrorAnswers,
    /// `X-3scale-proxy-secret-token`, ready to send (a value a header cannot carry is refused at load time).
    pub secret_token: Option<http::HeaderValue>,
    pub hostname_rewrite: Option<String>,
    pub backend: BackendTarget,
    pub rules: Vec<MappingRule>,
    pub oidc: Option<OidcSettings>,
    pub policies: Policies,
    /// Any rule constrains query parameters (body args may then matter).
    pub rules_use_args: bool,
}

/// Gateway-wide settings that shape how a document is compiled.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    pub services_list: Option<Vec<String>>,
    pub filter_by_url: Option<regex::Regex>,
    pub backend_endpoint_override: Option<Url>,
    pub path_routing: bool,
}

/// An immutable, compiled configuration: swapped whole, never mutated.
#[derive(Debug, Default)]
pub struct Configuration {
    pub services: Vec<Arc<Service>>,
    /// Lower-cased host → indexes into `services`, in document order.
    by_host: HashMap<String, Vec<usize>>,
    /// The document as received, for `GET /config`.
    pub raw: Value,
    pub version: Option<String>,
}

impl Configuration {
    /// Services whose `hosts` contain `host` (already lower-cased, port stripped), in document order.
    pub fn services_for_host(&self, host: &str) -> impl Iterator<Item = &Arc<Service>> {
        self.by_host
            .get(host)
            .into_iter()
            .flatten()
            .map(|i| &self.services[*i])
    }
}

/// Parses and compiles a document. Every problem names the field it comes from.
pub fn parse(bytes: &[u8], options: &CompileOptions) -> Result<Configuration, ConfigError> {
    let raw: Value = serde_json::from_slice(bytes)
        .map_err(|e| ConfigError(format!("configuration is not valid JSON: {e}")))?;
    compile(raw, options)
}

/// Compiles an already-parsed document.
pub fn compile(raw: Value, options: &CompileOptions) -> Result<Configuration, ConfigError> {
    if !raw.is_object() {
        return Err(ConfigError(
            "configuration: expected a JSON object with `services`".into(),
        ));
    }
    let doc: Document = serde_path_to_error::deserialize(&raw)
        .map_err(|e| ConfigError(format!("configuration field `{}`: {}", e.path(), e.inner())))?;
    let version = doc.timestamp.as_ref().map(|t| match t {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let mut services: Vec<Arc<Service>> = Vec::new();
    for (index, service_doc) in doc.services.into_iter().enumerate() {
        let oidc_entry = doc.oidc.get(index).cloned();
        let service = compile_service(index, service_doc, oidc_entry, options)?;
        if services.iter().any(|s| s.id == service.id) {
            tracing::warn!(service_id = %service.id, "skipping service because it is a duplicate");
            continue;
        }
        if !keep_service(&service, options) {
            continue;
        }
        services.push(Arc::new(service));
    }
    let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, service) in services.iter().enumerate() {
        for host in &service.hosts {
            let entry = by_host.entry(host.clone()).or_default();
            if !entry.is_empty() && !options.path_routing {
                tracing::warn!(host = %host, service_id = %service.id, claimed_by = %services[entry[0]].id,
                    "skipping host for service: already defined by another service");
                continue;
            }
            entry.push(i);
        }
    }
    Ok(Configuration {
        services,
        by_host,
        raw,
        version,
    })
}

fn keep_service(service: &Service, options: &CompileOptions) -> bool {
    if options.services_list.is_none() && options.filter_by_url.is_none() {
        return true;
    }
    let listed = options
        .services_list
        .as_ref()
        .is_some_and(|list| list.contains(&service.id));
    let matched = options
        .filter_by_url
        .as_ref()
        .is_some_and(|re| service.hosts.iter().any(|h| re.is_match(h)));
    listed || matched
}

fn status_field(
    at: &str,
    name: &str,
    value: Option<String>,
    default: u16,
) -> Result<u16, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) if s.trim().is_empty() => Ok(default),
        Some(s) => s
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| {
                ConfigError(format!(
                    "{at}.proxy.{name}: expected an HTTP status code, got {s:?}"
                ))
            }),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn compile_service(
    index: usize,
    doc: ServiceDoc,
    oidc_entry: Option<Value>,
    options: &CompileOptions,
) -> Result<Service, ConfigError> {
    let at = format!("services[{index}]");
    let proxy = doc.proxy;
    let id = text(doc.id).unwrap_or_else(|| "default".to_owned());
    let version = text(doc.backend_version).unwrap_or_else(|| "1".to_owned());
    let method = proxy.authentication_method.clone().unwrap_or_default();
    let auth_mode = if method == "oidc" || version == "oidc" {
        AuthMode::Oidc
    } else {
        match version.as_str() {
            "1" => AuthMode::UserKey,
            "2" => AuthMode::AppIdKey,
            "oauth" => AuthMode::OAuth,
            other => {
                return Err(ConfigError(format!(
                    "{at}.backend_version: expected 1, 2, oauth or oidc, got {other:?}"
                )))
            }
        }
    };
    let credentials_location = match proxy.credentials_location.as_deref() {
        None | Some("") | Some("query") => CredentialsLocation::Query,
        Some("headers") => CredentialsLocation::Headers,
        Some("authorization") => CredentialsLocation::Authorization,
        Some(other) => {
            return Err(ConfigError(format!(
                "{at}.proxy.credentials_location: expected query, headers or authorization, got {other:?}"
            )))
        }
    };
    let text_plain = "text/plain; charset=utf-8";
    let answer = |body: Option<String>,
                  default_body: &str,
                  status: u16,
                  content_type: Option<String>| ErrorAnswer {
        status,
        body: body.unwrap_or_else(|| default_body.to_owned()),
        content_type: non_empty(content_type).unwrap_or_else(|| text_plain.to_owned()),
    };
    let errors = ErrorAnswers {
        auth_failed: answer(
            proxy.error_auth_failed,
            "Authentication failed",
            status_field(
                &at,
                "error_status_auth_failed",
                text(proxy.error_status_auth_failed),
                403,
            )?,
            proxy.error_headers_auth_failed,
        ),
        auth_missing: answer(
            proxy.error_auth_missing,
            "Authentication parameters missing",
            status_field(
                &at,
                "error_status_auth_missing",
                text(proxy.error_status_auth_missing),
                401,
            )?,
            proxy.error_headers_auth_missing,
        ),
        no_match: answer(
            proxy.error_no_match,
            "No Mapping Rule matched",
            status_field(
                &at,
                "error_status_no_match",
                text(proxy.error_status_no_match),
                404,
            )?,
            proxy.error_headers_no_match,
        ),
        limits_exceeded: answer(
            proxy.error_limits_exceeded,
            "Limits exceeded",
            status_field(
                &at,
                "error_status_limits_exceeded",
                text(proxy.error_status_limits_exceeded),
                429,
            )?,
            proxy.error_headers_limits_exceeded,
        ),
    };
    let api_backend = match non_empty(proxy.api_backend) {
        None => None,
        Some(s) => Some(
            parse_http_url(&s).map_err(|e| ConfigError(format!("{at}.proxy.api_backend: {e}")))?,
        ),
    };
    let api_origin = match &api_backend {
        None => None,
        Some(url) => Some(crate::upstream::Origin::of(url).ok_or_else(|| {
            ConfigError(format!("{at}.proxy.api_backend: {url} has no usable host"))
        })?),
    };
    let backend_doc = proxy.backend.unwrap_or_default();
    let endpoint = match (
        &options.backend_endpoint_override,
        non_empty(backend_doc.endpoint),
    ) {
        (Some(over), _) => over.clone(),
        (None, Some(s)) => parse_http_url(&s)
            .map_err(|e| ConfigError(format!("{at}.proxy.backend.endpoint: {e}")))?,
        (None, None) => Url::parse(DEFAULT_BACKEND).expect("default backend URL is valid"),
    };
    let backend = BackendTarget {
        endpoint,
        host: non_empty(backend_doc.host),
    };
    let mut rules = Vec::with_capacity(proxy.proxy_rules.len());
    for (i, rule) in proxy.proxy_rules.into_iter().enumerate() {
        let rule_at = format!("{at}.proxy.proxy_rules[{i}]");
        let metric = non_empty(rule.metric_system_name)
            .ok_or_else(|| ConfigError(format!("{rule_at}.metric_system_name: is required")))?;
        let delta = match rule.delta {
            None => 0,
            Some(Scalar::Number(n)) => n.as_i64().ok_or_else(|| {
                ConfigError(format!("{rule_at}.delta: expected an integer, got {n}"))
            })?,
            Some(Scalar::Text(s)) => s.trim().parse::<i64>().map_err(|_| {
                ConfigError(format!("{rule_at}.delta: expected an integer, got {s:?}"))
            })?,
            Some(other) => {
                return Err(ConfigError(format!(
                    "{rule_at}.delta: expected an integer, got {other}"
                )))
            }
        };
        let params: Vec<(String, String)> = rule
            .querystring_parameters
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
        let compiled = MappingRule::new(
            rule.http_method.as_deref().unwrap_or("ANY"),
            rule.pattern.as_deref().unwrap_or("/"),
            params,
            metric,
            delta,
            rule.last,
        )
        .map_err(|MappingRuleError(e)| ConfigError(format!("{rule_at}.pattern: {e}")))?;
        rules.push(compiled);
    }
    let rules_use_args = rules.iter().any(|r| r.has_query_constraints());
    let oidc = if auth_mode == AuthMode::Oidc {
        let supplied =
            match oidc_entry.filter(|v| v.get("issuer").is_some() && v.get("keys").is_some()) {
                Some(entry) => Some(Arc::new(
                    crate::oidc::Provider::from_supplied(&entry)
                        .map_err(|e| ConfigError(format!("oidc[{index}]: {e}")))?,
                )),
                None => None,
            };
        Some(OidcSettings {
            issuer_endpoint: non_empty(proxy.oidc_issuer_endpoint),
            supplied,
            client_id_claim: client_id_claim(
                non_empty(proxy.jwt_claim_with_client_id),
                proxy.jwt_claim_with_client_id_type.as_deref(),
            ),
        })
    } else {
        None
    };
    let policies = match proxy.policy_chain {
        None => Policies {
            apicast: true,
            ..Policies::default()
        },
        Some(chain) => compile_policies(&at, chain)?,
    };
    let hosts = if proxy.hosts.is_empty() {
        vec!["localhost".to_owned()]
    } else {
        proxy.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    };
    Ok(Service {
        id,
        system_name: doc.system_name.unwrap_or_default(),
        auth_mode,
        backend_auth: match (
            non_empty(doc.backend_authentication_type),
            doc.backend_authentication_value,
        ) {
            (Some(t), Some(v)) => Some((t, v)),
            _ => None,
        },
        hosts,
        api_backend,
        api_origin,
        credentials_location,
        auth_user_key: proxy
            .auth_user_key
            .map(|s| s.to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "user_key".into()),
        auth_app_id: proxy
            .auth_app_id
            .map(|s| s.to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "app_id".into()),
        auth_app_key: proxy
            .auth_app_key
            .map(|s| s.to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "app_key".into()),
        errors,
        secret_token: match non_empty(proxy.secret_token) {
            None => None,
            Some(token) => Some(http::HeaderValue::from_str(&token).map_err(|_| {
                ConfigError(format!("{at}.proxy.secret_token: not a valid header value"))
            })?),
        },
        hostname_rewrite: non_empty(proxy.hostname_rewrite),
        backend,
        rules,
        oidc,
        policies,
        rules_use_args,
    })
}

fn client_id_claim(claim: Option<String>, kind: Option<&str>) -> ClientIdClaim {
    let Some(claim) = claim else {
        return ClientIdClaim::Plain("azp".into());
    };
    if kind == Some("liquid") {
        let inner = claim
            .trim()
            .trim_start_matches("{{")
            .trim_end_matches("}}")
            .trim();
        let mut parts = inner.split('|').map(str::trim);
        let name = parts.next().unwrap_or("").to_owned();
        let first = parts.any(|f| f == "first");
        ClientIdClaim::Liquid { claim: name, first }
    } else {
        ClientIdClaim::Plain(claim)
    }
}

fn compile_policies(at: &str, chain: Vec<PolicyDoc>) -> Result<Policies, ConfigError> {
    let mut policies = Policies::default();
    for (i, policy) in chain.into_iter().enumerate() {
        if policy.enabled == Some(false) {
            continue;
        }
        let name = policy
            .name
            .strip_prefix("apicast.policy.")
            .unwrap_or(&policy.name)
            .to_owned();
        match name.as_str() {
            "apicast" => {
                policies.apicast = true;
                policies.steps.push(crate::policies::Step::Apicast);
            }
            "3scale_referrer" => policies.referrer = true,
            "caching" => {
                let mode = policy
                    .configuration
                    .get("caching_type")
                    .and_then(Value::as_str)
                    .and_then(CachingMode::parse)
                    .unwrap_or(CachingMode::None);
                policies.caching = Some(mode);
            }
            "default_credentials" => {
                let c = &policy.configuration;
                let get = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
                let creds = match c.get("auth_type").and_then(Value::as_str) {
                    Some("user_key") => get("user_key").map(|k| vec![("user_key".into(), k)]),
                    Some("app_id_and_app_key") => match (get("app_id"), get("app_key")) {
                        (Some(id), Some(key)) => {
                            Some(vec![("app_id".into(), id), ("app_key".into(), key)])
                        }
                        _ => None,
                    },
                    _ => None,
                };
                if creds.is_none() {
                    return Err(ConfigError(format!(
                        "{at}.proxy.policy_chain[{i}].configuration: default_credentials needs auth_type user_key (with user_key) or app_id_and_app_key (with app_id and app_key)"
                    )));
                }
                policies.default_credentials = creds;
            }
            "cors" | "headers" | "upstream" | "url_rewriting" => {
                let step = crate::policies::compile(&name, &policy.configuration)
                    .expect("these names are compiled by the policies module")
                    .map_err(|e| {
                        ConfigError(format!(
                            "{at}.proxy.policy_chain[{i}].configuration.{e} (policy {name})"
                        ))
                    })?;
                policies.steps.push(step);
            }
            "rate_limit" | "routing" | "3scale_batcher" | "find_service" | "load_configuration"
            | "local_chain" | "nginx_metrics" => {
                tracing::warn!(policy = %name, "policy is recognised but not run by this gateway");
                policies.ignored.push(name);
            }
            other => {
                return Err(ConfigError(format!(
                    "{at}.proxy.policy_chain[{i}].name: unknown policy {other:?}"
                )))
            }
        }
    }
    // Only the `apicast` marker: nothing to run per request.
    if policies
        .steps
        .iter()
        .all(|s| matches!(s, crate::policies::Step::Apicast))
    {
        policies.steps.clear();
    }
    Ok(policies)
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some() => Ok(url),
        _ => Err(format!("{s:?} is not an http(s) URL with a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(service: Value) -> Service {
        let cfg = compile(json!({"services": [service]}), &CompileOptions::default()).unwrap();
        Arc::try_unwrap(cfg.services.into_iter().next().unwrap()).unwrap()
    }

    #[test]
    fn defaults_follow_apicast() {
        let s = one(json!({"id": 42, "proxy": {}}));
        assert_eq!(s.id, "42");
        assert_eq!(s.auth_mode, AuthMode::UserKey);
        assert_eq!(s.hosts, vec!["localhost"]);
        assert_eq!(s.credentials_location, CredentialsLocation::Query);
        assert_eq!(s.auth_user_key, "user_key");
        assert_eq!(s.errors.auth_missing.status, 401);
        assert_eq!(
            s.errors.auth_missing.body,
            "Authentication parameters missing"
        );
        assert_eq!(s.errors.auth_failed.status, 403);
        assert_eq!(s.errors.no_match.status, 404);
        assert_eq!(s.errors.limits_exceeded.status, 429);
        assert_eq!(
            s.errors.limits_exceeded.content_type,
            "text/plain; charset=utf-8"
        );
        assert_eq!(s.backend.endpoint.as_str(), "http://127.0.0.1:8081/");
        assert!(s.policies.apicast);
        assert!(s.api_backend.is_none());
    }

    #[test]
    fn reads_custom_fields_and_oidc() {
        let cfg = compile(
            json!({
                "services": [{
                    "id": "7", "backend_version": "oauth",
                    "backend_authentication_type": "service_token", "backend_authentication_value": "tok",
                    "proxy": {
                        "hosts": ["API.example.com"], "api_backend": "http://up:9000/base",
                        "authentication_method": "oidc", "credentials_location": "headers",
                        "auth_user_key": "X-Key", "error_status_auth_failed": "418",
                        "error_headers_auth_failed": "application/json", "error_auth_failed": "{}",
                        "jwt_claim_with_client_id": "{{ custom | first }}",
                        "jwt_claim_with_client_id_type": "liquid",
                        "policy_chain": [{"name": "apicast.policy.3scale_referrer"}, {"name": "apicast"},
                                         {"name": "caching", "configuration": {"caching_type": "resilient"}}],
                        "proxy_rules": [{"http_method": "GET", "pattern": "/", "metric_system_name": "hits", "delta": "2"}]
                    }
                }],
                "oidc": [{"issuer": "http://idp", "keys": {}}]
            }),
            &CompileOptions::default(),
        )
        .unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.auth_mode, AuthMode::Oidc);
        assert_eq!(s.hosts, vec!["api.example.com"]);
        assert_eq!(s.auth_user_key, "x-key");
        assert_eq!(s.errors.auth_failed.status, 418);
        assert_eq!(s.errors.auth_failed.content_type, "application/json");
        assert_eq!(s.backend_auth, Some(("service_token".into(), "tok".into())));
        assert!(s.policies.referrer && s.policies.apicast);
        assert_eq!(s.policies.caching, Some(CachingMode::Resilient));
        let oidc = s.oidc.as_ref().unwrap();
        assert!(oidc.supplied.is_some());
        assert_eq!(
            oidc.client_id_claim,
            ClientIdClaim::Liquid {
                claim: "custom".into(),
                first: true
            }
        );
        assert_eq!(s.rules[0].delta, 2);
        assert_eq!(cfg.services_for_host("api.example.com").count(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let err = compile(
            json!({"services": [{"proxy": {"proxy_rules": [{"pattern": "/"}]}}]}),
            &CompileOptions::default(),
        )
        .unwrap_err();
        assert!(err
            .0
            .contains("services[0].proxy.proxy_rules[0].metric_system_name"));
        let err = compile(
            json!({"services": [{"proxy": {"hosts": "nope"}}]}),
            &CompileOptions::default(),
        )
        .unwrap_err();
        assert!(err.0.contains("services[0].proxy.hosts"), "{err}");
        let err = compile(
            json!({"services": [{"proxy": {"policy_chain": [{"name": "bogus"}]}}]}),
            &CompileOptions::default(),
        )
        .unwrap_err();
        assert!(err.0.contains("unknown policy"), "{err}");
        let err = compile(
            json!({"services": [{"proxy": {"error_status_no_match": "abc"}}]}),
            &CompileOptions::default(),
        )
        .unwrap_err();
        assert!(err.0.contains("error_status_no_match"), "{err}");
        assert!(parse(b"{not json", &CompileOptions::default()).is_err());
    }

    #[test]
    fn filters_duplicates_and_hosts() {
        let doc = json!({"services": [
            {"id": 1, "proxy": {"hosts": ["a.test"]}},
            {"id": 1, "proxy": {"hosts": ["dup.test"]}},
            {"id": 2, "proxy": {"hosts": ["a.test", "b.test"]}},
            {"id": 3, "proxy": {"hosts": ["c.example"]}}
        ]});
        let cfg = compile(doc.clone(), &CompileOptions::default()).unwrap();
        assert_eq!(cfg.services.len(), 3);
        let ids: Vec<_> = cfg
            .services_for_host("a.test")
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(ids, vec!["1"], "first service keeps a shared host");
        let options = CompileOptions {
            services_list: Some(vec!["2".into()]),
            filter_by_url: Some(regex::Regex::new(r"\.example$").unwrap()),
            ..Default::default()
        };
        let cfg = compile(doc.clone(), &options).unwrap();
        let ids: Vec<_> = cfg.services.iter().map(|s| s.id.clone()).collect();
        assert_eq!(ids, vec!["2", "3"]);
        let routed = compile(
            doc,
            &CompileOptions {
                path_routing: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(routed.services_for_host("a.test").count(), 2);
    }

    /// What system's `configs.rs` writes (built through the same `platform::apicast` types): every extra field is
    /// carried, numbers where APIcast expects text are read as text.
    #[test]
    fn system_shaped_content_compiles() {
        let content: Value = serde_json::from_str(
            r#"{
            "id": 7, "account_id": 1, "name": "API", "system_name": "api", "description": null, "state": "incomplete",
            "backend_version": "1", "deployment_option": "hosted", "proxiable?": true,
            "backend_authentication_type": "service_token", "backend_authentication_value": "tok",
            "proxy": {
                "id": 7, "service_id": 7, "endpoint": "https://prod.example.com", "sandbox_endpoint": null,
                "api_backend": "http://127.0.0.1:9999", "credentials_location": "query", "auth_app_key": "app_key",
                "auth_app_id": "app_id", "auth_user_key": "user_key",
                "error_auth_failed": "Authentication failed", "error_status_auth_failed": 403,
                "error_headers_auth_failed": "text/plain; charset=us-ascii",
                "error_auth_missing": "Authentication parameters missing", "error_status_auth_missing": 403,
                "error_headers_auth_missing": "text/plain; charset=us-ascii",
                "error_no_match": "No Mapping Rule matched", "error_status_no_match": 404,
                "error_headers_no_match": "text/plain; charset=us-ascii",
                "error_limits_exceeded": "Usage limit exceeded", "error_status_limits_exceeded": 429,
                "error_headers_limits_exceeded": "text/plain; charset=us-ascii",
                "secret_token": "Shared_secret", "hostname_rewrite": null, "oauth_login_url": null,
                "api_test_path": "/", "oidc_issuer_endpoint": null, "oidc_issuer_type": "keycloak",
                "jwt_claim_with_client_id": null, "jwt_claim_with_client_id_type": null,
                "authentication_method": "1", "service_backend_version": "1", "hosts": ["prod.example.com"],
                "backend": {"endpoint": "http://backend:3001", "host": "backend"},
                "policy_chain": [{"name": "apicast", "version": "builtin", "configuration": {}}],
                "proxy_rules": [{"id": 1, "http_method": "GET", "pattern": "/", "metric_id": 2,
                    "metric_system_name": "hits", "delta": 1, "position": 1, "last": false, "parameters": [],
                    "querystring_parameters": {}, "owner_id": 7, "owner_type": "Proxy"}],
                "valid?": true, "hostname_rewrite_for_sandbox": "127.0.0.1", "endpoint_port": 9999
            }
        }"#,
        )
        .unwrap();
        let s = one(content);
        assert_eq!(s.id, "7");
        assert_eq!(s.errors.auth_missing.status, 403);
        assert_eq!(s.errors.limits_exceeded.body, "Usage limit exceeded");
        assert_eq!(s.backend.host.as_deref(), Some("backend"));
        assert_eq!(s.rules.len(), 1);
        assert!(s.policies.apicast);
    }

    #[test]
    fn backend_override_wins() {
        let options = CompileOptions {
            backend_endpoint_override: Some(Url::parse("http://backend:3000").unwrap()),
            ..Default::default()
        };
        let cfg = compile(
            json!({"services": [{"proxy": {"backend": {"endpoint": "http://other", "host": "h"}}}]}),
            &options,
        )
        .unwrap();
        assert_eq!(
            cfg.services[0].backend.endpoint.as_str(),
            "http://backend:3000/"
        );
        assert_eq!(cfg.services[0].backend.host.as_deref(), Some("h"));
    }
}
