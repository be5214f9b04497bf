//! `polymerge avg` against the PyTorch-computed expected files of
//! `fixtures/io/expected/` (see `fixtures/README.md`): every dtype and weight
//! case bit for bit, integer/bool pass-through, metadata, NaN/Inf handling,
//! `--force` over an input, and the default output path.

use std::fs;
use std::path::Path;

use crate::common::*;
use safetensors::Dtype;

/// Runs `polymerge avg` on fixtures `inputs` (relative to `fixtures/io`) with
/// `extra` arguments into a fresh temporary directory; returns the output
/// file read with the `safetensors` crate.
fn avg(inputs: &[&str], extra: &[&str]) -> RawFile {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let mut cmd = polymerge();
    cmd.arg("avg");
    for i in inputs {
        cmd.arg(fixture(i));
    }
    cmd.args(extra).arg("-o").arg(&out).arg("--quiet");
    cmd.assert().success();
    read_file(&out)
}

/// Asserts `avg inputs extra` equals `expected` bit for bit, with tensors in
/// the first input's storage order.
fn assert_avg_matches(inputs: &[&str], extra: &[&str], expected: &str) {
    let got = avg(inputs, extra);
    let want = read_file(&fixture(&format!("expected/{expected}.safetensors")));
    assert_same_tensors(&got.tensors, &want.tensors, expected);
    let first = read_file(&fixture(inputs[0]));
    assert_eq!(
        got.order, first.order,
        "output keeps the first input's order"
    );
}

macro_rules! matches_pytorch {
    ($($test:ident: [$($input:literal),+] $(, [$($arg:literal),*])? => $expected:literal;)*) => {$(
        #[test]
        fn $test() {
            assert_avg_matches(&[$($input),+], &[$($($arg),*)?], $expected);
        }
    )*};
}

matches_pytorch! {
    uniform_average_of_two_f32_runs_is_bit_identical_to_pytorch:
        ["a_f32.safetensors", "b_f32.safetensors"] => "avg_ab_f32";
    uniform_average_of_two_f16_runs_is_bit_identical_to_pytorch:
        ["a_f16.safetensors", "b_f16.safetensors"] => "avg_ab_f16";
    uniform_average_of_two_bf16_runs_is_bit_identical_to_pytorch:
        ["a_bf16.safetensors", "b_bf16.safetensors"] => "avg_ab_bf16";
    uniform_average_of_three_f32_runs_is_bit_identical_to_pytorch:
        ["a_f32.safetensors", "b_f32.safetensors", "c_f32.safetensors"] => "avg_abc_f32";
    uniform_average_of_three_f16_runs_is_bit_identical_to_pytorch:
        ["a_f16.safetensors", "b_f16.safetensors", "c_f16.safetensors"] => "avg_abc_f16";
    uniform_average_of_three_bf16_runs_is_bit_identical_to_pytorch:
        ["a_bf16.safetensors", "b_bf16.safetensors", "c_bf16.safetensors"] => "avg_abc_bf16";
    weighted_average_of_three_f32_runs_with_weights_0_2_0_3_0_5_is_bit_identical_to_pytorch:
        ["a_f32.safetensors", "b_f32.safetensors", "c_f32.safetensors"], ["--weights", "0.2,0.3,0.5"] => "avg_abc_w_f32";
    weighted_average_of_three_f16_runs_with_weights_0_2_0_3_0_5_is_bit_identical_to_pytorch:
        ["a_f16.safetensors", "b_f16.safetensors", "c_f16.safetensors"], ["--weights", "0.2,0.3,0.5"] => "avg_abc_w_f16";
    weighted_average_of_three_bf16_runs_with_weights_0_2_0_3_0_5_is_bit_identical_to_pytorch:
        ["a_bf16.safetensors", "b_bf16.safetensors", "c_bf16.safetensors"], ["--weights", "0.2,0.3,0.5"] => "avg_abc_w_bf16";
    weighted_average_of_two_f32_runs_with_unnormalised_weights_1_3_is_bit_identical_to_pytorch:
        ["a_f32.safetensors", "b_f32.safetensors"], ["--weights", "1,3"] => "avg_ab_w_f32";
    weighted_average_of_two_f16_runs_with_unnormalised_weights_1_3_is_bit_identical_to_pytorch:
        ["a_f16.safetensors", "b_f16.safetensors"], ["--weights", "1,3"] => "avg_ab_w_f16";
    weighted_average_of_two_bf16_runs_with_unnormalised_weights_1_3_is_bit_identical_to_pytorch:
        ["a_bf16.safetensors", "b_bf16.safetensors"], ["--weights", "1,3"] => "avg_ab_w_bf16";
    bf16_runs_averaged_with_dtype_f32_keep_the_unrounded_f32_average:
        ["a_bf16.safetensors", "b_bf16.safetensors"], ["--dtype", "f32"] => "avg_ab_bf16_to_f32";
    an_f32_run_averaged_with_a_bf16_run_gives_f32_like_the_first_input:
        ["a_f32.safetensors", "b_bf16.safetensors"] => "avg_mixed_f32_bf16";
}

