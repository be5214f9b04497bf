//! Hostile input files (issue 10, items 6, 14 and the `config.json` part of
//! 16): FIFOs and devices wherever a file is read never block or grow
//! memory, side files are size-capped, and header errors name the tensor.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{assert_one_error_line, fixtures, fx, polymerge};

fn mkfifo(p: &Path) {
    assert!(
        std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap()
            .success()
    );
}

/// Runs polymerge in `dir` with a timeout: a FIFO must never block it.
fn run_in(dir: &Path, args: &[String]) -> std::process::Output {
    polymerge()
        .current_dir(dir)
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_fifo_in_place_of_any_input_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mkfifo(&d.join("fifo"));
    // A model directory whose model.safetensors is a FIFO, and an index
    // that is one.
    fs::create_dir(d.join("model")).unwrap();
    mkfifo(&d.join("model/model.safetensors"));
    mkfifo(&d.join("x.safetensors.index.json"));
    let a = fx("mlp/run_seed0.safetensors");
    let b = fx("mlp/run_seed1.safetensors");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (strings(&["inspect", "fifo"]), "fifo"),
        (strings(&["inspect", "model"]), "model.safetensors"),
        (
            strings(&["inspect", "x.safetensors.index.json"]),
            "index.json",
        ),
        (
            strings(&["align", &a, &b, "--spec", "fifo", "-o", "o.safetensors"]),
            "fifo",
        ),
        (
            strings(&[
                "align",
                &a,
                &b,
                "--init-perm",
                "fifo",
                "-o",
                "o.safetensors",
            ]),
            "fifo",
        ),
        (
            strings(&["permute", &a, "--perm", "fifo", "-o", "o.safetensors"]),
            "fifo",
        ),
        (strings(&["barrier", &a, &b, "--data", "fifo"]), "fifo"),
    ];
    for (args, name) in cases {
        let out = run_in(d, &args);
        assert_one_error_line(&out, &[name, "not a regular file (a FIFO)"]);
    }
}

#[test]
fn dev_zero_as_a_spec_perm_or_index_is_refused_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let a = fx("mlp/run_seed0.safetensors");
    let b = fx("mlp/run_seed1.safetensors");
    for args in [
        strings(&[
            "align",
            &a,
            &b,
            "--spec",
            "/dev/zero",
            "-o",
            "o.safetensors",
        ]),
        strings(&[
            "permute",
            &a,
            "--perm",
            "/dev/urandom",
            "-o",
            "o.safetensors",
        ]),
        strings(&["inspect", "/dev/zero"]),
    ] {
        let out = run_in(dir.path(), &args);
        assert_one_error_line(&out, &["/dev/", "character device"]);
    }
}

#[test]
fn a_side_file_over_the_size_limit_is_refused_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    // Sparse: no disk space, but larger than the limit.
    fs::File::create(&spec)
        .unwrap()
        .set_len(polymerge::SIDE_FILE_LIMIT + 1)
        .unwrap();
    let out = run_in(
        dir.path(),
        &strings(&[
            "align",
            &fx("mlp/run_seed0.safetensors"),
            &fx("mlp/run_seed1.safetensors"),
            "--spec",
            "spec.json",
            "-o",
            "o.safetensors",
        ]),
    );
    assert_one_error_line(&out, &["spec.json", "limit"]);
}

/// A file whose header has one good tensor and one whose offsets do not
/// span its shape.
fn bad_offsets(dir: &Path) -> PathBuf {
    let header = serde_json::json!({
        "good": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "bad.weight": {"dtype": "F32", "shape": [3], "data_offsets": [8, 12]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 12]);
    let p = dir.join("bad.safetensors");
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_header_entry_the_safetensors_crate_rejects_is_reported_with_its_tensor_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = bad_offsets(dir.path());
    let out = run_in(dir.path(), &strings(&["inspect", p.to_str().unwrap()]));
    assert_one_error_line(&out, &["bad.safetensors", "tensor `bad.weight`"]);
}

/// The LLaMA fixture directory with `num_attention_heads` set to `value`.
fn llama_with_heads(dir: &Path, value: serde_json::Value) -> PathBuf {
    let to = dir.join("llama");
    fs::create_dir(&to).unwrap();
    let from = fixtures("transformers/llama/a");
    for e in fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(to.join("config.json")).unwrap()).unwrap();
    cfg["num_attention_heads"] = value;
    fs::write(to.join("config.json"), cfg.to_string()).unwrap();
    to
}

#[test]
fn a_head_count_of_the_wrong_type_says_which_key_is_wrong() {
    for (value, shown) in [
        (serde_json::json!(-1), "is -1"),
        (serde_json::json!("4"), "is \"4\""),
        (serde_json::json!(4.5), "is 4.5"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let m = llama_with_heads(dir.path(), value);
        let out = run_in(dir.path(), &strings(&["spec", m.to_str().unwrap()]));
        assert_one_error_line(&out, &["config.json `num_attention_heads`", shown]);
    }
}

#[test]
fn a_null_head_count_is_named_as_unset_not_as_a_missing_config() {
    let dir = tempfile::tempdir().unwrap();
    let m = llama_with_heads(dir.path(), serde_json::Value::Null);
    let out = run_in(dir.path(), &strings(&["spec", m.to_str().unwrap()]));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.json sets no num_attention_heads"),
        "{err}"
    );
    assert!(!err.contains("no config.json"), "{err}");
}
