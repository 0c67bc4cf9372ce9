//! Where the current configuration lives and how it is kept fresh: an atomically swapped `Arc<Configuration>`,
//! loaded from a file or from system's admin API, polled every half second with conditional requests.

use crate::apicast::{self, CompileOptions, ConfigError, Configuration};
use base64::Engine;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use url::Url;

/// The configuration being served. Readers clone the `Arc` and never block writers for long.
#[derive(Clone, Default)]
pub struct ConfigStore {
    current: Arc<RwLock<Option<Arc<Configuration>>>>,
}

impl ConfigStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration in force, if one was loaded.
    pub fn get(&self) -> Option<Arc<Configuration>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Swaps in a new configuration; requests already running keep the one they started with.
    pub fn set(&self, config: Configuration) {
        let config = Arc::new(config);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(config);
    }

    /// Forgets the configuration (management API `DELETE /config`).
    pub fn clear(&self) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// No source: the gateway serves zero services and counts as ready (see docs/gateway.md).
    None,
    File(PathBuf),
    /// `THREESCALE_PORTAL_ENDPOINT`; the token is in the URL's userinfo.
    Portal(Url),
}

/// How the loader talks to its source.
#[derive(Clone)]
pub struct Loader {
    pub source: Source,
    pub environment: String,
    pub options: CompileOptions,
    pub client: reqwest::Client,
}

/// What one fetch from system produced.
pub enum Fetched {
    /// System answered 304 or the same bytes as last time.
    Unchanged,
    Changed(Configuration, Validator),
}

/// What identifies the last document seen: an ETag when system sends one, else the body itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Validator {
    etag: Option<String>,
    body: Vec<u8>,
}

impl Loader {
    /// Loads once from a file.
    pub fn load_file(&self, path: &PathBuf) -> Result<Configuration, ConfigError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        apicast::parse(&bytes, &self.options)
    }

    /// The URL and Basic credentials for system's proxy configs of this environment.
    fn portal_request(&self, endpoint: &Url, page: u32) -> (Url, Option<String>) {
        let mut url = endpoint.clone();
        let token = (!url.username().is_empty()).then(|| {
            percent_encoding::percent_decode_str(url.username())
                .decode_utf8_lossy()
                .into_owned()
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let path = url.path().trim_end_matches('/').to_owned();
        if path.is_empty() {
            url.set_path(&format!(
                "/admin/api/account/proxy_configs/{}.json",
                self.environment
            ));
            url.query_pairs_mut()
                .clear()
                .append_pair("version", "latest")
                .append_pair("page", &page.to_string())
                .append_pair("per_page", "500");
        } else {
            url.set_path(&format!("{path}/{}.json", self.environment));
        }
        let auth = token.map(|t| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{t}:"))
            )
        });
        (url, auth)
    }

    /// Fetches system's configuration; `previous` makes the request conditional.
    pub async fn fetch_portal(
        &self,
        endpoint: &Url,
        previous: &Validator,
    ) -> Result<Fetched, ConfigError> {
        let mut services: Vec<serde_json::Value> = Vec::new();
        let mut validator = Validator::default();
        let paged = endpoint.path().trim_end_matches('/').is_empty();
        for page in 1..=100u32 {
            let (url, auth) = self.portal_request(endpoint, page);
            let mut request = self
                .client
                .get(url)
                .header(
                    http::header::USER_AGENT,
                    format!("APIcast/3.16.0 (rust; env:{})", self.environment),
                )
                .timeout(Duration::from_secs(10));
            if let Some(auth) = auth {
                request = request.header(http::header::AUTHORIZATION, auth);
            }
            if page == 1 {
                if let Some(etag) = &previous.etag {
                    request = request.header(http::header::IF_NONE_MATCH, etag);
                }
            }
            let response = request
                .send()
                .await
                .map_err(|e| ConfigError(format!("cannot reach system: {}", e.without_url())))?;
            let status = response.status();
            if page == 1 && status == http::StatusCode::NOT_MODIFIED {
                return Ok(Fetched::Unchanged);
            }
            if status != http::StatusCode::OK {
                return Err(ConfigError(format!(
                    "system answered invalid status: {status}"
                )));
            }
            if page == 1 {
                validator.etag = response
                    .headers()
                    .get(http::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
            }
            let body = response.bytes().await.map_err(|e| {
                ConfigError(format!("reading system's answer: {}", e.without_url()))
            })?;
            validator.body.extend_from_slice(&body);
            let doc: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| ConfigError(format!("system's answer is not JSON: {e}")))?;
            let page_items = extract_proxy_configs(&doc)?;
            let count = page_items.len();
            services.extend(page_items);
            if !paged || count < 500 {
                break;
            }
        }
        if previous.etag.is_none() && !previous.body.is_empty() && previous.body == validator.body {
            return Ok(Fetched::Unchanged);
        }
        let config = apicast::compile(serde_json::json!({ "services": services }), &self.options)?;
        Ok(Fetched::Changed(config, validator))
    }
}