#[test]
fn integer_and_bool_tensors_are_copied_from_the_first_input_in_every_dtype() {
    for d in ["f32", "f16", "bf16"] {
        let a = read_file(&fixture(&format!("a_{d}.safetensors")));
        let got = avg(
            &[
                &format!("a_{d}.safetensors"),
                &format!("b_{d}.safetensors"),
                &format!("c_{d}.safetensors"),
            ],
            &["--weights", "0.2,0.3,0.5"],
        );
        let mut copied = 0;
        for (name, t) in &a.tensors {
            if !is_float(t.dtype) {
                assert_eq!(&got.tensors[name], t, "{d}: `{name}` is copied unchanged");
                copied += 1;
            }
        }
        // position_ids, num_batches_tracked (I64) and mask (BOOL).
        assert_eq!(copied, 3, "{d}: the fixture has three non-float tensors");
    }
}

#[test]
fn output_metadata_keeps_format_pt_and_records_the_merge_as_json() {
    let inputs = [
        "a_f32.safetensors",
        "b_f32.safetensors",
        "c_f32.safetensors",
    ];
    let got = avg(&inputs, &["--weights", "0.2,0.3,0.5"]);
    assert_eq!(got.metadata.get("format").map(String::as_str), Some("pt"));
    let desc: serde_json::Value =
        serde_json::from_str(&got.metadata["polymerge"]).expect("polymerge metadata is JSON");
    assert_eq!(desc["command"], "avg");
    assert_eq!(desc["version"], env!("CARGO_PKG_VERSION"));
    let recorded: Vec<String> = desc["inputs"]
        .as_array()
        .expect("inputs array")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let given: Vec<String> = inputs
        .iter()
        .map(|i| fixture(i).display().to_string())
        .collect();
    assert_eq!(recorded, given);
    assert_eq!(desc["weights"], serde_json::json!([0.2, 0.3, 0.5]));
    assert_eq!(
        got.metadata.len(),
        2,
        "only format and polymerge: {:?}",
        got.metadata
    );
}

#[test]
fn default_weights_are_recorded_as_all_ones() {
    let got = avg(&["a_f16.safetensors", "b_f16.safetensors"], &[]);
    let desc: serde_json::Value = serde_json::from_str(&got.metadata["polymerge"]).unwrap();
    assert_eq!(desc["weights"], serde_json::json!([1.0, 1.0]));
}

#[test]
fn format_pt_is_added_when_the_first_input_has_no_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.safetensors");
    write_safetensors(
        &bare,
        &[(
            "w",
            Dtype::F32,
            vec![2],
            [1f32, 2.0].map(f32::to_le_bytes).concat(),
        )],
        None,
    );
    assert!(read_file(&bare).metadata.is_empty());
    let out = dir.path().join("out.safetensors");
    polymerge()
        .args(["avg", "-q"])
        .arg(&bare)
        .arg(&bare)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(
        read_file(&out).metadata.get("format").map(String::as_str),
        Some("pt")
    );
}

