//! The local stack command: `cargo run -p tests --bin stack` builds the five services, starts Postgres (the running
//! server or a throwaway cluster), the test IdP (when Node is present), the echo upstream and the services on their
//! default ports (free ones when taken), seeds a demo API and application, prints the URLs and a `curl` through the
//! gateway, and stops everything on Ctrl-C.

use std::process::Command;
use std::time::Duration;

use tests::stack::{Platform, PlatformOptions, Ports};

/// Builds the service binaries in the profile this command runs in, so the stack never runs stale binaries.
/// `STACK_NO_BUILD=1` skips it (for example when the binaries come from elsewhere).
fn build_services() -> anyhow::Result<()> {
    if std::env::var("STACK_NO_BUILD").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo run` describes this package in the environment; build scripts that watch those variables (ring's)
    // would rebuild on every start if the nested build saw them.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.args(["build", "--bins"]);
    for name in tests::SERVICES {
        cmd.args(["-p", name]);
    }
    if tests::target_profile_dir()
        .file_name()
        .is_some_and(|n| n == "release")
    {
        cmd.arg("--release");
    }
    eprintln!("stack: building the services ({cmd:?})");
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "building the services failed: {status}");
    Ok(())
}

async fn wait_for_stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    build_services()?;
    let admin = platform::testing::admin_url().await;
    eprintln!("stack: Postgres at {}", redact(&admin));

    let platform = Platform::start(PlatformOptions {
        require_idp: false,
        ports: Ports::DEFAULTS,
        ready_deadline: Duration::from_secs(60),
        ..PlatformOptions::default()
    })
    .await;

    let demo = match tests::demo::seed(&platform, Duration::from_secs(60)).await {
        Ok(demo) => Some(demo),
        Err(e) => {
            eprintln!("stack: seeding the demo failed: {e:#}");
            None
        }
    };

    print_summary(&platform, demo.as_ref());
    println!("\nPress Ctrl-C to stop everything.");
    wait_for_stop_signal().await;
    eprintln!("\nstack: stopping");
    let problems = platform.shutdown().await;
    for p in &problems {
        eprintln!("stack: {p}");
    }
    Ok(())
}

fn print_summary(platform: &Platform, demo: Option<&tests::demo::Demo>) {
    println!("\n=== threescale-rs local stack ===");
    for s in &platform.services {
        let note = if s.name == "gateway" {
            format!("   (management: http://{})", s.health_addr)
        } else {
            String::new()
        };
        println!("{:<10} http://{}{note}", s.name, s.process.addr);
    }
    println!("{:<10} {}", "echo API", platform.echo.url("/"));
    match &platform.idp {
        Some(idp) => {
            println!("{:<10} {}", "IdP", idp.issuer);
            println!(
                "           admin client {} / {} (manage-clients); user {}",
                idp.options.admin_client_id,
                idp.options.admin_client_secret,
                idp.options
                    .users
                    .first()
                    .map(|(u, p)| format!("{u} / {p}"))
                    .unwrap_or_default()
            );
            println!(
                "           OIDC issuer for a service: {}",
                idp.admin_issuer()
            );
        }
        None => println!(
            "{:<10} OpenID Connect is unavailable: {}",
            "IdP",
            platform.idp_unavailable.as_deref().unwrap_or("not started")
        ),
    }
    println!(
        "\nAdmin access token (system): {}",
        platform.secrets.admin_access_token
    );
    if let Some(demo) = demo {
        println!(
            "\nDemo API (service {}, user_key mode) with application {} — user_key {}",
            demo.service_id, demo.application_id, demo.user_key
        );
        println!("Try: {}", demo.curl());
    }
    println!(
        "Admin API: curl -s '{}'",
        platform.url(
            "system",
            &format!(
                "/admin/api/services.json?access_token={}",
                platform.secrets.admin_access_token
            )
        )
    );
}

/// A database URL without its password, for printing.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
