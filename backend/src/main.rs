//! The `backend` binary: configuration from the environment, then [`backend::start`].

fn main() -> std::process::ExitCode {
    platform::run("backend", backend::Config::read, backend::start)
}
