//! End-to-end harness: boots Postgres databases, the test IdP, an echo upstream and the five service binaries,
//! wired to each other, for the scenario tests in `tests/tests/` and the local stack command (`--bin stack`).

pub mod admin;
pub mod demo;
pub mod echo;
pub mod idp;
pub mod oidc;
pub mod stack;

use std::path::PathBuf;

pub use admin::Admin;
pub use echo::EchoUpstream;
pub use idp::{IdpOptions, TestIdp};
pub use oidc::{IdpClient, KeycloakSettings, OidcIdp};
pub use stack::{Platform, PlatformOptions};

/// The five service binaries, by crate name.
pub const SERVICES: [&str; 5] = ["system", "backend", "gateway", "zync", "zync-que"];

/// The directory holding the service binaries: the target profile directory this executable was built into.
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("executable has a directory");
    // Test binaries live in target/<profile>/deps, `cargo run` binaries in target/<profile>.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a service binary in the target directory this executable was built into.
pub fn binary(name: &str) -> PathBuf {
    let path = target_profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the services first (`cargo build --bins -p system -p backend -p gateway -p zync -p zync-que`), or run `cargo test --workspace`",
        path.display()
    );
    path
}

/// Building blocks of the scenario tests (admin steps, gateway calls, polling with a deadline).
pub mod scenario;
