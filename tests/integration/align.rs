//! Weight matching end to end: `spec`, `align`, `permute`, `avg --align` and
//! `barrier` on real fixtures made by PyTorch (fixtures/generate_mlp.py,
//! fixtures/generate_cnn.py), against the numpy+scipy reference results.

use std::path::Path;

use serde_json::Value;

use crate::common::{fixtures, fx, json_out, polymerge, tensor_bytes};

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures("mlp/reference.json")).unwrap()).unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn align_recovers_a_permuted_mlp_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("aligned.safetensors");
    let perm = dir.path().join("perm.json");
    let j = json_out(polymerge().args([
        "align",
        &fx("mlp/run_seed0.safetensors"),
        &fx("mlp/run_seed0_permuted.safetensors"),
        "-o",
        path_str(&out),
        "--save-perm",
        path_str(&perm),
        "--json",
    ]));
    assert_eq!(
        tensor_bytes(&out),
        tensor_bytes(&fixtures("mlp/run_seed0.safetensors"))
    );
    assert!(j["objective_after"].as_f64().unwrap() > j["objective_before"].as_f64().unwrap());
    assert!(j["sweeps"].as_u64().unwrap() >= 1);
    // The fixture permuted with p (permuted = original[p]); undoing it is argsort(p).
    let fixture_perm: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures("mlp/run_seed0_permuted.perm.json")).unwrap(),
    )
    .unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&perm).unwrap()).unwrap();
    for g in ["fc1", "fc2"] {
        let p: Vec<usize> = serde_json::from_value(fixture_perm["groups"][g].clone()).unwrap();
        let q: Vec<usize> = serde_json::from_value(saved["groups"][g].clone()).unwrap();
        for (i, &pi) in p.iter().enumerate() {
            assert_eq!(q[pi], i, "group {g}");
        }
    }
}

#[test]
fn align_recovers_a_permuted_cnn_with_batchnorm_and_flatten_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("aligned.safetensors");
    polymerge()
        .args([
            "align",
            &fx("cnn/cnn.safetensors"),
            &fx("cnn/cnn_permuted.safetensors"),
        ])
        .args(["-o", path_str(&out), "--quiet"])
        .assert()
        .success();
    assert_eq!(
        tensor_bytes(&out),
        tensor_bytes(&fixtures("cnn/cnn.safetensors"))
    );
}

#[test]
fn spec_of_the_cnn_puts_batchnorm_statistics_in_their_conv_group_and_blocks_the_flatten() {
    let j = json_out(polymerge().args(["spec", &fx("cnn/cnn.safetensors")]));
    let groups = j["groups"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["conv1", "conv2", "fc1"]);
    let members: Vec<(String, u64, u64)> = groups[1]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["tensor"].as_str().unwrap().to_string(),
                m["axis"].as_u64().unwrap(),
                m["block"].as_u64().unwrap_or(1),
            )
        })
        .collect();
    assert!(members.contains(&("bn2.running_var".into(), 0, 1)));
    // fc1 reads 12 channels x 4 x 4 flattened channel-major: blocks of 16.
    assert!(members.contains(&("fc1.weight".into(), 1, 16)));
    assert!(!members.iter().any(|m| m.0 == "bn2.num_batches_tracked"));
}

#[test]
fn permute_applies_a_saved_permutation_to_another_checkpoint_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let aligned = dir.path().join("aligned.safetensors");
    let perm = dir.path().join("perm.json");
    polymerge()
        .args([
            "align",
            &fx("cnn/cnn.safetensors"),
            &fx("cnn/cnn_permuted.safetensors"),
        ])
        .args([
            "-o",
            path_str(&aligned),
            "--save-perm",
            path_str(&perm),
            "--quiet",
        ])
        .assert()
        .success();
    let again = dir.path().join("again.safetensors");
    polymerge()
        .args([
            "permute",
            &fx("cnn/cnn_permuted.safetensors"),
            "--perm",
            path_str(&perm),
        ])
        .args(["-o", path_str(&again), "--quiet"])
        .assert()
        .success();
    assert_eq!(
        tensor_bytes(&again),
        tensor_bytes(&fixtures("cnn/cnn.safetensors"))
    );
}

