//! An in-process `system` served on a real TCP port with a throwaway database, and a small JSON client for it.
#![allow(dead_code)]

use platform::db::Database;
use platform::testing::TestDb;
use platform::{EnvReader, Shutdown};
use reqwest::StatusCode;
use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

pub struct Server {
    pub base: String,
    pub db: Database,
    pub shutdown: Shutdown,
    client: reqwest::Client,
    _test_db: TestDb,
}

impl Server {
    /// Starts `system` (router, bootstrap token, outbox delivery) with `env` added to its environment.
    pub async fn start(prefix: &str, env: &[(&str, String)]) -> Self {
        let test_db = TestDb::new(prefix).await;
        let mut pairs: Vec<(&str, String)> = vec![
            ("DATABASE_URL", test_db.url.clone()),
            ("ADMIN_ACCESS_TOKEN", TOKEN.to_owned()),
            // The Postgres server is shared by many test processes: keep each pool small.
            ("DATABASE_POOL_SIZE", "4".to_owned()),
        ];
        pairs.extend(env.iter().cloned());
        let mut reader = EnvReader::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        let config = system::Config::read(&mut reader).expect("config");
        let db = Database::connect(&config.db, &system::MIGRATOR)
            .await
            .expect("database");
        let state = system::AppState::new(db.clone(), &config);
        let shutdown = Shutdown::new();
        let bootstrapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        system::after_migrations(&db, &config, &state, shutdown.clone(), bootstrapped).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = system::router(state);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.wait().await })
                .await;
        });
        Self {
            base,
            db,
            shutdown,
            client: reqwest::Client::new(),
            _test_db: test_db,
        }
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}access_token={TOKEN}", self.base)
    }

    /// Sends `body` as JSON (or nothing); returns the status, the body parsed as JSON (`Null` if it is not) and raw.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    /// Sends a form-encoded body.
    pub async fn form(&self, method: &str, path: &str, body: &str) -> (StatusCode, Value, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let res = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.json("GET", path, None).await;
        (s, v)
    }

    /// Creates a service and returns its id.
    pub async fn service(&self, name: &str, backend_version: &str) -> i64 {
        let (s, v, raw) = self
            .form(
                "POST",
                "/admin/api/services.json",
                &format!("name={name}&backend_version={backend_version}"),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{raw}");
        v["service"]["id"].as_i64().expect("service id")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
