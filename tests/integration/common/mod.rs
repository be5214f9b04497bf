//! Helpers shared by the integration tests.
//!
//! Outputs are read back with the `safetensors` crate directly (never with
//! polymerge's own reader) and compared byte for byte, so a bug in
//! `polymerge::checkpoint` cannot hide a bug in the writer or vice versa.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

pub mod svg;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A path in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A path under `fixtures/`.
pub fn fixtures(rel: &str) -> PathBuf {
    repo("fixtures").join(rel)
}

/// [`fixtures`] as a string argument.
pub fn fx(rel: &str) -> String {
    fixtures(rel).display().to_string()
}

/// Runs `cmd`, which must succeed, and parses its stdout as JSON.
pub fn json_out(cmd: &mut assert_cmd::Command) -> serde_json::Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

/// Tensor name → raw bytes, parsed by the `safetensors` crate (not polymerge).
pub fn tensor_bytes(path: &Path) -> BTreeMap<String, Vec<u8>> {
    read_file(path)
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect()
}

/// The directory of the I/O fixtures (see `fixtures/README.md`).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/io")
        .join(rel)
}

/// The `polymerge` binary built for these tests.
///
/// `POLYMERGE_TEST_BIN=/path/to/polymerge` runs the tests against another
/// build (e.g. an older one, to see a regression test fail without its fix).
pub fn polymerge() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(polymerge_path());
    // Keep a panic's output (if any) short; exit code 101 is what tests check.
    cmd.env_remove("RUST_BACKTRACE");
    cmd
}

/// Path of the binary, for `std::process::Command` and `sh -c` wrappers.
pub fn polymerge_path() -> PathBuf {
    match std::env::var_os("POLYMERGE_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_polymerge")),
    }
}

/// A command running the binary, under `ulimit -n limit` (soft and hard
/// limit on open files, through `sh`) when a limit is given. The binary
/// keeps input descriptors for `pread` only within (limit − 32) / 2, so a
/// low limit sends inputs through their mapping.
pub fn polymerge_with_open_files(limit: Option<u32>) -> std::process::Command {
    match limit {
        None => std::process::Command::new(polymerge_path()),
        Some(n) => {
            let mut sh = std::process::Command::new("sh");
            sh.arg("-c")
                .arg(format!(r#"ulimit -n {n} && exec "$0" "$@""#))
                .arg(polymerge_path());
            sh
        }
    }
}

/// One tensor as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A safetensors file read with the `safetensors` crate.
#[derive(Clone, Debug)]
pub struct RawFile {
    /// Tensor names in storage order (by data offset).
    pub order: Vec<String>,
    pub tensors: BTreeMap<String, RawTensor>,
    /// `__metadata__` (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Length of the JSON header (the 8-byte prefix's value).
    pub header_len: usize,
}

/// Reads a safetensors file with the `safetensors` crate, panicking (with
/// the path) if the crate does not accept it.
pub fn read_file(path: &Path) -> RawFile {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses safetensors bytes with the `safetensors` crate.
pub fn parse_bytes(bytes: &[u8]) -> Result<RawFile, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("{e:?}"))?;
    let (header_len, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("{e:?}"))?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                RawTensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect();
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(RawFile {
        order: meta.offset_keys(),
        tensors,
        metadata,
        header_len,
    })
}

/// Reads a Hugging Face model directory independently of polymerge: the
/// shards named by `model.safetensors.index.json` (checking that each tensor
/// is in the shard the index names), or `model.safetensors`.
pub fn read_model_dir(dir: &Path) -> RawFile {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return read_file(&dir.join("model.safetensors"));
    }
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index).expect("index readable"))
            .expect("index is JSON");
    let weight_map = json["weight_map"].as_object().expect("weight_map object");
    let mut shards: Vec<&str> = weight_map
        .values()
        .map(|v| v.as_str().expect("shard name"))
        .collect();
    shards.sort();
    shards.dedup();
    let mut out = RawFile {
        order: Vec::new(),
        tensors: BTreeMap::new(),
        metadata: BTreeMap::new(),
        header_len: 0,
    };
    for (k, shard) in shards.iter().enumerate() {
        let f = read_file(&dir.join(shard));
        if k == 0 {
            out.metadata = f.metadata.clone();
        }
        for name in &f.order {
            assert_eq!(
                weight_map.get(name).and_then(|v| v.as_str()),
                Some(*shard),
                "tensor `{name}` is stored in {shard} but the index says otherwise"
            );
        }
        out.order.extend(f.order);
        for (name, t) in f.tensors {
            assert!(
                out.tensors.insert(name.clone(), t).is_none(),
                "tensor `{name}` is in two shards"
            );
        }
    }
    assert_eq!(
        out.tensors.keys().collect::<BTreeSet<_>>(),
        weight_map.keys().collect::<BTreeSet<_>>(),
        "the index's weight_map and the shards' tensors differ"
    );
    out
}

