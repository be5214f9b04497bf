//! Bad input to `avg` (and `inspect`): exit code 1, exactly one
//! `polymerge: error: …` line on stderr naming the offending file (and tensor
//! where there is one), and nothing left in the output directory — not even a
//! temporary file.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;
use safetensors::Dtype;

/// Runs `polymerge avg <inputs…> <extra…> -o out.safetensors` in a fresh
/// directory and checks the failure contract: exit 1, one error line
/// containing every needle, and the directory listing unchanged.
fn avg_fails(inputs: &[PathBuf], extra: &[&str], needles: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    avg_fails_in(dir.path(), inputs, extra, needles)
}

fn avg_fails_in(dir: &Path, inputs: &[PathBuf], extra: &[&str], needles: &[&str]) -> String {
    let before = listing(dir);
    let assert = polymerge()
        .current_dir(dir)
        .arg("avg")
        .args(inputs)
        .args(extra)
        .args(["-o", "out.safetensors"])
        .assert();
    let line = assert_one_error_line(assert.get_output(), needles);
    assert_eq!(listing(dir), before, "the output directory is unchanged");
    line
}

fn a_f32() -> PathBuf {
    fixture("a_f32.safetensors")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_missing_input_path_is_an_error_naming_it() {
    let missing = PathBuf::from("/nonexistent/dir/nope.safetensors");
    let line = avg_fails(&[a_f32(), missing.clone()], &[], &[&s(&missing)]);
    assert!(line.contains("no such file or directory"), "{line}");
}

/// Each broken single file in `fixtures/io/bad/`, as second input and as
/// first input, is an error naming it.
fn broken_file_is_named(rel: &str, reason: &str) {
    let bad = fixture(rel);
    for inputs in [vec![a_f32(), bad.clone()], vec![bad.clone(), a_f32()]] {
        let line = avg_fails(&inputs, &[], &[&s(&bad)]);
        assert!(line.contains(reason), "{line}");
    }
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    broken_file_is_named("bad/truncated.safetensors", "truncated");
}

#[test]
fn a_header_length_beyond_the_end_of_the_file_is_an_error_naming_it() {
    broken_file_is_named("bad/header_too_long.safetensors", "header length");
}

#[test]
fn a_header_that_is_not_json_is_an_error_naming_the_file() {
    broken_file_is_named("bad/not_json.safetensors", "not a valid safetensors file");
}

#[test]
fn an_empty_file_is_an_error_naming_it() {
    broken_file_is_named("bad/empty.safetensors", "0 bytes");
}

#[test]
fn a_text_file_is_an_error_naming_it() {
    broken_file_is_named("bad/not_safetensors.txt", "not a valid safetensors file");
}

#[test]
fn an_index_naming_a_missing_shard_is_an_error_naming_the_index_and_the_shard() {
    let dir = fixture("bad/index_missing_shard");
    avg_fails(
        &[a_f32(), dir.clone()],
        &[],
        &[
            &s(&dir.join("model.safetensors.index.json")),
            &s(&dir.join("model-00002-of-00002.safetensors")),
            "does not exist",
        ],
    );
}

#[test]
fn a_tensor_present_in_two_shards_is_an_error_naming_the_tensor_and_both_shards() {
    let dir = fixture("bad/index_tensor_in_two_shards");
    for input in [dir.clone(), dir.join("model.safetensors.index.json")] {
        avg_fails(
            &[a_f32(), input],
            &[],
            &[
                "`layers.0.bias`",
                &s(&dir.join("model-00001-of-00002.safetensors")),
                &s(&dir.join("model-00002-of-00002.safetensors")),
            ],
        );
    }
}

#[test]
fn a_shape_mismatch_is_an_error_naming_the_tensor_both_files_and_both_shapes() {
    let bad = fixture("bad/shape_mismatch.safetensors");
    avg_fails(
        &[a_f32(), bad.clone()],
        &[],
        &[
            "`layers.0.weight`",
            &s(&bad),
            &s(&a_f32()),
            "[16, 8]",
            "[8, 16]",
        ],
    );
}

#[test]
fn an_extra_tensor_in_the_second_input_is_an_error_listing_it() {
    let bad = fixture("bad/extra_tensor.safetensors");
    avg_fails(&[a_f32(), bad.clone()], &[], &[&s(&bad), "`extra.weight`"]);
}

#[test]
fn a_tensor_missing_from_the_second_input_is_an_error_listing_it() {
    let bad = fixture("bad/extra_tensor.safetensors");
    let line = avg_fails(
        &[bad.clone(), a_f32()],
        &[],
        &[&s(&a_f32()), "`extra.weight`"],
    );
    assert!(line.contains("lacks"), "{line}");
}

#[test]
fn fewer_weights_than_inputs_is_an_error_giving_both_counts() {
    avg_fails(
        &[a_f32(), fixture("b_f32.safetensors")],
        &["--weights", "1"],
        &["1 weights", "2 inputs"],
    );
}

#[test]
fn more_weights_than_inputs_is_an_error_giving_both_counts() {
    avg_fails(
        &[a_f32(), fixture("b_f32.safetensors")],
        &["--weights", "1,2,3"],
        &["3 weights", "2 inputs"],
    );
}

#[test]
fn weights_summing_to_zero_are_an_error() {
    avg_fails(
        &[a_f32(), fixture("b_f32.safetensors")],
        &["--weights", "1,-1"],
        &["sum to zero"],
    );
}

#[test]
fn a_nan_weight_is_an_error_naming_its_position() {
    avg_fails(
        &[a_f32(), fixture("b_f32.safetensors")],
        &["--weights", "1,nan"],
        &["weight 2", "NaN", "finite"],
    );
}

#[test]
fn an_infinite_weight_is_an_error_naming_its_position() {
    avg_fails(
        &[a_f32(), fixture("b_f32.safetensors")],
        &["--weights", "inf,1"],
        &["weight 1", "finite"],
    );
}

#[test]
fn an_unknown_output_dtype_is_a_usage_error_naming_it_before_any_input_is_read() {
    // `--dtype` is a value enum: clap refuses `f8` (exit 2, a usage error)
    // before any checkpoint is opened, so even a missing input is not read.
    let dir = tempfile::tempdir().unwrap();
    let before = listing(dir.path());
    let assert = polymerge()
        .current_dir(dir.path())
        .arg("avg")
        .arg(a_f32())
        .arg("/nonexistent/b.safetensors")
        .args(["--dtype", "f8", "-o", "out.safetensors"])
        .assert()
        .code(2);
    let err = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(err.contains("--dtype") && err.contains("'f8'"), "{err}");
    assert!(!err.contains("nonexistent"), "{err}");
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn an_output_in_a_directory_that_does_not_exist_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let before = listing(dir.path());
    for out in ["missing/out.safetensors", "missing/soup/"] {
        let assert = polymerge()
            .current_dir(dir.path())
            .arg("avg")
            .arg(a_f32())
            .arg(fixture("b_f32.safetensors"))
            .args(["-o", out])
            .assert();
        assert_one_error_line(assert.get_output(), &[out, "`missing` does not exist"]);
        assert_eq!(listing(dir.path()), before);
    }
}

#[test]
fn an_existing_output_without_force_is_an_error_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("out.safetensors"), b"keep me").unwrap();
    avg_fails_in(
        dir.path(),
        &[a_f32(), fixture("b_f32.safetensors")],
        &[],
        &["out.safetensors", "already exists", "--force"],
    );
    assert_eq!(
        fs::read(dir.path().join("out.safetensors")).unwrap(),
        b"keep me"
    );
}

