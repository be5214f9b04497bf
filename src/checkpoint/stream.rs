//! The tensor stream: how every pass over checkpoint data reads it —
//! averaging ([`crate::average`]), the basin sums ([`crate::basin`]) and
//! weight matching's reads ([`crate::alignment::WeightSource`]).
//!
//! A pass takes one tensor at a time from several inputs, each input seen
//! as stored or through a permutation ([`TensorSource`]), in chunks of at
//! most [`CHUNK_ELEMS`] elements ([`Chunks`]); the input pages a chunk
//! consumed are dropped from the resident set (`madvise(DONTNEED)`) every
//! [`RELEASE_BYTES`], so peak memory does not grow with model size. One
//! read of the inputs can serve two computations: the merge pass takes the
//! basin sums from the chunks it reads ([`crate::basin::PairSumsSink`]).

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use safetensors::Dtype;

use super::{Checkpoint, TensorInfo, dtype};
use crate::error::Result;
use crate::kernels;
use crate::permute::{ModelPermutation, TensorPermutation, gather};

/// Elements per streamed chunk: 1 Mi elements (2–4 MiB of output), large
/// enough to amortise a channel hand-off and a `madvise` call, small enough
/// that a handful in flight stay far below the memory budget. The one chunk
/// size of polymerge: weight matching streams rows in multiples of it.
pub const CHUNK_ELEMS: usize = 1 << 20;
/// Elements per parallel work item inside a chunk (16 Ki: enough work to
/// amortise rayon's scheduling; the f64 path keeps 16 Ki accumulators in L2).
/// Chunks are whole multiples of it, so work items fall on the same
/// elements whatever the chunk size.
pub const SUB_ELEMS: usize = 1 << 14;
/// Consumed input bytes (summed over all inputs) after which their pages are
/// dropped from the resident set: 16 MiB bounds what streaming keeps mapped,
/// whatever the number of inputs, while making the `madvise` calls few.
pub const RELEASE_BYTES: usize = 16 << 20;

/// One input of a pass: a checkpoint, optionally seen through a permutation.
#[derive(Clone, Copy)]
pub struct MergeInput<'a> {
    pub checkpoint: &'a Checkpoint,
    pub permutation: Option<&'a ModelPermutation>,
}

impl<'a> MergeInput<'a> {
    /// Pairs checkpoints with their (optional) permutations.
    pub fn zip(
        checkpoints: impl IntoIterator<Item = &'a Checkpoint>,
        perms: &'a [Option<ModelPermutation>],
    ) -> Vec<Self> {
        checkpoints
            .into_iter()
            .zip(perms)
            .map(|(checkpoint, p)| Self {
                checkpoint,
                permutation: p.as_ref(),
            })
            .collect()
    }

    /// An input read as stored.
    pub fn plain(checkpoint: &'a Checkpoint) -> Self {
        Self {
            checkpoint,
            permutation: None,
        }
    }

    /// This input's view of tensor `name` (which must exist).
    pub fn source(&self, name: &str) -> Result<TensorSource<'a>> {
        let info = self.checkpoint.require(name)?;
        Ok(TensorSource {
            ckpt: self.checkpoint,
            info,
            bytes: self.checkpoint.bytes(info),
            perm: self.permutation.and_then(|p| p.get(name)),
            elem: dtype::size_of(info.dtype),
        })
    }
}

/// A tensor of one input, with its permutation (if any) resolved: the
/// element bytes of any range of the (permuted) tensor, borrowed from the
/// mapping or gathered.
pub struct TensorSource<'a> {
    ckpt: &'a Checkpoint,
    info: &'a TensorInfo,
    bytes: &'a [u8],
    perm: Option<&'a TensorPermutation>,
    elem: usize,
}

impl<'a> TensorSource<'a> {
    /// A tensor read as stored.
    pub fn plain(ckpt: &'a Checkpoint, info: &'a TensorInfo) -> Self {
        Self {
            ckpt,
            info,
            bytes: ckpt.bytes(info),
            perm: None,
            elem: dtype::size_of(info.dtype),
        }
    }