/// `{"proxy_configs":[{"proxy_config":{"content":{...}}}]}` (or one `proxy_config`) → service objects.
fn extract_proxy_configs(doc: &serde_json::Value) -> Result<Vec<serde_json::Value>, ConfigError> {
    let entries: Vec<&serde_json::Value> =
        if let Some(list) = doc.get("proxy_configs").and_then(|v| v.as_array()) {
            list.iter().collect()
        } else if doc.get("proxy_config").is_some() {
            vec![doc]
        } else if let Some(services) = doc.get("services").and_then(|v| v.as_array()) {
            return Ok(services.clone());
        } else {
            return Err(ConfigError(
                "system's answer has no `proxy_configs`".to_owned(),
            ));
        };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            entry
                .get("proxy_config")
                .and_then(|p| p.get("content"))
                .cloned()
                .ok_or_else(|| {
                    ConfigError(format!(
                        "proxy_configs[{i}].proxy_config.content is missing"
                    ))
                })
        })
        .collect()
}

/// Polls system every `interval`, swapping in each changed configuration that compiles; keeps the previous one
/// (and logs why) when a new one is broken or system is unreachable.
pub async fn poll_portal(
    loader: Loader,
    endpoint: Url,
    store: ConfigStore,
    interval: Duration,
    on_change: impl Fn(&Configuration) + Send + 'static,
    shutdown: platform::Shutdown,
) {
    let mut validator = Validator::default();
    let mut last_error: Option<String> = None;
    loop {
        match loader.fetch_portal(&endpoint, &validator).await {
            Ok(Fetched::Unchanged) => {}
            Ok(Fetched::Changed(config, next)) => {
                tracing::info!(
                    services = config.services.len(),
                    "loaded configuration from system"
                );
                on_change(&config);
                store.set(config);
                validator = next;
                last_error = None;
            }
            Err(err) => {
                let message = err.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "configuration from system rejected; the previous one keeps serving");
                    last_error = Some(message);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_urls_follow_apicast() {
        let loader = Loader {
            source: Source::None,
            environment: "staging".into(),
            options: CompileOptions::default(),
            client: reqwest::Client::new(),
        };
        let (url, auth) =
            loader.portal_request(&Url::parse("http://tok@admin.test:3000").unwrap(), 2);
        assert_eq!(
            url.as_str(),
            "http://admin.test:3000/admin/api/account/proxy_configs/staging.json?version=latest&page=2&per_page=500"
        );
        assert_eq!(auth.as_deref(), Some("Basic dG9rOg=="));
        let (url, auth) = loader.portal_request(
            &Url::parse("https://admin.test/master/api/proxy/configs").unwrap(),
            1,
        );
        assert_eq!(
            url.as_str(),
            "https://admin.test/master/api/proxy/configs/staging.json"
        );
        assert!(auth.is_none());
    }

    #[test]
    fn proxy_configs_are_unwrapped() {
        let doc = serde_json::json!({"proxy_configs": [{"proxy_config": {"content": {"id": 1}}}]});
        assert_eq!(extract_proxy_configs(&doc).unwrap()[0]["id"], 1);
        assert!(extract_proxy_configs(&serde_json::json!({"x": 1})).is_err());
    }
}
