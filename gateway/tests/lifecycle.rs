//! The binary starts, reports health and metrics on its management address, and stops cleanly on SIGTERM.

use platform::testing::{assert_lifecycle, free_port};
use std::net::SocketAddr;
use std::path::Path;

#[tokio::test]
async fn starts_reports_health_and_stops_on_sigterm() {
    let mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_gateway"));
    assert_lifecycle(
        "gateway",
        binary,
        &[("MANAGEMENT_LISTEN_ADDR", mgmt.to_string())],
        Some(mgmt),
    )
    .await;
}
