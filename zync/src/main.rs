//! The `zync` binary: configuration from the environment, then [`zync::start`].

fn main() -> std::process::ExitCode {
    platform::run("zync", zync::Config::read, zync::start)
}
