//! The library's `Checkpoint` reader against the `safetensors` crate: every
//! input form exposes the same tensors and bytes, and the paths, model
//! directory and metadata it reports are right.

use std::collections::BTreeMap;
use std::fs;

use crate::common::*;
use polymerge::average::{self, MergeInput, MergeOptions};
use polymerge::checkpoint::Checkpoint;
use polymerge::write::{CheckpointWriter, OutputLayout};
use safetensors::Dtype;

/// Asserts that `ckpt` exposes exactly `want`'s tensors (name, dtype, shape,
/// bytes), independently read with the `safetensors` crate.
fn assert_checkpoint_holds(ckpt: &Checkpoint, want: &BTreeMap<String, RawTensor>, what: &str) {
    let got: BTreeMap<String, RawTensor> = ckpt
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                RawTensor {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data: ckpt.bytes(t).to_vec(),
                },
            )
        })
        .collect();
    assert_eq!(got.len(), ckpt.tensors().len(), "{what}: duplicate names");
    assert_same_tensors(&got, want, what);
    for (name, t) in want {
        let info = ckpt.get(name).expect("get by name");
        assert_eq!(info.numel(), t.shape.iter().product::<usize>());
        assert_eq!(info.nbytes(), t.data.len());
    }
}

#[test]
fn a_single_file_opens_with_the_tensors_and_metadata_the_safetensors_crate_sees() {
    for name in ["a_f32", "b_f16", "c_bf16"] {
        let path = fixture(&format!("{name}.safetensors"));
        let want = read_file(&path);
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_checkpoint_holds(&ckpt, &want.tensors, name);
        let order: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, want.order, "{name}: storage order");
        assert_eq!(ckpt.metadata(), &want.metadata);
        assert_eq!(ckpt.files(), vec![path.as_path()]);
        assert_eq!(ckpt.source(), path.as_path());
        assert_eq!(
            ckpt.model_dir(),
            None,
            "a plain file has no model directory"
        );
    }
}

#[test]
fn the_unaligned_file_reads_the_same_bytes_and_values_as_a_f32() {
    let ckpt = Checkpoint::open(fixture("unaligned_f32.safetensors")).unwrap();
    let mut a = read_file(&fixture("a_f32.safetensors")).tensors;
    a.retain(|_, t| is_float(t.dtype));
    assert_checkpoint_holds(&ckpt, &a, "unaligned");
    for t in ckpt.tensors() {
        let values = ckpt.read_f32(t).unwrap();
        let want: Vec<f32> = a[&t.name]
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&values), bits(&want), "`{}` decoded", t.name);
    }
}

#[test]
fn a_sharded_directory_and_its_index_json_expose_the_tensors_of_b_bf16() {
    let b = read_file(&fixture("b_bf16.safetensors"));
    let dir = fixture("sharded_bf16");
    let index = dir.join("model.safetensors.index.json");
    for path in [&dir, &index] {
        let ckpt = Checkpoint::open(path).unwrap();
        assert_checkpoint_holds(&ckpt, &b.tensors, &path.display().to_string());
        assert_eq!(ckpt.model_dir(), Some(dir.as_path()));
        assert_eq!(
            ckpt.files(),
            vec![
                dir.join("model-00001-of-00002.safetensors").as_path(),
                dir.join("model-00002-of-00002.safetensors").as_path()
            ]
        );
        let t = ckpt.get("layers.1.weight").unwrap();
        assert_eq!(
            ckpt.shard_path(t),
            dir.join("model-00002-of-00002.safetensors")
        );
        assert_eq!(ckpt.nbytes(), 535, "index total_size");
    }
}

#[test]
fn a_directory_with_model_safetensors_exposes_that_file_and_is_its_model_dir() {
    let dir = fixture("single_dir_f32");
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_checkpoint_holds(
        &ckpt,
        &read_file(&fixture("c_f32.safetensors")).tensors,
        "dir",
    );
    assert_eq!(ckpt.model_dir(), Some(dir.as_path()));
    assert_eq!(ckpt.files(), vec![dir.join("model.safetensors").as_path()]);
}

#[test]
fn a_directory_with_one_oddly_named_safetensors_file_opens_that_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("a_f16.safetensors", dir.path(), "weights.safetensors");
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_checkpoint_holds(
        &ckpt,
        &read_file(&fixture("a_f16.safetensors")).tensors,
        "dir",
    );
}

