//! `polymerge avg`: weighted average of N checkpoints.

use std::process::ExitCode;

use polymerge::average;
use polymerge::checkpoint::Checkpoint;
use polymerge::pipeline::{Align, Merge};
use serde_json::json;

use super::args::{AlignMode, AvgArgs};
use super::console::{Console, GateText, refusal};
use super::output::{summarize, warn_nonfinite};

pub fn run(a: AvgArgs) -> anyhow::Result<ExitCode> {
    let output = a.out.output();
    output.refuse_existing()?;
    let weights = a
        .weights
        .clone()
        .unwrap_or_else(|| vec![1.0; a.inputs.len()]);
    average::validate_weights(&weights, a.inputs.len())?;
    let align = match a.align {
        None => Align::None,
        Some(AlignMode::Pairwise) => Align::ToFirst(a.matching.options()?),
        Some(AlignMode::Many) => Align::Many(a.matching.options()?),
    };
    let ckpts = open_all(&a.inputs)?;
    let gate = GateText {
        labels: (a.inputs.iter().enumerate())
            .map(|(i, p)| format!("input {} ({})", i + 1, p.display()))
            .collect(),
        aligned: a.align.is_some(),
        strict: a.basin.strict_basin,
    };
    let description = json!({
        "command": "avg",
        "version": polymerge::VERSION,
        "inputs": a.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "weights": weights,
        "align": a.align.map(|m| format!("{m:?}").to_lowercase()),
    });
    let merge = Merge::new(&ckpts)
        .weights(weights)
        .dtype(a.dtype.map(|d| d.dtype()))
        .strict_nonfinite(a.strict)
        .align(align)
        .basin_gate(a.basin.gate())
        .description(description);
    let console = Console::new(a.out.quiet(), "averaging").with_gate(gate);
    let report = match merge.run(&output, &console) {
        Err(polymerge::Error::BasinRefused { pairs }) => {
            return Ok(refusal(&pairs, console.gate()));
        }
        r => r?,
    };
    warn_nonfinite(&report.nonfinite);
    summarize("averaged", &a.out, &report, ckpts.len())?;
    Ok(ExitCode::SUCCESS)
}

/// Opens every input, failing on the first that cannot be read.
pub fn open_all(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Checkpoint>> {
    paths.iter().map(|p| Ok(Checkpoint::open(p)?)).collect()
}
