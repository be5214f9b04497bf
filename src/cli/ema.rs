//! `polymerge ema`: offline EMA over a checkpoint trajectory.

use std::process::ExitCode;

use anyhow::Context;
use polymerge::average::{Accumulation, MergeInput, MergeOptions};
use polymerge::checkpoint::{Checkpoint, dtype};
use polymerge::ema::{self, ProfileOptions, Warmup};
use serde_json::json;

use super::args::{AlignMode, EmaArgs};
use super::avg::{merge, summarize};
use super::output::warn;

pub fn run(a: EmaArgs) -> anyhow::Result<ExitCode> {
    let warmup = match &a.warmup {
        Some(name) => Some(Warmup::parse(name, a.warmup_inv_gamma, a.warmup_power)?),
        None => {
            anyhow::ensure!(
                a.warmup_inv_gamma.is_none() && a.warmup_power.is_none(),
                "--warmup-inv-gamma and --warmup-power need --warmup inv-gamma"
            );
            None
        }
    };
    let profile = ProfileOptions {
        decay: a.decay,
        half_life: a.half_life,
        tau: a.tau,
        power: a.power,
        sigma_rel: a.sigma_rel,
        window: a.window,
        warmup,
    }
    .to_profile()?;
    let accumulation = match a.accum.as_str() {
        "f32" => Accumulation::Auto,
        "f64" => Accumulation::F64,
        other => anyhow::bail!("unknown --accum `{other}` (use f32 or f64)"),
    };
    if !a.dry_run {
        polymerge::write::refuse_existing(&a.out.output, a.out.force)?;
    }
    let explicit = a.steps.as_deref().map(ema::parse_steps).transpose()?;
    let ckpts: Vec<Checkpoint> = a
        .inputs
        .iter()
        .map(Checkpoint::open)
        .collect::<Result<_, _>>()?;
    let order = ema::resolve_steps(&a.inputs, explicit.as_deref(), |i| {
        Ok(ckpts[i].metadata().clone())
    })?;
    let steps: Vec<u64> = order.iter().map(|s| s.step).collect();
    let weights = ema::weights(&profile, &steps)?;
    for w in ema::warnings(&profile, &steps, &weights) {
        warn(&w);
    }
    let rows: Vec<serde_json::Value> = order
        .iter()
        .zip(&weights)
        .map(|(s, w)| json!({"path": s.path.display().to_string(), "step": s.step, "weight": w}))
        .collect();
    if a.print_weights || a.dry_run {
        eprintln!("{profile}");
        eprintln!("{:>12}  {:>12}  path", "step", "weight");
        for (s, w) in order.iter().zip(&weights) {
            eprintln!("{:>12}  {:>12.6e}  {}", s.step, w, s.path.display());
        }
        eprintln!(
            "effective half-life: {:.2} checkpoints",
            ema::effective_half_life_checkpoints(&weights)
        );
    }
    if a.dry_run {
        if a.out.json {
            println!(
                "{}",
                json!({"profile": profile.to_string(), "weights": rows})
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Inputs with zero weight contribute nothing: leave them out of the pass.
    let (used, used_w): (Vec<&Checkpoint>, Vec<f64>) = order
        .iter()
        .zip(&weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(s, w)| (&ckpts[s.index], *w))
        .unzip();
    anyhow::ensure!(!used.is_empty(), "every checkpoint has zero weight");
    let mut opts = MergeOptions::uniform(used.len());
    opts.weights = used_w;
    opts.accumulation = accumulation;
    opts.strict_nonfinite = a.strict;
    if let Some(d) = &a.dtype {
        opts.dtype = Some(
            dtype::parse_float(d)
                .with_context(|| format!("unknown --dtype `{d}` (use f32, f16 or bf16)"))?,
        );
    }
    let owned: Vec<Checkpoint>;
    let perms = if a.align {
        // Alignment needs owned checkpoints in input order; reopen the used ones.
        owned = used
            .iter()
            .map(|c| Checkpoint::open(c.source()))
            .collect::<Result<_, _>>()?;
        super::align::align_inputs(
            &owned,
            AlignMode::Pairwise,
            &a.matching,
            a.out.quiet || a.out.json,
        )?
    } else {
        vec![None; used.len()]
    };
    let inputs = MergeInput::zip(used.iter().copied(), &perms);
    let quiet = a.out.quiet || a.out.json;
    let basin = &a.basin;
    if let Some(code) =
        super::basin::check_ema(&inputs, &order, &weights, &opts, a.align, basin, quiet)?
    {
        return Ok(code);
    }
    let description = json!({
        "command": "ema",
        "version": polymerge::VERSION,
        "profile": profile.to_string(),
        "inputs": rows,
    });
    let report = merge(&inputs, &opts, &a.out, description, "ema")?;
    if a.out.json && a.print_weights {
        eprintln!("{}", json!({"weights": rows}));
    }
    summarize("ema of", &a.out, &report, inputs.len());
    Ok(ExitCode::SUCCESS)
}
