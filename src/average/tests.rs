//! Tests of the merge pass: the basin sums it takes are those of a pass of
//! their own, and taking them changes no output byte.

use std::collections::BTreeMap;

use super::*;
use crate::basin::{PairSumsSink, stream_sums};
use crate::checkpoint::Checkpoint;
use crate::write::{CheckpointWriter, OutputLayout};

fn fixture(name: &str) -> Checkpoint {
    Checkpoint::open(format!("{}/fixtures/io/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A writer of `plan`'s tensors to the file `out`.
fn writer_at(out: &std::path::Path, plan: &Plan) -> CheckpointWriter {
    CheckpointWriter::create(
        OutputLayout::File(out.to_path_buf()),
        plan.tensor_plans(),
        BTreeMap::new(),
        false,
    )
    .unwrap()
}

#[test]
fn a_sink_in_the_merge_pass_gets_the_same_pair_sums_as_the_basin_pass() {
    for d in ["f32", "f16", "bf16"] {
        let (a, b, c) = (
            fixture(&format!("a_{d}.safetensors")),
            fixture(&format!("b_{d}.safetensors")),
            fixture(&format!("c_{d}.safetensors")),
        );
        let inputs = [
            MergeInput::plain(&a),
            MergeInput::plain(&b),
            MergeInput::plain(&c),
        ];
        let pairs = [(0, 1), (0, 2)];
        let want = stream_sums(&inputs, &pairs, &()).unwrap();

        let opts = MergeOptions::uniform(3);
        let plan = plan(&inputs, &opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.safetensors");
        let mut sink = PairSumsSink::new(&pairs);
        run(
            &inputs,
            &plan,
            &opts,
            writer_at(&out, &plan),
            &(),
            Some(&mut sink),
        )
        .unwrap();
        let got = sink.into_sums();
        // Every float tensor, in the same order, with bit-identical sums.
        assert_eq!(got.len(), 2);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), 6, "{d}");
            assert_eq!(g, w, "{d}");
        }
        assert!(out.is_file());
    }
}

/// f32 values as little-endian bytes.
fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn the_mergekit_linear_kernel_fuses_multiply_and_add_and_normalises_by_torch_s_sum() {
    // acc = fma(-1, 1, 0) = -1; then fma(1 + 2^-12, 1 + 2^-12, -1) is
    // 2^-11 + 2^-24 exactly. A separately rounded product (1 + 2^-11, the
    // 2^-24 is a tie to even) would give 2^-11.
    let x1 = 1.0 + 2f32.powi(-12);
    let a = le_bytes(&[-1.0, 2.0]);
    let b = le_bytes(&[x1, 3.0]);
    let inputs = [(Dtype::F32, a.as_slice()), (Dtype::F32, b.as_slice())];
    let w = f64::from(x1);
    let mut out = vec![0u8; 8];
    let run = |weights: &LinearWeights, out: &mut Vec<u8>| {
        linear::linear_chunk(&inputs[..], weights, Dtype::F32, Dtype::F32, 0..2, out);
        out.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    let plain = run(&LinearWeights::new(&[1.0, w], false), &mut out);
    assert_eq!(plain[0], 2f32.powi(-11) + 2f32.powi(-24));
    assert_eq!(plain[1], 2.0 + 3.0 * x1);
    // normalize: divided by f32(1) + f32(w), here exactly 2 + 2^-12.
    let norm = run(&LinearWeights::new(&[1.0, w], true), &mut out);
    assert_eq!(norm[0], plain[0] / (2.0 + 2f32.powi(-12)));
}

#[test]
fn the_mergekit_linear_kernel_rounds_to_the_compute_dtype_before_the_output_dtype() {
    // bf16 compute, f32 output: the f32 input 1 + 2^-9 is rounded to bf16
    // (8 significant bits, ulp 2^-7 at 1: down to 1.0) before the sum, so
    // the result is 0.5, written as f32 (in f32 it would be 0.5 + 2^-10).
    let a = le_bytes(&[1.0 + 2f32.powi(-9)]);
    let inputs = [(Dtype::F32, a.as_slice())];
    let mut out = vec![0u8; 4];
    let weights = LinearWeights::new(&[0.5], false);
    linear::linear_chunk(
        &inputs[..],
        &weights,
        Dtype::BF16,
        Dtype::F32,
        0..1,
        &mut out,
    );
    assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), 0.5);
}

