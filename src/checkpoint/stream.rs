//! The tensor stream: how every pass over checkpoint data reads it —
//! averaging ([`crate::average`]), the basin sums ([`crate::basin`]) and
//! weight matching's reads ([`crate::alignment::WeightSource`]).
//!
//! A pass takes one tensor at a time from several inputs, each input seen
//! as stored or through a permutation ([`TensorSource`]), in chunks of at
//! most [`CHUNK_ELEMS`] elements ([`Chunks`]). Inputs read in order are
//! read with `pread`, a work item at a time into its thread's scratch
//! buffer, so the resident set holds no page of the files; inputs read through their mapping (permuted
//! ones, and those beyond the descriptor budget) have the pages a chunk
//! consumed dropped from the resident set (`madvise(DONTNEED)`) every
//! [`RELEASE_BYTES`]. Either way peak memory does not grow with model size
//! or with the number of inputs. One read of the inputs can serve two
//! computations: the merge pass takes the basin sums from the chunks it
//! reads ([`crate::basin::PairSumsSink`]).

use std::ops::Range;
use std::sync::Mutex;

use half::slice::HalfFloatSliceExt;
use safetensors::Dtype;

use super::{Checkpoint, TensorInfo, dtype};
use crate::error::{Error, Result};
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
        decode_f32_bytes(self.info.dtype, self.fetch(range, scratch), out);
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

/// The inputs of one chunk as the averaging and summing kernels see them:
/// each input's element bytes over a range of elements.
pub trait ChunkInputs: Sync {
    /// Number of inputs.
    fn count(&self) -> usize;
    /// Element type of input `i`.
    fn dtype(&self, i: usize) -> Dtype;
    /// Bytes of elements `range` of input `i`: borrowed, or gathered into
    /// `scratch`.
    fn fetch<'s>(&'s self, i: usize, range: Range<usize>, scratch: &'s mut Vec<u8>) -> &'s [u8];
    /// Elements `range` of (float) input `i` decoded to f32 into `out`, of
    /// `range.len()` values.
    fn decode_f32_into(
        &self,
        i: usize,
        range: Range<usize>,
        out: &mut [f32],
        scratch: &mut Vec<u8>,
    ) {
        decode_f32_bytes(self.dtype(i), self.fetch(i, range, scratch), out);
    }
}

/// Decodes the element `bytes` of a float `dtype` into f32 `out` (as many
/// values): [`kernels::decode_f32`], except that half floats go through
/// the slice conversion, which uses the CPU's F16C instructions when
/// present (several times faster than element by element).
fn decode_f32_bytes(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    if dtype == Dtype::F16
        && let Ok(h) = bytemuck::try_cast_slice::<u8, half::f16>(bytes)
    {
        h.convert_to_f32_slice(out);
        return;
    }
    kernels::decode_f32(dtype, bytes, out);
}

/// The chunks of one tensor streamed from `sources`, one [`Chunk`] at a
/// time (one empty chunk for an empty tensor).
///
/// A source read as stored is read with `pread` when its file's descriptor
/// was kept (the budget of `sys::descriptors`): each work item reads its own
/// elements into its thread's scratch buffer ([`ChunkInputs::fetch`]), a
/// few dozen KiB that stay in the core's cache while they are used, and
/// the page cache's pages are copied, never mapped, so the resident set
/// holds nothing of the files. Other sources are read from the mapping:
/// permuted ones gather out of order (their pages are dropped whole at the
/// end), plain ones beyond the descriptor budget are borrowed, and their
/// consumed pages dropped every [`RELEASE_BYTES`].
///
/// A read that fails inside a work item cannot stop the kernel running it:
/// the work item sees zeros, the first error is kept, and the next call of
/// [`Chunks::next_chunk`] returns it, so a pass driven to its end by
/// `while let Some(chunk) = chunks.next_chunk()?` never finishes on bytes
/// that were not read.
pub struct Chunks<'s, 'a> {
    sources: &'s [TensorSource<'a>],
    /// Which sources are read with `pread`.
    read: Vec<bool>,
    numel: usize,
    chunk: usize,
    /// Bytes per element of the sources read from their mapping as stored.
    mapped_elem: usize,
    /// End of the last chunk handed out (`None` before the first).
    offset: Option<usize>,
    released: usize,
    /// The first read that failed.
    failed: Mutex<Option<Error>>,
}