/// Asserts two tensor sets are equal: same names, dtypes, shapes and bytes.
/// On a data mismatch the message names the tensor and first differing element.
pub fn assert_same_tensors(
    actual: &BTreeMap<String, RawTensor>,
    expected: &BTreeMap<String, RawTensor>,
    what: &str,
) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: tensor names differ"
    );
    for (name, e) in expected {
        let a = &actual[name];
        assert_eq!(a.dtype, e.dtype, "{what}: dtype of `{name}`");
        assert_eq!(a.shape, e.shape, "{what}: shape of `{name}`");
        if a.data != e.data {
            let elem = e.dtype.bitsize().div_ceil(8).max(1);
            let i = a
                .data
                .chunks(elem)
                .zip(e.data.chunks(elem))
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            panic!(
                "{what}: `{name}` ({:?}) differs first at element {i}: got {:02x?}, expected {:02x?} ({} vs {} bytes)",
                e.dtype,
                a.data.get(i * elem..(i + 1) * elem),
                e.data.get(i * elem..(i + 1) * elem),
                a.data.len(),
                e.data.len()
            );
        }
    }
}

/// Decodes a float tensor (F32, F16, BF16, F64) to f64 values.
pub fn decode_float(t: &RawTensor) -> Vec<f64> {
    match t.dtype {
        Dtype::F32 => t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => t
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => panic!("not a float dtype: {other:?}"),
    }
}

/// True for the dtypes polymerge averages.
pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Writes a safetensors file with the `safetensors` crate.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                TensorView::new(*d, s.clone(), b).expect("consistent test tensor"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).expect("serialize test file");
}

/// Writes `tensors` (e.g. a fixture's, modified) with the `safetensors` crate.
pub fn write_raw(
    path: &Path,
    tensors: &BTreeMap<String, RawTensor>,
    metadata: &BTreeMap<String, String>,
) {
    let list: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.dtype, t.shape.clone(), t.data.clone()))
        .collect();
    let meta = (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    write_safetensors(path, &list, meta);
}

/// Every entry under `dir` (recursively, hidden ones included) as relative
/// paths, sorted; directories end in `/`.
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &e.path(), out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The stderr of `out` as lines.
pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asserts that the command failed with exit code 1 and printed exactly
/// one line on stderr, `polymerge: error: …`, containing every `needle`.
/// Returns that line.
pub fn assert_one_error_line(out: &Output, needles: &[&str]) -> String {
    let lines = stderr_lines(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1; stderr: {lines:#?}"
    );
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one stderr line: {lines:#?}"
    );
    let line = &lines[0];
    assert!(
        line.starts_with("polymerge: error: "),
        "error line has the wrong prefix: {line}"
    );
    for n in needles {
        assert!(
            line.contains(n),
            "error line does not mention `{n}`: {line}"
        );
    }
    line.clone()
}

/// Copies fixture `rel` into `dir` under `name` and returns the new path.
pub fn copy_fixture(rel: &str, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    fs::copy(fixture(rel), &to).unwrap_or_else(|e| panic!("copy {rel}: {e}"));
    to
}

/// Recursively copies a fixture directory into `dir/name`.
pub fn copy_fixture_dir(rel: &str, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    fs::create_dir(&to).unwrap();
    for e in fs::read_dir(fixture(rel)).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}