/// SplitMix64 values in about ±4 (with every 97th a NaN, ±Inf or ±0), as
/// `dtype` little-endian bytes.
fn pattern(seed: u64, n: usize, dtype: Dtype) -> Vec<u8> {
    let mut state = seed;
    let values: Vec<f32> = (0..n)
        .map(|k| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            match (k % 97, z % 5) {
                (0, 0) => f32::NAN,
                (0, 1) => f32::INFINITY,
                (0, 2) => f32::NEG_INFINITY,
                (0, 3) => -0.0,
                (0, _) => 0.0,
                _ => ((z >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0) as f32,
            }
        })
        .collect();
    let mut bytes = vec![0u8; n * crate::checkpoint::dtype::size_of(dtype)];
    crate::kernels::encode_f32(dtype, &values, &mut bytes);
    bytes
}

#[test]
fn taking_the_basin_sums_inside_the_merge_changes_no_output_byte_count_or_sum() {
    // Tensors over several work items with a ragged tail, a small one, and
    // NaN/±Inf/±0 among the values; three inputs, the basin pairs using all
    // of them or leaving one out (accumulated from its bytes).
    let big = 2 * SUB_ELEMS + 1003;
    let dir = tempfile::tempdir().unwrap();
    for dt in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
        let files: Vec<_> = (0..3u64)
            .map(|k| {
                let path = dir.path().join(format!("{dt:?}_{k}.safetensors"));
                let (w, b) = (pattern(k, big, dt), pattern(10 + k, 37, dt));
                let views = [
                    (
                        "w",
                        safetensors::tensor::TensorView::new(dt, vec![big], &w).unwrap(),
                    ),
                    (
                        "b",
                        safetensors::tensor::TensorView::new(dt, vec![37], &b).unwrap(),
                    ),
                ];
                std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
                Checkpoint::open(&path).unwrap()
            })
            .collect();
        let inputs: Vec<MergeInput> = files.iter().map(MergeInput::plain).collect();
        let opts = MergeOptions::uniform(3);
        let plan = plan(&inputs, &opts).unwrap();
        let merge = |name: &str, sink: Option<&mut PairSumsSink>| {
            let out = dir.path().join(format!("{dt:?}_{name}.safetensors"));
            let report = run(&inputs, &plan, &opts, writer_at(&out, &plan), &(), sink).unwrap();
            let counts: Vec<(String, u64)> = report
                .nonfinite
                .iter()
                .map(|n| (n.tensor.clone(), n.count))
                .collect();
            (std::fs::read(out).unwrap(), counts)
        };
        let (plain, plain_counts) = merge("plain", None);
        assert!(!plain_counts.is_empty(), "{dt:?}: the inputs hold NaN/Inf");
        for (k, pairs) in [vec![(0, 1), (0, 2), (1, 2)], vec![(2, 0)]]
            .iter()
            .enumerate()
        {
            let mut sink = PairSumsSink::new(pairs);
            let (summed, counts) = merge(&format!("summed{k}"), Some(&mut sink));
            assert!(summed == plain, "{dt:?} {pairs:?}: output bytes differ");
            assert_eq!(counts, plain_counts, "{dt:?} {pairs:?}");
            let want = stream_sums(&inputs, pairs, &()).unwrap();
            assert_eq!(sink.into_sums(), want, "{dt:?} {pairs:?}");
        }
    }
}
