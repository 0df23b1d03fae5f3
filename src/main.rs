//! The `percore` server binary: parse the settings, start a pinned executor per core, wait for
//! SIGINT or SIGTERM, drain, print the exit report.
//!
//! Exit status: 0 after an orderly shutdown; 2 when the settings are refused (as clap does for
//! a value it cannot parse), so a supervisor can tell a bad configuration from a failure; 1
//! when the server cannot start (a taken port, no io_uring) or a core stops.

use std::process::ExitCode;

use clap::Parser;
use percore::config::{Config, Options};
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PERCORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let options = Options::parse();
    let config = match options
        .into_config()
        .and_then(|config| config.ensure_fd_limit().map(|()| config))
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("percore: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("percore: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let server = percore::server::start(config.clone())?;

    // The first SIGINT/SIGTERM drains; a second one while draining exits at once.
    let flag = server.shutdown_flag();
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone())?;
        signal_hook::flag::register(signal, flag.clone())?;
    }

    print_stdout(format_args!("{}\n", server.listening()));
    tracing::info!(
        memory = config.memory,
        max_connections = config.max_connections,
        max_inflight = config.max_inflight,
        "serving; SIGINT or SIGTERM drains and prints the report"
    );

    let report = server.wait()?;
    print_stdout(&report);
    Ok(())
}

/// Writes to stdout. When the reader has gone (`percore | head -1`) the text is lost but not
/// the server: it goes on serving, and still drains and exits cleanly.
fn print_stdout(text: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = write!(out, "{text}").and_then(|()| out.flush()) {
        tracing::warn!("cannot write to stdout: {e}");
    }
}
