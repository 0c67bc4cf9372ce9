//! The `system` binary: configuration from the environment, then [`system::start`]; `system resync-backend` queues a
//! full re-push of backend's data instead of serving.

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("resync-backend") {
        return platform::run("system", system::Config::read, system::resync::command);
    }
    platform::run("system", system::Config::read, system::start)
}