#[test]
fn the_objective_after_alignment_matches_the_numpy_scipy_reference_within_half_a_percent() {
    let r = reference();
    for (pair, a, b) in [
        ("seed0__seed1", "run_seed0", "run_seed1"),
        ("seed0__seed2", "run_seed0", "run_seed2"),
        ("seed1__seed2", "run_seed1", "run_seed2"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let j = json_out(polymerge().args([
            "align",
            &fx(&format!("mlp/{a}.safetensors")),
            &fx(&format!("mlp/{b}.safetensors")),
            "-o",
            path_str(&dir.path().join("x.safetensors")),
            "--json",
        ]));
        let wm = &r["pairs"][pair]["weight_matching"];
        let before = wm["objective_before"].as_f64().unwrap();
        let reference = wm["objective_after"].as_f64().unwrap();
        let ours = j["objective_after"].as_f64().unwrap();
        assert!(
            (j["objective_before"].as_f64().unwrap() - before).abs() < 1e-6 * before.abs().max(1.0)
        );
        assert!(
            (ours - reference).abs() <= 0.005 * reference.abs(),
            "{pair}: {ours} vs {reference}"
        );
    }
}

fn barrier(a: &str, b: &str, align: bool) -> Value {
    let mut cmd = polymerge();
    cmd.args([
        "barrier",
        &fx(&format!("mlp/{a}.safetensors")),
        &fx(&format!("mlp/{b}.safetensors")),
        "--data",
        &fx("mlp/digits_test.safetensors"),
        "--json",
    ]);
    if align {
        cmd.arg("--align");
    }
    json_out(&mut cmd)
}

#[test]
fn aligning_independent_seeds_removes_at_least_80_percent_of_the_loss_barrier() {
    let naive = barrier("run_seed0", "run_seed1", false)["barrier"]
        .as_f64()
        .unwrap();
    let aligned = barrier("run_seed0", "run_seed1", true)["barrier"]
        .as_f64()
        .unwrap();
    assert!(naive > 0.1, "naive barrier {naive}");
    assert!(aligned < 0.2 * naive, "aligned {aligned} vs naive {naive}");
}

#[test]
fn the_evaluator_reproduces_the_pytorch_losses_along_the_naive_path() {
    let r = reference();
    let torch: Vec<f64> =
        serde_json::from_value(r["pairs"]["seed0__seed1"]["naive"]["test"]["loss"].clone())
            .unwrap();
    let ours = barrier("run_seed0", "run_seed1", false);
    let path = ours["path"].as_array().unwrap();
    assert_eq!(path.len(), torch.len());
    for (p, t) in path.iter().zip(&torch) {
        let l = p["loss"].as_f64().unwrap();
        assert!((l - t).abs() < 1e-5 * t.max(1.0), "{l} vs torch {t}");
    }
}

/// Test-set loss and accuracy of one MLP checkpoint (a 2-point path A→A).
fn evaluate(model: &Path) -> (f64, f64) {
    let j = json_out(polymerge().args([
        "barrier",
        path_str(model),
        path_str(model),
        "--data",
        &fx("mlp/digits_test.safetensors"),
        "--steps",
        "2",
        "--json",
    ]));
    (
        j["path"][0]["loss"].as_f64().unwrap(),
        j["path"][0]["accuracy"].as_f64().unwrap(),
    )
}

#[test]
fn avg_align_gives_a_midpoint_with_far_lower_loss_than_the_naive_midpoint() {
    let dir = tempfile::tempdir().unwrap();
    let naive = dir.path().join("naive.safetensors");
    let aligned = dir.path().join("aligned.safetensors");
    let (a, b) = (
        fx("mlp/run_seed0.safetensors"),
        fx("mlp/run_seed1.safetensors"),
    );
    polymerge()
        .args(["avg", &a, &b, "-o", path_str(&naive), "--quiet"])
        .assert()
        .success();
    polymerge()
        .args([
            "avg",
            &a,
            &b,
            "--align",
            "-o",
            path_str(&aligned),
            "--quiet",
        ])
        .assert()
        .success();
    let (ln, la) = (evaluate(&naive).0, evaluate(&aligned).0);
    assert!(la < 0.5 * ln, "aligned midpoint loss {la} vs naive {ln}");
}

#[test]
fn merge_many_aligns_three_seeds_into_an_accurate_soup() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soup.safetensors");
    let mut cmd = polymerge();
    cmd.arg("avg");
    for s in 0..3 {
        cmd.arg(fixtures(&format!("mlp/run_seed{s}.safetensors")));
    }
    cmd.args(["--align=many", "-o", path_str(&out), "--quiet"])
        .assert()
        .success();
    let naive = dir.path().join("naive.safetensors");
    let mut cmd = polymerge();
    cmd.arg("avg");
    for s in 0..3 {
        cmd.arg(fixtures(&format!("mlp/run_seed{s}.safetensors")));
    }
    cmd.args(["-o", path_str(&naive), "--quiet"])
        .assert()
        .success();
    let (soup, plain) = (evaluate(&out), evaluate(&naive));
    assert!(soup.1 > 0.9, "MergeMany soup accuracy {}", soup.1);
    assert!(
        soup.0 < plain.0,
        "MergeMany loss {} vs naive {}",
        soup.0,
        plain.0
    );
}