    /// The checkpoint the tensor belongs to.
    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.ckpt
    }

    /// The tensor as stored.
    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    /// Its element type.
    pub fn dtype(&self) -> Dtype {
        self.info.dtype
    }

    /// Bytes per element.
    pub fn elem(&self) -> usize {
        self.elem
    }

    /// True when the tensor is read through a permutation.
    pub fn is_permuted(&self) -> bool {
        self.perm.is_some()
    }

    /// Bytes of elements `range` (flat, of the permuted tensor): a slice of
    /// the mapping when the tensor is not permuted, else gathered into
    /// `scratch`.
    pub fn fetch<'s>(&'s self, range: Range<usize>, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        match self.perm {
            None => &self.bytes[range.start * self.elem..range.end * self.elem],
            Some(p) => {
                scratch.resize(range.len() * self.elem, 0);
                gather(self.bytes, &self.info.shape, self.elem, p, range, scratch);
                scratch
            }
        }
    }

    /// Decodes elements `range` (of a float tensor) into f32 in `out`.
    pub fn decode_f32(&self, range: Range<usize>, out: &mut Vec<f32>, scratch: &mut Vec<u8>) {
        out.resize(range.len(), 0.0);
        self.decode_f32_into(range, out, scratch);
    }

    /// As [`Self::decode_f32`] into a slice of exactly `range.len()` values.
    pub fn decode_f32_into(&self, range: Range<usize>, out: &mut [f32], scratch: &mut Vec<u8>) {
        let bytes = self.fetch(range, scratch);
        // Half floats: the slice conversion uses the CPU's F16C instructions
        // when present (several times faster than element by element).
        if self.info.dtype == Dtype::F16
            && let Ok(h) = bytemuck::try_cast_slice::<u8, half::f16>(bytes)
        {
            h.convert_to_f32_slice(out);
            return;
        }
        kernels::decode_f32(self.info.dtype, bytes, out);
    }

    /// Drops every page holding any of elements `range` (as stored) from
    /// the resident set.
    pub fn release(&self, range: Range<usize>) {
        self.ckpt
            .release_consumed(self.info, range.start * self.elem..range.end * self.elem);
    }

    /// Drops the pages of the whole tensor.
    pub fn release_all(&self) {
        self.ckpt.release(self.info, 0..self.info.nbytes());
    }
}

/// Chunk size for a pass whose inputs take `in_elem` bytes per element
/// together: [`CHUNK_ELEMS`], or less so that one chunk's input pages stay
/// within [`RELEASE_BYTES`] (an EMA over hundreds of checkpoints), in whole
/// [`SUB_ELEMS`].
pub fn chunk_elems(in_elem: usize) -> usize {
    let fit = RELEASE_BYTES / in_elem.max(1) / SUB_ELEMS * SUB_ELEMS;
    CHUNK_ELEMS.min(fit.max(SUB_ELEMS))
}

/// The chunks of one tensor streamed from `sources`: element ranges in
/// order (one empty range for an empty tensor). Advancing past a chunk
/// counts it as consumed; consumed pages of sources read as stored are
/// dropped every [`RELEASE_BYTES`] and at the end, when permuted sources
/// (read out of order) are dropped whole.
pub struct Chunks<'s, 'a> {
    sources: &'s [TensorSource<'a>],
    numel: usize,
    chunk: usize,
    in_elem: usize,
    /// End of the last chunk handed out (`None` before the first).
    offset: Option<usize>,
    released: usize,
}

impl<'s, 'a> Chunks<'s, 'a> {
    /// Streams `numel` elements of each of `sources`.
    pub fn new(sources: &'s [TensorSource<'a>], numel: usize) -> Self {
        let in_elem: usize = sources.iter().map(|s| s.elem).sum::<usize>().max(1);
        Self {
            sources,
            numel,
            chunk: chunk_elems(in_elem),
            in_elem,
            offset: None,
            released: 0,
        }
    }

    /// Drops the pages of elements `0..offset` of every source read as
    /// stored: from the tensor's start, not from the last release, because
    /// a fault may map a whole large folio of the page cache (Linux 6.18
    /// does, once a file's pages sit in large folios), pages behind the
    /// read position included, so pages dropped once can be mapped again
    /// by a later fault in the same folio. A range with nothing mapped
    /// costs the kernel one page-table walk.
    fn release_up_to(&mut self, offset: usize) {
        for s in self.sources.iter().filter(|s| !s.is_permuted()) {
            s.release(0..offset);
        }
        self.released = offset;
    }
}

impl Iterator for Chunks<'_, '_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let start = match self.offset {
            None => 0,
            Some(end) if end > self.numel => return None,
            Some(end) => {
                // The previous chunk is consumed: drop its pages, in batches
                // (each `madvise` costs a TLB shootdown on every core that
                // ran a worker).
                if (end - self.released) * self.in_elem >= RELEASE_BYTES || end >= self.numel {
                    self.release_up_to(end);
                }
                if end >= self.numel {
                    for s in self.sources.iter().filter(|s| s.is_permuted()) {
                        s.release_all();
                    }
                    self.offset = Some(self.numel + 1);
                    return None;
                }
                end
            }
        };
        let end = start + self.chunk.min(self.numel - start);
        self.offset = Some(end);
        Some(start..end)
    }
}

#[cfg(test)]
mod tests;