#[test]
fn an_output_that_is_an_input_without_force_is_an_error_and_the_input_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let a = copy_fixture("a_f32.safetensors", dir.path(), "a.safetensors");
    let before = listing(dir.path());
    let assert = polymerge()
        .current_dir(dir.path())
        .args(["avg", "a.safetensors"])
        .arg(fixture("b_f32.safetensors"))
        .args(["-o", "a.safetensors"])
        .assert();
    assert_one_error_line(assert.get_output(), &["a.safetensors", "already exists"]);
    assert_eq!(listing(dir.path()), before);
    assert_eq!(fs::read(&a).unwrap(), fs::read(a_f32()).unwrap());
}

#[test]
fn an_existing_output_directory_without_force_is_an_error_and_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("soup")).unwrap();
    fs::write(dir.path().join("soup/keep.txt"), b"x").unwrap();
    let before = listing(dir.path());
    let assert = polymerge()
        .current_dir(dir.path())
        .arg("avg")
        .arg(a_f32())
        .arg(fixture("b_f32.safetensors"))
        .args(["-o", "soup"])
        .assert();
    assert_one_error_line(assert.get_output(), &["soup", "already exists"]);
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn a_file_output_path_that_is_a_directory_is_an_error_even_with_force() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("x.safetensors")).unwrap();
    let before = listing(dir.path());
    let assert = polymerge()
        .current_dir(dir.path())
        .arg("avg")
        .arg(a_f32())
        .arg(fixture("b_f32.safetensors"))
        .args(["-o", "x.safetensors", "--force"])
        .assert();
    assert_one_error_line(assert.get_output(), &["x.safetensors", "is a directory"]);
    assert_eq!(listing(dir.path()), before);
}

