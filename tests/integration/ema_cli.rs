//! `polymerge ema` end to end on a real training trajectory (an MLP trained
//! on digits, one snapshot per epoch: fixtures/mlp/traj), against EMAs that
//! numpy computed step by step and torch's `AveragedModel` produced
//! (fixtures/generate_ema_reference.py → fixtures/ema/).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

use crate::common::repo;

fn root() -> PathBuf {
    repo("")
}

/// The binary, run from the repository root (the arguments below are
/// relative paths).
fn polymerge() -> Command {
    let mut c = crate::common::polymerge();
    c.current_dir(root());
    c
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/ema/reference.json")).unwrap(),
    )
    .unwrap()
}

/// Float tensors of a file as f64, read with the `safetensors` crate.
fn floats(path: &Path) -> BTreeMap<String, Vec<f64>> {
    let buf = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let d = v.data();
            let vals = match v.dtype() {
                safetensors::Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                other => panic!("unexpected dtype {other:?}"),
            };
            (n, vals)
        })
        .collect()
}

/// The CLI flags of a reference case: what its recorded command line has
/// between the input glob (or file list) and `-o OUT`.
fn flags(cli: &str) -> Vec<String> {
    let words: Vec<&str> = cli.split_whitespace().collect();
    let start = words.iter().position(|w| w.starts_with("--")).unwrap();
    let end = words.iter().position(|w| *w == "-o").unwrap();
    words[start..end].iter().map(|s| s.to_string()).collect()
}

fn run_case(
    case: &Value,
    extra: &[&str],
) -> (BTreeMap<String, Vec<f64>>, BTreeMap<String, Vec<f64>>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ema.safetensors");
    let inputs: Vec<String> = serde_json::from_value(case["inputs"].clone()).unwrap();
    polymerge()
        .arg("ema")
        .args(&inputs)
        .args(flags(case["cli"].as_str().unwrap()))
        .args(extra)
        .args(["-o", out.to_str().unwrap(), "--quiet"])
        .assert()
        .success();
    (
        floats(&out),
        floats(&root().join(case["file"].as_str().unwrap())),
    )
}

#[test]
fn every_reference_ema_is_reproduced_to_one_part_in_a_million_with_f64_accumulation() {
    let r = reference();
    let cases = r["trajectory"]["outputs"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let (ours, expected) = run_case(case, &["--accum", "f64"]);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (name, exp) in &expected {
            for (o, e) in ours[name].iter().zip(exp) {
                assert!(
                    (o - e).abs() <= 1e-6 * e.abs(),
                    "{}: {name}: {o} vs {e}",
                    case["file"]
                );
            }
        }
    }
}

#[test]
fn f32_accumulation_stays_within_f32_rounding_of_the_reference() {
    let r = reference();
    for case in r["trajectory"]["outputs"].as_array().unwrap() {
        let (ours, expected) = run_case(case, &[]);
        for (name, exp) in &expected {
            let scale = exp.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (o, e) in ours[name].iter().zip(exp) {
                assert!(
                    (o - e).abs() <= 1e-6 * scale,
                    "{}: {name}: {o} vs {e}",
                    case["file"]
                );
            }
        }
    }
}

