//! The APIcast configuration document (`services[]` with `proxy{}`, `proxy_rules[]`, `policy_chain[]`, `backend{}`,
//! and the positional `oidc[]`): the serde types system writes proxy configs with and the gateway reads them with,
//! so the two cannot drift.
//!
//! Reading is as lenient as APIcast: `null` means absent, and ids, versions and statuses may be strings, numbers or
//! booleans. Fields neither side interprets are kept in `extra` and written back unchanged, so a document survives
//! a read/write round trip.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Number, Value};
use std::fmt;

/// A scalar APIcast reads as text (`id`, `backend_version`, `error_status_*`, `delta`): a JSON string, number or
/// boolean, written back exactly as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Text(String),
    Number(Number),
    Bool(bool),
}

impl Scalar {
    /// The value as APIcast's `tostring` renders it.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Number(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl From<&str> for Scalar {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for Scalar {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<i64> for Scalar {
    fn from(n: i64) -> Self {
        Self::Number(n.into())
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(t) => s.serialize_str(t),
            Self::Number(n) => n.serialize(s),
            Self::Bool(b) => s.serialize_bool(*b),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Self::Text(s)),
            Value::Number(n) => Ok(Self::Number(n)),
            Value::Bool(b) => Ok(Self::Bool(b)),
            other => Err(de::Error::custom(format!(
                "expected a string or number, got {other}"
            ))),
        }
    }
}

/// `null` and absent both mean the default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Text fields accept numbers and booleans too (APIcast stringifies them).
fn stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(|s| match s {
        Scalar::Text(t) => t,
        other => other.text(),
    }))
}

/// The whole document: what `THREESCALE_CONFIG_FILE` holds and what the gateway assembles from system's
/// `proxy_configs` (each `content` is one [`Service`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Document {
    #[serde(default, deserialize_with = "null_as_default")]
    pub services: Vec<Service>,
    /// Positional: `oidc[i]` belongs to `services[i]`. Entries may be `false` or `{}`, so they stay JSON.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub oidc: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One service (a proxy config's `content`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    #[serde(default)]
    pub id: Option<Scalar>,
    #[serde(default, deserialize_with = "stringish")]
    pub system_name: Option<String>,
    /// `1` (user_key), `2` (app_id/app_key), `oauth`, or `oidc`.
    #[serde(default)]
    pub backend_version: Option<Scalar>,
    /// `service_token` or `provider_key`.
    #[serde(default, deserialize_with = "stringish")]
    pub backend_authentication_type: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub backend_authentication_value: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub proxy: Proxy,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `service.proxy`. Absent text fields take APIcast's defaults in the gateway, not here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    #[serde(default, deserialize_with = "null_as_default")]
    pub hosts: Vec<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub api_backend: Option<String>,
    /// Absent: the chain is `[apicast]`. Present: it must list `apicast` itself for 3scale authorization.
    #[serde(default)]
    pub policy_chain: Option<Vec<Policy>>,
    /// `query`, `headers` or `authorization`.
    #[serde(default, deserialize_with = "stringish")]
    pub credentials_location: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub auth_user_key: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub auth_app_id: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub auth_app_key: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub error_auth_failed: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub error_auth_missing: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub error_no_match: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub error_limits_exceeded: Option<String>,
    #[serde(default)]
    pub error_status_auth_failed: Option<Scalar>,
    #[serde(default)]
    pub error_status_auth_missing: Option<Scalar>,
    #[serde(default)]
    pub error_status_no_match: Option<Scalar>,
    #[serde(default)]
    pub error_status_limits_exceeded: Option<Scalar>,
    /// Used verbatim as the error answer's `Content-Type`.
    #[serde(default, deserialize_with = "stringish")]
    pub error_headers_auth_failed: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub error_headers_auth_missing: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub error_headers_no_match: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub error_headers_limits_exceeded: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub secret_token: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub hostname_rewrite: Option<String>,
    #[serde(default)]
    pub backend: Option<Backend>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub proxy_rules: Vec<ProxyRule>,
    #[serde(default, deserialize_with = "stringish")]
    pub oidc_issuer_endpoint: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub jwt_claim_with_client_id: Option<String>,
    /// `plain` or `liquid`.
    #[serde(default, deserialize_with = "stringish")]
    pub jwt_claim_with_client_id_type: Option<String>,
    /// `oidc` selects OpenID Connect whatever `backend_version` says.
    #[serde(default, deserialize_with = "stringish")]
    pub authentication_method: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `proxy.backend`: where authrep calls go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    #[serde(default, deserialize_with = "stringish")]
    pub endpoint: Option<String>,
    /// Overrides the `Host` header of backend calls.
    #[serde(default, deserialize_with = "stringish")]
    pub host: Option<String>,
}

