//! The tensor stream: every pass over checkpoint data (averaging, the basin
//! sums, alignment reads) goes chunk by chunk through the memory maps and
//! drops consumed pages from the resident set.

/// Output elements per streamed chunk: 1 Mi elements (2–4 MiB of output),
/// large enough to amortise a channel hand-off and a `madvise` call, small
/// enough that a handful in flight stay far below the memory budget.
pub const CHUNK_ELEMS: usize = 1 << 20;
/// Elements per parallel work item inside a chunk (16 Ki: enough work to
/// amortise rayon's scheduling; the f64 path keeps 16 Ki accumulators in L2).
pub const SUB_ELEMS: usize = 1 << 14;
