//! The merge pass: every planned tensor streamed from the inputs
//! ([`crate::checkpoint::stream`]), averaged chunk by chunk on the rayon pool
//! while a writer thread appends finished chunks to the output.

use std::sync::mpsc::{channel, sync_channel};
use std::time::Instant;

use super::chunk::{average_chunk_f32, average_chunk_f64};
use super::linear::{LinearWeights, linear_chunk};
use super::{Action, MergeInput, MergeOptions, MergeReport, NonFinite, Numerics, Plan};
use crate::basin::PairSumsSink;
use crate::checkpoint::dtype;
use crate::checkpoint::stream::{Chunks, TensorSource};
use crate::error::{Error, MismatchError, Result, TensorError};
use crate::observe::{Event, Observer, Phase};
use crate::write::CheckpointWriter;

/// Chunks queued between the compute loop and the writer thread: 8 (16 MiB
/// of bf16), two of the writer's 8 MiB direct-I/O blocks, so computing goes
/// on while the writer waits for the disk.
const QUEUE_DEPTH: usize = 8;

/// Runs a planned merge into `writer` and puts the output in place,
/// reporting [`Phase::Merge`] progress (output bytes) to `observer`. With a
/// `sink`, the basin sums of every averaged tensor are taken too, from the
/// same reads.
pub fn run(
    inputs: &[MergeInput],
    plan: &Plan,
    opts: &MergeOptions,
    writer: CheckpointWriter,
    observer: &dyn Observer,
    sink: Option<&mut PairSumsSink>,
) -> Result<MergeReport> {
    stream(inputs, plan, opts, writer, observer, sink)?.finish(observer)
}

/// A merge whose every byte is written to the temporary output, not yet
/// put in place: [`Pending::finish`] syncs and renames it, dropping it
/// removes it (what a caller does when a check over the streamed data —
/// the basin gate's sums — refuses the result).
pub struct Pending {
    writer: CheckpointWriter,
    tensors: usize,
    params: u64,
    start: Instant,
    nonfinite: Vec<NonFinite>,
    counters: Vec<String>,
    counter_from: Option<(usize, std::path::PathBuf)>,
    running_stats: usize,
}

impl Pending {
    /// Completes the output (sync, rename into place) and reports the
    /// merge; ends [`Phase::Merge`].
    pub fn finish(self, observer: &dyn Observer) -> Result<MergeReport> {
        let Pending {
            writer,
            tensors,
            params,
            start,
            nonfinite,
            counters,
            counter_from,
            running_stats,
        } = self;
        let mut notes = Vec::new();
        let written = writer.finish()?;
        observer.event(&Event::Finished {
            phase: Phase::Merge,
        });
        for note in &written.notes {
            observer.event(&Event::Warning(note));
        }
        if let Some((from, path)) = counter_from {
            let which = if from == 0 {
                "the first input"
            } else {
                "the latest checkpoint (last input)"
            };
            let shown: Vec<&str> = counters.iter().take(3).map(String::as_str).collect();
            notes.push(format!(
                "{} integer counter(s) differ between the inputs ({}{}): kept {which}'s values (`{}`); step counters are taken, not averaged",
                counters.len(),
                shown.join(", "),
                if counters.len() > shown.len() { ", …" } else { "" },
                path.display()
            ));
        }
        if running_stats > 0 {
            notes.push(format!(
                "{running_stats} BatchNorm running statistics tensor(s) (running_mean/running_var) are averages of the inputs' statistics, not the statistics of the merged weights: re-estimate them on training data before use (e.g. torch.optim.swa_utils.update_bn)"
            ));
        }
        Ok(MergeReport {
            tensors,
            params,
            seconds: start.elapsed().as_secs_f64(),
            written,
            nonfinite,
            warnings: Vec::new(),
            notes,
            averaged_running_stats: running_stats,
            alignments: Vec::new(),
            basin: Vec::new(),
            aligned: false,
        })
    }
}

