//! Hostile spec and permutation files (issue 10, items 7 and 8): numbers
//! that overflow, tensors that claim huge axes with no data, degenerate
//! groups. Each ends in one error line, never a panic or a runaway
//! allocation; proptest properties feed arbitrary integers through the
//! library.

use std::fs;
use std::path::{Path, PathBuf};

use polymerge::alignment::{self, AlignOptions};
use polymerge::checkpoint::Checkpoint;
use polymerge::spec::{PermFile, PermutationSpec, SpecSource, resolve};
use proptest::prelude::*;
use safetensors::Dtype;
use serde_json::json;

use crate::common::{assert_one_error_line, fx, polymerge, write_safetensors};

/// A 3-4-2 MLP: `fc1.weight` [4, 3], `fc1.bias` [4], `fc2.weight` [2, 4].
fn tiny_mlp(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let f = |n: usize| {
        (0..n)
            .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
            .collect()
    };
    write_safetensors(
        &p,
        &[
            ("fc1.weight", Dtype::F32, vec![4, 3], f(12)),
            ("fc1.bias", Dtype::F32, vec![4], f(4)),
            ("fc2.weight", Dtype::F32, vec![2, 4], f(8)),
        ],
        None,
    );
    p
}

fn spec_json(size: u64, member: serde_json::Value) -> serde_json::Value {
    json!({"format": "polymerge-spec/1", "groups": [
        {"name": "fc1", "size": size, "members": [member]}]})
}

/// Runs `align` of the digits MLP with `spec` and expects one error line.
fn align_refuses(spec: &serde_json::Value, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.json");
    fs::write(&path, spec.to_string()).unwrap();
    for cmd in [
        vec!["align", "-o", "out.safetensors"],
        vec!["avg", "--align", "-o", "out.safetensors"],
        vec!["basin", "--matching", "always"],
    ] {
        let out = polymerge()
            .current_dir(dir.path())
            .arg(cmd[0])
            .args([
                fx("mlp/run_seed0.safetensors"),
                fx("mlp/run_seed1.safetensors"),
            ])
            .args(&cmd[1..])
            .arg("--spec")
            .arg(&path)
            .output()
            .unwrap();
        assert_one_error_line(&out, needles);
    }
    assert!(!dir.path().join("out.safetensors").exists());
}

#[test]
fn a_start_of_two_to_the_64_minus_one_is_an_error_not_a_wrap() {
    let m = json!({"tensor": "fc1.weight", "axis": 0, "start": u64::MAX});
    align_refuses(&spec_json(512, m), &["fc1.weight", "more than 2^64"]);
}

#[test]
fn a_block_of_two_to_the_63_is_an_error_not_a_wrap() {
    let m = json!({"tensor": "fc1.weight", "axis": 0, "block": 1u64 << 63});
    align_refuses(&spec_json(512, m), &["fc1.weight", "more than 2^64"]);
}

#[test]
fn a_repeat_of_two_to_the_55_is_an_error_not_a_wrap() {
    let m = json!({"tensor": "fc1.weight", "axis": 0, "repeat": 1u64 << 55, "block": 1024});
    align_refuses(&spec_json(512, m), &["fc1.weight", "more than 2^64"]);
}

#[test]
fn a_group_size_of_two_to_the_62_is_an_error_not_a_wrap() {
    let m = json!({"tensor": "fc1.weight", "axis": 0, "block": 4});
    align_refuses(&spec_json(1 << 62, m), &["fc1.weight", "more than 2^64"]);
}

#[test]
fn an_embedded_spec_that_overflows_is_an_error_naming_the_perm_file() {
    let dir = tempfile::tempdir().unwrap();
    let perm = dir.path().join("perm.json");
    let spec = spec_json(
        2,
        json!({"tensor": "fc1.weight", "axis": 0, "start": u64::MAX}),
    );
    let file = json!({"format": "polymerge-perm/1", "groups": {"fc1": [1, 0]}, "spec": spec});
    fs::write(&perm, file.to_string()).unwrap();
    let out = polymerge()
        .current_dir(dir.path())
        .args(["permute", &fx("mlp/run_seed0.safetensors"), "--perm"])
        .arg(&perm)
        .args(["-o", "out.safetensors"])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["perm.json", "its spec does not fit", "fc1.weight"]);
}

