//! `--plot PATH.svg` of `barrier`, `ema` and `basin`: the panels each
//! command draws, built from the same numbers it prints (the library's
//! [`polymerge::plot`] renders and writes them).

use std::path::Path;

use polymerge::basin::Diagnostics;
use polymerge::evaluate::{Barrier, PathPoint};
use polymerge::plot::{Panel, Series};

/// Fails (a usage error) if the plot would land on the checkpoint output;
/// then checks the plot path like an output (`.svg`, `--force`).
pub fn check(plot: &Path, output: Option<&Path>, force: bool) -> anyhow::Result<()> {
    if let Some(out) = output
        && std::path::absolute(plot)? == std::path::absolute(out)?
    {
        super::config::usage_error(format!(
            "--plot {} is also the output (-o): give them different paths",
            plot.display()
        ))
        .exit();
    }
    Ok(polymerge::plot::check_target(plot, force)?)
}

/// Loss and accuracy along the path: one curve per barrier (`naive`, then
/// `aligned`).
pub fn barrier(curves: &[(&str, &Barrier)]) -> Vec<Panel> {
    let panel = |title: &str, y: &str, f: fn(&PathPoint) -> f64| Panel {
        title: title.into(),
        x_label: "alpha ((1-alpha) A + alpha B)".into(),
        y_label: y.into(),
        series: (curves.iter())
            .map(|(label, b)| Series {
                label: format!("{label} (barrier {:.4})", b.barrier),
                points: b.path.iter().map(|p| (p.alpha, f(p))).collect(),
            })
            .collect(),
        x_names: None,
    };
    vec![
        panel("loss along the path", "loss", |p| p.loss),
        panel("accuracy along the path", "accuracy", |p| p.accuracy),
    ]
}

/// The weight of every checkpoint over its training step.
pub fn ema(profile: &str, steps: &[u64], weights: &[f64]) -> Vec<Panel> {
    vec![Panel {
        title: "EMA weight per checkpoint".into(),
        x_label: "training step".into(),
        y_label: "weight".into(),
        series: vec![Series {
            // "decay 0.87 (tau …, half-life …)": the first part fits.
            label: profile.split(" (").next().unwrap_or(profile).into(),
            points: steps
                .iter()
                .map(|&s| s as f64)
                .zip(weights.iter().copied())
                .collect(),
        }],
        x_names: None,
    }]
}

/// Tensor names on the x axis of a basin plot up to this many (then
/// positions).
const MAX_NAMES: usize = 12;

/// The tensors a basin plot shows, in file order: weight tensors (>= 2-D)
/// with a cosine, or every tensor with one if there are none.
pub fn basin_tensors(d: &Diagnostics) -> Vec<&str> {
    let with_cos = || d.tensors.iter().filter(|t| t.cos.is_some());
    let layers: Vec<&str> = with_cos()
        .filter(|t| t.shape.len() >= 2)
        .map(|t| t.name.as_str())
        .collect();
    if layers.is_empty() {
        with_cos().map(|t| t.name.as_str()).collect()
    } else {
        layers
    }
}

/// Per-layer cosine of A and B: as stored, and after alignment when given.
pub fn basin(before: &Diagnostics, after: Option<&Diagnostics>) -> Vec<Panel> {
    let names = basin_tensors(before);
    let series = |label: &str, d: &Diagnostics| Series {
        label: label.into(),
        points: (names.iter().enumerate())
            .map(|(k, n)| {
                let cos = d.tensors.iter().find(|t| t.name == *n).and_then(|t| t.cos);
                (k as f64, cos.unwrap_or(f64::NAN))
            })
            .collect(),
    };
    let mut all = vec![series(
        if after.is_some() {
            "before alignment"
        } else {
            "cosine"
        },
        before,
    )];
    if let Some(after) = after {
        all.push(series("after alignment", after));
    }
    vec![Panel {
        title: "per-layer cosine of A and B".into(),
        x_label: if names.len() <= MAX_NAMES {
            "tensor".into()
        } else {
            "tensor (position in file order among >= 2-D tensors; names in basin --json)".into()
        },
        y_label: "cos(A, B)".into(),
        series: all,
        x_names: (names.len() <= MAX_NAMES).then(|| {
            (names.iter())
                .map(|n| n.strip_suffix(".weight").unwrap_or(n).to_string())
                .collect()
        }),
    }]
}
