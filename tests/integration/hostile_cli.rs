//! Hostile command lines and names (issue 10, items 9–13, 15–17): long and
//! control-character names, closed or full stdout, absurd `--steps` and
//! `--weights`, malformed models and data in `barrier`, and messages.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use safetensors::Dtype;

use crate::common::{
    assert_one_error_line, fixtures, fx, polymerge, polymerge_path, read_file, write_safetensors,
};

fn one_tensor(dir: &Path, name: &str, tensor: &str, dtype: Dtype) -> PathBuf {
    let p = dir.join(name);
    let bytes = vec![0u8; 4 * dtype.bitsize() / 8];
    write_safetensors(&p, &[(tensor, dtype, vec![4], bytes)], None);
    p
}

#[test]
fn inspect_prints_a_tensor_name_of_seventy_thousand_bytes_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let name = "w".repeat(70_000);
    let p = one_tensor(dir.path(), "long.safetensors", &name, Dtype::F32);
    let out = polymerge().arg("inspect").arg(&p).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().nth(1).unwrap().starts_with(&name));
}

#[test]
fn control_characters_in_names_are_escaped_in_tables_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let evil = "w\u{1b}[31mred\u{7}";
    let p = one_tensor(dir.path(), "evil.safetensors", evil, Dtype::F32);
    let out = polymerge().arg("inspect").arg(&p).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("w\\u{1b}[31mred\\u{7}"), "{text}");
    // The same name in an error line (a tensor one input lacks).
    one_tensor(dir.path(), "plain.safetensors", "w", Dtype::F32);
    let out = polymerge()
        .current_dir(dir.path())
        .args([
            "avg",
            "evil.safetensors",
            "plain.safetensors",
            "-o",
            "o.safetensors",
        ])
        .output()
        .unwrap();
    let line = assert_one_error_line(&out, &["\\u{1b}"]);
    assert!(!line.contains('\u{1b}'));
}

#[test]
fn inspect_columns_stay_aligned_with_long_dtype_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.safetensors");
    write_safetensors(
        &p,
        &[
            ("a", Dtype::F8_E4M3, vec![4], vec![0u8; 4]),
            ("b", Dtype::F32, vec![1], vec![0u8; 4]),
        ],
        None,
    );
    let out = polymerge().arg("inspect").arg(&p).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().take(3).collect();
    let col = |l: &str| l.find('[').unwrap_or_else(|| l.find("shape").unwrap());
    assert_eq!(col(lines[0]), col(lines[1]), "{text}");
    assert_eq!(col(lines[1]), col(lines[2]), "{text}");
}

/// `sh -c 'polymerge ARGS | true'`-style: stdout is a pipe whose reader
/// has gone away.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(polymerge_path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

fn with_full_stdout(args: &[&str]) -> std::process::Output {
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    Command::new(polymerge_path())
        .args(args)
        .stdout(full)
        .output()
        .unwrap()
}

#[test]
fn every_printing_command_survives_a_closed_or_full_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("o.safetensors");
    let (a, b) = (
        fx("mlp/run_seed0.safetensors"),
        fx("mlp/run_seed1.safetensors"),
    );
    let data = fx("mlp/digits_test.safetensors");
    let o = out_file.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["spec", &a],
        vec!["inspect", &a, "--json"],
        vec!["basin", &a, &b],
        vec!["basin", &a, &b, "--json"],
        vec!["barrier", &a, &b, "--data", &data, "--steps", "3"],
        vec!["barrier", &a, &b, "--data", &data, "--steps", "3", "--json"],
        vec![
            "avg",
            &a,
            &b,
            "--json",
            "--force",
            "-o",
            o,
            "--no-basin-check",
        ],
        vec![
            "ema",
            &a,
            &b,
            "--steps",
            "1,2",
            "--decay",
            "0.5",
            "--json",
            "--force",
            "-o",
            o,
            "--no-basin-check",
        ],
        vec![
            "ema",
            &a,
            &b,
            "--steps",
            "1,2",
            "--decay",
            "0.5",
            "--json",
            "--dry-run",
        ],
    ];
    for args in cases {
        let closed = with_closed_stdout(&args);
        let code = closed.status.code();
        assert!(
            code == Some(0) || code == Some(3),
            "{args:?} with a closed stdout: {code:?} {}",
            String::from_utf8_lossy(&closed.stderr)
        );
        let full = with_full_stdout(&args);
        let lines = crate::common::stderr_lines(&full);
        assert_eq!(full.status.code(), Some(1), "{args:?}: {lines:?}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("polymerge: error: cannot write to standard output: no space left on device"),
            "{args:?}"
        );
    }
}

