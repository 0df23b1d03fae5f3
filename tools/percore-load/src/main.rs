//! percore-load: the load generator bundled with percore. Open- and closed-loop load over the
//! percore protocol (or memcached's text protocol), every reply checked, latencies in
//! HdrHistogram corrected for coordinated omission in open loop, as wrk2 does.
//!
//! Modules: [`cli`] (arguments and the checked plan), [`workload`] (operations, keys, values
//! and their checksums), [`codec`] (the two wire protocols), [`context`] (what a core's
//! connections share), [`schedule`] (when each connection sends), [`conn`] (one connection's
//! socket loop), [`check`] (the verdict on each reply, and the --verify-keys bookkeeping),
//! [`stats`] (histograms and counters), [`engine`] (pinned executors and the main thread),
//! [`progress`] (the progress lines and the interval log during the run), [`report`] (the exit
//! report and the output files), [`plot`] (the latency plot), [`fleet`] (`--distribute`:
//! routing over several hosts, and the per-host tallies).

mod check;
mod cli;
mod codec;
mod conn;
mod context;
mod engine;
mod fleet;
mod plot;
mod progress;
mod report;
mod schedule;
mod stats;
mod workload;

use std::process::ExitCode;

use clap::Parser;

/// Exit status when a reply was wrong or lost (or a --verify-keys read-back failed).
const EXIT_WRONG_REPLIES: u8 = 1;
/// Exit status when the run could not happen (bad arguments, no server, no io_uring).
const EXIT_CANNOT_RUN: u8 = 2;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_WRONG_REPLIES),
        Err(e) => {
            eprintln!("percore-load: error: {e:#}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}

/// Runs the load; true when every reply was right.
fn run(args: cli::Args) -> anyhow::Result<bool> {
    let plan = cli::Plan::from_args(args)?;
    let overlays = plot::read_overlays(&plan.plot)?;
    let outcome = engine::run(plan.clone())?;
    print!("{}", report::text_report(&plan, &outcome));
    report::write_files(&plan, &outcome)?;
    plot::write(&plan, &outcome, overlays)?;
    let errors = outcome.total.counts.total_errors();
    if errors > 0 {
        eprintln!("percore-load: {errors} replies were wrong or lost");
    }
    Ok(errors == 0)
}
