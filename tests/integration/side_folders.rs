//! A directory output carries the first input's non-weight subfolders
//! (sentence-transformers' `1_Pooling/`, `2_Normalize/` …) and never its
//! training state, weights or links leading out (issue 13, item 4).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::common::*;

fn io(rel: &str) -> String {
    fixture(rel).display().to_string()
}

/// A sentence-transformers-style model directory built on
/// `fixtures/io/sharded_bf16`, with a trainer's state beside it.
fn sentence_model(dir: &Path, outside: &Path) -> PathBuf {
    let m = copy_fixture_dir("sharded_bf16", dir, "st");
    let w = |rel: &str, text: &str| {
        let p = m.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(
        "modules.json",
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]"#,
    );
    w(
        "1_Pooling/config.json",
        r#"{"pooling_mode_mean_tokens": true}"#,
    );
    fs::create_dir(m.join("2_Normalize")).unwrap();
    w("2_Dense/config.json", r#"{"in_features": 4}"#);
    w("2_Dense/model.safetensors", "dense weights");
    w("optimizer.pt", "adam");
    w("scheduler.pt", "cosine");
    w("rng_state_0.pth", "rng");
    w("training_args.bin", "args");
    w("trainer_state.json", "{}");
    w("checkpoint-500/config.json", "{}");
    w("runs/events.out.tfevents.1", "tb");
    w(".git/HEAD", "ref");
    w("real/vocab.txt", "[PAD]\n[CLS]\n");
    symlink("real/vocab.txt", m.join("vocab.txt")).unwrap();
    fs::write(outside, "secret").unwrap();
    symlink(outside, m.join("1_Pooling/leak.json")).unwrap();
    m
}

#[test]
fn a_sentence_transformers_directory_keeps_its_subfolders_but_not_training_state() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.json");
    sentence_model(dir.path(), &outside);
    let out = polymerge()
        .current_dir(dir.path())
        .args(["avg", "st", &io("a_bf16.safetensors"), "-o", "merged", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    let merged = dir.path().join("merged");
    assert_eq!(
        listing(&merged),
        vec![
            "1_Pooling/",
            "1_Pooling/config.json",
            "2_Dense/",
            "2_Dense/config.json",
            "2_Normalize/",
            "config.json",
            "model.safetensors",
            "modules.json",
            "real/",
            "real/vocab.txt",
            "tokenizer_config.json",
            "vocab.txt",
        ]
    );
    assert_eq!(
        fs::read_to_string(merged.join("1_Pooling/config.json")).unwrap(),
        r#"{"pooling_mode_mean_tokens": true}"#
    );
    // A link inside the model directory is copied as the file it names.
    assert!(
        !fs::symlink_metadata(merged.join("vocab.txt"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        fs::read_to_string(merged.join("vocab.txt")).unwrap(),
        "[PAD]\n[CLS]\n"
    );
    assert_same_tensors(
        &read_file(&merged.join("model.safetensors")).tensors,
        &read_file(&fixture("expected/avg_ab_bf16.safetensors")).tensors,
        "sentence model",
    );
    // What was left out and matters is said (even with -q: warnings).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2_Dense/model.safetensors"), "{err}");
    assert!(
        err.contains("leak.json") && err.contains("outside"),
        "{err}"
    );
}

#[test]
fn side_files_over_the_size_limit_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture_dir("sharded_bf16", dir.path(), "big");
    // Sparse: one byte over the 100 MB limit, no disk used.
    let f = fs::File::create(m.join("tokenizer.json")).unwrap();
    f.set_len(polymerge::write::MAX_SIDE_FILE_BYTES + 1)
        .unwrap();
    let out = polymerge()
        .current_dir(dir.path())
        .args(["avg", "big", &io("a_bf16.safetensors"), "-o", "merged"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert!(!dir.path().join("merged/tokenizer.json").exists());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokenizer.json") && err.contains("100000001 bytes"),
        "{err}"
    );
}

#[test]
fn forcing_into_a_directory_whose_subfolder_is_a_link_out_fails_and_writes_nothing_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("elsewhere");
    fs::create_dir(&outside).unwrap();
    let m = copy_fixture_dir("sharded_bf16", dir.path(), "st");
    fs::create_dir(m.join("1_Pooling")).unwrap();
    fs::write(m.join("1_Pooling/config.json"), "{}").unwrap();
    let target = dir.path().join("merged");
    fs::create_dir(&target).unwrap();
    symlink(&outside, target.join("1_Pooling")).unwrap();
    let out = polymerge()
        .current_dir(dir.path())
        .args([
            "avg",
            "st",
            &io("a_bf16.safetensors"),
            "-o",
            "merged",
            "--force",
        ])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["merged", "1_Pooling", "symbolic link"]);
    assert!(listing(&outside).is_empty());
    assert_eq!(listing(&target), vec!["1_Pooling"]);
}