#[test]
fn the_json_summary_reports_tensors_params_and_bytes_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let assert = polymerge()
        .arg("avg")
        .arg(fixture("a_f32.safetensors"))
        .arg(fixture("b_f32.safetensors"))
        .arg("-o")
        .arg(&out)
        .arg("--json")
        .assert()
        .success();
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let written = read_file(&out);
    let float_params: usize = written
        .tensors
        .values()
        .filter(|t| is_float(t.dtype))
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let bytes: usize = written.tensors.values().map(|t| t.data.len()).sum();
    assert_eq!(j["tensors"], 9);
    assert_eq!(j["inputs"], 2);
    assert_eq!(j["params"], float_params as u64);
    assert_eq!(float_params, 229, "README: 128 + 16 + 64 + 4 + 16 + 1");
    assert_eq!(j["bytes"], bytes as u64);
    assert_eq!(j["output"], out.display().to_string());
    assert_eq!(j["nonfinite"], serde_json::json!([]));
}

#[test]
fn a_nan_input_warns_once_naming_the_file_the_tensor_and_the_count_and_still_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let nan = fixture("bad/nan_f32.safetensors");
    let assert = polymerge()
        .arg("avg")
        .arg(fixture("a_f32.safetensors"))
        .arg(&nan)
        .arg("-o")
        .arg(&out)
        .arg("--quiet")
        .assert()
        .code(0);
    let lines = stderr_lines(assert.get_output());
    assert_eq!(lines.len(), 1, "one warning line: {lines:#?}");
    let w = &lines[0];
    assert!(w.starts_with("polymerge: warning: "), "{w}");
    assert!(w.contains(&nan.display().to_string()), "{w}");
    assert!(w.contains("`layers.0.weight`"), "{w}");
    assert!(w.contains(" 3 NaN/Inf"), "{w}");
    // The non-finite inputs propagate: NaN at [2,0] and [3,5], +Inf at [4,7].
    let got = read_file(&out);
    let v = decode_float(&got.tensors["layers.0.weight"]);
    assert!(v[2 * 8].is_nan() && v[3 * 8 + 5].is_nan());
    assert_eq!(v[4 * 8 + 7], f64::INFINITY);
    assert_eq!(v.iter().filter(|x| !x.is_finite()).count(), 3);
}

#[test]
fn with_strict_a_nan_input_is_an_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let nan = fixture("bad/nan_f32.safetensors");
    let assert = polymerge()
        .current_dir(dir.path())
        .arg("avg")
        .arg(fixture("a_f32.safetensors"))
        .arg(&nan)
        .args(["-o", "out.safetensors", "--strict"])
        .assert();
    let line = assert_one_error_line(
        assert.get_output(),
        &[&nan.display().to_string(), "`layers.0.weight`", "3 NaN/Inf"],
    );
    assert!(line.contains("--strict"), "{line}");
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[test]
fn without_an_output_path_merged_safetensors_is_written_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    polymerge()
        .current_dir(dir.path())
        .arg("avg")
        .arg(fixture("a_bf16.safetensors"))
        .arg(fixture("b_bf16.safetensors"))
        .assert()
        .success();
    assert_eq!(listing(dir.path()), vec!["merged.safetensors"]);
    let want = read_file(&fixture("expected/avg_ab_bf16.safetensors"));
    assert_same_tensors(
        &read_file(&dir.path().join("merged.safetensors")).tensors,
        &want.tensors,
        "default output",
    );
}

#[test]
fn averaging_a_single_checkpoint_copies_every_tensor_byte_for_byte() {
    for d in ["f32", "f16", "bf16"] {
        let got = avg(&[&format!("a_{d}.safetensors")], &[]);
        let a = read_file(&fixture(&format!("a_{d}.safetensors")));
        assert_same_tensors(&got.tensors, &a.tensors, d);
    }
}