#[test]
fn barrier_steps_above_ten_thousand_are_a_usage_error() {
    for steps in ["18446744073709551615", "4294967297", "10001"] {
        let out = polymerge()
            .args([
                "barrier",
                &fx("mlp/run_seed0.safetensors"),
                &fx("mlp/run_seed1.safetensors"),
            ])
            .args([
                "--data",
                &fx("mlp/digits_test.safetensors"),
                "--steps",
                steps,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{steps}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"));
    }
}

#[test]
fn weights_beyond_f32_are_refused_instead_of_writing_nan() {
    let dir = tempfile::tempdir().unwrap();
    for (w, needle) in [
        ("1e39,1e39", "beyond the f32 range"),
        ("1e308,1e308", "beyond the f32 range"),
        ("3e38,3e38", "overflows f32"),
    ] {
        let out = polymerge()
            .current_dir(dir.path())
            .args([
                "avg",
                &fx("io/a_f32.safetensors"),
                &fx("io/b_f32.safetensors"),
            ])
            .args(["--weights", w, "-o", "o.safetensors"])
            .output()
            .unwrap();
        assert_one_error_line(&out, &[needle]);
        assert!(!dir.path().join("o.safetensors").exists(), "{w}");
    }
}

/// The digits MLP with `fc1.bias` replaced by `bias`.
fn mlp_with_bias(dir: &Path, bias: Vec<usize>) -> PathBuf {
    let mut f = read_file(&fixtures("mlp/run_seed0.safetensors"));
    let t = f.tensors.get_mut("fc1.bias").unwrap();
    t.data = vec![0u8; 4 * bias.iter().product::<usize>()];
    t.shape = bias;
    let p = dir.join("bad_bias.safetensors");
    crate::common::write_raw(&p, &f.tensors, &Default::default());
    p
}

#[test]
fn barrier_refuses_a_bias_that_does_not_fit_its_layer() {
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_with_bias(dir.path(), vec![3]);
    let s = p.to_str().unwrap();
    let out = polymerge()
        .args([
            "barrier",
            s,
            s,
            "--data",
            &fx("mlp/digits_test.safetensors"),
        ])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["fc1.bias", "[3]", "512 outputs"]);
}

fn data_file(dir: &Path, rows: usize, x: Vec<f32>) -> PathBuf {
    let p = dir.join("data.safetensors");
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_safetensors(
        &p,
        &[
            ("x", Dtype::F32, vec![rows, 64], xb),
            ("y", Dtype::I64, vec![rows], vec![0u8; 8 * rows]),
        ],
        None,
    );
    p
}

fn barrier_on(data: &Path) -> std::process::Output {
    polymerge()
        .args([
            "barrier",
            &fx("mlp/run_seed0.safetensors"),
            &fx("mlp/run_seed1.safetensors"),
        ])
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

#[test]
fn barrier_refuses_data_without_rows_or_with_nan_features_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = data_file(dir.path(), 0, vec![]);
    assert_one_error_line(&barrier_on(&empty), &["data.safetensors", "`x`", "no rows"]);
    let mut x = vec![0.5f32; 2 * 64];
    x[7] = f32::NAN;
    let nan = data_file(dir.path(), 2, x);
    assert_one_error_line(&barrier_on(&nan), &["data.safetensors", "`x`", "1 NaN/Inf"]);
}

#[test]
fn barrier_errors_about_the_data_name_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data.safetensors");
    // 3 features for a model that expects 64.
    write_safetensors(
        &p,
        &[
            ("x", Dtype::F32, vec![1, 3], vec![0u8; 12]),
            ("y", Dtype::I64, vec![1], vec![0u8; 8]),
        ],
        None,
    );
    assert_one_error_line(
        &barrier_on(&p),
        &["data.safetensors", "64 inputs", "3 features"],
    );
}

