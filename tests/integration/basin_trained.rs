//! The basin verdict on the labelled trained pairs of `fixtures/trained/`
//! (GPT-2, ResNet, MLP runs; labels from PyTorch-measured loss barriers in
//! `pairs.json`), the verdicts `avg --align` / `ema --align` give the user,
//! and BatchNorm merges (running statistics, step counters).
//!
//! The whole labelled set (103 cases) is judged by
//! `scripts/calibrate_basin.py` (docs/basin.md); here a representative
//! subset of held-out cases, small enough for a debug build.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

use crate::common::{read_file, repo};

fn pm() -> Command {
    let mut c = Command::new(crate::common::polymerge_path());
    c.current_dir(repo(""));
    c
}

const T: &str = "fixtures/trained";

/// The labelled pairs.
fn pairs() -> Vec<Value> {
    let text = std::fs::read_to_string(repo("fixtures/trained/pairs.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["pairs"].as_array().unwrap().clone()
}

fn pair(id: &str) -> Value {
    pairs()
        .into_iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no pair {id} in pairs.json"))
}

/// `polymerge basin ARGS --json`: (verdict, JSON); the exit code must match.
fn basin(args: &[&str]) -> (String, Value) {
    let out = pm().arg("basin").args(args).arg("--json").output().unwrap();
    let j: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let v = j["verdict"].as_str().unwrap().to_string();
    let code = match v.as_str() {
        "connected" => 0,
        "disconnected" => 3,
        _ => 4,
    };
    assert_eq!(out.status.code(), Some(code), "{args:?}");
    (v, j)
}

/// Judges one labelled case: the verdict must never be `connected` unless
/// the label is, and a pair labelled `disconnected` (midpoint clearly above
/// the ends) must be called `disconnected`.
fn judge(id: &str, mode: &str, dir: &Path) -> (String, String) {
    let p = pair(id);
    assert_eq!(p["split"], "holdout", "{id}: pick held-out pairs");
    let (a, b) = (p["a"].as_str().unwrap(), p["b"].as_str().unwrap());
    let mut args = vec![a.to_string()];
    let label = match mode {
        "naive" => {
            args.push(b.into());
            p["naive"]["label"].as_str().unwrap()
        }
        "--align" => {
            args.extend([b.into(), "--align".into()]);
            p["aligned"]["path"]["label"].as_str().unwrap()
        }
        // B permuted by the committed perm file of an earlier alignment
        "frozen" => {
            let out = dir.join(format!("{}.safetensors", id.replace(['/', '~', ' '], "_")));
            pm().args(["permute", b, "--perm", p["perm"].as_str().unwrap(), "-o"])
                .arg(&out)
                .arg("-q")
                .assert()
                .success();
            args.push(out.display().to_string());
            p["naive"]["label"].as_str().unwrap()
        }
        m => panic!("mode {m}"),
    };
    if let Some(spec) = p["spec"].as_str() {
        args.extend(["--spec".into(), spec.into()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (v, _) = basin(&refs);
    if v == "connected" {
        assert_eq!(label, "connected", "{id} ({mode}) called connected");
    }
    if label == "disconnected" {
        assert_eq!(v, "disconnected", "{id} ({mode})");
    }
    (label.to_string(), v)
}

#[test]
fn held_out_pairs_are_called_connected_only_when_they_are_and_broken_ones_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // aligned transformers that stay in different basins
        ("gpt2/seed0~seed2 aligned", "frozen"),
        ("resnet/seed0~seed2 aligned", "frozen"),
        // independent runs, naively
        ("mlp/seed0~seed2", "naive"),
        // one basin: fine-tunes, noisy copies, a later snapshot
        ("gpt2/seed0~ft_b", "naive"),
        ("gpt2/seed0~noisy_0.1", "naive"),
        ("resnet/ft_a~ft_b", "naive"),
        ("resnet/seed0_epoch5~seed0", "naive"),
        // in between (a small barrier): not connected
        ("gpt2/seed0_step250~seed0", "naive"),
        ("mlp/long_wd_step20~step4000", "naive"),
        // aligned MLPs (barrier ≈ 0.012): uncertain, a safe miss
        ("mlp/seed1~seed2 aligned", "frozen"),
    ];
    let mut table = Vec::new();
    for (id, mode) in cases {
        let (label, v) = judge(id, mode, dir.path());
        table.push((id, mode, label, v));
    }
    // The subset holds every label and every verdict, so the assertions in
    // `judge` bite in every direction.
    for class in ["connected", "uncertain", "disconnected"] {
        assert!(table.iter().any(|r| r.2 == class), "{table:?}");
        assert!(table.iter().any(|r| r.3 == class), "{table:?}");
    }
}

#[test]
fn an_aligned_copy_and_alignment_inside_the_basin_command_get_the_same_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (format!("{T}/gpt2/seed0"), format!("{T}/gpt2/seed2"));
    let aligned = dir.path().join("b_aligned.safetensors");
    pm().args(["align", &a, &b, "-o"])
        .arg(&aligned)
        .arg("-q")
        .assert()
        .success();
    let (inside, ji) = basin(&[&a, &b, "--align"]);
    let (before, jb) = basin(&[&a, aligned.to_str().unwrap()]);
    assert_eq!(inside, before);
    assert_eq!(inside, "disconnected", "{ji}");
    // Same weights judged: the same large-tensor cosines.
    assert_eq!(
        ji["summary"]["unrelated_tensor_fraction"],
        jb["summary"]["unrelated_tensor_fraction"]
    );
    let reasons = ji["reasons"].to_string();
    assert!(reasons.contains("look unrelated"), "{reasons}");
}

#[test]
fn avg_align_warns_on_a_still_disconnected_pair_even_quiet_and_reports_it_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let (a, b) = (format!("{T}/gpt2/seed0"), format!("{T}/gpt2/seed2"));
    let run = pm()
        .args(["avg", &a, &b, "--align", "-q", "--json", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: basin check after alignment",
        ))
        .stderr(predicate::str::contains("disconnected"));
    let j: Value = serde_json::from_slice(&run.get_output().stdout).unwrap();
    assert!(out.exists());
    let v = &j["basin"][0];
    assert_eq!(v["verdict"], "disconnected", "{j}");
    assert_eq!(v["aligned"], true);
    assert_eq!(v["pair"], serde_json::json!([1, 2]));
    assert!(!v["reasons"].as_array().unwrap().is_empty());
    let al = &j["alignment"][0];
    assert_eq!(al["input"], 2);
    let (o0, o1) = (
        al["objective_before"].as_f64().unwrap(),
        al["objective_after"].as_f64().unwrap(),
    );
    assert!(o1 > o0, "{al}");
    let groups = al["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["name"] == "layers.0.ffn"), "{al}");
    assert!(groups.iter().all(|g| g["churn"].as_f64().is_some()));
}

#[test]
fn ema_align_with_strict_basin_refuses_a_still_disconnected_pair_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.safetensors");
    let (a, b) = (format!("{T}/gpt2/seed0"), format!("{T}/gpt2/seed2"));
    pm().args(["ema", &a, &b, "--steps", "1,2", "--window", "2"])
        .args(["--align", "--strict-basin", "-q", "-o"])
        .arg(&out)
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "error: basin check after alignment",
        ))
        .stderr(predicate::str::contains("nothing was written"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn avg_align_with_strict_basin_refuses_a_pair_still_uncertain_after_alignment() {
    // GPT-2 seeds 0 and 1: after joint head matching only 1 of 14 large
    // tensors stays unrelated, so the verdict is uncertain, not
    // disconnected; the aligned midpoint's loss is still far above the
    // endpoints' (pairs.json), and a strict merge must not ship it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let (a, b) = (format!("{T}/gpt2/seed0"), format!("{T}/gpt2/seed1"));
    pm().args(["avg", &a, &b, "--align", "--strict-basin", "-q", "-o"])
        .arg(&out)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("uncertain"))
        .stderr(predicate::str::contains("nothing was written"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Without alignment the same flag refuses only disconnected pairs: a
    // fine-tune of seed 0 is not refused.
    let ft = format!("{T}/gpt2/seed0_ft_a");
    pm().args(["avg", &a, &ft, "--strict-basin", "-q", "-o"])
        .arg(&out)
        .assert()
        .success();
}

/// The value of an I64 scalar tensor of a safetensors file.
fn i64_scalar(path: &Path, name: &str) -> i64 {
    let f = read_file(path);
    let t = &f.tensors[name];
    i64::from_le_bytes(t.data[..8].try_into().unwrap())
}

#[test]
fn a_resnet_merge_notes_averaged_batchnorm_statistics_and_takes_step_counters_by_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        format!("{T}/resnet/seed0"),
        format!("{T}/resnet/seed0_ft_a"),
    );
    let file = |p: &str| repo(p).join("model.safetensors");
    let counter = "layer2.0.bn1.num_batches_tracked";
    let (ca, cb) = (
        i64_scalar(&file(&a), counter),
        i64_scalar(&file(&b), counter),
    );
    assert_ne!(ca, cb, "the fixture's counters differ");
    let stats = read_file(&file(&a))
        .tensors
        .keys()
        .filter(|n| n.ends_with("running_mean") || n.ends_with("running_var"))
        .count();
    assert!(stats > 0);
    // avg: the first input's counters, and the note (human and JSON)
    let out = dir.path().join("m.safetensors");
    pm().args(["avg", &a, &b, "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("note:").and(predicate::str::contains("update_bn")))
        .stderr(predicate::str::contains("kept the first input's values"));
    assert_eq!(i64_scalar(&out, counter), ca);
    let run = pm()
        .args(["avg", &a, &b, "--json", "--force", "-o"])
        .arg(&out)
        .assert()
        .success();
    let j: Value = serde_json::from_slice(&run.get_output().stdout).unwrap();
    assert_eq!(j["averaged_running_stats"], stats);
    assert!(j["notes"].to_string().contains("re-estimate"), "{j}");
    // ema: the latest checkpoint's counters
    let out = dir.path().join("e.safetensors");
    pm().args(["ema", &a, &b, "--steps", "150,175", "--window", "2", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("kept the latest checkpoint"));
    assert_eq!(i64_scalar(&out, counter), cb);
}