/// `avg a a`: (0 + x + x) / 2 in f32 is x exactly, except that −0.0 becomes
/// +0.0 (the sum starts from +0) and |x| > f32::MAX / 2 overflows to ±inf
/// (2x is computed in f32, as PyTorch does).
fn assert_self_average_is_identity_up_to_zero_sign_and_overflow(d: &str) -> (usize, usize) {
    let name = format!("a_{d}.safetensors");
    let got = avg(&[&name, &name], &[]);
    let a = read_file(&fixture(&name));
    let (mut zeros, mut overflows) = (0, 0);
    for (tname, t) in &a.tensors {
        let g = &got.tensors[tname];
        if !is_float(t.dtype) {
            assert_eq!(g, t);
            continue;
        }
        let elem = t.data.len() / t.shape.iter().product::<usize>().max(1);
        let values = decode_float(t);
        for (i, ((x, gb), ab)) in values
            .iter()
            .zip(g.data.chunks(elem))
            .zip(t.data.chunks(elem))
            .enumerate()
        {
            let want: Vec<u8> = if *x == 0.0 && x.is_sign_negative() {
                zeros += 1;
                vec![0; elem]
            } else if !((*x as f32) * 2.0).is_finite() {
                overflows += 1;
                let inf = if *x > 0.0 {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                };
                let mut buf = vec![0u8; elem];
                match t.dtype {
                    Dtype::F32 => buf.copy_from_slice(&inf.to_le_bytes()),
                    Dtype::BF16 => buf.copy_from_slice(&half::bf16::from_f32(inf).to_le_bytes()),
                    _ => unreachable!("f16 values cannot overflow f32"),
                }
                buf
            } else {
                ab.to_vec()
            };
            assert_eq!(gb, &want[..], "{d} `{tname}`[{i}] = {x}");
        }
    }
    (zeros, overflows)
}

#[test]
fn averaging_an_f16_checkpoint_with_itself_returns_it_except_negative_zero_becomes_positive() {
    let (zeros, overflows) = assert_self_average_is_identity_up_to_zero_sign_and_overflow("f16");
    assert_eq!(zeros, 2, "the fixture has two -0.0 values");
    assert_eq!(overflows, 0);
}

#[test]
fn averaging_an_f32_checkpoint_with_itself_returns_it_except_negative_zero_and_values_beyond_half_of_f32_max()
 {
    let (zeros, overflows) = assert_self_average_is_identity_up_to_zero_sign_and_overflow("f32");
    assert_eq!(zeros, 2);
    assert_eq!(overflows, 1, "only layers.1.weight[0,0] = M' is that large");
}

#[test]
fn averaging_a_bf16_checkpoint_with_itself_returns_it_except_negative_zero_and_values_beyond_half_of_f32_max()
 {
    let (zeros, overflows) = assert_self_average_is_identity_up_to_zero_sign_and_overflow("bf16");
    assert_eq!(zeros, 2);
    assert_eq!(overflows, 1);
}

/// Copies a_f32 and b_f32 into a fresh directory as `a.safetensors` and
/// `b.safetensors`.
fn two_inputs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("a_f32.safetensors", dir.path(), "a.safetensors");
    copy_fixture("b_f32.safetensors", dir.path(), "b.safetensors");
    dir
}

fn avg_in(dir: &Path, args: &[&str]) {
    polymerge()
        .current_dir(dir)
        .arg("avg")
        .args(args)
        .arg("--quiet")
        .assert()
        .success();
}

/// `avg a b -o TARGET --force` with TARGET one of the inputs: TARGET holds
/// the average, the other input is untouched, nothing else is left.
fn assert_forcing_onto_an_input_replaces_it(target: &str) {
    let dir = two_inputs();
    avg_in(
        dir.path(),
        &["a.safetensors", "b.safetensors", "-o", target, "--force"],
    );
    let want = read_file(&fixture("expected/avg_ab_f32.safetensors"));
    assert_same_tensors(
        &read_file(&dir.path().join(target)).tensors,
        &want.tensors,
        &format!("{target} overwritten"),
    );
    let (other, original) = if target == "a.safetensors" {
        ("b.safetensors", "b_f32.safetensors")
    } else {
        ("a.safetensors", "a_f32.safetensors")
    };
    assert_eq!(
        fs::read(dir.path().join(other)).unwrap(),
        fs::read(fixture(original)).unwrap()
    );
    assert_eq!(listing(dir.path()), vec!["a.safetensors", "b.safetensors"]);
}

#[test]
fn forcing_the_output_onto_the_first_input_replaces_it_with_the_correct_average() {
    assert_forcing_onto_an_input_replaces_it("a.safetensors");
}