impl<'s, 'a> Chunks<'s, 'a> {
    /// Streams `numel` elements of each of `sources`.
    pub fn new(sources: &'s [TensorSource<'a>], numel: usize) -> Self {
        let in_elem: usize = sources.iter().map(|s| s.elem).sum::<usize>().max(1);
        let read: Vec<bool> = sources
            .iter()
            .map(|s| !s.is_permuted() && s.ckpt.can_read(s.info))
            .collect();
        let mapped_elem = sources
            .iter()
            .zip(&read)
            .filter(|(s, r)| !**r && !s.is_permuted())
            .map(|(s, _)| s.elem)
            .sum();
        Self {
            sources,
            read,
            numel,
            chunk: chunk_elems(in_elem),
            mapped_elem,
            offset: None,
            released: 0,
            failed: Mutex::new(None),
        }
    }

    /// The next chunk; `None` after the last. Fails, naming the file and
    /// tensor, when a read of the chunk before failed.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_, 'a>>> {
        if let Some(e) = self
            .failed
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            self.finish();
            return Err(e);
        }
        let start = match self.offset {
            None => 0,
            Some(end) if end > self.numel => return Ok(None),
            Some(end) => {
                // The previous chunk is consumed: drop its mapped pages, in
                // batches (each `madvise` costs a TLB shootdown on every
                // core that ran a worker).
                if self.mapped_elem > 0 && (end - self.released) * self.mapped_elem >= RELEASE_BYTES
                {
                    self.release_up_to(end, false);
                }
                if end >= self.numel {
                    self.finish();
                    return Ok(None);
                }
                end
            }
        };
        let end = start + self.chunk.min(self.numel - start);
        self.offset = Some(end);
        Ok(Some(Chunk {
            sources: self.sources,
            read: &self.read,
            range: start..end,
            failed: &self.failed,
        }))
    }

    /// Drops the pages of elements `0..offset` of every source read as
    /// stored from its mapping (with `all`, of those read with `pread`
    /// too, whose mapping only a whole-tensor comparison touches): from the
    /// tensor's start, not from the last release, because a fault may map
    /// a whole large folio of the page cache (Linux 6.18 does, once a
    /// file's pages sit in large folios), pages behind the read position
    /// included, so pages dropped once can be mapped again by a later fault
    /// in the same folio. A range with nothing mapped costs the kernel one
    /// page-table walk.
    fn release_up_to(&mut self, offset: usize, all: bool) {
        for (s, &read) in self.sources.iter().zip(&self.read) {
            if !s.is_permuted() && (all || !read) {
                s.release(0..offset);
            }
        }
        self.released = offset;
    }

    /// The tensor is done (or failed): every page of it this pass mapped
    /// is dropped.
    fn finish(&mut self) {
        self.release_up_to(self.numel, true);
        for s in self.sources.iter().filter(|s| s.is_permuted()) {
            s.release_all();
        }
        self.offset = Some(self.numel + 1);
    }
}

/// One chunk of a tensor: elements [`Chunk::range`] of every source.
pub struct Chunk<'c, 'a> {
    sources: &'c [TensorSource<'a>],
    read: &'c [bool],
    range: Range<usize>,
    failed: &'c Mutex<Option<Error>>,
}

impl Chunk<'_, '_> {
    /// The chunk's elements (flat, of the tensor as the pass sees it).
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Copies the whole chunk of source `i` into `out` (of as many bytes):
    /// a source read with `pread` is read straight into `out`, with no
    /// scratch buffer in between. A failed read is handled as in
    /// [`ChunkInputs::fetch`].
    pub fn copy_into(&self, i: usize, out: &mut [u8]) {
        if !self.read_with_pread(i, self.range(), out) {
            let mut scratch = Vec::new();
            out.copy_from_slice(self.sources[i].fetch(self.range(), &mut scratch));
        }
    }

    /// Reads elements `range` of source `i` into `out` with `pread` when the
    /// source is read that way (false when it is not): on failure `out`
    /// holds zeros and the first error is kept for [`Chunks::next_chunk`].
    fn read_with_pread(&self, i: usize, range: Range<usize>, out: &mut [u8]) -> bool {
        debug_assert!(range.start >= self.range.start && range.end <= self.range.end);
        let s = &self.sources[i];
        if !self.read[i] {
            return false;
        }
        let bytes = range.start * s.elem..range.end * s.elem;
        match s.ckpt.read_into(s.info, bytes, out) {
            None => false,
            Some(Ok(())) => true,
            Some(Err(e)) => {
                out.fill(0);
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.get_or_insert(e);
                true
            }
        }
    }
}

impl ChunkInputs for Chunk<'_, '_> {
    fn count(&self) -> usize {
        self.sources.len()
    }

    fn dtype(&self, i: usize) -> Dtype {
        self.sources[i].dtype()
    }

    /// Bytes of elements `range` (inside the chunk's) of source `i`: read
    /// into `scratch` with `pread`, borrowed from the mapping, or gathered.
    /// A failed read gives zeros and is reported by the next
    /// [`Chunks::next_chunk`].
    fn fetch<'s>(&'s self, i: usize, range: Range<usize>, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        let s = &self.sources[i];
        if self.read[i] {
            // Every byte is overwritten by the read (or zeroed if it fails).
            scratch.resize(range.len() * s.elem, 0);
            if self.read_with_pread(i, range.clone(), scratch) {
                return scratch;
            }
        }
        s.fetch(range, scratch)
    }
}

#[cfg(test)]
mod tests;
