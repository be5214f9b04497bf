//! `-o DIR --force` into an existing directory replaces only what polymerge
//! writes (weights, index, copied side files); everything else survives
//! (issue 10, item 1).

use std::fs;
use std::path::Path;

use crate::common::*;

fn avg(cwd: &Path, args: &[&str]) -> std::process::Output {
    polymerge()
        .current_dir(cwd)
        .arg("avg")
        .args(args)
        .arg("-q")
        .output()
        .unwrap()
}

fn io(rel: &str) -> String {
    fixture(rel).display().to_string()
}

/// A sharded model directory (`fixtures/io/sharded_bf16`) with a trainer's
/// leftovers beside it.
fn training_run(dir: &Path) -> std::path::PathBuf {
    let run = copy_fixture_dir("sharded_bf16", dir, "run1");
    fs::write(run.join("optimizer.pt"), b"adam moments").unwrap();
    fs::write(run.join("training_args.bin"), b"args").unwrap();
    fs::create_dir(run.join("logs")).unwrap();
    fs::write(run.join("logs/events.txt"), b"step 1 loss 2.3").unwrap();
    run
}

#[test]
fn averaging_into_the_first_runs_own_directory_keeps_its_optimizer_state_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let run = training_run(dir.path());
    let out = avg(
        dir.path(),
        &["run1", &io("a_bf16.safetensors"), "-o", "run1", "--force"],
    );
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert_eq!(fs::read(run.join("optimizer.pt")).unwrap(), b"adam moments");
    assert_eq!(fs::read(run.join("training_args.bin")).unwrap(), b"args");
    assert_eq!(
        fs::read(run.join("logs/events.txt")).unwrap(),
        b"step 1 loss 2.3"
    );
    // The old shards and index (polymerge's names, listed by the old index)
    // are gone: a loader must see the new single file only.
    assert_eq!(
        listing(&run),
        vec![
            "config.json",
            "logs/",
            "logs/events.txt",
            "model.safetensors",
            "optimizer.pt",
            "tokenizer_config.json",
            "training_args.bin"
        ]
    );
    assert_same_tensors(
        &read_file(&run.join("model.safetensors")).tensors,
        &read_file(&fixture("expected/avg_ab_bf16.safetensors")).tensors,
        "merged into run1",
    );
    assert_eq!(listing(dir.path()).len(), listing(&run).len() + 1);
}

#[test]
fn a_sharded_output_forced_over_a_single_file_output_removes_the_old_model_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let soup = dir.path().join("soup");
    let first = avg(
        dir.path(),
        &[
            &io("a_f32.safetensors"),
            &io("c_f32.safetensors"),
            "-o",
            "soup",
        ],
    );
    assert!(first.status.success());
    fs::write(soup.join("notes.md"), b"mine").unwrap();
    let out = avg(
        dir.path(),
        &[
            &io("a_f32.safetensors"),
            &io("b_f32.safetensors"),
            "-o",
            "soup",
            "--force",
            "--max-shard-size",
            "300",
        ],
    );
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    let names = listing(&soup);
    assert!(
        !names.contains(&"model.safetensors".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"model.safetensors.index.json".to_string()));
    assert!(names.contains(&"notes.md".to_string()));
    assert_eq!(fs::read(soup.join("notes.md")).unwrap(), b"mine");
    assert_same_tensors(
        &read_model_dir(&soup).tensors,
        &read_file(&fixture("expected/avg_ab_f32.safetensors")).tensors,
        "sharded over single",
    );
}

#[test]
fn safetensors_files_that_polymerge_did_not_name_survive_a_forced_output() {
    let dir = tempfile::tempdir().unwrap();
    let soup = dir.path().join("soup");
    fs::create_dir(&soup).unwrap();
    fs::write(soup.join("adapter.safetensors"), b"lora").unwrap();
    // An old index that also names a shard of a foreign name: not ours.
    fs::write(soup.join("model-00001-of-00002.safetensors"), b"old 1").unwrap();
    fs::write(soup.join("weights-b.safetensors"), b"old 2").unwrap();
    fs::write(
        soup.join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "weights-b.safetensors"}}"#,
    )
    .unwrap();
    let out = avg(
        dir.path(),
        &[
            &io("a_f32.safetensors"),
            &io("b_f32.safetensors"),
            "-o",
            "soup",
            "--force",
        ],
    );
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert_eq!(
        listing(&soup),
        vec![
            "adapter.safetensors",
            "model.safetensors",
            "weights-b.safetensors"
        ]
    );
    assert_eq!(fs::read(soup.join("adapter.safetensors")).unwrap(), b"lora");
}

#[test]
fn a_directory_in_the_way_of_a_copied_file_fails_before_anything_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = avg(
        dir.path(),
        &[
            &io("a_f32.safetensors"),
            &io("c_f32.safetensors"),
            "-o",
            "soup",
        ],
    );
    assert!(first.status.success());
    let soup = dir.path().join("soup");
    let before = fs::read(soup.join("model.safetensors")).unwrap();
    // The first input's directory has a config.json; the output holds a
    // directory of that name.
    fs::create_dir(soup.join("config.json")).unwrap();
    let out = avg(
        dir.path(),
        &[
            &io("sharded_bf16"),
            &io("a_bf16.safetensors"),
            "-o",
            "soup",
            "--force",
        ],
    );
    assert_one_error_line(&out, &["soup", "cannot replace", "config.json"]);
    assert_eq!(fs::read(soup.join("model.safetensors")).unwrap(), before);
    assert_eq!(listing(&soup), vec!["config.json/", "model.safetensors"]);
}
