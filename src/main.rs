//! The `polymerge` binary: parses arguments, runs one command, and turns any
//! error into a one-line message on stderr and a non-zero exit code.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Freed buffers stay in the heap for the next group visit.
    polymerge::keep_freed_memory();
    // Descriptors for reading inputs with `pread` (the soft limit's 1024
    // would leave ~500 inputs to the mapping).
    polymerge::raise_descriptor_limit();
    // SIGBUS from an input truncated while mapped: one line, temporaries
    // removed; SIGXFSZ ignored so a file-size limit fails the write instead.
    polymerge::install_signal_handlers();
    // Ctrl-C, SIGTERM, SIGHUP: remove half-written temporaries before
    // exiting, so an interrupted merge never leaves a partial file behind.
    let _ = ctrlc::set_handler(|| {
        polymerge::write::remove_temporaries();
        std::process::exit(130);
    });
    match cli::run() {
        Ok(code) => code,
        Err(err) => {
            // Written without `eprintln!`, which would panic on a full stderr.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "polymerge: error: {}",
                cli::one_line(&err)
            );
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