/// One `policy_chain` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// `apicast`, `cors`, ... or the long form `apicast.policy.<name>`.
    pub name: String,
    #[serde(default, deserialize_with = "stringish")]
    pub version: Option<String>,
    /// Policy-specific; each policy validates its own.
    #[serde(default)]
    pub configuration: Value,
    /// system's `policies_config` carries disabled entries; APIcast never runs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// One mapping rule (`proxy_rules[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyRule {
    /// An HTTP method or `ANY`.
    #[serde(default, deserialize_with = "stringish")]
    pub http_method: Option<String>,
    /// Prefix pattern with `{placeholders}` and an optional `$` anchor; its query part is ignored.
    #[serde(default, deserialize_with = "stringish")]
    pub pattern: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    pub metric_system_name: Option<String>,
    #[serde(default)]
    pub delta: Option<Scalar>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub last: bool,
    /// Query constraints: a literal value, or a `{placeholder}` meaning "present".
    #[serde(default)]
    pub querystring_parameters: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_reading_and_faithful_writing() {
        let raw = json!({
            "services": [{
                "id": 42, "backend_version": "2", "system_name": 7, "account_id": 1,
                "proxy": {
                    "hosts": null, "error_status_no_match": 404, "error_status_auth_failed": "403",
                    "api_backend": "http://up", "valid?": true,
                    "policy_chain": [{"name": "apicast", "version": "builtin", "configuration": {}}],
                    "proxy_rules": [{"pattern": "/", "delta": "2", "last": null, "metric_system_name": "hits",
                                     "owner_type": "Proxy"}]
                }
            }],
            "provider_key": "pk"
        });
        let doc: Document = serde_json::from_value(raw).unwrap();
        let s = &doc.services[0];
        assert_eq!(s.id.as_ref().unwrap().text(), "42");
        assert_eq!(s.system_name.as_deref(), Some("7"));
        assert!(s.proxy.hosts.is_empty());
        assert_eq!(s.proxy.proxy_rules[0].delta, Some(Scalar::from("2")));
        assert!(!s.proxy.proxy_rules[0].last);
        assert_eq!(s.proxy.extra["valid?"], true);
        let back = serde_json::to_value(&doc).unwrap();
        assert_eq!(back["services"][0]["id"], 42, "numbers stay numbers");
        assert_eq!(
            back["services"][0]["proxy"]["error_status_auth_failed"],
            "403"
        );
        assert_eq!(back["services"][0]["proxy"]["error_status_no_match"], 404);
        assert_eq!(back["services"][0]["account_id"], 1);
        assert_eq!(
            back["services"][0]["proxy"]["proxy_rules"][0]["owner_type"],
            "Proxy"
        );
        assert_eq!(back["provider_key"], "pk");
        assert!(back["services"][0]["proxy"]["policy_chain"][0]
            .get("enabled")
            .is_none());
        let again: Document = serde_json::from_value(back).unwrap();
        assert_eq!(again, doc, "a round trip changes nothing");
    }

    #[test]
    fn objects_where_text_belongs_are_refused() {
        let err = serde_json::from_value::<Service>(json!({"id": {"x": 1}})).unwrap_err();
        assert!(
            err.to_string().contains("expected a string or number"),
            "{err}"
        );
        assert!(serde_json::from_value::<Proxy>(json!({"hosts": "a"})).is_err());
    }
}
