//! `polymerge avg`: weighted average of N checkpoints.

use std::process::ExitCode;

use anyhow::Context;
use polymerge::average::{self, MergeInput, MergeOptions, MergeReport};
use polymerge::checkpoint::{Checkpoint, dtype};
use polymerge::write::CheckpointWriter;
use serde_json::json;

use super::args::{AvgArgs, OutputArgs};
use super::output::{bar, human_bytes, human_count, layout, warn, warn_nonfinite};

pub fn run(a: AvgArgs) -> anyhow::Result<ExitCode> {
    polymerge::write::refuse_existing(&a.out.output, a.out.force)?;
    let ckpts = open_all(&a.inputs)?;
    let mut opts = MergeOptions::uniform(ckpts.len());
    if let Some(w) = &a.weights {
        opts.weights = w.clone();
    }
    opts.strict_nonfinite = a.strict;
    if let Some(d) = &a.dtype {
        opts.dtype = Some(
            dtype::parse_float(d)
                .with_context(|| format!("unknown --dtype `{d}` (use f32, f16 or bf16)"))?,
        );
    }
    let perms = match a.align {
        Some(mode) => {
            // Check tensors and shapes before spending time on alignment.
            let plain: Vec<MergeInput> = ckpts.iter().map(MergeInput::plain).collect();
            average::plan(&plain, &opts)?;
            super::align::align_inputs(&ckpts, mode, &a.matching, a.out.quiet || a.out.json)?
        }
        None => vec![None; ckpts.len()],
    };
    let inputs = MergeInput::zip(ckpts.iter(), &perms);
    let quiet = a.out.quiet || a.out.json;
    let aligned = a.align.is_some();
    if let Some(code) =
        super::basin::check_avg(&inputs, &a.inputs, &opts, aligned, &a.basin, quiet)?
    {
        return Ok(code);
    }
    let description = json!({
        "command": "avg",
        "version": polymerge::VERSION,
        "inputs": a.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "weights": opts.weights,
        "align": a.align.map(|m| format!("{m:?}").to_lowercase()),
    });
    let report = merge(&inputs, &opts, &a.out, description, "averaging")?;
    summarize("averaged", &a.out, &report, ckpts.len());
    Ok(ExitCode::SUCCESS)
}

/// Opens every input, failing on the first that cannot be read.
pub fn open_all(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<Checkpoint>> {
    paths.iter().map(|p| Ok(Checkpoint::open(p)?)).collect()
}

/// Plans, writes and reports a merge of `inputs` into the output of `out`.
pub fn merge(
    inputs: &[MergeInput],
    opts: &MergeOptions,
    out: &OutputArgs,
    description: serde_json::Value,
    what: &str,
) -> anyhow::Result<MergeReport> {
    let first = inputs[0].checkpoint;
    let (planned, warnings) = average::plan(inputs, opts)?;
    for w in &warnings {
        warn(w);
    }
    let metadata = average::output_metadata(first, description);
    let layout = layout(out, first.model_dir().map(|p| p.to_path_buf()))?;
    let writer = CheckpointWriter::create(
        layout,
        planned.iter().map(|p| p.plan.clone()).collect(),
        metadata,
        out.force,
    )?;
    let total: u64 = planned.iter().map(|p| p.plan.nbytes() as u64).sum();
    let pb = bar(total, out.quiet || out.json, what);
    let report = average::run(inputs, &planned, opts, writer, &|done| {
        pb.set_position(done)
    })?;
    pb.finish_and_clear();
    warn_nonfinite(&report.nonfinite);
    Ok(report)
}

/// Prints the end-of-run summary: JSON on stdout with `--json`, otherwise
/// one human line on stderr (unless `--quiet`).
pub fn summarize(verb: &str, out: &OutputArgs, r: &MergeReport, n_inputs: usize) {
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
        });
        println!("{j}");
    } else if !out.quiet {
        eprintln!(
            "{verb} {n_inputs} input(s) into {}: {} tensors, {} params, {} in {:.2} s ({}/s)",
            r.written.path.display(),
            r.tensors,
            human_count(r.params),
            human_bytes(bytes),
            r.seconds,
            human_bytes(rate as u64)
        );
    }
}