/// As [`run`], leaving the output [`Pending`]: every planned tensor
/// streamed from the inputs into `writer` (and the basin sums of every
/// averaged chunk into `sink`: taken inside the f32 averaging kernel from
/// the values it decodes, or for the other kernels by the sink from the
/// same chunk).
pub fn stream(
    inputs: &[MergeInput],
    plan: &Plan,
    opts: &MergeOptions,
    writer: CheckpointWriter,
    observer: &dyn Observer,
    mut sink: Option<&mut PairSumsSink>,
) -> Result<Pending> {
    let start = Instant::now();
    let weights32: Vec<f32> = opts.weights.iter().map(|&w| w as f32).collect();
    let sum64: f64 = opts.weights.iter().sum();
    let linear = match opts.numerics {
        Numerics::MergekitLinear { normalize, .. } => LinearWeights::new(&opts.weights, normalize),
        Numerics::Mean => LinearWeights::new(&opts.weights, false),
    };
    // The pairs whose basin sums the f32 kernel takes (none without a sink).
    let sum_pairs: Vec<(usize, usize)> = sink.as_deref().map_or(Vec::new(), |s| s.pairs().to_vec());
    let mut nonfinite = Vec::new();
    let mut counters: Vec<String> = Vec::new();
    let mut counter_from = None;
    let mut running_stats = 0usize;
    let mut params = 0u64;
    let phase = Phase::Merge;
    observer.event(&Event::Started {
        phase,
        total: Some(plan.total_bytes()),
    });

    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_DEPTH);
    let (back_tx, back_rx) = channel::<Vec<u8>>();
    let outcome: Result<CheckpointWriter> = std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<CheckpointWriter> {
            let mut writer = writer;
            for buf in rx {
                writer.write(&buf)?;
                let _ = back_tx.send(buf);
            }
            Ok(writer)
        });
        let compute = (|| -> Result<()> {
            let mut done = 0u64;
            for pt in &plan.tensors {
                let sources: Vec<TensorSource> = inputs
                    .iter()
                    .map(|inp| inp.source(&pt.plan.name))
                    .collect::<Result<_>>()?;
                // Sub-byte dtypes (F4, F6_*) are only ever copied (they are
                // `Kind::Opaque`): stream them as raw bytes, one byte per
                // "element", since their elements do not fill whole bytes.
                let (numel, out_elem) = if pt.plan.dtype.bitsize() % 8 == 0 {
                    (pt.plan.numel(), dtype::size_of(pt.plan.dtype))
                } else {
                    (pt.plan.nbytes(), 1)
                };
                let averaged = matches!(
                    pt.action,
                    Action::AverageF32 | Action::AverageF64 | Action::Linear { .. }
                );
                let mut counts = vec![0u64; sources.len()];
                if matches!(pt.action, Action::CopyExact) {
                    check_identical(&sources)?;
                }
                if let Action::Counter(from) = pt.action
                    && let Some(words) = counter_differs(&sources, from)
                {
                    counters.push(words);
                    counter_from = Some((from, sources[from].checkpoint().source().to_path_buf()));
                }
                // Float parameters written, averaged or (one input,
                // `permute`) copied.
                if averaged || dtype::is_float(pt.plan.dtype) {
                    params += numel as u64;
                }
                if averaged {
                    running_stats +=
                        usize::from(sources.len() > 1 && super::is_running_stat(&pt.plan.name));
                    if let Some(s) = sink.as_deref_mut() {
                        s.begin(&pt.plan.name, &pt.plan.shape);
                    }
                }
                let mut chunks = Chunks::new(&sources, numel);
                while let Some(chunk) = chunks.next_chunk()? {
                    let range = chunk.range();
                    // A recycled buffer is not cleared: every byte of it is
                    // overwritten below.
                    let mut buf = back_rx.try_recv().unwrap_or_default();
                    buf.resize(range.len() * out_elem, 0);
                    // Whether the kernel took the chunk's basin sums itself.
                    let mut summed = false;
                    let c = match pt.action {
                        Action::Copy | Action::CopyExact => {
                            chunk.copy_into(0, &mut buf);
                            None
                        }
                        Action::Counter(from) => {
                            chunk.copy_into(from, &mut buf);
                            None
                        }
                        Action::AverageF32 => {
                            let c = average_chunk_f32(
                                &chunk,
                                &weights32,
                                sum64 as f32,
                                pt.plan.dtype,
                                range.clone(),
                                &mut buf,
                                &sum_pairs,
                            );
                            if let Some(s) = sink.as_deref_mut() {
                                s.add_parts(&c.sums, c.busy);
                                summed = true;
                            }
                            Some(c.counts)
                        }
                        Action::Linear { compute } => Some(linear_chunk(
                            &chunk,
                            &linear,
                            compute,
                            pt.plan.dtype,
                            range.clone(),
                            &mut buf,
                        )),
                        Action::AverageF64 => Some(average_chunk_f64(
                            &chunk,
                            &opts.weights,
                            sum64,
                            pt.plan.dtype,
                            range.clone(),
                            &mut buf,
                        )),
                    };
                    if let Some(c) = c {
                        counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
                    }
                    if averaged
                        && !summed
                        && let Some(s) = sink.as_deref_mut()
                    {
                        s.chunk(&chunk);
                    }
                    if tx.send(buf).is_err() {
                        // The writer thread stopped: its error is reported below.
                        return Ok(());
                    }
                    done += (range.len() * out_elem) as u64;
                    observer.event(&Event::Progress { phase, done });
                }
                if averaged && let Some(s) = sink.as_deref_mut() {
                    s.end();
                }
                for (s, &count) in sources.iter().zip(&counts) {
                    if count > 0 {
                        let nf = NonFinite {
                            path: s.checkpoint().shard_path(s.info()).to_path_buf(),
                            tensor: pt.plan.name.clone(),
                            count,
                        };
                        if opts.strict_nonfinite {
                            return Err(Error::tensor(
                                &nf.path,
                                &nf.tensor,
                                TensorError::NonFinite { count: nf.count },
                            ));
                        }
                        nonfinite.push(nf);
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        let writer = handle.join().expect("writer thread panicked");
        compute.and(writer)
    });
    Ok(Pending {
        writer: outcome?,
        tensors: plan.tensors.len(),
        params,
        start,
        nonfinite,
        counters,
        counter_from,
        running_stats,
    })
}

/// `` `name` = value`` for a step counter whose inputs differ (the value
/// kept, from input `from`); `None` when every input holds the same value.
fn counter_differs(sources: &[TensorSource], from: usize) -> Option<String> {
    let numel = sources[0].info().numel();
    let (mut s0, mut s1) = (Vec::new(), Vec::new());
    let kept = sources[from].fetch(0..numel, &mut s0).to_vec();
    let differs = sources
        .iter()
        .any(|s| s.fetch(0..numel, &mut s1) != kept.as_slice());
    let src = &sources[from];
    differs.then(|| format!("`{}`{}", src.info().name, scalar_words(&kept, src.dtype())))
}

/// ` = 1234` for a little-endian integer scalar, else nothing.
fn scalar_words(bytes: &[u8], dtype: safetensors::Dtype) -> String {
    use safetensors::Dtype as D;
    let v = match (dtype, bytes.len()) {
        (D::I64, 8) => i64::from_le_bytes(bytes.try_into().expect("8 bytes")),
        (D::I32, 4) => i32::from_le_bytes(bytes.try_into().expect("4 bytes")).into(),
        (D::U8, 1) => bytes[0].into(),
        _ => return String::new(),
    };
    format!(" = {v}")
}

/// Checks that every input holds the same bytes as the first (integer and
/// bool tensors are copied, not averaged).
fn check_identical(sources: &[TensorSource]) -> Result<()> {
    let numel = sources[0].info().numel();
    let mut s0 = Vec::new();
    let mut s1 = Vec::new();
    let a = sources[0].fetch(0..numel, &mut s0);
    for s in &sources[1..] {
        if s.fetch(0..numel, &mut s1) != a {
            return Err(MismatchError::ExactDiffers {
                dtype: s.dtype(),
                tensor: s.info().name.clone(),
                a: sources[0]
                    .checkpoint()
                    .shard_path(sources[0].info())
                    .to_path_buf(),
                b: s.checkpoint().shard_path(s.info()).to_path_buf(),
            }
            .into());
        }
    }
    Ok(())
}
