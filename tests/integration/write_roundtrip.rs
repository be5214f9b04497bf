//! Property tests of the streaming writer: whatever tensors (names, dtypes,
//! shapes including 0-dim and zero-size, bytes) and metadata are written, in
//! whatever chunk sizes, they read back bit for bit with both the
//! `safetensors` crate and polymerge's `Checkpoint`, as one file or as a
//! sharded directory.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use crate::common::*;
use polymerge::checkpoint::Checkpoint;
use polymerge::write::{CheckpointWriter, OutputLayout, TensorPlan};
use proptest::prelude::*;
use safetensors::Dtype;

/// A tensor to write: plan plus its bytes.
#[derive(Clone, Debug)]
struct Case {
    plan: TensorPlan,
    data: Vec<u8>,
}

fn dtype() -> impl Strategy<Value = Dtype> {
    prop_oneof![
        Just(Dtype::F32),
        Just(Dtype::F16),
        Just(Dtype::BF16),
        Just(Dtype::I64),
    ]
}

/// Names of printable characters, including JSON-escaped ones (quote,
/// backslash) and non-ASCII; never `__metadata__`.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_./\\-\"\\\\ é漢]{1,12}".prop_filter("reserved", |n| n != "__metadata__")
}

/// Shapes of rank 0 to 3 with small extents, zero included.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..6, 0..4)
}

/// Deterministic bytes from a seed (cheaper to shrink than a byte vector).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn tensors() -> impl Strategy<Value = Vec<Case>> {
    prop::collection::vec((name(), dtype(), shape(), any::<u64>()), 0..8).prop_map(|v| {
        let mut seen = HashSet::new();
        v.into_iter()
            .filter(|(n, ..)| seen.insert(n.clone()))
            .map(|(name, dtype, shape, seed)| {
                let plan = TensorPlan { name, dtype, shape };
                let data = bytes(seed, plan.nbytes());
                Case { plan, data }
            })
            .collect()
    })
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-z_]{1,8}", "\\PC{0,16}", 0..3)
}

/// Streams every tensor's bytes into the writer in pieces of the given
/// sizes (cycled), which may span tensor and shard boundaries.
fn write_all(
    layout: OutputLayout,
    cases: &[Case],
    metadata: &BTreeMap<String, String>,
    pieces: &[usize],
) {
    let plans = cases.iter().map(|c| c.plan.clone()).collect();
    let mut w = CheckpointWriter::create(layout, plans, metadata.clone(), false).unwrap();
    let all: Vec<u8> = cases.iter().flat_map(|c| c.data.iter().copied()).collect();
    let mut rest = &all[..];
    for &p in pieces.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = p.min(rest.len());
        w.write(&rest[..n]).unwrap();
        rest = &rest[n..];
    }
    w.finish().unwrap();
}

/// The order a reader reports: the written order, except that tensors at
/// the same offsets (zero-size ones) come by name — the file cannot record
/// their order. `shard_of` gives each tensor's shard (0 for a single file).
fn expected_order(cases: &[Case], shard_of: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut next = BTreeMap::<usize, usize>::new();
    let mut keyed: Vec<((usize, usize, usize), &str)> = cases
        .iter()
        .map(|c| {
            let shard = shard_of(&c.plan.name);
            let start = *next.get(&shard).unwrap_or(&0);
            let end = start + c.data.len();
            next.insert(shard, end);
            ((shard, start, end), c.plan.name.as_str())
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, n)| n.to_string()).collect()
}

/// Checks `ckpt` against the cases, bytes included, and its tensor order
/// against `order`.
fn assert_checkpoint_equals(
    ckpt: &Checkpoint,
    cases: &[Case],
    order: &[String],
    metadata: &BTreeMap<String, String>,
) {
    let got: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(got, order, "Checkpoint: names in written order");
    for c in cases {
        let t = ckpt.get(&c.plan.name).unwrap();
        assert_eq!(t.dtype, c.plan.dtype);
        assert_eq!(t.shape, c.plan.shape);
        assert_eq!(
            ckpt.bytes(t),
            &c.data[..],
            "Checkpoint bytes of `{}`",
            c.plan.name
        );
    }
    assert_eq!(ckpt.metadata(), metadata);
}

