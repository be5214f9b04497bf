//! `polymerge completions SHELL` and `polymerge man [COMMAND]`: the scripts
//! offer every command and its flags in each shell's own syntax, and the man
//! pages are well-formed roff naming every command and option (rendered
//! with `groff` too where it is installed).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;

/// The commands a user sees in `polymerge --help`.
const COMMANDS: [&str; 10] = [
    "inspect",
    "avg",
    "spec",
    "align",
    "permute",
    "barrier",
    "ema",
    "basin",
    "completions",
    "man",
];

fn stdout_of(args: &[&str]) -> String {
    let out = polymerge().args(args).assert().success();
    String::from_utf8(out.get_output().stdout.clone()).expect("UTF-8 output")
}

/// How each shell's script names a command (the case label or completion
/// entry that dispatches on it).
fn command_marker(shell: &str, name: &str) -> String {
    match shell {
        "bash" => format!("polymerge,{name})"),
        "zsh" => format!("({name})"),
        "fish" => format!("-a \"{name}\""),
        "powershell" => format!("'polymerge;{name}'"),
        "elvish" => format!("&'polymerge;{name}'="),
        _ => unreachable!(),
    }
}

#[test]
fn every_shell_script_completes_every_command_and_the_flags_of_avg() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = stdout_of(&["completions", shell]);
        for name in COMMANDS {
            let marker = command_marker(shell, name);
            assert!(
                script.contains(&marker),
                "{shell} script lacks `{marker}` for `{name}`"
            );
        }
        for flag in ["weights", "max-shard-size", "strict-basin", "half-life"] {
            assert!(script.contains(flag), "{shell} script lacks --{flag}");
        }
    }
}

#[test]
fn the_bash_script_is_valid_bash_and_offers_dtype_values() {
    let script = stdout_of(&["completions", "bash"]);
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .expect("bash runs (CI is a bash script)");
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(bash.wait().unwrap().success(), "bash -n rejects the script");
    assert!(
        script.contains("f32 f16 bf16"),
        "dtype values not completed"
    );
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    polymerge()
        .args(["completions", "tcsh"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("tcsh"));
}

/// Checks the roff structure of a page: title, the sections, and every
/// `.TP` item followed by text.
fn check_roff(page: &str, title: &str) {
    assert!(
        page.lines()
            .any(|l| l.starts_with(&format!(".TH {title} 1 "))),
        "no `.TH {title} 1` header:\n{page}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS"] {
        assert!(
            page.lines().any(|l| l == section),
            "no `{section}` in {title}"
        );
    }
    let lines: Vec<&str> = page.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if *l == ".TP" {
            let next = lines.get(i + 1).copied().unwrap_or("");
            assert!(
                !next.is_empty() && !next.starts_with('.'),
                "empty .TP item in {title}"
            );
        }
    }
}

#[test]
fn the_main_man_page_is_roff_listing_every_command() {
    let page = stdout_of(&["man"]);
    check_roff(&page, "polymerge");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for name in COMMANDS {
        assert!(
            page.contains(&format!("polymerge\\-{name}(1)")),
            "main page does not list polymerge-{name}(1)"
        );
    }
    assert!(page.contains("polymerge 0.1.0") || page.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn each_command_has_a_man_page_naming_its_options() {
    let avg = stdout_of(&["man", "avg"]);
    check_roff(&avg, "polymerge-avg");
    assert!(
        avg.contains("polymerge\\-avg \\- Weighted average"),
        "{avg}"
    );
    for opt in [
        "\\-\\-weights",
        "\\-\\-dtype",
        "\\-\\-max\\-shard\\-size",
        "\\-\\-force",
    ] {
        assert!(
            avg.contains(&format!("\\fB{opt}\\fR")),
            "avg page lacks {opt}"
        );
    }
    for name in COMMANDS {
        check_roff(&stdout_of(&["man", name]), &format!("polymerge-{name}"));
    }
}

#[test]
fn a_man_page_for_an_unknown_command_is_a_usage_error_listing_the_commands() {
    polymerge()
        .args(["man", "soup"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no command `soup`"))
        .stderr(predicates::str::contains("avg"));
}

/// Where groff is installed, the page renders without a warning and reads
/// as text; the roff checks above run everywhere.
#[test]
fn the_man_page_renders_with_groff_where_installed() {
    let page = stdout_of(&["man", "avg"]);
    let Ok(mut groff) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("groff not installed: the roff text was checked by the other man tests");
        return;
    };
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "groff warnings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