fn align_with_spec_fails_with(spec: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("spec.json");
    std::fs::write(&s, spec).unwrap();
    let out = dir.path().join("x.safetensors");
    let a = polymerge()
        .args([
            "align",
            &fx("mlp/run_seed0.safetensors"),
            &fx("mlp/run_seed1.safetensors"),
        ])
        .args(["-o", path_str(&out), "--spec", path_str(&s)])
        .assert()
        .code(1);
    let err = String::from_utf8(a.get_output().stderr.clone()).unwrap();
    assert!(err.contains(needle), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!out.exists());
}

#[test]
fn a_spec_naming_an_unknown_tensor_is_refused_naming_group_and_tensor() {
    align_with_spec_fails_with(
        r#"{"format":"polymerge-spec/1","groups":[{"name":"h","size":512,"members":[{"tensor":"fc9.weight","axis":0}]}]}"#,
        "group `h`: tensor `fc9.weight` is not in",
    );
}

#[test]
fn a_spec_with_an_axis_out_of_range_is_refused() {
    align_with_spec_fails_with(
        r#"{"format":"polymerge-spec/1","groups":[{"name":"h","size":512,"members":[{"tensor":"fc1.weight","axis":2}]}]}"#,
        "axis 2 is out of range",
    );
}

#[test]
fn a_spec_whose_group_size_disagrees_with_a_tensor_is_refused() {
    align_with_spec_fails_with(
        r#"{"format":"polymerge-spec/1","groups":[{"name":"h","size":600,"members":[{"tensor":"fc1.weight","axis":0}]}]}"#,
        "group `h` has 600 units but tensor `fc1.weight` axis 0 has length 512",
    );
}

#[test]
fn a_spec_in_an_unknown_format_is_refused() {
    align_with_spec_fails_with(r#"{"format":"other/9","groups":[]}"#, "unknown format");
}

#[test]
fn a_checkpoint_that_is_not_a_layer_chain_asks_for_a_spec() {
    let a = polymerge()
        .args(["spec", &fx("io/a_f32.safetensors")])
        .assert()
        .code(1);
    let err = String::from_utf8(a.get_output().stderr.clone()).unwrap();
    assert!(err.contains("--spec"), "{err}");
}

#[test]
fn a_permutation_file_for_the_wrong_group_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let perm = dir.path().join("p.json");
    std::fs::write(
        &perm,
        r#"{"format":"polymerge-perm/1","groups":{"fc1":[1,0]}}"#,
    )
    .unwrap();
    let a = polymerge()
        .args([
            "permute",
            &fx("mlp/run_seed0.safetensors"),
            "--perm",
            path_str(&perm),
        ])
        .args(["-o", path_str(&dir.path().join("x.safetensors"))])
        .assert()
        .code(1);
    let err = String::from_utf8(a.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("group `fc1` has 2 entries, the spec says 512 units"),
        "{err}"
    );
}

#[test]
fn exact_terms_turn_term_updates_off_and_reach_the_same_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let perm = dir.path().join(format!("p{}.json", extra.len()));
        let mut args = vec![
            "align",
            &fx("mlp/run_seed0.safetensors"),
            &fx("mlp/run_seed1.safetensors"),
            "-o",
            path_str(&dir.path().join("x.safetensors")),
            "--force",
            "--save-perm",
            path_str(&perm),
            "--json",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let j = json_out(polymerge().args(&args));
        let updated: u64 = j["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["terms_updated"].as_u64().unwrap())
            .sum();
        (
            j["objective_after"].as_f64().unwrap(),
            updated,
            std::fs::read(&perm).unwrap(),
        )
    };
    let (obj, updated, perm) = run(&[]);
    let (exact_obj, exact_updated, exact_perm) = run(&["--exact-terms"]);
    assert!(updated > 0, "the default updates kept terms");
    assert_eq!(exact_updated, 0);
    assert_eq!(perm, exact_perm);
    assert!(
        (obj - exact_obj).abs() <= 1e-9 * exact_obj.abs(),
        "{obj} vs {exact_obj}"
    );
}

#[test]
fn the_basin_check_changes_no_byte_of_an_aligned_average() {
    // With the check, the merge kernel decodes the permuted B once and
    // takes both the average and the basin sums from it; without, it
    // accumulates straight from the gathered bytes.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        fx("mlp/run_seed0.safetensors"),
        fx("mlp/run_seed1.safetensors"),
    );
    let out = |name: &str, extra: &[&str]| {
        let path = dir.path().join(name);
        polymerge()
            .args(["avg", &a, &b, "--align", "-o", path_str(&path), "--quiet"])
            .args(extra)
            .assert()
            .success();
        std::fs::read(path).unwrap()
    };
    let checked = out("checked.safetensors", &[]);
    let unchecked = out("unchecked.safetensors", &["--no-basin-check"]);
    assert!(checked == unchecked, "outputs differ");
}
