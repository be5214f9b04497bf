//! Every way of naming an input (single file, sharded model directory, index
//! JSON, directory holding `model.safetensors`, a file whose data starts at an
//! odd offset) gives the same tensors and so the same averaged bytes.

use std::path::Path;

use crate::common::*;

fn avg_paths(inputs: &[&Path]) -> RawFile {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let mut cmd = polymerge();
    cmd.arg("avg").args(inputs).arg("-o").arg(&out).arg("-q");
    cmd.assert().success();
    read_file(&out)
}

fn expected(name: &str) -> RawFile {
    read_file(&fixture(&format!("expected/{name}.safetensors")))
}

#[test]
fn the_sharded_fixture_holds_exactly_the_tensors_of_b_bf16() {
    // Guards the premise of the tests below.
    let sharded = read_model_dir(&fixture("sharded_bf16"));
    let b = read_file(&fixture("b_bf16.safetensors"));
    assert_same_tensors(&sharded.tensors, &b.tensors, "sharded_bf16 vs b_bf16");
}

#[test]
fn a_sharded_directory_as_second_input_averages_to_the_same_bytes_as_the_single_file() {
    let a = fixture("a_bf16.safetensors");
    let from_dir = avg_paths(&[&a, &fixture("sharded_bf16")]);
    let from_file = avg_paths(&[&a, &fixture("b_bf16.safetensors")]);
    assert_same_tensors(&from_dir.tensors, &from_file.tensors, "dir vs file");
    assert_same_tensors(
        &from_dir.tensors,
        &expected("avg_ab_bf16").tensors,
        "dir vs expected",
    );
}

#[test]
fn a_sharded_directory_given_by_its_index_json_averages_to_the_same_bytes() {
    let got = avg_paths(&[
        &fixture("a_bf16.safetensors"),
        &fixture("sharded_bf16/model.safetensors.index.json"),
    ]);
    assert_same_tensors(
        &got.tensors,
        &expected("avg_ab_bf16").tensors,
        "index input",
    );
}

#[test]
fn a_sharded_directory_as_first_input_gives_the_same_values_in_shard_order() {
    // Uniform two-input averages commute bit for bit ((0 + b) + a == (0 + a) + b),
    // and ints/bools are equal in a and b, so b-first equals the a-first file.
    let got = avg_paths(&[&fixture("sharded_bf16"), &fixture("a_bf16.safetensors")]);
    assert_same_tensors(&got.tensors, &expected("avg_ab_bf16").tensors, "dir first");
    let shard_order: Vec<String> = read_model_dir(&fixture("sharded_bf16")).order;
    assert_eq!(got.order, shard_order);
}

#[test]
fn a_directory_holding_model_safetensors_is_read_as_that_file() {
    let got = avg_paths(&[
        &fixture("a_f32.safetensors"),
        &fixture("b_f32.safetensors"),
        &fixture("single_dir_f32"),
    ]);
    assert_same_tensors(&got.tensors, &expected("avg_abc_f32").tensors, "single dir");
}

#[test]
fn a_directory_path_with_a_trailing_slash_is_the_same_input() {
    let with_slash = format!("{}/", fixture("sharded_bf16").display());
    let got = avg_paths(&[&fixture("a_bf16.safetensors"), Path::new(&with_slash)]);
    assert_same_tensors(
        &got.tensors,
        &expected("avg_ab_bf16").tensors,
        "trailing slash",
    );
}

#[test]
fn the_unaligned_file_really_starts_its_data_at_an_odd_offset() {
    let f = read_file(&fixture("unaligned_f32.safetensors"));
    assert_eq!(f.header_len, 451);
    assert_eq!((8 + f.header_len) % 2, 1);
}

#[test]
fn copying_the_unaligned_file_gives_the_float_tensors_of_a_f32() {
    let got = avg_paths(&[&fixture("unaligned_f32.safetensors")]);
    let mut a = read_file(&fixture("a_f32.safetensors")).tensors;
    a.retain(|_, t| is_float(t.dtype));
    assert_eq!(a.len(), 6);
    assert_same_tensors(&got.tensors, &a, "unaligned copy");
}

#[test]
fn averaging_the_unaligned_file_with_an_aligned_copy_of_itself_gives_the_same_as_aligned_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = read_file(&fixture("a_f32.safetensors"));
    a.tensors.retain(|_, t| is_float(t.dtype));
    let aligned = dir.path().join("aligned.safetensors");
    write_raw(&aligned, &a.tensors, &a.metadata);
    let mixed = avg_paths(&[&fixture("unaligned_f32.safetensors"), &aligned]);
    let both_aligned = avg_paths(&[&aligned, &aligned]);
    assert_same_tensors(&mixed.tensors, &both_aligned.tensors, "unaligned + aligned");
}
