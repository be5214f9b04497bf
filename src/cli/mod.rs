//! Command-line front end: arguments parsed and validated by clap
//! ([`args`], [`config`]), then one thin adapter per command over the
//! library's pipeline, with progress from its events ([`console`]) and
//! human or `--json` summaries ([`output`]).

/// `eprintln!` that never panics: a line that cannot be written to stderr
/// (closed, or `2>/dev/full`) is dropped; the exit code still tells how the
/// run went.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod align;
mod args;
mod avg;
mod basin;
mod completions;
mod config;
mod console;
mod ema;
mod hints;
mod inspect;
mod output;
mod plots;
mod recipe;
mod values;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for any error (bad input, failed write ...).
pub const EXIT_ERROR: u8 = 1;
/// Exit code of `basin` for a connected pair.
pub const EXIT_CONNECTED: u8 = 0;
/// Exit code of `basin` (and of `avg`/`ema --strict-basin`) for a disconnected pair.
pub const EXIT_DISCONNECTED: u8 = 3;
/// Exit code of `basin` when the verdict is uncertain.
pub const EXIT_UNCERTAIN: u8 = 4;

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
        args::Command::Recipe(a) => recipe::run(a),
        args::Command::Completions(a) => completions::completions(a),
        args::Command::Man(a) => completions::man(a),
    }
}

/// Renders an error and its causes as one line (`outer: inner: …`), with
/// the flag hint that helps, if any.
pub fn one_line(err: &anyhow::Error) -> String {
    render(err.chain())
}

/// [`one_line`] for a library error.
pub fn error_line(err: &polymerge::Error) -> String {
    let first: &(dyn std::error::Error + 'static) = err;
    render(std::iter::successors(Some(first), |e| e.source()))
}

fn render<'a>(chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut parts = Vec::new();
    let mut hint = None;
    for cause in chain {
        let lib = cause.downcast_ref::<polymerge::Error>();
        let text = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => polymerge::error::lowercase_io(io),
            _ => cause.to_string(),
        };
        parts.push(text);
        hint = hint.or_else(|| lib.and_then(hints::flag_hint));
    }
    let line = (parts.join(": ") + hint.unwrap_or("")).replace('\n', " ");
    output::clean(&line).into_owned()
}
