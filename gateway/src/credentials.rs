//! Credential extraction per `backend_version` and `credentials_location`, as APIcast's `service.lua` does it:
//! query (then urlencoded body) args, headers (nginx-style names), or `Authorization: Basic`/`Bearer`.

use crate::apicast::{AuthMode, CredentialsLocation, Service};
use crate::mapping::Args;
use base64::Engine;
use http::HeaderMap;

/// What identifies the caller to backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    UserKey(String),
    /// `app_key` is `None` when the request has no key: backend then decides, authorizing by app id alone an
    /// application without keys on a service without `mandatory_app_key` (APIcast refuses before asking).
    AppIdKey {
        app_id: String,
        app_key: Option<String>,
    },
    /// A bearer/access token: checked by backend (`oauth`) or verified here as a JWT (OIDC).
    Token(String),
}

impl Credentials {
    /// The parameters sent to backend (OIDC tokens are replaced by the client id before calling).
    pub fn backend_params(&self) -> Vec<(&'static str, &str)> {
        match self {
            Self::UserKey(k) => vec![("user_key", k)],
            Self::AppIdKey { app_id, app_key } => {
                let mut params = vec![("app_id", app_id.as_str())];
                if let Some(key) = app_key {
                    params.push(("app_key", key.as_str()));
                }
                params
            }
            Self::Token(t) => vec![("access_token", t)],
        }
    }

    /// The credential part of APIcast's cache key.
    pub fn cache_key_part(&self) -> String {
        match self {
            Self::UserKey(k) | Self::Token(k) => k.clone(),
            Self::AppIdKey {
                app_id,
                app_key: Some(key),
            } => format!("{app_id}:{key}"),
            // No colon: distinct from an empty key.
            Self::AppIdKey {
                app_id,
                app_key: None,
            } => app_id.clone(),
        }
    }
}

/// The pieces of a request credentials may come from.
pub struct RequestParts<'a> {
    pub headers: &'a HeaderMap,
    pub query: &'a Args,
    /// Urlencoded body args of a POST/PUT/PATCH, when the body was small enough to read.
    pub body: Option<&'a Args>,
}

impl RequestParts<'_> {
    fn arg(&self, name: &str) -> Option<String> {
        self.query
            .first(name)
            .or_else(|| self.body.and_then(|b| b.first(name)))
            .map(str::to_owned)
    }

    /// nginx's `$http_<name>`: header names compared lower-cased with `-` read as `_`.
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| same_nginx_name(k.as_str(), name))
            .and_then(|(_, v)| v.to_str().ok())
            .map(str::to_owned)
    }

    fn authorization(&self) -> Authorization {
        let Some(value) = self.headers.get(http::header::AUTHORIZATION) else {
            return Authorization::None;
        };
        // UTF-8 validation rather than `to_str`'s byte-by-byte check: a bearer JWT is long and comes on every request.
        let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
            return Authorization::None;
        };
        let value = value.trim();
        if let Some(encoded) = value.strip_prefix("Basic ") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
            else {
                return Authorization::None;
            };
            let Ok(decoded) = String::from_utf8(decoded) else {
                return Authorization::None;
            };
            return match decoded.rsplit_once(':') {
                Some((user, pass)) => Authorization::Basic {
                    user: user.to_owned(),
                    pass: pass.to_owned(),
                },
                None => Authorization::None,
            };
        }
        if let Some(token) = value.strip_prefix("Bearer ") {
            let token = token.trim();
            if !token.is_empty() {
                return Authorization::Bearer(token.to_owned());
            }
        }
        Authorization::None
    }
}

