//! Output layouts of `avg`: a directory output (`model.safetensors` plus the
//! first input's config files), a sharded directory (`model-0000k-of-0000n`
//! shards and an index), and reading that directory back.

use std::fs;
use std::path::Path;

use crate::common::*;

fn run_avg(cwd: &Path, args: &[&str]) {
    polymerge()
        .current_dir(cwd)
        .arg("avg")
        .args(args)
        .arg("-q")
        .assert()
        .success();
}

/// An I/O fixture as a string argument.
fn io(rel: &str) -> String {
    fixture(rel).display().to_string()
}

#[test]
fn a_directory_output_gets_model_safetensors_and_the_first_inputs_config_files() {
    let dir = tempfile::tempdir().unwrap();
    run_avg(
        dir.path(),
        &[&io("sharded_bf16"), &io("a_bf16.safetensors"), "-o", "out/"],
    );
    assert_eq!(
        listing(dir.path()),
        vec![
            "out/",
            "out/config.json",
            "out/model.safetensors",
            "out/tokenizer_config.json"
        ]
    );
    for f in ["config.json", "tokenizer_config.json"] {
        assert_eq!(
            fs::read(dir.path().join("out").join(f)).unwrap(),
            fs::read(fixture("sharded_bf16").join(f)).unwrap(),
            "{f} copied verbatim"
        );
    }
    let want = read_file(&fixture("expected/avg_ab_bf16.safetensors"));
    assert_same_tensors(
        &read_file(&dir.path().join("out/model.safetensors")).tensors,
        &want.tensors,
        "out/model.safetensors",
    );
}

#[test]
fn a_directory_output_copies_config_json_from_a_single_file_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    run_avg(
        dir.path(),
        &[
            &io("single_dir_f32"),
            &io("a_f32.safetensors"),
            "-o",
            "soup",
        ],
    );
    assert_eq!(
        listing(dir.path()),
        vec!["soup/", "soup/config.json", "soup/model.safetensors"]
    );
}

#[test]
fn a_directory_output_from_plain_files_holds_only_model_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    run_avg(
        dir.path(),
        &[&io("a_f32.safetensors"), &io("sharded_bf16"), "-o", "soup"],
    );
    // The first input is a file: no model directory to copy from.
    assert_eq!(listing(dir.path()), vec!["soup/", "soup/model.safetensors"]);
    assert_same_tensors(
        &read_model_dir(&dir.path().join("soup")).tensors,
        &read_file(&fixture("expected/avg_mixed_f32_bf16.safetensors")).tensors,
        "soup",
    );
}

/// Writes `avg a_bf16 b_bf16` both as one file and as a directory sharded at
/// 300 bytes; returns the temp dir holding `single.safetensors` and `sharded/`.
fn single_and_sharded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [io("a_bf16.safetensors"), io("b_bf16.safetensors")];
    run_avg(
        dir.path(),
        &[&inputs[0], &inputs[1], "-o", "single.safetensors"],
    );
    run_avg(
        dir.path(),
        &[
            &inputs[0],
            &inputs[1],
            "-o",
            "sharded",
            "--max-shard-size",
            "300B",
        ],
    );
    dir
}

#[test]
fn a_small_max_shard_size_writes_numbered_shards_and_an_index_covering_every_tensor() {
    let dir = single_and_sharded();
    let out = dir.path().join("sharded");
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.pop().as_deref(), Some("model.safetensors.index.json"));
    let n = names.len();
    assert!(n >= 2, "300 bytes forces at least two shards: {names:?}");
    let want_names: Vec<String> = (1..=n)
        .map(|k| format!("model-{k:05}-of-{n:05}.safetensors"))
        .collect();
    assert_eq!(names, want_names);

    let index: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let single = read_file(&dir.path().join("single.safetensors"));
    let total: usize = single.tensors.values().map(|t| t.data.len()).sum();
    assert_eq!(total, 535);
    assert_eq!(index["metadata"]["total_size"], total as u64);
    let weight_map = index["weight_map"].as_object().unwrap();
    assert_eq!(
        weight_map.keys().collect::<Vec<_>>(),
        single.tensors.keys().collect::<Vec<_>>(),
        "weight_map covers every tensor"
    );
    // Every shard holds at most 300 bytes of data (no single tensor exceeds
    // it), the tensors the index names for it, and the merge metadata.
    for shard in &names {
        let f = read_file(&out.join(shard));
        let bytes: usize = f.tensors.values().map(|t| t.data.len()).sum();
        assert!(bytes <= 300, "{shard} holds {bytes} bytes");
        for t in f.tensors.keys() {
            assert_eq!(weight_map[t], shard.as_str());
        }
        assert_eq!(f.metadata, single.metadata, "{shard} metadata");
    }
    // The shards concatenated keep the first input's order.
    let sharded = read_model_dir(&out);
    assert_eq!(sharded.order, single.order);
    assert_same_tensors(&sharded.tensors, &single.tensors, "shards vs single file");
}

#[test]
fn a_sharded_output_read_back_as_an_input_gives_the_tensors_of_the_single_file_output() {
    let dir = single_and_sharded();
    run_avg(dir.path(), &["sharded", "-o", "copied.safetensors"]);
    assert_same_tensors(
        &read_file(&dir.path().join("copied.safetensors")).tensors,
        &read_file(&dir.path().join("single.safetensors")).tensors,
        "sharded dir re-read by polymerge",
    );
    // The shards are also a valid input next to another checkpoint: averaging
    // the sharded output with the single-file output gives the same as
    // averaging the single file with itself.
    run_avg(
        dir.path(),
        &["sharded", "single.safetensors", "-o", "x.safetensors"],
    );
    run_avg(
        dir.path(),
        &[
            "single.safetensors",
            "single.safetensors",
            "-o",
            "y.safetensors",
        ],
    );
    assert_same_tensors(
        &read_file(&dir.path().join("x.safetensors")).tensors,
        &read_file(&dir.path().join("y.safetensors")).tensors,
        "sharded + single vs single + single",
    );
}

