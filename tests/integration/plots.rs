//! `--plot PATH.svg` of `barrier`, `ema` and `basin`: the SVG holds one
//! polyline per series whose points are the numbers the command reports in
//! `--json` (issue 13, item 3), and the plot path follows the output rules.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::svg::{assert_affine, series, texts};
use crate::common::*;

fn mlp(name: &str) -> String {
    fx(&format!("mlp/{name}.safetensors"))
}

fn run_json(args: &[&str]) -> Value {
    let out = polymerge().args(args).output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 3 | 4)),
        "{:?}",
        stderr_lines(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn column(rows: &Value, key: &str) -> Vec<f64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_f64().unwrap())
        .collect()
}

fn ys(points: &[(f64, f64)]) -> Vec<f64> {
    points.iter().map(|p| p.1).collect()
}

fn xs(points: &[(f64, f64)]) -> Vec<f64> {
    points.iter().map(|p| p.0).collect()
}

#[test]
fn barrier_plot_draws_naive_and_aligned_loss_and_accuracy_at_the_reported_values() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("path.svg");
    let (a, b, data) = (
        mlp("run_seed0"),
        mlp("run_seed0_permuted"),
        mlp("digits_test"),
    );
    let aligned = run_json(&[
        "barrier",
        &a,
        &b,
        "--data",
        &data,
        "--steps",
        "7",
        "--align",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let naive = run_json(&["barrier", &a, &b, "--data", &data, "--steps", "7", "--json"]);
    let svg = fs::read_to_string(&plot).unwrap();
    let lines = series(&svg);
    // Loss panel (naive, aligned), then accuracy panel (naive, aligned).
    let n: Vec<usize> = lines.iter().map(Vec::len).collect();
    assert_eq!(n, vec![7, 7, 7, 7], "{n:?}");
    for (panel, key) in [(0, "loss"), (2, "accuracy")] {
        let (p_naive, p_aligned) = (&lines[panel], &lines[panel + 1]);
        let v_naive = column(&naive["path"], key);
        let v_aligned = column(&aligned["path"], key);
        // One y axis for both curves: a single affine map fits all 14 points.
        let px = [ys(p_naive), ys(p_aligned)].concat();
        assert_affine(&px, &[v_naive.clone(), v_aligned].concat(), key);
        assert_affine(&xs(p_naive), &column(&naive["path"], "alpha"), "alpha");
        // The naive curve has the barrier: its midpoint loss is well above
        // the ends, drawn higher (smaller y pixel).
        if key == "loss" {
            assert!(v_naive[3] > v_naive[0] + 0.1, "{v_naive:?}");
            assert!(p_naive[3].1 < p_naive[0].1);
        }
    }
    let t = texts(&svg).join("|");
    assert!(
        t.contains("naive (barrier") && t.contains("aligned (barrier"),
        "{t}"
    );
}

#[test]
fn ema_plot_draws_each_checkpoints_weight_over_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("w.svg");
    let traj: Vec<String> = (1..=20)
        .map(|k| fx(&format!("mlp/traj/checkpoint-{}.safetensors", k * 20)))
        .collect();
    let mut args = vec!["ema"];
    args.extend(traj.iter().map(String::as_str));
    args.extend(["--half-life", "50", "--dry-run", "--json", "--plot"]);
    args.push(plot.to_str().unwrap());
    let j = run_json(&args);
    let svg = fs::read_to_string(&plot).unwrap();
    let lines = series(&svg);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), 20);
    assert_affine(&xs(&lines[0]), &column(&j["weights"], "step"), "step");
    assert_affine(&ys(&lines[0]), &column(&j["weights"], "weight"), "weight");
}

#[test]
fn basin_plot_draws_the_per_layer_cosine_before_and_after_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("cos.svg");
    let j = run_json(&[
        "basin",
        &mlp("run_seed0"),
        &mlp("run_seed0_permuted"),
        "--align",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let layer_cos = |tensors: &Value| -> (Vec<String>, Vec<f64>) {
        tensors
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["shape"].as_array().unwrap().len() >= 2 && t["cos"].is_f64())
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["cos"].as_f64().unwrap(),
                )
            })
            .unzip()
    };
    let (names, before) = layer_cos(&j["before_alignment"]["tensors"]);
    let (names_after, after) = layer_cos(&j["tensors"]);
    assert_eq!(names, vec!["fc1.weight", "fc2.weight", "fc3.weight"]);
    assert_eq!(names, names_after);
    // A permuted copy: unrelated as stored, identical once aligned.
    assert!(before.iter().all(|c| *c < 0.5) && after.iter().all(|c| *c > 0.999));
    let svg = fs::read_to_string(&plot).unwrap();
    let lines = series(&svg);
    assert_eq!(lines.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3]);
    assert_affine(
        &[ys(&lines[0]), ys(&lines[1])].concat(),
        &[before, after].concat(),
        "cos",
    );
    let t = texts(&svg);
    for name in ["fc1", "fc2", "fc3", "before alignment", "after alignment"] {
        assert!(t.contains(&name.to_string()), "{name} not in {t:?}");
    }
}

fn quick_fail(args: &[&str], cwd: &Path) -> std::process::Output {
    polymerge().current_dir(cwd).args(args).output().unwrap()
}

#[test]
fn a_plot_path_is_checked_before_any_work_like_an_output() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, data) = (mlp("run_seed0"), mlp("run_seed1"), mlp("digits_test"));
    let barrier = |plot: &str, extra: &[&str]| {
        let mut args = vec![
            "barrier", &a, &b, "--data", &data, "--align", "--plot", plot,
        ];
        args.extend(extra);
        quick_fail(&args, dir.path())
    };
    // Would take a minute of alignment in a debug build: these fail first.
    assert_one_error_line(&barrier("p.png", &[]), &["p.png", ".svg"]);
    assert_one_error_line(&barrier("no/p.svg", &[]), &["no/p.svg", "does not exist"]);
    fs::write(dir.path().join("old.svg"), "mine").unwrap();
    assert_one_error_line(&barrier("old.svg", &[]), &["old.svg", "already exists"]);
    assert_eq!(fs::read(dir.path().join("old.svg")).unwrap(), b"mine");
    fs::create_dir(dir.path().join("d.svg")).unwrap();
    assert_one_error_line(
        &barrier("d.svg", &["--force"]),
        &["d.svg", "not a regular file"],
    );
    // --force without --plot is a usage error.
    let out = quick_fail(&["basin", &a, &b, "--force"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    // The plot cannot be the checkpoint output.
    let out = quick_fail(
        &[
            "ema", &a, &b, "--window", "2", "-o", "w.svg", "--plot", "w.svg",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{:?}", stderr_lines(&out));
    assert_eq!(listing(dir.path()), vec!["d.svg/", "old.svg"]);
}