#[test]
fn a_directory_with_two_safetensors_files_and_no_index_is_an_error_asking_to_name_one() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("a_f16.safetensors", dir.path(), "x.safetensors");
    copy_fixture("b_f16.safetensors", dir.path(), "y.safetensors");
    let err = Checkpoint::open(dir.path()).unwrap_err().one_line();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("name the file to use"), "{err}");
}

#[test]
fn a_directory_without_weights_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err().one_line();
    assert!(err.starts_with(&dir.path().display().to_string()), "{err}");
}

#[test]
fn requiring_a_missing_tensor_names_the_file_and_the_tensor() {
    let path = fixture("a_f32.safetensors");
    let ckpt = Checkpoint::open(&path).unwrap();
    let err = ckpt.require("nope.weight").unwrap_err().one_line();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("`nope.weight`"), "{err}");
}

#[test]
fn reading_an_integer_tensor_as_f32_is_an_error_naming_the_tensor() {
    let ckpt = Checkpoint::open(fixture("a_f32.safetensors")).unwrap();
    let t = ckpt.get("embeddings.position_ids").unwrap();
    let err = ckpt.read_f32(t).unwrap_err().one_line();
    assert!(err.contains("`embeddings.position_ids`"), "{err}");
}

#[test]
fn an_index_whose_shard_name_leaves_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("m");
    fs::create_dir(&sub).unwrap();
    copy_fixture("a_f32.safetensors", dir.path(), "a.safetensors");
    let a = read_file(&fixture("a_f32.safetensors"));
    let map: serde_json::Map<String, serde_json::Value> = a
        .tensors
        .keys()
        .map(|k| (k.clone(), "../a.safetensors".into()))
        .collect();
    fs::write(
        sub.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let err = Checkpoint::open(&sub).unwrap_err().one_line();
    assert!(err.contains("../a.safetensors"), "{err}");
}

