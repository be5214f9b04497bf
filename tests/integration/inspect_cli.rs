//! `polymerge inspect`: the human listing, the `--json` totals and metadata,
//! and `--stats` values checked against numbers computed by hand.

use std::collections::HashMap;

use crate::common::*;
use safetensors::Dtype;

fn inspect_json(path: &std::path::Path, stats: bool) -> serde_json::Value {
    let mut cmd = polymerge();
    cmd.args(["inspect", "--json"]).arg(path);
    if stats {
        cmd.arg("--stats");
    }
    let out = cmd.assert().success();
    serde_json::from_slice(&out.get_output().stdout).expect("inspect --json prints JSON")
}

#[test]
fn the_human_listing_shows_every_tensor_with_its_dtype_shape_and_size_then_totals() {
    let path = fixture("a_f32.safetensors");
    let out = polymerge().arg("inspect").arg(&path).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let f = read_file(&path);
    for (name, t) in &f.tensors {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no line for `{name}` in:\n{stdout}"));
        assert!(line.contains(&format!("{:?}", t.dtype)), "{line}");
        assert!(line.contains(&format!("{:?}", t.shape)), "{line}");
        assert!(line.contains(&format!("{} B", t.data.len())), "{line}");
    }
    assert!(
        stdout.contains("9 tensors, 243 params, 993 B in 1 file(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("format: pt"), "{stdout}");
}

#[test]
fn inspect_json_totals_equal_the_sums_over_the_tensors_of_the_file() {
    for rel in [
        "a_f32.safetensors",
        "b_f16.safetensors",
        "c_bf16.safetensors",
    ] {
        let path = fixture(rel);
        let j = inspect_json(&path, false);
        let f = read_file(&path);
        let params: usize = f
            .tensors
            .values()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        let bytes: usize = f.tensors.values().map(|t| t.data.len()).sum();
        assert_eq!(params, 243, "README: 229 float + 8 + 1 int + 5 bool");
        assert_eq!(j["total_tensors"], f.tensors.len());
        assert_eq!(j["total_params"], params);
        assert_eq!(j["total_bytes"], bytes);
        assert_eq!(j["path"], path.display().to_string());
        assert_eq!(j["files"], serde_json::json!([path.display().to_string()]));
        let names: Vec<&str> = j["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, f.order, "{rel}: tensors listed in storage order");
        for t in j["tensors"].as_array().unwrap() {
            let raw = &f.tensors[t["name"].as_str().unwrap()];
            assert_eq!(t["dtype"], format!("{:?}", raw.dtype));
            assert_eq!(t["shape"], serde_json::json!(raw.shape));
            assert_eq!(t["bytes"], raw.data.len());
            assert!(t.get("stats").is_none(), "no stats without --stats");
        }
        let meta: HashMap<String, String> = serde_json::from_value(j["metadata"].clone()).unwrap();
        assert_eq!(meta, f.metadata.clone().into_iter().collect());
    }
}

#[test]
fn inspect_json_of_a_sharded_directory_names_the_shard_of_each_tensor() {
    let dir = fixture("sharded_bf16");
    let j = inspect_json(&dir, false);
    assert_eq!(j["total_bytes"], 535, "the index's total_size");
    assert_eq!(j["files"].as_array().unwrap().len(), 2);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    for t in j["tensors"].as_array().unwrap() {
        let shard = index["weight_map"][t["name"].as_str().unwrap()]
            .as_str()
            .unwrap();
        assert_eq!(t["file"], dir.join(shard).display().to_string());
    }
}

/// A small file whose statistics are easy to compute by hand.
fn tiny_stats_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tiny.safetensors");
    let f32s = [
        1.0f32,
        2.0,
        3.0,
        4.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let bf16s = [0.5f32, -1.5, 2.0, -0.0].map(|v| half::bf16::from_f32(v).to_le_bytes());
    let f16s = [f32::NAN; 3].map(|v| half::f16::from_f32(v).to_le_bytes());
    write_safetensors(
        &path,
        &[
            (
                "a",
                Dtype::F32,
                vec![7],
                f32s.map(f32::to_le_bytes).concat(),
            ),
            ("b", Dtype::BF16, vec![2, 2], bf16s.concat()),
            ("c", Dtype::F16, vec![3], f16s.concat()),
            (
                "n",
                Dtype::I64,
                vec![2],
                [5i64, 6].map(i64::to_le_bytes).concat(),
            ),
        ],
        None,
    );
    path
}

#[test]
fn stats_of_a_tiny_file_match_values_computed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let j = inspect_json(&tiny_stats_file(dir.path()), true);
    let by_name = |n: &str| {
        j["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()
            .clone()
    };
    // a = [1, 2, 3, 4, NaN, inf, -inf]: finite values 1..4, mean 2.5, population
    // variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    let a = &by_name("a")["stats"];
    assert_eq!(a["count"], 4);
    assert_eq!(a["mean"], 2.5);
    assert!((a["std"].as_f64().unwrap() - 1.25f64.sqrt()).abs() < 1e-15);
    assert_eq!(a["min"], 1.0);
    assert_eq!(a["max"], 4.0);
    assert_eq!(a["nan"], 1);
    assert_eq!(a["inf"], 2);
    // b = [0.5, -1.5, 2, -0]: mean 0.25, deviations ±0.25, ±1.75 → variance
    // (0.0625·2 + 3.0625·2) / 4 = 1.5625, std exactly 1.25.
    let b = &by_name("b")["stats"];
    assert_eq!(b["count"], 4);
    assert_eq!(b["mean"], 0.25);
    assert_eq!(b["std"], 1.25);
    assert_eq!(b["min"], -1.5);
    assert_eq!(b["max"], 2.0);
    assert_eq!((b["nan"].clone(), b["inf"].clone()), (0.into(), 0.into()));
    // c is all NaN: no finite values, so no mean (JSON null).
    let c = &by_name("c")["stats"];
    assert_eq!(c["count"], 0);
    assert_eq!(c["nan"], 3);
    assert!(c["mean"].is_null() && c["std"].is_null(), "{c}");
    // Integers have no statistics.
    assert!(by_name("n").get("stats").is_none());
}

#[test]
fn the_human_stats_listing_shows_mean_min_max_and_nan_inf_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = polymerge()
        .args(["inspect", "--stats"])
        .arg(tiny_stats_file(dir.path()))
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    // name dtype shape size(2 words) mean std min max nan/inf
    assert_eq!(cols[0], "a");
    assert_eq!(cols[1], "F32");
    let num = |s: &str| s.parse::<f64>().unwrap();
    assert_eq!(num(cols[5]), 2.5);
    assert!((num(cols[6]) - 1.25f64.sqrt()).abs() < 1e-4);
    assert_eq!(num(cols[7]), 1.0);
    assert_eq!(num(cols[8]), 4.0);
    assert_eq!(cols[9], "1/2");
}

#[test]
fn inspect_piped_into_a_reader_that_stops_early_exits_0_without_a_panic() {
    // Regression: `polymerge inspect big.safetensors | head` panicked (exit
    // 101) on the broken pipe. The listing here is far larger than a pipe
    // buffer, so polymerge is still writing when the reader goes away.
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.safetensors");
    let names: Vec<String> = (0..6000)
        .map(|i| format!("model.layers.{i}.weight"))
        .collect();
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| (n.as_str(), Dtype::BF16, vec![1], vec![0, 0]))
        .collect();
    write_safetensors(&path, &tensors, None);
    for json in [false, true] {
        let mut cmd = Command::new(polymerge_path());
        cmd.arg("inspect").arg(&path);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // The reader (and with it the pipe's read end) is dropped here.
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "json={json}: stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