#[test]
fn a_decay_above_one_says_it_is_not_a_decay() {
    let out = polymerge()
        .args([
            "ema",
            &fx("io/a_f32.safetensors"),
            "--decay",
            "1.5",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("β > 1 is not a decay"), "{err}");
    assert!(!err.contains("β = 1"), "{err}");
}

#[test]
fn a_tiny_half_life_is_printed_in_scientific_notation() {
    let out = polymerge()
        .args([
            "ema",
            &fx("io/a_f32.safetensors"),
            "--half-life",
            "1e-320",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("1e-320"), "{err}");
    assert!(err.len() < 400, "{err}");
}

#[test]
fn a_trailing_slash_on_a_safetensors_output_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = polymerge()
        .current_dir(dir.path())
        .args([
            "align",
            &fx("mlp/run_seed0.safetensors"),
            &fx("mlp/run_seed1.safetensors"),
        ])
        .args(["-o", "out.safetensors/"])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["out.safetensors/", "ends with `/`"]);
    // Refused before alignment: nothing about sweeps on stderr.
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn a_read_only_output_directory_is_named_as_such_before_any_work() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores permission bits: use /sys (not writable even for root
    // in containers and on common systems) then.
    let ro = if fs::File::create(ro.join("probe")).is_err() {
        ro
    } else {
        PathBuf::from("/sys")
    };
    assert!(fs::File::create(ro.join("probe.safetensors")).is_err());
    let out = polymerge()
        .args([
            "avg",
            &fx("io/a_f32.safetensors"),
            &fx("io/b_f32.safetensors"),
            "-o",
        ])
        .arg(ro.join("o.safetensors"))
        .output()
        .unwrap();
    let dir = format!("directory `{}`", ro.display());
    let line = assert_one_error_line(&out, &["cannot create a file in", &dir]);
    assert!(!line.contains("temporary"), "{line}");
}

#[test]
fn permute_reports_the_parameters_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = polymerge()
        .current_dir(dir.path())
        .args(["permute", &fx("mlp/run_seed0.safetensors"), "--perm"])
        .arg(fixtures("mlp/ref_align_seed0__seed1.perm.json"))
        .args(["-o", "o.safetensors", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 64·512 + 512 + 512·512 + 512 + 512·10 + 10
    assert_eq!(j["params"], 301_066);
}

#[test]
fn every_argument_is_checked_before_any_checkpoint_is_read() {
    // The inputs are FIFOs: reading either would be an error naming it, so
    // each argument error below proves it came first.
    let dir = tempfile::tempdir().unwrap();
    for f in ["a.safetensors", "b.safetensors"] {
        assert!(
            Command::new("mkfifo")
                .arg(dir.path().join(f))
                .status()
                .unwrap()
                .success()
        );
    }
    fs::write(dir.path().join("exists.json"), "{}").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "align",
                "a.safetensors",
                "b.safetensors",
                "-o",
                "x.safetensors/",
            ],
            "ends with `/`",
        ),
        (
            vec![
                "align",
                "a.safetensors",
                "b.safetensors",
                "-o",
                "o.safetensors",
                "--save-perm",
                "exists.json",
            ],
            "exists.json",
        ),
        (
            vec![
                "align",
                "a.safetensors",
                "b.safetensors",
                "-o",
                "o.safetensors",
                "--spec",
                "missing.json",
            ],
            "missing.json",
        ),
        (
            vec![
                "align",
                "a.safetensors",
                "b.safetensors",
                "-o",
                "o.safetensors",
                "--init-perm",
                "missing.json",
            ],
            "missing.json",
        ),
        (
            vec![
                "avg",
                "a.safetensors",
                "b.safetensors",
                "-o",
                "nodir/o.safetensors",
            ],
            "nodir",
        ),
        (
            vec![
                "avg",
                "a.safetensors",
                "b.safetensors",
                "--weights",
                "1e39,1",
            ],
            "f32",
        ),
        (
            vec![
                "basin",
                "a.safetensors",
                "b.safetensors",
                "--spec",
                "missing.json",
            ],
            "missing.json",
        ),
        (
            vec![
                "barrier",
                "a.safetensors",
                "b.safetensors",
                "--data",
                "missing.safetensors",
            ],
            "missing.safetensors",
        ),
        (
            vec![
                "permute",
                "a.safetensors",
                "--perm",
                "missing.json",
                "-o",
                "o.safetensors",
            ],
            "missing.json",
        ),
        (
            vec![
                "ema",
                "a.safetensors",
                "b.safetensors",
                "--decay",
                "0.9",
                "--align",
                "--spec",
                "missing.json",
                "-o",
                "o.safetensors",
            ],
            "missing.json",
        ),
    ];
    for (args, needle) in cases {
        let out = polymerge()
            .current_dir(dir.path())
            .args(&args)
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .unwrap();
        let line = assert_one_error_line(&out, &[needle]);
        assert!(!line.contains("FIFO"), "{args:?}: {line}");
    }
    for (args, code) in [
        (vec!["avg", "a.safetensors", "--max-shard-size", "5XB"], 2),
        (
            vec![
                "ema",
                "a.safetensors",
                "--decay",
                "0.9",
                "--half-life",
                "10",
            ],
            2,
        ),
        (
            vec![
                "ema",
                "a.safetensors",
                "--power",
                "7",
                "--warmup",
                "rational",
            ],
            2,
        ),
    ] {
        let out = polymerge()
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
    }
}

#[test]
fn a_full_stderr_changes_no_exit_code_and_loses_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        fx("mlp/run_seed0.safetensors"),
        fx("mlp/run_seed1.safetensors"),
    );
    let missing = dir.path().join("missing.safetensors");
    let missing = missing.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, Option<String>)> = vec![
        // A summary, basin notes and warnings on stderr; the output must land.
        (
            vec![
                "avg".into(),
                a.clone(),
                b.clone(),
                "-o".into(),
                out("avg.safetensors"),
            ],
            Some(out("avg.safetensors")),
        ),
        (
            vec![
                "align".into(),
                a.clone(),
                b.clone(),
                "-o".into(),
                out("al.safetensors"),
            ],
            Some(out("al.safetensors")),
        ),
        (vec!["basin".into(), a.clone(), b.clone()], None),
        // The one-line error itself cannot be written: still exit 1.
        (
            vec![
                "avg".into(),
                a.clone(),
                missing.into(),
                "-o".into(),
                out("x.safetensors"),
            ],
            None,
        ),
    ];
    for (args, made) in cases {
        let normal = polymerge().args(&args).output().unwrap();
        if let Some(p) = &made {
            fs::remove_file(p).unwrap();
        }
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let run = Command::new(polymerge_path())
            .args(&args)
            .stderr(full)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), normal.status.code(), "{args:?}");
        assert_ne!(run.status.code(), Some(101), "{args:?} panicked");
        if let Some(p) = &made {
            assert!(fs::metadata(p).is_ok(), "{args:?}: no output");
        }
    }
}
