//! Command-line front end: arguments parsed and validated by clap
//! ([`args`], [`config`]), then one thin adapter per command over the
//! library's pipeline, with progress from its events ([`console`]) and
//! human or `--json` summaries ([`output`]).

mod align;
mod args;
mod avg;
mod basin;
mod config;
mod console;
mod ema;
mod inspect;
mod output;

use std::process::ExitCode;

use clap::Parser;

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

/// Renders an error and its causes as one line (`outer: inner: …`).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in err.chain() {
        parts.push(cause.to_string());
    }
    parts.join(": ").replace('\n', " ")
}

/// [`one_line`] for a library error.
pub fn error_line(err: &polymerge::Error) -> String {
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line.replace('\n', " ")
}
