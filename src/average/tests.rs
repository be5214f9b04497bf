//! Tests of the merge pass: a chunk sink sees exactly what the pass reads.

use std::collections::BTreeMap;

use super::*;
use crate::basin::{PairSumsSink, stream_sums};
use crate::checkpoint::Checkpoint;
use crate::write::{CheckpointWriter, OutputLayout};

fn fixture(name: &str) -> Checkpoint {
    Checkpoint::open(format!("{}/fixtures/io/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
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
        let writer = CheckpointWriter::create(
            OutputLayout::File(out.clone()),
            plan.tensor_plans(),
            BTreeMap::new(),
            false,
        )
        .unwrap();
        let mut sink = PairSumsSink::new(&pairs);
        run(&inputs, &plan, &opts, writer, &(), Some(&mut sink)).unwrap();
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
