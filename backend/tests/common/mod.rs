//! The harness backend's HTTP tests share: the router on port 0 against a fresh database, and the calls every test
//! makes (internal API `PUT`s, Service Management API `GET`s with `3scale-options`).
#![allow(dead_code)] // each test file uses its own subset

use backend::AppState;
use platform::db::{Database, DbConfig};
use platform::testing::TestDb;
use serde_json::Value;

pub struct Harness {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: TestDb,
}

/// Serves backend on 127.0.0.1:0 with its background tasks; `auth` protects the internal API.
pub async fn spawn(
    db_url: &str,
    auth: Option<(&str, &str)>,
    max_connections: u32,
) -> (String, AppState) {
    let cfg = DbConfig {
        url: db_url.parse().unwrap(),
        max_connections,
    };
    let database = Database::connect(&cfg, &backend::MIGRATOR).await.unwrap();
    let state = AppState::new(
        database,
        auth.map(|(u, p)| (u.to_owned(), platform::Secret::new(p))),
    );
    backend::spawn_background(&state, platform::Shutdown::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = backend::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state)
}

impl Harness {
    /// A fresh database named after `name`, and backend serving it without internal API auth.
    pub async fn new(name: &str, max_connections: u32) -> Self {
        let db = TestDb::new(name).await;
        let (base, state) = spawn(&db.url, None, max_connections).await;
        Self {
            base,
            client: reqwest::Client::new(),
            state,
            db,
        }
    }

    /// An internal API `PUT` that must succeed; returns its JSON answer.
    pub async fn put(&self, path: &str, body: Value) -> Value {
        let res = self
            .client
            .put(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "PUT {path}: {}", res.status());
        res.json().await.unwrap()
    }

    /// A `GET` with optional `3scale-options`: status, headers and body.
    pub async fn call(
        &self,
        path: &str,
        options: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(o) = options {
            req = req.header("3scale-options", o);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.text().await.unwrap())
    }
}
