//! What the binary shows a person: progress bars on stderr (only on a
//! terminal), human-readable sizes, warnings, and the one-line error format.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use polymerge::average::NonFinite;
use polymerge::write::{DEFAULT_MAX_SHARD_BYTES, OutputLayout};

use super::args::OutputArgs;

/// Renders an error chain as one line (anyhow's `{:#}` joins causes with ": ").
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

/// A byte-count progress bar on stderr; hidden when stderr is not a terminal
/// or `quiet` is set.
pub fn bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Prints warnings on stderr (always, even with `--quiet`).
pub fn warn(msg: &str) {
    eprintln!("polymerge: warning: {msg}");
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

/// Writes `text` to stdout. A reader that went away (`polymerge inspect … |
/// head`) is not an error: `println!` would panic on the broken pipe.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
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

/// Parses sizes like `5GB` (decimal), `2GiB` (binary), `500MB`, `123`.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size `{s}` (expected e.g. 5GB, 500MB, 2GiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => anyhow::bail!("invalid size unit in `{s}` (use B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    let bytes = (value * mult).round();
    anyhow::ensure!(bytes >= 1.0, "size `{s}` must be at least one byte");
    Ok(bytes as u64)
}

/// The output layout the user asked for; side files are copied from
/// `model_dir` (the first input's model directory) for directory outputs.
pub fn layout(args: &OutputArgs, model_dir: Option<PathBuf>) -> anyhow::Result<OutputLayout> {
    let max = if args.max_shard_size == "5GB" {
        DEFAULT_MAX_SHARD_BYTES
    } else {
        parse_size(&args.max_shard_size)?
    };
    Ok(OutputLayout::infer(&args.output, max, model_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_decimal_gb_and_binary_gib() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 * 1024 * 1024 * 1024);
        assert_eq!(parse_size("1.5MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_count(490_000_000), "490.0M");
    }
}