/// Whether two header names are the same nginx variable name (compared without building either).
fn same_nginx_name(a: &str, b: &str) -> bool {
    let norm = |c: u8| {
        if c == b'-' {
            b'_'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

enum Authorization {
    None,
    Basic { user: String, pass: String },
    Bearer(String),
}

/// Extracts the service's credentials; `None` means "Authentication parameters missing".
pub fn extract(service: &Service, parts: &RequestParts<'_>) -> Option<Credentials> {
    use CredentialsLocation as L;
    match service.auth_mode {
        AuthMode::UserKey => {
            let key = match service.credentials_location {
                L::Query => parts.arg(&service.auth_user_key),
                L::Headers => parts.header(&service.auth_user_key),
                L::Authorization => match parts.authorization() {
                    Authorization::Basic { user, pass } => {
                        Some(if user.is_empty() { pass } else { user })
                    }
                    Authorization::Bearer(t) => Some(t),
                    Authorization::None => None,
                },
            }?;
            Some(Credentials::UserKey(key))
        }
        AuthMode::AppIdKey => {
            let (app_id, app_key) = match service.credentials_location {
                L::Query => (
                    parts.arg(&service.auth_app_id),
                    parts.arg(&service.auth_app_key),
                ),
                L::Headers => (
                    parts.header(&service.auth_app_id),
                    parts.header(&service.auth_app_key),
                ),
                L::Authorization => match parts.authorization() {
                    Authorization::Basic { user, pass } => (Some(user), Some(pass)),
                    Authorization::Bearer(t) => (Some(t), None),
                    Authorization::None => (None, None),
                },
            };
            Some(Credentials::AppIdKey {
                app_id: app_id?,
                app_key,
            })
        }
        AuthMode::OAuth | AuthMode::Oidc => {
            let located = match service.credentials_location {
                L::Query => parts.arg("access_token"),
                L::Headers => parts.header("access_token"),
                L::Authorization => None,
            };
            // RFC 6750: a bearer token in Authorization is always accepted.
            let token = located.or_else(|| match parts.authorization() {
                Authorization::Bearer(t) => Some(t),
                _ => None,
            })?;
            Some(Credentials::Token(token))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apicast::{compile, CompileOptions};
    use serde_json::json;
    use std::sync::Arc;

    fn service(version: &str, location: &str) -> Arc<Service> {
        let cfg = compile(
            json!({"services": [{"backend_version": version, "proxy": {"credentials_location": location,
                "auth_user_key": "User-Key", "auth_app_id": "X-App-Id", "auth_app_key": "x_app_key"}}]}),
            &CompileOptions::default(),
        )
        .unwrap();
        cfg.services[0].clone()
    }

    fn run(
        s: &Service,
        headers: &[(&str, &str)],
        query: &str,
        body: Option<&str>,
    ) -> Option<Credentials> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let q = Args::from_query(Some(query));
        let b = body.map(|b| Args::from_query(Some(b)));
        extract(
            s,
            &RequestParts {
                headers: &map,
                query: &q,
                body: b.as_ref(),
            },
        )
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn user_key_in_query_body_and_headers() {
        let s = service("1", "query");
        assert_eq!(
            run(&s, &[], "user-key=k1", None),
            Some(Credentials::UserKey("k1".into()))
        );
        assert_eq!(
            run(&s, &[], "", Some("user-key=k2")),
            Some(Credentials::UserKey("k2".into()))
        );
        assert_eq!(
            run(&s, &[], "user-key=", None),
            Some(Credentials::UserKey("".into()))
        );
        assert_eq!(run(&s, &[], "other=1", None), None);
        let h = service("1", "headers");
        assert_eq!(
            run(&h, &[("user_key", "hk")], "", None),
            Some(Credentials::UserKey("hk".into()))
        );
        assert_eq!(
            run(&h, &[("User-Key", "hk2")], "", None),
            Some(Credentials::UserKey("hk2".into()))
        );
        assert_eq!(run(&h, &[], "user-key=k1", None), None);
    }

    #[test]
    fn authorization_basic_and_bearer() {
        let s = service("1", "authorization");
        assert_eq!(
            run(&s, &[("authorization", &basic("uk", ""))], "", None),
            Some(Credentials::UserKey("uk".into()))
        );
        assert_eq!(
            run(&s, &[("authorization", &basic("", "pw"))], "", None),
            Some(Credentials::UserKey("pw".into()))
        );
        assert_eq!(
            run(&s, &[("authorization", "Bearer tk")], "", None),
            Some(Credentials::UserKey("tk".into()))
        );
        assert_eq!(
            run(&s, &[("authorization", "Basic !!!notb64")], "", None),
            None
        );
        assert_eq!(run(&s, &[("authorization", "basic dTpw")], "", None), None);
        let v2 = service("2", "authorization");
        assert_eq!(
            run(&v2, &[("authorization", &basic("id:x", "key"))], "", None),
            Some(Credentials::AppIdKey {
                app_id: "id:x".into(),
                app_key: Some("key".into())
            })
        );
        assert_eq!(
            run(&v2, &[("authorization", "Bearer id")], "", None),
            Some(Credentials::AppIdKey {
                app_id: "id".into(),
                app_key: None
            })
        );
    }

    #[test]
    fn app_id_is_needed_and_app_key_optional() {
        let s = service("2", "query");
        assert_eq!(
            run(&s, &[], "x-app-id=a", Some("x_app_key=b")),
            Some(Credentials::AppIdKey {
                app_id: "a".into(),
                app_key: Some("b".into())
            })
        );
        assert_eq!(run(&s, &[], "x_app_key=b", None), None);
        // Without a key, backend decides (mandatory_app_key); the key is not sent at all.
        let id_only = run(&s, &[], "x-app-id=a", None).expect("app id alone is a credential");
        assert_eq!(id_only.backend_params(), [("app_id", "a")]);
        assert_eq!(id_only.cache_key_part(), "a");
        let empty_key = run(&s, &[], "x-app-id=a&x_app_key=", None).expect("empty key");
        assert_eq!(
            empty_key.backend_params(),
            [("app_id", "a"), ("app_key", "")]
        );
        assert_ne!(empty_key.cache_key_part(), id_only.cache_key_part());
        let h = service("2", "headers");
        assert_eq!(
            run(&h, &[("x-app-id", "a"), ("x-app-key", "b")], "", None),
            Some(Credentials::AppIdKey {
                app_id: "a".into(),
                app_key: Some("b".into())
            })
        );
    }

    #[test]
    fn oauth_tokens_fall_back_to_bearer() {
        let s = service("oauth", "query");
        assert_eq!(
            run(&s, &[], "access_token=t", None),
            Some(Credentials::Token("t".into()))
        );
        assert_eq!(
            run(&s, &[("authorization", "Bearer b")], "", None),
            Some(Credentials::Token("b".into()))
        );
        assert_eq!(run(&s, &[("authorization", "Bearer ")], "", None), None);
    }
}