/// a_f32 with one tensor's bytes replaced, written with the `safetensors` crate.
fn a_f32_with(
    dir: &Path,
    name: &str,
    tensor: &str,
    data: Vec<u8>,
    dtype: Option<Dtype>,
) -> PathBuf {
    let mut a = read_file(&a_f32());
    let t = a.tensors.get_mut(tensor).unwrap();
    if let Some(d) = dtype {
        t.dtype = d;
    }
    t.data = data;
    let path = dir.join(name);
    write_raw(&path, &a.tensors, &a.metadata);
    path
}

#[test]
fn an_integer_tensor_that_differs_between_inputs_is_an_error_naming_it_and_both_files() {
    let inputs = tempfile::tempdir().unwrap();
    let ids: Vec<u8> = (0..8i64).rev().flat_map(i64::to_le_bytes).collect();
    let other = a_f32_with(
        inputs.path(),
        "other.safetensors",
        "embeddings.position_ids",
        ids,
        None,
    );
    let line = avg_fails(
        &[a_f32(), other.clone()],
        &[],
        &["`embeddings.position_ids`", &s(&a_f32()), &s(&other)],
    );
    assert!(line.contains("differs"), "{line}");
}

#[test]
fn a_bool_tensor_that_differs_between_inputs_is_an_error_naming_it() {
    let inputs = tempfile::tempdir().unwrap();
    let other = a_f32_with(
        inputs.path(),
        "other.safetensors",
        "mask",
        vec![1, 1, 1, 1, 1],
        None,
    );
    avg_fails(&[a_f32(), other.clone()], &[], &["`mask`", &s(&other)]);
}

#[test]
fn an_integer_tensor_stored_with_another_integer_dtype_is_an_error_naming_it() {
    let inputs = tempfile::tempdir().unwrap();
    // Same shape [1, 8], stored as U8 instead of I64.
    let other = a_f32_with(
        inputs.path(),
        "other.safetensors",
        "embeddings.position_ids",
        (0..8u8).collect(),
        Some(Dtype::U8),
    );
    avg_fails(
        &[a_f32(), other.clone()],
        &[],
        &["`embeddings.position_ids`", "I64", "U8", &s(&other)],
    );
}

#[test]
fn inspect_of_a_broken_file_is_an_error_naming_it() {
    for rel in [
        "bad/truncated.safetensors",
        "bad/empty.safetensors",
        "bad/not_json.safetensors",
        "bad/index_missing_shard",
    ] {
        let bad = fixture(rel);
        let assert = polymerge().arg("inspect").arg(&bad).assert();
        assert_one_error_line(assert.get_output(), &[&s(&bad)]);
        assert!(
            assert.get_output().stdout.is_empty(),
            "{rel}: nothing on stdout"
        );
    }
}

#[test]
fn a_forced_merge_that_fails_midway_leaves_the_existing_output_untouched() {
    // The integer mismatch is only found while tensor data is being written,
    // after the temporary output was created.
    let dir = tempfile::tempdir().unwrap();
    let a = copy_fixture("a_f32.safetensors", dir.path(), "a.safetensors");
    let inputs = tempfile::tempdir().unwrap();
    let other = a_f32_with(
        inputs.path(),
        "other.safetensors",
        "mask",
        vec![0, 0, 0, 0, 0],
        None,
    );
    let before = listing(dir.path());
    let assert = polymerge()
        .current_dir(dir.path())
        .arg("avg")
        .arg(&a)
        .arg(&other)
        .args(["-o", "a.safetensors", "--force"])
        .assert();
    assert_one_error_line(assert.get_output(), &["`mask`"]);
    assert_eq!(listing(dir.path()), before);
    assert_eq!(fs::read(&a).unwrap(), fs::read(a_f32()).unwrap());
}
