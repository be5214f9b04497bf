//! `polymerge inspect`: what a checkpoint holds.

use std::fmt::Write as _;
use std::process::ExitCode;

use polymerge::checkpoint::Checkpoint;
use polymerge::stats::{TensorStats, tensor_stats};
use rayon::prelude::*;
use serde_json::json;

use super::args::InspectArgs;
use super::output::{human_bytes, human_count, print_stdout};

pub fn run(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::open(&a.path)?;
    let stats: Vec<Option<TensorStats>> = if a.stats {
        ckpt.tensors()
            .par_iter()
            .map(|t| tensor_stats(&ckpt, t))
            .collect()
    } else {
        vec![None; ckpt.tensors().len()]
    };
    if a.json {
        let tensors: Vec<_> = ckpt
            .tensors()
            .iter()
            .zip(&stats)
            .map(|(t, s)| {
                let mut o = json!({
                    "name": t.name, "dtype": format!("{:?}", t.dtype), "shape": t.shape,
                    "numel": t.numel(), "bytes": t.nbytes(),
                    "file": ckpt.shard_path(t).display().to_string(),
                });
                if let Some(s) = s {
                    o["stats"] = serde_json::to_value(s).expect("stats serialise");
                }
                o
            })
            .collect();
        let out = json!({
            "path": ckpt.source().display().to_string(),
            "files": ckpt.files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "tensors": tensors,
            "total_tensors": ckpt.tensors().len(),
            "total_params": ckpt.numel(),
            "total_bytes": ckpt.nbytes(),
            "metadata": ckpt.metadata(),
        });
        print_stdout(&(serde_json::to_string_pretty(&out)? + "\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = ckpt
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut header = format!(
        "{:<width$}  {:<5}  {:<18}  {:>10}",
        "name", "dtype", "shape", "size"
    );
    if a.stats {
        header += &format!(
            "  {:>11}  {:>11}  {:>11}  {:>11}  {:>5}",
            "mean", "std", "min", "max", "nan/inf"
        );
    }
    // Written in one go at the end: see `print_stdout` (`inspect … | head`).
    let mut text = String::new();
    writeln!(text, "{header}")?;
    for (t, s) in ckpt.tensors().iter().zip(&stats) {
        let mut line = format!(
            "{:<width$}  {:<5}  {:<18}  {:>10}",
            t.name,
            format!("{:?}", t.dtype),
            format!("{:?}", t.shape),
            human_bytes(t.nbytes() as u64)
        );
        if let Some(s) = s {
            line += &format!(
                "  {:>11.4e}  {:>11.4e}  {:>11.4e}  {:>11.4e}  {:>5}",
                s.mean,
                s.std,
                s.min,
                s.max,
                format!("{}/{}", s.nan, s.inf)
            );
        }
        writeln!(text, "{line}")?;
    }
    writeln!(
        text,
        "{} tensors, {} params, {} in {} file(s)",
        ckpt.tensors().len(),
        human_count(ckpt.numel() as u64),
        human_bytes(ckpt.nbytes() as u64),
        ckpt.files().len()
    )?;
    if !ckpt.metadata().is_empty() {
        writeln!(text, "metadata:")?;
        for (k, v) in ckpt.metadata() {
            writeln!(text, "  {k}: {v}")?;
        }
    }
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