#[test]
fn forcing_the_output_onto_the_second_input_replaces_it_with_the_correct_average() {
    assert_forcing_onto_an_input_replaces_it("b.safetensors");
}

#[test]
fn forcing_the_output_onto_a_hard_link_of_an_input_writes_the_average_and_leaves_the_input_intact()
{
    let dir = two_inputs();
    let original = fs::read(fixture("a_f32.safetensors")).unwrap();
    fs::hard_link(
        dir.path().join("a.safetensors"),
        dir.path().join("link.safetensors"),
    )
    .unwrap();
    avg_in(
        dir.path(),
        &[
            "a.safetensors",
            "b.safetensors",
            "-o",
            "link.safetensors",
            "--force",
        ],
    );
    let want = read_file(&fixture("expected/avg_ab_f32.safetensors"));
    assert_same_tensors(
        &read_file(&dir.path().join("link.safetensors")).tensors,
        &want.tensors,
        "link overwritten",
    );
    assert_eq!(
        fs::read(dir.path().join("a.safetensors")).unwrap(),
        original
    );
}

#[test]
fn forcing_the_output_onto_an_input_read_through_a_hard_link_writes_the_average_and_keeps_the_link_intact()
 {
    let dir = two_inputs();
    let original = fs::read(fixture("a_f32.safetensors")).unwrap();
    fs::hard_link(
        dir.path().join("a.safetensors"),
        dir.path().join("link.safetensors"),
    )
    .unwrap();
    avg_in(
        dir.path(),
        &[
            "link.safetensors",
            "b.safetensors",
            "-o",
            "a.safetensors",
            "--force",
        ],
    );
    let want = read_file(&fixture("expected/avg_ab_f32.safetensors"));
    assert_same_tensors(
        &read_file(&dir.path().join("a.safetensors")).tensors,
        &want.tensors,
        "a overwritten",
    );
    assert_eq!(
        fs::read(dir.path().join("link.safetensors")).unwrap(),
        original
    );
}

#[test]
fn forcing_a_directory_output_onto_the_input_model_directory_replaces_its_weights_and_keeps_its_config()
 {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture_dir("sharded_bf16", dir.path(), "model");
    copy_fixture("a_bf16.safetensors", dir.path(), "a.safetensors");
    avg_in(
        dir.path(),
        &["model", "a.safetensors", "-o", "model", "--force"],
    );
    // Uniform two-input averages commute: (0 + b + a)/2 == (0 + a + b)/2.
    let want = read_file(&fixture("expected/avg_ab_bf16.safetensors"));
    assert_same_tensors(
        &read_model_dir(&dir.path().join("model")).tensors,
        &want.tensors,
        "model dir overwritten",
    );
    assert_eq!(
        listing(dir.path()),
        vec![
            "a.safetensors",
            "model/",
            "model/config.json",
            "model/model.safetensors",
            "model/tokenizer_config.json",
        ]
    );
    for f in ["config.json", "tokenizer_config.json"] {
        assert_eq!(
            fs::read(dir.path().join("model").join(f)).unwrap(),
            fs::read(fixture("sharded_bf16").join(f)).unwrap()
        );
    }
}

#[test]
fn the_first_inputs_metadata_is_kept_and_later_inputs_metadata_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let w = [1f32, 2.0].map(f32::to_le_bytes).concat();
    let meta = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let first = dir.path().join("first.safetensors");
    let second = dir.path().join("second.safetensors");
    write_safetensors(
        &first,
        &[("w", Dtype::F32, vec![2], w.clone())],
        meta(&[("format", "pt"), ("run", "first")]),
    );
    write_safetensors(
        &second,
        &[("w", Dtype::F32, vec![2], w)],
        meta(&[("format", "np"), ("run", "second"), ("extra", "x")]),
    );
    let out = dir.path().join("out.safetensors");
    polymerge()
        .args(["avg", "-q"])
        .arg(&first)
        .arg(&second)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let got = read_file(&out).metadata;
    assert_eq!(got.get("format").map(String::as_str), Some("pt"));
    assert_eq!(got.get("run").map(String::as_str), Some("first"));
    assert!(!got.contains_key("extra"), "{got:?}");
    assert!(got.contains_key("polymerge"));
}
