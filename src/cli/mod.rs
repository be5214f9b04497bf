//! Command-line front end: raw arguments ([`args`]) become validated
//! configurations that drive the library, with progress on stderr and
//! human or `--json` summaries on stdout.

mod align;
mod args;
mod avg;
mod basin;
mod ema;
mod inspect;
mod output;

use std::process::ExitCode;

use clap::Parser;

pub use output::one_line;

/// Exit code for any error (bad input, failed write ...).
pub const EXIT_ERROR: u8 = 1;

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = args::Cli::parse();
    match cli.command {
        args::Command::Inspect(a) => inspect::run(a),
        args::Command::Avg(a) => avg::run(a),
        args::Command::Spec(a) => align::spec(a),
        args::Command::Align(a) => align::align(a),
        args::Command::Permute(a) => align::permute(a),
        args::Command::Barrier(a) => align::barrier(a),
        args::Command::Ema(a) => ema::run(a),
        args::Command::Basin(a) => basin::run(a),
    }
}
