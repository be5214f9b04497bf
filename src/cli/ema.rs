//! `polymerge ema`: offline EMA over a checkpoint trajectory.

use std::process::ExitCode;

use polymerge::checkpoint::Checkpoint;
use polymerge::ema;
use polymerge::pipeline::{Align, Merge};
use serde_json::json;

use super::args::EmaArgs;
use super::console::{Console, GateText, refusal};
use super::output::{clean, print_line, summarize, warn, warn_nonfinite};

pub fn run(a: EmaArgs) -> anyhow::Result<ExitCode> {
    let profile = a.ema_profile().unwrap_or_else(|e| e.exit());
    let output = a.out.output();
    if !a.dry_run {
        output.refuse_existing()?;
    }
    if let Some(p) = &a.plot {
        let out = (!a.dry_run).then_some(a.out.output.as_path());
        super::plots::check(p, out, a.out.force)?;
    }
    let explicit = a.steps.as_ref().map(|s| s.0.as_slice());
    if let Some(steps) = explicit
        && steps.len() != a.inputs.len()
    {
        super::config::usage_error(format!(
            "--steps has {} values for {} checkpoints",
            steps.len(),
            a.inputs.len()
        ))
        .exit();
    }
    let matching = if a.align {
        Some(a.matching.options()?)
    } else {
        None
    };
    let ckpts: Vec<Checkpoint> = a
        .inputs
        .iter()
        .map(Checkpoint::open)
        .collect::<Result<_, _>>()?;
    let order = ema::resolve_steps(&a.inputs, explicit, |i| Ok(ckpts[i].metadata().clone()))?;
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
        say!("{profile}");
        say!("{:>12}  {:>12}  path", "step", "weight");
        for (s, w) in order.iter().zip(&weights) {
            say!(
                "{:>12}  {:>12.6e}  {}",
                s.step,
                w,
                clean(&s.path.display().to_string())
            );
        }
        say!(
            "effective half-life: {:.2} checkpoints",
            ema::effective_half_life_checkpoints(&weights)
        );
    }
    let plot = || -> anyhow::Result<()> {
        if let Some(p) = &a.plot {
            let panels = super::plots::ema(&profile.to_string(), &steps, &weights);
            polymerge::plot::save(p, &panels, a.out.force)?;
        }
        Ok(())
    };
    if a.dry_run {
        plot()?;
        if a.out.json {
            print_line(json!({"profile": profile.to_string(), "weights": rows}))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Inputs with zero weight contribute nothing: leave them out of the pass.
    let used: Vec<(&ema::StepInfo, f64)> = order
        .iter()
        .zip(&weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(s, w)| (s, *w))
        .collect();
    anyhow::ensure!(!used.is_empty(), "every checkpoint has zero weight");
    let used_w: Vec<f64> = used.iter().map(|(_, w)| *w).collect();
    let gate = GateText {
        labels: (used.iter())
            .map(|(s, _)| format!("{} (step {})", s.path.display(), s.step))
            .collect(),
        aligned: a.align,
        strict: a.basin.strict_basin,
    };
    let description = json!({
        "command": "ema",
        "version": polymerge::VERSION,
        "profile": profile.to_string(),
        "inputs": rows,
    });
    let merge = Merge::new(used.iter().map(|(s, _)| &ckpts[s.index]))
        .weights(used_w.clone())
        .accumulation(a.accum.accumulation())
        .counters(polymerge::average::CounterRule::Last)
        .dtype(a.dtype.map(|d| d.dtype()))
        .strict_nonfinite(a.strict)
        .align(matching.map_or(Align::None, Align::ToFirst))
        .basin_gate(a.basin.gate())
        .basin_pairs(ema::basin_pair(&used_w).into_iter().collect())
        .description(description);
    let console = Console::new(a.out.quiet(), "ema").with_gate(gate);
    let report = match merge.run(&output, &console) {
        Err(polymerge::Error::BasinRefused { pairs }) => {
            return Ok(refusal(&pairs, console.gate()));
        }
        r => r?,
    };
    warn_nonfinite(&report.nonfinite);
    plot()?;
    if a.out.json && a.print_weights {
        say!("{}", json!({"weights": rows}));
    }
    summarize("ema of", &a.out, &report, used.len())?;
    Ok(ExitCode::SUCCESS)
}