/// A header-only file whose tensors claim `hidden` units with no data.
fn empty_but_huge(dir: &Path, hidden: u64) -> PathBuf {
    let header = json!({
        "fc1.weight": {"dtype": "F32", "shape": [hidden, 0], "data_offsets": [0, 0]},
        "fc2.weight": {"dtype": "F32", "shape": [0, hidden], "data_offsets": [0, 0]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    let p = dir.join("huge.safetensors");
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn tensors_claiming_two_to_the_40_units_without_data_are_refused_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let p = empty_but_huge(dir.path(), 1 << 40);
    assert!(fs::metadata(&p).unwrap().len() < 200);
    let spec = spec_json(1 << 40, json!({"tensor": "fc1.weight", "axis": 0}));
    let spec_path = dir.path().join("spec.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    let s = p.to_str().unwrap();
    for args in [
        vec!["align", s, s, "-o", "out.safetensors"],
        vec![
            "align",
            s,
            s,
            "-o",
            "out.safetensors",
            "--spec",
            "spec.json",
        ],
        vec!["basin", s, s, "--matching", "always"],
        vec!["avg", s, s, "--align", "-o", "out.safetensors"],
    ] {
        let out = polymerge()
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert_one_error_line(&out, &[]);
        let line = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            line.contains("no elements") || line.contains("cannot infer"),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn a_group_far_larger_than_its_data_is_refused_before_matching() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000usize;
    let p = dir.path().join("wide.safetensors");
    let z = |k: usize| vec![0u8; 4 * k];
    write_safetensors(
        &p,
        &[
            ("fc1.weight", Dtype::F32, vec![n, 1], z(n)),
            ("fc2.weight", Dtype::F32, vec![1, n], z(n)),
        ],
        None,
    );
    let s = p.to_str().unwrap();
    let out = polymerge()
        .current_dir(dir.path())
        .args(["align", s, s, "-o", "out.safetensors"])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["20000 units", "similarity matrix"]);
}

#[test]
fn twelve_thousand_groups_on_one_tensor_are_refused_as_degenerate() {
    let groups: Vec<_> = (0..12_000)
        .map(|i| {
            json!({"name": format!("g{i}"), "size": 1, "members": [
            {"tensor": "fc1.weight", "axis": 0, "start": i % 512}]})
        })
        .collect();
    let spec = json!({"format": "polymerge-spec/1", "groups": groups});
    align_refuses(&spec, &["12000 groups act on tensor `fc1.weight`"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any integers in a spec member: validation errors or succeeds, and
    /// what it accepts can be turned into index maps without panicking.
    #[test]
    fn specs_with_arbitrary_integers_error_or_work_but_never_panic(
        size in prop_oneof![0u64..8, any::<u64>()],
        axis in prop_oneof![0u64..3, any::<u64>()],
        start in prop_oneof![0u64..8, any::<u64>()],
        block in prop_oneof![0u64..8, any::<u64>()],
        repeat in prop_oneof![0u64..8, any::<u64>()],
        tensor in prop::sample::select(vec!["fc1.weight", "fc1.bias", "fc2.weight"]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = Checkpoint::open(tiny_mlp(dir.path(), "m.safetensors")).unwrap();
        let text = spec_json(size, json!({"tensor": tensor, "axis": axis,
            "start": start, "block": block, "repeat": repeat})).to_string();
        let path = dir.path().join("spec.json");
        fs::write(&path, &text).unwrap();
        // u64 → usize never truncates on the 64-bit targets polymerge runs on.
        let Ok(spec) = PermutationSpec::load(&path) else { return Ok(()) };
        if let Ok(spec) = resolve(&SpecSource::Given(spec), None, &[&ckpt]) {
            let perms = spec.identity();
            alignment::model_permutation(&spec, &ckpt, &perms, None).unwrap();
            alignment::weight_matching(&spec, &ckpt, &ckpt, &AlignOptions::default(),
                &polymerge::pipeline::Silent).unwrap();
        }
    }

    /// Any integers in a permutation file: an error or a permutation.
    #[test]
    fn perm_files_with_arbitrary_integers_error_or_work_but_never_panic(
        entries in prop::collection::vec(prop_oneof![0u64..6, any::<u64>()], 0..7),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = Checkpoint::open(tiny_mlp(dir.path(), "m.safetensors")).unwrap();
        let spec = PermutationSpec::load(&{
            let p = dir.path().join("spec.json");
            fs::write(&p, spec_json(4, json!({"tensor": "fc1.weight", "axis": 0})).to_string()).unwrap();
            p
        }).unwrap();
        let perm = dir.path().join("perm.json");
        fs::write(&perm, json!({"format": "polymerge-perm/1", "groups": {"fc1": entries}}).to_string()).unwrap();
        if let Ok(file) = PermFile::load(&perm)
            && let Ok(perms) = file.perms_for(&spec, &perm)
        {
            alignment::model_permutation(&spec, &ckpt, &perms, None).unwrap();
        }
    }
}
