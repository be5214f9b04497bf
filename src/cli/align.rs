//! `polymerge spec`, `align`, `permute` and `barrier`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use polymerge::alignment::{self, Permuted};
use polymerge::average;
use polymerge::checkpoint::Checkpoint;
use polymerge::permute::{GroupPerms, ModelPermutation};
use polymerge::pipeline::{Align, BasinGate, Merge, Output, match_pair, open_pair};
use polymerge::spec::{self, PERM_FORMAT, PermFile, PermutationSpec, SpecSource};
use serde_json::json;

use super::args::{AlignArgs, BarrierArgs, PermuteArgs, SpecArgs};
use super::console::{Console, print_alignment};
use super::output::{summarize, warn, warn_nonfinite};

pub fn spec(a: SpecArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::open(&a.path)?;
    let source = if a.shared_heads {
        SpecSource::InferSharedHeads
    } else {
        SpecSource::Infer
    };
    let spec = spec::resolve(&source, a.groups.as_deref(), &[&ckpt])?;
    for n in &spec.notes {
        warn(n);
    }
    println!("{}", serde_json::to_string_pretty(&spec)?);
    Ok(ExitCode::SUCCESS)
}

pub fn align(a: AlignArgs) -> anyhow::Result<ExitCode> {
    let output = a.out.output();
    output.refuse_existing()?;
    let (ca, cb) = open_pair(&a.a, &a.b)?;
    let mut m = a.matching.options();
    let spec = m.resolve_spec(&[&ca, &cb])?;
    if let Some(p) = &a.init_perm {
        m.align.init = Some(PermFile::load(p)?.perms_for(&spec, p)?);
    }
    let console = Console::new(a.out.quiet(), "writing");
    let (r, perm) = match_pair(&spec, &ca, &cb, &m.align, &console)?;
    let description = json!({
        "command": "align",
        "version": polymerge::VERSION,
        "reference": a.a.display().to_string(),
        "input": a.b.display().to_string(),
        "objective_before": r.objective_before,
        "objective_after": r.objective_after,
    });
    let report = write_permuted(&cb, perm, &output, description, &console)?;
    if let Some(p) = &a.save_perm {
        save_perm(p, &spec, &r.perms)?;
    }
    if a.out.json {
        let j = json!({
            "output": report.written.path.display().to_string(),
            "objective_before": r.objective_before,
            "objective_after": r.objective_after,
            "sweeps": r.sweeps,
            "converged": r.converged,
            "seconds": r.seconds,
            "sweep_seconds": r.sweep_seconds,
            "groups": r.groups,
            "kept_restart": r.kept_restart,
            "restarts": r.restarts,
            "saved_perm": a.save_perm.as_ref().map(|p| p.display().to_string()),
        });
        println!("{j}");
    } else if !a.out.quiet {
        print_alignment(&r);
        eprintln!("wrote {}", report.written.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `ckpt` seen through `perm` (byte for byte otherwise).
fn write_permuted(
    ckpt: &Checkpoint,
    perm: ModelPermutation,
    output: &Output,
    description: serde_json::Value,
    console: &Console,
) -> anyhow::Result<average::MergeReport> {
    let report = Merge::new([ckpt])
        .align(Align::Given(vec![Some(perm)]))
        .basin_gate(BasinGate::Off)
        .description(description)
        .run(output, console)?;
    warn_nonfinite(&report.nonfinite);
    Ok(report)
}

fn save_perm(path: &Path, spec: &PermutationSpec, perms: &GroupPerms) -> anyhow::Result<()> {
    let file = PermFile {
        format: PERM_FORMAT.into(),
        groups: spec
            .groups
            .iter()
            .zip(perms)
            .map(|(g, p)| (g.name.clone(), p.clone()))
            .collect(),
        spec: Some(spec.clone()),
    };
    let text = serde_json::to_string_pretty(&file)? + "\n";
    let tmp = path.with_extension("json.polymerge-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

pub fn permute(a: PermuteArgs) -> anyhow::Result<ExitCode> {
    let output = a.out.output();
    let ckpt = Checkpoint::open(&a.input)?;
    let file = PermFile::load(&a.perm)?;
    let spec = match (&a.spec, &file.spec) {
        (Some(p), _) => PermutationSpec::load(p)?,
        (None, Some(s)) => s.clone(),
        // Perm files of the shared within-head groups name them unsplit.
        (None, None) => {
            let spec = spec::infer::infer(&ckpt)?;
            let known = |n: &String| spec.groups.iter().any(|g| &g.name == n);
            if file.groups.keys().all(known) {
                spec
            } else {
                spec::infer::infer_shared_heads(&ckpt)?
            }
        }
    };
    spec.validate(&ckpt)?;
    let perms = file.perms_for(&spec, &a.perm)?;
    let perm = alignment::model_permutation(&spec, &ckpt, &perms, None)?;
    let description = json!({
        "command": "permute",
        "version": polymerge::VERSION,
        "input": a.input.display().to_string(),
        "perm": a.perm.display().to_string(),
    });
    let console = Console::new(a.out.quiet(), "writing");
    let report = write_permuted(&ckpt, perm, &output, description, &console)?;
    summarize("permuted", &a.out, &report, 1);
    Ok(ExitCode::SUCCESS)
}

pub fn barrier(a: BarrierArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.plot.plot {
        super::plots::check(p, None, a.plot.force)?;
    }
    let (ca, cb) = open_pair(&a.a, &a.b)?;
    let data = polymerge::evaluate::Dataset::load(&a.data)?;
    let mut aligned = None;
    let perm = if a.align {
        let m = a.matching.options();
        let spec = m.resolve_spec(&[&ca, &cb])?;
        let (r, p) = match_pair(&spec, &ca, &cb, &m.align, &Console::new(a.json, ""))?;
        aligned = Some(r);
        p
    } else {
        ModelPermutation::default()
    };
    let b = Permuted {
        source: &cb,
        perm: &perm,
    };
    let r = polymerge::evaluate::barrier(&ca, &b, &data, a.steps)?;
    if let Some(p) = &a.plot.plot {
        let panels = if a.align {
            let identity = ModelPermutation::default();
            let naive = Permuted {
                source: &cb,
                perm: &identity,
            };
            let n = polymerge::evaluate::barrier(&ca, &naive, &data, a.steps)?;
            super::plots::barrier(&[("naive", &n), ("aligned", &r)])
        } else {
            super::plots::barrier(&[("naive", &r)])
        };
        polymerge::plot::save(p, &panels, a.plot.force)?;
    }
    if a.json {
        let j = json!({
            "a": a.a.display().to_string(),
            "b": a.b.display().to_string(),
            "data": a.data.display().to_string(),
            "aligned": a.align,
            "objective_before": aligned.as_ref().map(|r| r.objective_before),
            "objective_after": aligned.as_ref().map(|r| r.objective_after),
            "barrier": r.barrier,
            "alpha_max": r.alpha_max,
            "path": r.path,
        });
        println!("{j}");
    } else {
        println!("{:>6}  {:>10}  {:>8}", "alpha", "loss", "accuracy");
        for p in &r.path {
            println!(
                "{:>6.2}  {:>10.6}  {:>7.2}%",
                p.alpha,
                p.loss,
                p.accuracy * 100.0
            );
        }
        println!(
            "barrier {:.6} at alpha {:.2}{}",
            r.barrier,
            r.alpha_max,
            if a.align { " (B aligned to A)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
