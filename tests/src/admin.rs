//! A thin client for system's Account Management API, called the way the 3scale toolbox calls it: `.json` paths,
//! `access_token` as a parameter, form-encoded bodies.

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Talks to one system instance with one access token.
#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    /// `base` is system's root URL (`http://127.0.0.1:PORT`), without a trailing slash.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
        }
    }

    /// One call; parameters go in the query for GET and DELETE and in a form body otherwise. Returns the status
    /// and the body as JSON (`Value::Null` when empty, a JSON string when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut all: Vec<(&str, &str)> = vec![("access_token", self.token.as_str())];
        all.extend_from_slice(params);
        let req = if method == Method::GET || method == Method::DELETE {
            self.http.request(method.clone(), &url).query(&all)
        } else {
            self.http.request(method.clone(), &url).form(&all)
        };
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// A call that must succeed (2xx); panics with the status and body otherwise.
    pub async fn ok(&self, method: Method, path: &str, params: &[(&str, &str)]) -> Value {
        let (status, body) = self.call(method.clone(), path, params).await;
        assert!(
            status.is_success(),
            "{method} {path} {params:?} answered {status}: {body}"
        );
        body
    }

    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        self.ok(Method::GET, path, params).await
    }

    pub async fn post(&self, path: &str, params: &[(&str, &str)]) -> Value {
        self.ok(Method::POST, path, params).await
    }

    pub async fn put(&self, path: &str, params: &[(&str, &str)]) -> Value {
        self.ok(Method::PUT, path, params).await
    }

    pub async fn delete(&self, path: &str, params: &[(&str, &str)]) -> Value {
        self.ok(Method::DELETE, path, params).await
    }
}
