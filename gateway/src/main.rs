//! The `gateway` binary: configuration from the environment, then [`gateway::start`].

fn main() -> std::process::ExitCode {
    platform::run("gateway", gateway::Config::read, gateway::start)
}
