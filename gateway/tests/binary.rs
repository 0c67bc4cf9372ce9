//! The gateway binary's own proxy listener (worker threads on one port, hyper's HTTP/1.1 server): requests go through
//! with their forwarded headers, on SIGTERM a request in flight finishes before the process exits, and HTTPS
//! upstreams are verified against the system's CA roots or `SSL_CERT_FILE`.

mod support;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use platform::testing::{free_port, ServiceProcess};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Starts the gateway binary on `doc` (written to a file) with `env`, and waits until it is ready.
async fn start_gateway(
    name: &str,
    doc: &serde_json::Value,
    env: &[(&str, String)],
) -> (ServiceProcess, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("gateway-{name}-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("apicast.json");
    std::fs::write(&config, serde_json::to_vec(doc).unwrap()).unwrap();
    let mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut all = vec![
        ("MANAGEMENT_LISTEN_ADDR", mgmt.to_string()),
        ("THREESCALE_CONFIG_FILE", config.display().to_string()),
    ];
    all.extend(env.iter().cloned());
    let mut gateway =
        ServiceProcess::spawn("gateway", Path::new(env!("CARGO_BIN_EXE_gateway")), &all);
    gateway
        .wait_ready(
            &format!("http://{mgmt}/status/ready"),
            Duration::from_secs(30),
        )
        .await;
    (gateway, dir)
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[derive(Clone, Default)]
struct Slow {
    arrived: Arc<Notify>,
    release: Arc<Notify>,
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_on_worker_threads_and_drains_on_sigterm() {
    let (_stand, backend, _) = support::stand_ins().await;
    let slow = Slow::default();
    let upstream = support::serve(
        Router::new()
            .route(
                "/base/hits/slow",
                get(|State(s): State<Slow>| async move {
                    s.arrived.notify_one();
                    s.release.notified().await;
                    "done"
                }),
            )
            .fallback(|headers: HeaderMap| async move {
                let get = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                Json(json!({"real_ip": get("x-real-ip"), "request_id": get("x-request-id"), "host": get("host")}))
            })
            .with_state(slow.clone()),
    )
    .await;

    let doc = json!({"services": [support::service(backend, upstream, json!({}))]});
    let (mut gateway, dir) = start_gateway(
        "drain",
        &doc,
        &[
            ("GATEWAY_WORKERS", "2".to_owned()),
            ("SHUTDOWN_DRAIN_SECONDS", "30".to_owned()),
        ],
    )
    .await;
    let host = doc["services"][0]["proxy"]["hosts"][0]
        .as_str()
        .unwrap()
        .to_owned();

    // Fresh connections each time, so both workers' sockets take some.
    for i in 0..20 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut request = client
            .get(gateway.url("/hits?user_key=good-1"))
            .header("host", &host);
        if i == 0 {
            request = request.header("x-request-id", "given-id-1");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", gateway.logs());
        let returned = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let seen: serde_json::Value = response.json().await.unwrap();
        assert_eq!(seen["real_ip"], "127.0.0.1");
        assert_eq!(seen["host"], upstream.to_string());
        assert_eq!(
            seen["request_id"], returned,
            "the id the client gets is the one upstream saw"
        );
        if i == 0 {
            assert_eq!(returned, "given-id-1", "a client's request id is kept");
        } else {
            assert_eq!(
                returned.len(),
                36,
                "a generated id is UUID-shaped: {returned}"
            );
        }
    }

    // A request in flight when SIGTERM arrives still gets its answer.
    let in_flight = {
        let url = gateway.url("/hits/slow?user_key=good-1");
        let host = host.clone();
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .get(url)
                .header("host", host)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        })
    };
    tokio::time::timeout(Duration::from_secs(10), slow.arrived.notified())
        .await
        .expect("the slow request reaches the upstream");
    let pid = gateway.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // New connections are refused once the workers stop accepting...
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(gateway.addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after SIGTERM\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "the gateway waits for the request in flight"
    );
    // ...and the request in flight completes, then the process exits cleanly.
    slow.release.notify_one();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "done");
    let exit = gateway.terminate(Duration::from_secs(15)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit: {exit:?}\n{}",
        gateway.logs()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_are_verified_against_ssl_cert_file() {
    let (_stand, backend, _) = support::stand_ins().await;
    let pki = platform::testing::TestPki::new("gateway test CA");
    let upstream = pki
        .serve(
            Router::new()
                .fallback(|uri: axum::http::Uri| async move { format!("tls upstream saw {uri}") }),
        )
        .await;
    let mut doc = json!({"services": [support::service(backend, upstream, json!({}))]});
    doc["services"][0]["proxy"]["api_backend"] =
        json!(format!("https://127.0.0.1:{}/base", upstream.port()));
    let host = doc["services"][0]["proxy"]["hosts"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |gateway: &ServiceProcess| {
        reqwest::Client::new()
            .get(gateway.url("/hits?user_key=good-1"))
            .header("host", host.clone())
            .send()
    };

    // The system's roots do not know the test CA: the upstream's certificate is refused.
    let (mut untrusting, dir) = start_gateway("tls-untrusted", &doc, &[]).await;
    let refused = get(&untrusting).await.unwrap();
    assert_eq!(refused.status(), 502, "{}", untrusting.logs());
    assert!(
        untrusting.logs().to_lowercase().contains("certificate"),
        "the log says why: {}",
        untrusting.logs()
    );
    untrusting.terminate(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(&dir);

    // With SSL_CERT_FILE naming the CA, the same request goes through over TLS.
    let ca_file = std::env::temp_dir().join(format!("gateway-ca-{}.pem", uuid_like()));
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let (mut trusting, dir) = start_gateway(
        "tls-trusted",
        &doc,
        &[("SSL_CERT_FILE", ca_file.display().to_string())],
    )
    .await;
    let answer = get(&trusting).await.unwrap();
    assert_eq!(answer.status(), 200, "{}", trusting.logs());
    assert_eq!(
        answer.text().await.unwrap(),
        "tls upstream saw /base/hits?user_key=good-1"
    );
    trusting.terminate(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&ca_file);
}
