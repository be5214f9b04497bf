//! What the binary prints: human-readable sizes, warnings, the one-line
//! error format, and the end-of-run summaries of commands that write.

use polymerge::average::{MergeReport, NonFinite};
use serde_json::json;

use super::args::OutputArgs;

/// Prints warnings on stderr (always, even with `--quiet`), control
/// characters escaped.
pub fn warn(msg: &str) {
    say!("polymerge: warning: {}", clean(msg));
}

/// `s` with control characters (escape sequences, newlines, NUL …) escaped
/// as `\u{1b}`, `\n` …: what every tensor, group and file name goes through
/// before it reaches a terminal (tables, warnings and error lines).
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Characters `s` takes in a table column.
pub fn text_width(s: &str) -> usize {
    s.chars().count()
}

/// `s` padded with spaces on the right to `width` characters (a `format!`
/// width is limited to 65535 and panics above, names are not).
pub fn pad(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(s.len() + width);
    out.push_str(s);
    out.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(text_width(s)),
    ));
    out
}

/// Warns about NaN/Inf counts, one line per input tensor (at most 20 lines).
pub fn warn_nonfinite(list: &[NonFinite]) {
    const SHOWN: usize = 20;
    for nf in list.iter().take(SHOWN) {
        warn(&format!(
            "{}: tensor `{}`: {} NaN/Inf value(s) (use --strict to refuse)",
            nf.path.display(),
            nf.tensor,
            nf.count
        ));
    }
    if list.len() > SHOWN {
        warn(&format!(
            "… and {} more tensors with NaN/Inf values",
            list.len() - SHOWN
        ));
    }
}

/// Writes `text` to stdout; every command prints through this (never
/// `println!`, which panics when stdout fails). A reader that went away
/// (`polymerge spec … | head`) is not an error: the rest of the output is
/// dropped and the command ends normally. Any other failure (`> /dev/full`)
/// is a one-line error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "cannot write to standard output: {}",
            polymerge::error::lowercase_io(&e)
        )),
        Ok(()) => Ok(()),
    }
}

/// [`print_stdout`] of one line.
pub fn print_line(line: impl std::fmt::Display) -> anyhow::Result<()> {
    print_stdout(&format!("{line}\n"))
}

/// Human-readable byte count (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Human-readable element count (1.2K, 3.4M, 0.49B).
pub fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// The `--json` record of input `i`'s (0-based) alignment onto input 1.
fn alignment_json(i: usize, al: &polymerge::alignment::Alignment) -> serde_json::Value {
    json!({
        "input": i + 1,
        "objective_before": al.objective_before,
        "objective_after": al.objective_after,
        "sweeps": al.sweeps,
        "converged": al.converged,
        "seconds": al.seconds,
        "groups": al.groups.iter().map(|g| json!({
            "name": g.name,
            "kind": g.kind,
            "size": g.size,
            "churn": g.churn,
        })).collect::<Vec<_>>(),
    })
}

/// Prints the end-of-run summary: JSON on stdout with `--json`, otherwise
/// one human line on stderr (unless `--quiet`).
pub fn summarize(
    verb: &str,
    out: &OutputArgs,
    r: &MergeReport,
    n_inputs: usize,
) -> anyhow::Result<()> {
    let bytes = r.written.data_bytes;
    let rate = bytes as f64 / r.seconds.max(1e-9);
    if out.json {
        let j = json!({
            "output": r.written.path.display().to_string(),
            "files": r.written.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "inputs": n_inputs,
            "tensors": r.tensors,
            "params": r.params,
            "bytes": bytes,
            "seconds": r.seconds,
            "bytes_per_second": rate,
            "nonfinite": r.nonfinite.iter().map(|n| json!({"file": n.path.display().to_string(), "tensor": n.tensor, "count": n.count})).collect::<Vec<_>>(),
            "notes": r.notes,
            "averaged_running_stats": r.averaged_running_stats,
            "alignment": r.alignments.iter().map(|(i, al)| alignment_json(*i, al)).collect::<Vec<_>>(),
            "basin": r.basin.iter().map(|(p, x)| json!({
                "pair": [p.0 + 1, p.1 + 1],
                "aligned": r.aligned,
                "verdict": x.verdict,
                "data_free_verdict": x.data_free,
                "reasons": super::hints::reasons(&x.reasons),
            })).collect::<Vec<_>>(),
        });
        print_line(j)?;
    } else if !out.quiet {
        say!(
            "{verb} {n_inputs} input(s) into {}: {} tensors, {} params, {} in {:.2} s ({}/s)",
            clean(&r.written.path.display().to_string()),
            r.tensors,
            human_count(r.params),
            human_bytes(bytes),
            r.seconds,
            human_bytes(rate as u64)
        );
        for n in &r.notes {
            say!("polymerge: note: {}", clean(n));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_count(490_000_000), "490.0M");
    }
}