fn raw(cases: &[Case]) -> BTreeMap<String, RawTensor> {
    cases
        .iter()
        .map(|c| {
            (
                c.plan.name.clone(),
                RawTensor {
                    dtype: c.plan.dtype,
                    shape: c.plan.shape.clone(),
                    data: c.data.clone(),
                },
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_tensors_written_to_a_file_read_back_bit_exactly(
        cases in tensors(),
        meta in metadata(),
        pieces in prop::collection::vec(1usize..200, 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        write_all(OutputLayout::File(path.clone()), &cases, &meta, &pieces);
        prop_assert_eq!(listing(dir.path()), vec!["out.safetensors"]);

        let f = read_file(&path);
        assert_same_tensors(&f.tensors, &raw(&cases), "safetensors crate");
        let order = expected_order(&cases, &|_| 0);
        prop_assert_eq!(&by_offset_then_name(&f, &|_| 0), &order);
        prop_assert_eq!(&f.metadata, &meta);
        prop_assert_eq!(f.header_len % 8, 0);

        let ckpt = Checkpoint::open(&path).unwrap();
        assert_checkpoint_equals(&ckpt, &cases, &order, &meta);
    }

    #[test]
    fn any_tensors_written_as_a_sharded_directory_read_back_bit_exactly(
        cases in tensors(),
        meta in metadata(),
        max_shard_bytes in 1u64..160,
        pieces in prop::collection::vec(1usize..200, 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        let layout = OutputLayout::Directory {
            path: out.clone(),
            max_shard_bytes,
            copy_from: None,
        };
        write_all(layout, &cases, &meta, &pieces);

        // Independently: the index (if any) and every shard with the crate.
        let back = read_model_dir(&out);
        assert_same_tensors(&back.tensors, &raw(&cases), "safetensors crate");
        let shards = shard_map(&out);
        let shard_of = |n: &str| shards.get(n).copied().unwrap_or(0);
        let order = expected_order(&cases, &shard_of);
        prop_assert_eq!(&by_offset_then_name(&back, &shard_of), &order);
        prop_assert_eq!(&back.metadata, &meta);
        check_shard_files(&out, &cases, max_shard_bytes)?;

        let ckpt = Checkpoint::open(&out).unwrap();
        assert_checkpoint_equals(&ckpt, &cases, &order, &meta);
        let l = listing(dir.path());
        prop_assert!(l.iter().all(|e| e.starts_with("model/")), "staging left: {:?}", l);
    }
}

/// The crate's order (which leaves ties at one offset in hash-map order)
/// with ties broken by name, shard by shard.
fn by_offset_then_name(f: &RawFile, shard_of: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut pos = BTreeMap::<usize, usize>::new();
    let mut keyed: Vec<((usize, usize, usize), String)> = f
        .order
        .iter()
        .map(|n| {
            let shard = shard_of(n);
            let start = *pos.get(&shard).unwrap_or(&0);
            let end = start + f.tensors[n].data.len();
            pos.insert(shard, end);
            ((shard, start, end), n.clone())
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, n)| n).collect()
}

/// Tensor name → shard number (0-based) from a directory's index; empty
/// when there is no index (one `model.safetensors`).
fn shard_map(out: &Path) -> BTreeMap<String, usize> {
    let Ok(text) = fs::read_to_string(out.join("model.safetensors.index.json")) else {
        return BTreeMap::new();
    };
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    index["weight_map"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let shard: usize = v.as_str().unwrap()[6..11].parse().unwrap();
            (k.clone(), shard - 1)
        })
        .collect()
}

/// Shard names, sizes and the index: one plain `model.safetensors` when
/// everything fits, else `model-0000k-of-0000n.safetensors` of at most
/// `max` data bytes each (unless a shard holds one tensor) plus an index
/// whose total_size is the sum of the tensor bytes.
fn check_shard_files(out: &Path, cases: &[Case], max: u64) -> Result<(), TestCaseError> {
    let mut names: Vec<String> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let total: usize = cases.iter().map(|c| c.data.len()).sum();
    if names == ["model.safetensors"] {
        prop_assert!(total as u64 <= max || cases.len() <= 1);
        return Ok(());
    }
    let index_name = names.pop();
    prop_assert_eq!(index_name.as_deref(), Some("model.safetensors.index.json"));
    let n = names.len();
    prop_assert!(n >= 2);
    let want: Vec<String> = (1..=n)
        .map(|k| format!("model-{k:05}-of-{n:05}.safetensors"))
        .collect();
    prop_assert_eq!(&names, &want);
    let index: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    prop_assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total as u64));
    for shard in &names {
        let f = read_file(&out.join(shard));
        let bytes: u64 = f.tensors.values().map(|t| t.data.len() as u64).sum();
        prop_assert!(
            bytes <= max || f.tensors.len() == 1,
            "{shard}: {bytes} > {max}"
        );
    }
    Ok(())
}

#[test]
fn a_zero_dim_scalar_and_a_zero_size_tensor_round_trip_through_a_file() {
    let cases = vec![
        Case {
            plan: TensorPlan {
                name: "scalar".into(),
                dtype: Dtype::BF16,
                shape: vec![],
            },
            data: vec![0x80, 0x3f],
        },
        Case {
            plan: TensorPlan {
                name: "empty".into(),
                dtype: Dtype::F32,
                shape: vec![3, 0, 2],
            },
            data: vec![],
        },
        Case {
            plan: TensorPlan {
                name: "after".into(),
                dtype: Dtype::I64,
                shape: vec![1],
            },
            data: 42i64.to_le_bytes().to_vec(),
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    write_all(
        OutputLayout::File(path.clone()),
        &cases,
        &BTreeMap::new(),
        &[3],
    );
    assert_same_tensors(&read_file(&path).tensors, &raw(&cases), "scalar/empty");
    let order = ["scalar", "empty", "after"].map(String::from);
    assert_checkpoint_equals(
        &Checkpoint::open(&path).unwrap(),
        &cases,
        &order,
        &BTreeMap::new(),
    );
}

#[test]
fn a_checkpoint_with_no_tensors_round_trips_as_a_file_and_as_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    write_all(
        OutputLayout::File(path.clone()),
        &[],
        &BTreeMap::new(),
        &[1],
    );
    assert!(read_file(&path).tensors.is_empty());
    assert!(Checkpoint::open(&path).unwrap().tensors().is_empty());
    let out = dir.path().join("m");
    let layout = OutputLayout::Directory {
        path: out.clone(),
        max_shard_bytes: 10,
        copy_from: None,
    };
    write_all(layout, &[], &BTreeMap::new(), &[1]);
    assert_eq!(listing(&out), vec!["model.safetensors"]);
}

#[test]
fn writing_more_bytes_than_planned_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let plan = TensorPlan {
        name: "w".into(),
        dtype: Dtype::F32,
        shape: vec![2],
    };
    let mut w =
        CheckpointWriter::create(OutputLayout::File(path), vec![plan], BTreeMap::new(), false)
            .unwrap();
    assert!(w.write(&[0u8; 12]).is_err());
    drop(w);
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[test]
fn finishing_a_sharded_write_with_bytes_missing_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w1 = TensorPlan {
        name: "w".into(),
        dtype: Dtype::F32,
        shape: vec![2],
    };
    let w2 = TensorPlan {
        name: "v".into(),
        ..w1.clone()
    };
    let layout = OutputLayout::Directory {
        path: dir.path().join("m"),
        max_shard_bytes: 8,
        copy_from: None,
    };
    let mut w = CheckpointWriter::create(layout, vec![w1, w2], BTreeMap::new(), false).unwrap();
    // 12 of the 16 planned bytes: the second shard is open but incomplete.
    w.write(&[0u8; 12]).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}