#[test]
fn inspect_json_of_a_sharded_output_reports_its_files_and_the_index_total() {
    let dir = single_and_sharded();
    let out = polymerge()
        .current_dir(dir.path())
        .args(["inspect", "--json", "sharded"])
        .assert()
        .success();
    let j: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let shards = fs::read_dir(dir.path().join("sharded"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .count();
    assert_eq!(j["files"].as_array().unwrap().len(), shards);
    assert_eq!(j["total_bytes"], 535);
    assert_eq!(j["total_tensors"], 9);
}

#[test]
fn a_max_shard_size_larger_than_the_model_writes_a_single_model_safetensors_without_index() {
    let dir = tempfile::tempdir().unwrap();
    run_avg(
        dir.path(),
        &[
            &io("a_f16.safetensors"),
            &io("b_f16.safetensors"),
            "-o",
            "out",
            "--max-shard-size",
            "1KiB",
        ],
    );
    assert_eq!(listing(dir.path()), vec!["out/", "out/model.safetensors"]);
}

#[test]
fn a_sharded_output_keeps_the_first_inputs_config_files() {
    let dir = tempfile::tempdir().unwrap();
    run_avg(
        dir.path(),
        &[
            &io("sharded_bf16"),
            &io("a_bf16.safetensors"),
            "-o",
            "out",
            "--max-shard-size",
            "200B",
        ],
    );
    let l = listing(dir.path());
    assert!(l.contains(&"out/config.json".to_string()), "{l:?}");
    assert!(
        l.contains(&"out/tokenizer_config.json".to_string()),
        "{l:?}"
    );
    assert!(
        l.contains(&"out/model.safetensors.index.json".to_string()),
        "{l:?}"
    );
    assert_same_tensors(
        &read_model_dir(&dir.path().join("out")).tensors,
        &read_file(&fixture("expected/avg_ab_bf16.safetensors")).tensors,
        "sharded at 200 B",
    );
}

#[test]
fn every_output_header_is_padded_so_tensor_data_starts_8_byte_aligned() {
    let dir = single_and_sharded();
    let single = read_file(&dir.path().join("single.safetensors"));
    assert_eq!(single.header_len % 8, 0);
    for e in fs::read_dir(dir.path().join("sharded")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            assert_eq!(read_file(&p).header_len % 8, 0, "{}", p.display());
        }
    }
}

#[test]
fn a_directory_output_from_an_index_json_input_copies_the_config_files_beside_the_index() {
    let dir = tempfile::tempdir().unwrap();
    run_avg(
        dir.path(),
        &[
            &io("sharded_bf16/model.safetensors.index.json"),
            &io("a_bf16.safetensors"),
            "-o",
            "out",
        ],
    );
    assert_eq!(
        listing(dir.path()),
        vec![
            "out/",
            "out/config.json",
            "out/model.safetensors",
            "out/tokenizer_config.json"
        ]
    );
}

#[test]
fn forcing_a_directory_output_over_an_old_one_replaces_its_weights_and_keeps_no_copy_aside() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("soup")).unwrap();
    fs::write(dir.path().join("soup/model.safetensors"), b"old").unwrap();
    run_avg(
        dir.path(),
        &[
            &io("a_f32.safetensors"),
            &io("b_f32.safetensors"),
            "-o",
            "soup",
            "--force",
        ],
    );
    assert_eq!(listing(dir.path()), vec!["soup/", "soup/model.safetensors"]);
    assert_same_tensors(
        &read_model_dir(&dir.path().join("soup")).tensors,
        &read_file(&fixture("expected/avg_ab_f32.safetensors")).tensors,
        "forced soup",
    );
}

#[test]
fn forcing_a_directory_output_leaves_an_unrelated_dot_old_directory_beside_it_alone() {
    // Regression: the old output was moved to `.soup.old` after deleting
    // whatever was there.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("soup")).unwrap();
    fs::create_dir(dir.path().join(".soup.old")).unwrap();
    fs::write(dir.path().join(".soup.old/notes.txt"), b"precious").unwrap();
    run_avg(
        dir.path(),
        &[
            &io("a_f32.safetensors"),
            &io("b_f32.safetensors"),
            "-o",
            "soup",
            "--force",
        ],
    );
    assert_eq!(
        fs::read(dir.path().join(".soup.old/notes.txt")).unwrap(),
        b"precious"
    );
    assert_eq!(
        listing(dir.path()),
        vec![
            ".soup.old/",
            ".soup.old/notes.txt",
            "soup/",
            "soup/model.safetensors"
        ]
    );
}

#[test]
fn an_index_json_given_by_bare_name_in_its_directory_also_has_its_config_files_copied() {
    // Regression: the model directory of `model.safetensors.index.json` was
    // the empty path, and the directory output failed ("error: : no such
    // file or directory").
    let dir = tempfile::tempdir().unwrap();
    let model = copy_fixture_dir("sharded_bf16", dir.path(), "model");
    run_avg(
        &model,
        &[
            "model.safetensors.index.json",
            &io("a_bf16.safetensors"),
            "-o",
            "../out",
        ],
    );
    let out = dir.path().join("out");
    assert_eq!(
        listing(&out),
        vec!["config.json", "model.safetensors", "tokenizer_config.json"]
    );
    assert_same_tensors(
        &read_model_dir(&out).tensors,
        &read_file(&fixture("expected/avg_ab_bf16.safetensors")).tensors,
        "bare index name",
    );
}
