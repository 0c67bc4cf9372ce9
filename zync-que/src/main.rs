//! The `zync-que` binary: configuration from the environment, then [`zync_que::start`].

fn main() -> std::process::ExitCode {
    platform::run("zync-que", zync_que::Config::read, zync_que::start)
}
