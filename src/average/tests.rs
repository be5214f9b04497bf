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
