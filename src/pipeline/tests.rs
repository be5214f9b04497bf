//! Tests of the pipeline as a library: the weighted average it writes, the
//! order of the events it reports, and the basin gate refusing.

use std::sync::Mutex;

use super::*;
use crate::checkpoint::Checkpoint;

fn io(name: &str) -> Checkpoint {
    Checkpoint::open(format!("{}/fixtures/io/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn mlp(name: &str) -> Checkpoint {
    Checkpoint::open(format!(
        "{}/fixtures/mlp/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Records events as short strings.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Observer for Log {
    fn event(&self, e: &Event<'_>) {
        let s = match e {
            Event::Started { phase, .. } => format!("start {phase:?}"),
            Event::Finished { phase } => format!("end {phase:?}"),
            Event::InputAligned { input, .. } => format!("aligned {input}"),
            Event::BasinPair {
                pair, assessment, ..
            } => format!("basin {pair:?} {}", assessment.verdict),
            Event::BasinDone { pairs, .. } => format!("basin done {pairs}"),
            _ => return,
        };
        self.0.lock().unwrap().push(s);
    }
}

#[test]
fn a_weighted_merge_writes_pytorchs_bytes() {
    let (a, b, c) = (
        io("a_bf16.safetensors"),
        io("b_bf16.safetensors"),
        io("c_bf16.safetensors"),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let report = Merge::new([&a, &b, &c])
        .weights(vec![0.2, 0.3, 0.5])
        .run(&Output::at(&out), &Silent)
        .unwrap();
    assert_eq!(report.tensors, a.tensors().len());
    let got = Checkpoint::open(&out).unwrap();
    let want = io("expected/avg_abc_w_bf16.safetensors");
    for t in want.tensors() {
        assert_eq!(
            got.bytes(got.require(&t.name).unwrap()),
            want.bytes(t),
            "{}",
            t.name
        );
    }
}

#[test]
fn an_aligned_merge_reports_alignment_then_one_pass_whose_gate_speaks_before_the_output_is_in_place()
 {
    let (a, b) = (mlp("run_seed0.safetensors"), mlp("run_seed1.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let log = Log::default();
    Merge::new([&a, &b])
        .align(Align::ToFirst(MatchOptions::default()))
        .run(&Output::at(dir.path().join("m.safetensors")), &log)
        .unwrap();
    let events = log.0.into_inner().unwrap();
    assert_eq!(
        events,
        [
            "start Align",
            "end Align",
            "aligned 1",
            "start Merge",
            "basin (0, 1) connected",
            "basin done 1",
            "end Merge",
        ]
    );
}

#[test]
fn a_refusing_gate_removes_the_streamed_temporary_so_nothing_is_written() {
    let (a, b) = (mlp("run_seed0.safetensors"), mlp("run_seed1.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let log = Log::default();
    let err = Merge::new([&a, &b])
        .basin_gate(BasinGate::Refuse)
        .run(&Output::at(&out), &log)
        .unwrap_err();
    // The verdict came from the merge pass's own reads.
    assert_eq!(
        log.0.into_inner().unwrap(),
        ["start Merge", "basin (0, 1) disconnected"]
    );
    let Error::BasinRefused { pairs } = err else {
        panic!("{err}")
    };
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].pair, (0, 1));
    assert_eq!(pairs[0].assessment.verdict, Verdict::Disconnected);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_existing_output_is_refused_before_any_stage_runs() {
    let a = io("a_f32.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    std::fs::write(&out, b"keep").unwrap();
    let log = Log::default();
    let err = Merge::new([&a, &a])
        .run(&Output::at(&out), &log)
        .unwrap_err();
    assert!(matches!(err, Error::Output { .. }), "{err}");
    assert!(log.0.into_inner().unwrap().is_empty());
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
}
