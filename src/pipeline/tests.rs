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
    let report = Merge::new([&a, &b])
        .align(Align::ToFirst(MatchOptions::default()))
        .run(&Output::at(dir.path().join("m.safetensors")), &log)
        .unwrap();
    // The report carries what the stages reported.
    assert!(report.aligned);
    assert_eq!(report.alignments.len(), 1);
    assert_eq!(report.alignments[0].0, 1);
    assert_eq!(report.basin.len(), 1);
    assert_eq!(report.basin[0].0, (0, 1));
    let events = log.0.into_inner().unwrap();
    assert_eq!(
        events,
        [
            "start Align",
            "end Align",
            "aligned 1",
            "start Merge",
            // aligned independent runs: related, not close (uncertain)
            "basin (0, 1) uncertain",
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

/// Records `(phase, "start" | "progress" | "end", bytes)` of the byte phases.
#[derive(Default)]
struct Bytes(Mutex<Vec<(Phase, &'static str, u64)>>);

impl Observer for Bytes {
    fn event(&self, e: &Event<'_>) {
        let r = match *e {
            Event::Started { phase, total } => (phase, "start", total.unwrap_or(0)),
            Event::Progress { phase, done } => (phase, "progress", done),
            Event::Finished { phase } => (phase, "end", 0),
            _ => return,
        };
        self.0.lock().unwrap().push(r);
    }
}

#[test]
fn an_ema_weighted_merge_with_the_basin_gate_reports_byte_progress_of_one_pass_to_its_total() {
    let traj: Vec<Checkpoint> = [360, 380, 400]
        .iter()
        .map(|s| mlp(&format!("traj/checkpoint-{s}.safetensors")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rec = Bytes::default();
    Merge::new(traj.iter())
        .weights(vec![0.2, 0.3, 0.5])
        .run(&Output::at(dir.path().join("ema.safetensors")), &rec)
        .unwrap();
    let ev = rec.0.into_inner().unwrap();
    let phases: Vec<Phase> = ev.iter().filter(|e| e.1 == "start").map(|e| e.0).collect();
    // The basin sums come from the merge's reads: no pass of their own.
    assert_eq!(phases, [Phase::Merge]);
    // Every tensor is f32: the merge writes 4 bytes per parameter.
    let params: usize = traj[0]
        .tensors()
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let (phase, total) = (Phase::Merge, 4 * params as u64);
    {
        let of: Vec<_> = ev.iter().filter(|e| e.0 == phase).collect();
        assert_eq!((of[0].1, of[0].2), ("start", total), "{phase:?}");
        assert_eq!(of.last().unwrap().1, "end");
        let done: Vec<u64> = of[1..of.len() - 1].iter().map(|e| e.2).collect();
        assert!(
            done.len() >= 6,
            "one report per tensor chunk at least: {done:?}"
        );
        assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
        assert_eq!(*done.last().unwrap(), total, "{phase:?}");
    }
}