#[test]
fn dry_run_prints_the_reference_weights_in_step_order_and_writes_nothing() {
    let r = reference();
    for case in r["trajectory"]["outputs"].as_array().unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let inputs: Vec<String> = serde_json::from_value(case["inputs"].clone()).unwrap();
        let out = polymerge()
            .arg("ema")
            .args(inputs.iter().rev()) // order on the command line does not matter
            .args(flags(case["cli"].as_str().unwrap()))
            .args([
                "--dry-run",
                "--json",
                "-o",
                dir.path().join("x.safetensors").to_str().unwrap(),
            ])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let j: Value = serde_json::from_slice(&out).unwrap();
        let expected: Vec<f64> = serde_json::from_value(case["weights"].clone()).unwrap();
        let steps: Vec<u64> = serde_json::from_value(case["steps"].clone()).unwrap();
        let rows = j["weights"].as_array().unwrap();
        assert_eq!(rows.len(), expected.len());
        for ((row, w), s) in rows.iter().zip(&expected).zip(&steps) {
            assert_eq!(row["step"].as_u64().unwrap(), *s);
            assert!((row["weight"].as_f64().unwrap() - w).abs() <= 1e-12 * w.abs().max(1e-300));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

#[test]
fn ema_without_a_profile_is_a_usage_error() {
    // The profile flags are a clap argument group: none is exit 2.
    let a = polymerge()
        .args([
            "ema",
            "fixtures/mlp/traj/checkpoint-20.safetensors",
            "fixtures/mlp/traj/checkpoint-40.safetensors",
        ])
        .assert()
        .code(2);
    let err = String::from_utf8(a.get_output().stderr.clone()).unwrap();
    assert!(err.starts_with("error:"), "{err}");
    assert!(err.contains("--decay") && err.contains("--window"), "{err}");
}

#[test]
fn two_profiles_at_once_are_a_usage_error() {
    let a = polymerge()
        .args([
            "ema",
            "fixtures/mlp/traj/checkpoint-20.safetensors",
            "fixtures/mlp/traj/checkpoint-40.safetensors",
        ])
        .args(["--decay", "0.9", "--window", "2", "--dry-run"])
        .assert()
        .code(2);
    let err = String::from_utf8(a.get_output().stderr.clone()).unwrap();
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn a_checkpoint_without_a_discoverable_step_needs_explicit_steps() {
    let a = polymerge()
        .args([
            "ema",
            "fixtures/io/a_f32.safetensors",
            "fixtures/io/b_f32.safetensors",
            "--decay",
            "0.9",
            "--dry-run",
        ])
        .assert()
        .code(1);
    let err = String::from_utf8(a.get_output().stderr.clone()).unwrap();
    assert!(err.contains("--steps"), "{err}");
    polymerge()
        .args([
            "ema",
            "fixtures/io/a_f32.safetensors",
            "fixtures/io/b_f32.safetensors",
            "--decay",
            "0.9",
            "--dry-run",
        ])
        .args(["--steps", "10,20"])
        .assert()
        .success();
}

#[test]
fn a_window_of_one_reproduces_the_last_checkpoint_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    polymerge()
        .args([
            "ema",
            "fixtures/mlp/traj/checkpoint-380.safetensors",
            "fixtures/mlp/traj/checkpoint-400.safetensors",
        ])
        .args(["--window", "1", "-o", out.to_str().unwrap(), "--quiet"])
        .assert()
        .success();
    let last = floats(&root().join("fixtures/mlp/traj/checkpoint-400.safetensors"));
    let ours = floats(&out);
    for (name, v) in &last {
        for (a, b) in ours[name].iter().zip(v) {
            // 1·x / 1 is x exactly, except that -0.0 becomes +0.0.
            assert_eq!(a, b, "{name}");
        }
    }
}

/// `polymerge ema` of the 20 trajectory checkpoints with `extra` flags,
/// under `ulimit -n` when given; the output's bytes.
fn ema_bytes_under(descriptors: Option<u32>, extra: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ema.safetensors");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/mlp/traj"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    inputs.sort();
    assert_eq!(inputs.len(), 20);
    let status = crate::common::polymerge_with_open_files(descriptors)
        .arg("ema")
        .args(&inputs)
        .args(["--half-life", "60", "-o", out.to_str().unwrap(), "--quiet"])
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "ulimit -n {descriptors:?}: {status}");
    std::fs::read(&out).unwrap()
}

#[test]
fn inputs_read_with_pread_through_their_mapping_or_both_give_the_same_bytes() {
    // Unlimited: every input read with `pread`. `ulimit -n 52`: a budget of
    // (52 − 32) / 2 = 10 descriptors, so 10 inputs are read and 10 mapped.
    // `ulimit -n 32`: no budget, all 20 mapped.
    for extra in [&[][..], &["--accum", "f64"], &["--no-basin-check"]] {
        let read = ema_bytes_under(None, extra);
        assert_eq!(read, ema_bytes_under(Some(52), extra), "{extra:?}");
        assert_eq!(read, ema_bytes_under(Some(32), extra), "{extra:?}");
    }
}
