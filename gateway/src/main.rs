//! The `gateway` binary: configuration from the environment, then [`gateway::start`].

/// mimalloc: the proxy allocates and frees many small buffers per request; glibc's malloc took ~12% of the
/// gateway's CPU in the benchmark profile, mimalloc about half of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    platform::run("gateway", gateway::Config::read, gateway::start)
}
