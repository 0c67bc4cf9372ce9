//! The binary starts against a fresh database, reports health and metrics, and stops cleanly on SIGTERM.

use platform::testing::{assert_lifecycle, TestDb};
use std::path::Path;

#[tokio::test]
async fn starts_reports_health_and_stops_on_sigterm() {
    let db = TestDb::new("backend_lifecycle").await;
    let binary = Path::new(env!("CARGO_BIN_EXE_backend"));
    assert_lifecycle("backend", binary, &[("DATABASE_URL", db.url.clone())], None).await;
}
