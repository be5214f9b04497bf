//! `polymerge completions` and `polymerge man`: shell completion scripts
//! (`clap_complete`) and roff man pages (`clap_mangen`), both generated from
//! the same clap definitions as the parser, so they cannot drift from it.

use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::args::{Cli, CompletionsArgs, ManArgs};
use super::config::usage_error;
use super::output::print_stdout;

pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "polymerge", &mut script);
    print_stdout(&String::from_utf8(script).context("completion script is not UTF-8")?)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(a: ManArgs) -> anyhow::Result<ExitCode> {
    let root = Cli::command();
    let page = match &a.command {
        None => root,
        Some(name) => {
            let sub = root
                .get_subcommands()
                .find(|s| s.get_name() == name && !s.is_hide_set() && name != "help")
                .ok_or_else(|| {
                    let known: Vec<&str> = (root.get_subcommands())
                        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                        .map(|s| s.get_name())
                        .collect();
                    usage_error(format!(
                        "no command `{name}` to print a man page for (commands: {})",
                        known.join(", ")
                    ))
                })
                .unwrap_or_else(|e| e.exit());
            // Its own page, titled as man(1) pages of subcommands are.
            let title = format!("polymerge-{name}");
            sub.clone()
                .name(title.clone())
                .bin_name(format!("polymerge {name}"))
                .version(env!("CARGO_PKG_VERSION"))
                .display_name(title)
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .context("rendering the man page")?;
    print_stdout(&String::from_utf8(roff).context("man page is not UTF-8")?)?;
    Ok(ExitCode::SUCCESS)
}
