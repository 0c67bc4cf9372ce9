//! The client for upstream APIs: hyper's pooled HTTP/1.1 client (plain or TLS), with the request and answer bodies
//! passed through as they are, without the per-request work a general-purpose client (reqwest) does.

use axum::body::Body;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Why an upstream call failed, for the 502/504 answers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream failed: {0}")]
    Failed(String),
}

/// Pooled connections to every upstream; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
}

impl Upstream {
    /// `timeout` bounds the wait for the answer's head (the body then streams at the client's pace).
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        // Trust the system's roots (SSL_CERT_FILE / SSL_CERT_DIR honoured), else Mozilla's bundled ones.
        let https = match HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder,
            Err(err) => {
                tracing::warn!(error = %err, "no system CA certificates; using the bundled Mozilla roots");
                HttpsConnectorBuilder::new().with_webpki_roots()
            }
        }
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(https);
        Self { client, timeout }
    }

    /// Sends `request` and waits for the answer's head.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(err)) => Err(UpstreamError::Failed(platform::telemetry::error_chain(
                &err,
            ))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// An upstream's scheme and authority, parsed once per configuration rather than per request.
#[derive(Debug, Clone)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header sent when the service does not rewrite it: the authority as written in `api_backend`.
    pub host: http::HeaderValue,
}

impl Origin {
    pub fn of(url: &url::Url) -> Option<Self> {
        let scheme = match url.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            _ => return None,
        };
        let host = url.host_str()?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Some(Self {
            scheme,
            host: http::HeaderValue::from_str(&authority).ok()?,
            authority: authority.parse().ok()?,
        })
    }

    /// The absolute URI of `path_and_query` on this origin, or `None` when the path has bytes a URI cannot hold.
    pub fn uri(&self, path_and_query: &str) -> Option<Uri> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(path_and_query).ok()?)
            .build()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_explicit_ports_and_refuse_other_schemes() {
        let origin = Origin::of(&url::Url::parse("http://up.test:8081/base").unwrap()).unwrap();
        assert_eq!(origin.host, "up.test:8081");
        assert_eq!(
            origin.uri("/base/x?a=1").unwrap().to_string(),
            "http://up.test:8081/base/x?a=1"
        );
        let tls = Origin::of(&url::Url::parse("https://api.example.com").unwrap()).unwrap();
        assert_eq!(tls.host, "api.example.com");
        assert_eq!(
            tls.uri("/").unwrap().to_string(),
            "https://api.example.com/"
        );
        assert!(Origin::of(&url::Url::parse("ftp://files.example.com").unwrap()).is_none());
    }
}
