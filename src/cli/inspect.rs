//! `polymerge inspect`: what a checkpoint holds.

use std::fmt::Write as _;
use std::process::ExitCode;

use polymerge::checkpoint::Checkpoint;
use polymerge::stats::{TensorStats, tensor_stats};
use rayon::prelude::*;
use serde_json::json;

use super::args::InspectArgs;
use super::output::{clean, human_bytes, human_count, pad, print_stdout, text_width};

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
    // Column widths from the data: names can be long (a `format!` width
    // above 65535 panics, so padding is done by hand) and carry control
    // characters (escaped), dtypes like F8_E4M3 are wider than "dtype".
    let rows: Vec<(String, String, String)> = ckpt
        .tensors()
        .iter()
        .map(|t| {
            (
                clean(&t.name).into_owned(),
                format!("{:?}", t.dtype),
                format!("{:?}", t.shape),
            )
        })
        .collect();
    let col = |f: fn(&(String, String, String)) -> &String, min: usize| {
        rows.iter()
            .map(|r| text_width(f(r)))
            .max()
            .unwrap_or(0)
            .max(min)
    };
    let (wn, wd, ws) = (col(|r| &r.0, 4), col(|r| &r.1, 5), col(|r| &r.2, 18));
    let mut header = format!(
        "{}  {}  {}  {:>10}",
        pad("name", wn),
        pad("dtype", wd),
        pad("shape", ws),
        "size"
    );
    if a.stats {
        header += &format!(
            "  {:>11}  {:>11}  {:>11}  {:>11}  {:>5}",
            "mean", "std", "min", "max", "nan/inf"
        );
    }
    // Written in one go at the end: see `print_stdout` (`inspect … | head`).
    let mut text = String::new();
    writeln!(text, "{}", header.trim_end())?;
    for ((t, s), (name, dtype, shape)) in ckpt.tensors().iter().zip(&stats).zip(&rows) {
        let mut line = format!(
            "{}  {}  {}  {:>10}",
            pad(name, wn),
            pad(dtype, wd),
            pad(shape, ws),
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
            writeln!(text, "  {}: {}", clean(k), clean(v))?;
        }
    }
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
