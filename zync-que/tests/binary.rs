//! The real `zync-que` binary as a child process, against zync's API and stand-ins for system and the IdP: a worker
//! killed with SIGKILL in the middle of a job is replaced and the job finishes; HTTPS to the IdP verifies
//! certificates and trusts the CA bundle of `SSL_CERT_FILE`; a bad bundle stops the start.

mod common;

use common::*;
use platform::testing::ServiceProcess;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_zync-que"))
}

/// Starts the binary on the harness' database with fast retries, plus `extra`, and waits until it is ready.
async fn start_que(h: &Harness, extra: &[(&str, String)]) -> ServiceProcess {
    let mut env = vec![
        ("DATABASE_URL", h.db.url.clone()),
        ("ZYNC_AUTHENTICATION_TOKEN", ZYNC_TOKEN.to_owned()),
        ("ZYNC_QUE_RETRY_BASE_SECONDS", "0.05".to_owned()),
        ("ZYNC_QUE_RETRY_MAX_SECONDS", "0.5".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    let mut que = ServiceProcess::spawn("zync-que", binary(), &env);
    let ready = que.url("/status/ready");
    que.wait_ready(&ready, WAIT).await;
    que
}

/// An application job's row: status, attempts, whether a worker holds its lease, last error.
async fn app_job(h: &Harness, app_id: i64) -> (String, i32, bool, Option<String>) {
    sqlx::query_as(
        "SELECT status, attempts, COALESCE(locked_until > now(), false), last_error
         FROM jobs WHERE kind = 'application' AND entity_id = $1",
    )
    .bind(app_id)
    .fetch_one(&h.pool)
    .await
    .unwrap()
}

async fn wait_exit(que: &mut ServiceProcess, deadline: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = que.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < deadline,
            "zync-que still running after {deadline:?}\n{}",
            que.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_mid_job_is_replaced_and_the_job_finishes() {
    let h = Harness::new("que_sigkill").await;
    let idp = Idp::start().await;
    // PUTs get no answer until the kill, so the worker is inside the job when it dies (and so would be any
    // worker of the same process that took the job over, however slow the machine).
    idp.state.hang_puts.store(true, Ordering::SeqCst);
    h.oidc_service(7, "rest", &idp.rest_issuer()).await;
    h.system.set_app(42, oidc_app(42, 7, "survivor"));
    let settings = [
        ("ZYNC_QUE_LEASE_SECONDS", "3".to_owned()),
        // Far longer than the test: only the kill can end the hung call.
        ("ZYNC_QUE_HTTP_TIMEOUT_SECONDS", "300".to_owned()),
    ];
    let mut first = start_que(&h, &settings).await;
    h.notify_app(42, 7).await;
    eventually(WAIT, "the worker is waiting on the IdP's PUT", || async {
        idp.calls().iter().any(|c| c.method == "PUT")
    })
    .await;
    let (status, _, leased, _) = app_job(&h, 42).await;
    assert_eq!(status, "pending");
    assert!(leased, "the job is held by the running worker");

    first.child.kill().unwrap(); // SIGKILL: no shutdown path runs, the job is not handed back.
    let exit = wait_exit(&mut first, WAIT).await;
    assert_eq!(exit.signal(), Some(9), "killed by SIGKILL: {exit}");
    assert!(idp.client("client-42").is_none());
    assert_eq!(app_job(&h, 42).await.0, "pending");
    idp.state.hang_puts.store(false, Ordering::SeqCst);

    let _second = start_que(&h, &settings).await;
    eventually(WAIT, "the new process finishes the job", || async {
        idp.client("client-42").is_some() && app_job(&h, 42).await.0 == "done"
    })
    .await;
    assert_eq!(idp.client("client-42").unwrap()["client_name"], "survivor");
    let puts = idp.calls().iter().filter(|c| c.method == "PUT").count();
    assert!(puts >= 2, "the hung PUT, then the new process' one: {puts}");
    let view = h.sync_view().await;
    let app = view.iter().find(|a| a["application_id"] == 42).unwrap();
    assert_eq!(app["state"], "in_sync", "{app}");
}

#[tokio::test]
async fn https_to_the_idp_is_verified_and_ssl_cert_file_is_trusted() {
    let h = Harness::new("que_tls").await;
    let pki = platform::testing::TestPki::new("zync-que test CA");
    let (state, app) = Idp::app();
    let addr = pki.serve(app).await;
    let ca_pem = pki.ca_pem.clone();
    let idp = Idp { state, addr };
    let issuer = format!("https://zync:s3cr%2Fet@127.0.0.1:{}/rest", addr.port());
    h.oidc_service(7, "rest", &issuer).await;
    h.system.set_app(42, oidc_app(42, 7, "tls"));

    // Without the test CA the IdP's certificate is refused: recorded, retried, nothing sent.
    let mut untrusting = start_que(&h, &[]).await;
    h.notify_app(42, 7).await;
    eventually(WAIT, "a certificate error, retried", || async {
        let (_, attempts, _, error) = app_job(&h, 42).await;
        attempts >= 2 && error.is_some_and(|e| e.to_lowercase().contains("certificate"))
    })
    .await;
    let view = h.sync_view().await;
    let app = view.iter().find(|a| a["application_id"] == 42).unwrap();
    assert_eq!(app["state"], "failing", "{app}");
    assert!(
        !app.to_string().contains("s3cr"),
        "no issuer secret in the view"
    );
    assert!(idp.calls().is_empty(), "no request got through");
    assert!(idp.client("client-42").is_none());
    untrusting.terminate(WAIT).await.expect("stops on SIGTERM");

    // With SSL_CERT_FILE naming the CA, the same job succeeds.
    let dir = std::env::temp_dir().join(format!("zync-que-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let _trusting = start_que(
        &h,
        &[("SSL_CERT_FILE", ca_file.to_string_lossy().into_owned())],
    )
    .await;
    eventually(WAIT, "client created over HTTPS", || async {
        idp.client("client-42").is_some() && app_job(&h, 42).await.0 == "done"
    })
    .await;
    assert_eq!(idp.client("client-42").unwrap()["client_name"], "tls");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unusable_ssl_cert_file_stops_the_start() {
    let db = platform::testing::TestDb::new("que_bad_ca").await;
    let mut que = ServiceProcess::spawn(
        "zync-que",
        binary(),
        &[
            ("DATABASE_URL", db.url.clone()),
            ("SSL_CERT_FILE", "/nonexistent/zync-ca.pem".to_owned()),
        ],
    );
    let exit = wait_exit(&mut que, WAIT).await;
    assert!(!exit.success(), "{exit}");
    let logs = que.logs();
    assert!(
        logs.contains("SSL_CERT_FILE") && logs.contains("/nonexistent/zync-ca.pem"),
        "{logs}"
    );
}