#[test]
fn an_index_listing_a_tensor_no_shard_holds_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture_dir("sharded_bf16", dir.path(), "m");
    let index = m.join("model.safetensors.index.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index).unwrap()).unwrap();
    j["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors".into();
    fs::write(&index, j.to_string()).unwrap();
    let err = Checkpoint::open(&m).unwrap_err().one_line();
    assert!(err.contains("`ghost.weight`"), "{err}");
    assert!(err.contains("model.safetensors.index.json"), "{err}");
}

#[test]
fn an_index_missing_a_tensor_that_a_shard_holds_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture_dir("sharded_bf16", dir.path(), "m");
    let index = m.join("model.safetensors.index.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index).unwrap()).unwrap();
    j["weight_map"].as_object_mut().unwrap().remove("mask");
    fs::write(&index, j.to_string()).unwrap();
    let err = Checkpoint::open(&m).unwrap_err().one_line();
    assert!(err.contains("`mask`"), "{err}");
}

#[test]
fn an_index_mapping_a_tensor_to_the_wrong_shard_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture_dir("sharded_bf16", dir.path(), "m");
    let index = m.join("model.safetensors.index.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index).unwrap()).unwrap();
    j["weight_map"]["mask"] = "model-00001-of-00002.safetensors".into();
    fs::write(&index, j.to_string()).unwrap();
    let err = Checkpoint::open(&m).unwrap_err().one_line();
    assert!(err.contains("`mask`"), "{err}");
    assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

/// Merges `inputs` with the library into `out` and returns the report.
fn merge(inputs: &[&Checkpoint], out: &std::path::Path) -> average::MergeReport {
    let inputs: Vec<MergeInput> = inputs.iter().map(|c| MergeInput::plain(c)).collect();
    let opts = MergeOptions::uniform(inputs.len());
    let planned = average::plan(&inputs, &opts).unwrap();
    let writer = CheckpointWriter::create(
        OutputLayout::File(out.to_path_buf()),
        planned.tensor_plans(),
        BTreeMap::new(),
        false,
    )
    .unwrap();
    average::run(&inputs, &planned, &opts, writer, &(), None).unwrap()
}

#[test]
fn sub_byte_f4_and_f6_tensors_are_copied_whole_with_a_warning_instead_of_panicking() {
    // Regression: these used to be sliced per element (1 byte each), reading
    // past the end of their data.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fp4.safetensors");
    let f4: Vec<u8> = (0..8u8).map(|i| i.wrapping_mul(37)).collect(); // 16 F4 values
    let f6: Vec<u8> = (0..6u8).map(|i| 0xA0 ^ i).collect(); // 8 F6 values
    write_safetensors(
        &path,
        &[
            ("q4", Dtype::F4, vec![4, 4], f4),
            ("q6", Dtype::F6_E2M3, vec![8], f6),
            (
                "w",
                Dtype::F32,
                vec![2],
                [1f32, -2.0].map(f32::to_le_bytes).concat(),
            ),
        ],
        None,
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let inputs = [MergeInput::plain(&ckpt), MergeInput::plain(&ckpt)];
    let warnings = average::plan(&inputs, &MergeOptions::uniform(2))
        .unwrap()
        .warnings;
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("F4") || warnings[1].contains("F4"));
    for (k, ins) in [vec![&ckpt], vec![&ckpt, &ckpt]].into_iter().enumerate() {
        let out = dir.path().join(format!("out{k}.safetensors"));
        let report = merge(&ins, &out);
        assert_eq!(report.tensors, 3);
        assert_same_tensors(&read_file(&out).tensors, &read_file(&path).tensors, "copy");
    }
}

#[test]
fn a_merge_plan_follows_the_first_inputs_storage_order_and_dtypes() {
    let a = Checkpoint::open(fixture("a_bf16.safetensors")).unwrap();
    let b = Checkpoint::open(fixture("sharded_bf16")).unwrap();
    let inputs = [MergeInput::plain(&b), MergeInput::plain(&a)];
    let mut opts = MergeOptions::uniform(2);
    opts.dtype = Some(Dtype::F32);
    let average::Plan {
        tensors: planned,
        warnings,
    } = average::plan(&inputs, &opts).unwrap();
    assert!(warnings.is_empty());
    let names: Vec<&str> = planned.iter().map(|p| p.plan.name.as_str()).collect();
    let b_names: Vec<&str> = b.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, b_names);
    for p in &planned {
        let src = b.get(&p.plan.name).unwrap();
        let want = if is_float(src.dtype) {
            Dtype::F32
        } else {
            src.dtype
        };
        assert_eq!(p.plan.dtype, want, "`{}`", p.plan.name);
        assert_eq!(p.plan.shape, src.shape);
    }
}

/// Eight zero-size tensors (all at the same offset) around a normal one.
fn zero_size_tensors_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("zeros.safetensors");
    let names = ["zh", "zc", "za", "zg", "zb", "zf", "zd", "ze"];
    let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| (*n, Dtype::F32, vec![0, 3], vec![]))
        .collect();
    tensors.push(("w", Dtype::F32, vec![1], 1f32.to_le_bytes().to_vec()));
    write_safetensors(&path, &tensors, None);
    path
}

#[test]
fn tensors_sharing_an_offset_are_listed_by_name_every_time() {
    // Regression: ties were left in hash-map order, which changes between
    // runs (and between two opens in one process).
    let dir = tempfile::tempdir().unwrap();
    let path = zero_size_tensors_file(dir.path());
    for _ in 0..20 {
        let ckpt = Checkpoint::open(&path).unwrap();
        let names: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["w", "za", "zb", "zc", "zd", "ze", "zf", "zg", "zh"],
            "w at [0, 4), then the zero-size tensors (all at [4, 4)) by name"
        );
    }
}

#[test]
fn averaging_a_checkpoint_with_zero_size_tensors_twice_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = zero_size_tensors_file(dir.path());
    let outputs: Vec<Vec<u8>> = (0..4)
        .map(|k| {
            let out = dir.path().join(format!("out{k}.safetensors"));
            polymerge()
                .args(["avg", "-q"])
                .arg(&path)
                .arg(&path)
                .arg("-o")
                .arg(&out)
                .assert()
                .success();
            fs::read(&out).unwrap()
        })
        .collect();
    for (k, o) in outputs.iter().enumerate().skip(1) {
        assert!(o == &outputs[0], "run {k} wrote different bytes than run 0");
    }
}
