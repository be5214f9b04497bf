//! Exact dense linear assignment (the "LAP" inside every weight-matching step).
//!
//! Weight matching (Ainsworth et al., *Git Re-Basin*, 2022) repeatedly solves
//! `max_P ⟨S, P⟩` over permutation matrices `P` for a dense `n × n` score
//! matrix `S`. This module solves that problem exactly with the
//! shortest-augmenting-path method of
//!
//! * R. Jonker and A. Volgenant, "A shortest augmenting path algorithm for
//!   dense and sparse linear assignment problems", *Computing* 38, 325–340
//!   (1987) — "JV" below; and
//! * D. F. Crouse, "On implementing 2D rectangular assignment algorithms",
//!   *IEEE Trans. Aerospace and Electronic Systems* 52(4), 1679–1696 (2016),
//!   the variant behind SciPy's `linear_sum_assignment`.
//!
//! The solver works on the minimisation problem with costs `c = -s` (or
//! `c = s` for [`minimize`]) without materialising them. It keeps column
//! duals `v` and, implicitly, row duals `u_i = c[i, x_i] - v[x_i]`, and
//! maintains one invariant throughout: **every assigned row's column
//! attains the minimum reduced cost `c[i, j] - v[j]` of that row.** Each
//! phase below preserves it, and a full assignment satisfying it is optimal
//! by LP duality (complementary slackness), so only the running time depends
//! on how good the initial duals are.
//!
//! 1. *Initialisation*, one of
//!    * cold (JV §4): column reduction, reduction transfer, then
//!      [`ARR_PASSES`] passes of augmenting row reduction, which for random
//!      matrices assigns most rows cheaply;
//!    * for matrices with many constant rows (dead units whose score row is
//!      all zeros): the rectangular-problem start of Bijsterbosch &
//!      Volgenant (2010) on the other rows, with the constant rows placed
//!      last on the leftover columns (see [`CONSTANT_ROWS_DIVISOR`]);
//!    * warm, from a previous permutation `p` (the hint): a queue-based
//!      Bellman–Ford computes column duals under which as many hint edges
//!      as possible are row-minimal (`v[j] ≤ v[p_i] + c[i, j] - c[i, p_i]`,
//!      the dual constraints that all hold exactly when `p` is optimal),
//!      dropping the rows on negative cycles (where `p` is not optimal);
//!      then only the rows whose hint edge is row-minimal under those duals
//!      keep their column, so the invariant holds however bad the hint was.
//!      A hint that keeps too few rows falls back to the cold start.
//! 2. *Augmentation* (JV §3 / Crouse Alg. 4): for every still-free row, a
//!    Dijkstra search over columns on non-negative reduced costs finds a
//!    shortest augmenting path to a free column; the duals of the scanned
//!    columns are then updated so the invariant holds again. Ties between
//!    equal distances are broken towards free columns, which ends searches
//!    early on tie-heavy matrices.
//!
//! All arithmetic is in `f64` on the caller's row-major matrix (never
//! copied or transposed); every scan streams one matrix row. The result is
//! optimal up to floating-point rounding in the dual updates (exactly
//! optimal for integer-valued scores of magnitude well below 2^53 / n,
//! where all arithmetic is exact).
//!
//! Every loop has a hard bound (the augmenting row reduction is capped by
//! [`ARR_STEP_FACTOR`], the warm start by [`WARM_MAX_RELAX_PER_ROW`] and
//! [`WARM_MAX_FULL_RELAX_FACTOR`], and each Dijkstra search scans at most
//! `n` columns), and non-finite input is rejected up front, so a solve can
//! never hang.
//!
//! References: J. Bijsterbosch and A. Volgenant, "Solving the rectangular
//! assignment problem and applications", *Annals of Operations Research*
//! 181, 443–462 (2010).

mod lap;
mod warm;

use crate::error::{AssignmentError, Error, Result};
use lap::Lap;

/// Number of augmenting-row-reduction passes of the cold start. JV (1987,
/// §4) run the procedure twice; more passes rarely pay for themselves.
pub const ARR_PASSES: usize = 2;

/// Cap on the steps of one augmenting-row-reduction pass, as a multiple of
/// the number of free rows it starts with (each step costs one row scan).
/// In exact arithmetic every pass terminates, but in floating point the
/// "lower `v[j1]` by `u2 - u1` and retry the displaced row" step can cycle
/// on differences of a few ulps; JV implementations in the wild bound it
/// too (the `lap` package's `_carr_dense` stops displacing rows after
/// `current · n` steps). Rows left over simply go to the exact
/// augmentation phase.
pub const ARR_STEP_FACTOR: usize = 8;

/// Initial number of candidate columns per row in the warm start: the
/// columns with the smallest costs relative to the column minima. Only
/// these can bind in the warm start's shortest-path constraints until the
/// dual of the row's hint column has dropped by more than the candidates'
/// spread; then the full row is relaxed and the list doubled. In random
/// and similarity matrices the hint edge of an optimal or nearly optimal
/// permutation sits among a row's few smallest such costs, so a few dozen
/// suffice for most rows.
pub const WARM_CANDIDATES: usize = 32;

/// Longest candidate list per row in the warm start (lists double from
/// [`WARM_CANDIDATES`] up to this). Bounds the warm start's memory to
/// 4 KiB per row; a row that would need more is relaxed in full each time.
pub const WARM_MAX_CANDIDATES: usize = 1024;

/// The warm start drops a row from the hint once it has been relaxed this
/// many times: its hint column's dual keeps falling, i.e. it is fed by a
/// negative cycle that the periodic cycle check has not caught yet. With an
/// optimal hint, rows are relaxed a handful of times.
pub const WARM_MAX_RELAX_PER_ROW: u32 = 32;

/// Cap on the warm start's full-row relaxations, as a multiple of `n`, so
/// that the warm start costs at most a few passes over the matrix. Past
/// the first pass, full relaxations mostly come from duals drifting down
/// around negative cycles not yet cut; measured on perturbed uniform and
/// similarity matrices (n = 2048, 4096), running longer than 2 passes
/// frees hardly fewer rows but costs more than it saves.
pub const WARM_MAX_FULL_RELAX_FACTOR: usize = 2;

/// A warm start that keeps fewer than this fraction of the hint's rows is
/// abandoned for the cold start (a poor hint also yields poor duals, and
/// JV's initialisation does better from scratch).
pub const WARM_MIN_KEPT_FRACTION: f64 = 0.5;

/// Without a hint, the constant-row start (see `init_with_constant_rows`)
/// is used when more than `n / CONSTANT_ROWS_DIVISOR` rows are constant.
/// Each constant row costs JV's start up to `n²/2` operations, while the
/// constant-row start gives up JV's column reduction, which costs about
/// twice as many augmentation scans on random matrices. Measured on uniform
/// matrices (n = 1024 and 4096, 1 to 64 zero rows) the break-even is near
/// 1% of the rows; 1/128 errs towards JV.
pub const CONSTANT_ROWS_DIVISOR: usize = 128;

/// Largest accepted score magnitude. Duals and path lengths are sums of
/// O(n) scores; keeping |s| ≤ 1e150 leaves > 150 orders of magnitude of
/// head-room below `f64::MAX` (≈ 1.8e308), so no intermediate overflows.
pub const MAX_ABS_SCORE: f64 = 1e150;

/// Marks an unassigned row or column.
const NONE: u32 = u32::MAX;

/// Solution of one square linear assignment problem (maximisation).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// `perm[i]` = column assigned to row `i`.
    pub perm: Vec<usize>,
    /// `Σ_i scores[i, perm[i]]` summed in f64.
    pub score: f64,
}

/// Counters describing how a solve went (for benchmarks and diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SolveStats {
    /// Whether the warm-start hint was used (false: no hint, or it was
    /// abandoned for the cold start).
    pub warm_used: bool,
    /// Rows of the hint that kept their column (0 without a warm start).
    pub warm_kept: usize,
    /// Row relaxations of the warm start's Bellman–Ford.
    pub warm_relaxations: usize,
    /// Constant rows found (without a hint).
    pub constant_rows: usize,
    /// Rows still free after the initialisation, i.e. Dijkstra searches run.
    pub augmentations: usize,
    /// Columns scanned over all Dijkstra searches.
    pub scanned_columns: usize,
    /// Steps of augmenting row reduction.
    pub arr_steps: usize,
}

/// Solve `max Σ_i s[i, perm[i]]` exactly. `scores` is row-major n×n (len n*n).
/// `warm`: an optional previous permutation (e.g. from the last coordinate-descent sweep)
/// used only to speed up the solve; the result must be optimal regardless of the hint.
/// `group` names the permutation group for error messages.
pub fn maximize(
    scores: &[f64],
    n: usize,
    warm: Option<&[usize]>,
    group: &str,
) -> Result<Assignment> {
    maximize_with_stats(scores, n, warm, group).map(|(a, _)| a)
}

/// [`maximize`], also returning the solver's [`SolveStats`].
pub fn maximize_with_stats(
    scores: &[f64],
    n: usize,
    warm: Option<&[usize]>,
    group: &str,
) -> Result<(Assignment, SolveStats)> {
    solve::<true>(scores, n, warm, group)
}

/// Solve `min Σ_i c[i, perm[i]]` exactly; the returned `score` is that
/// minimal sum. Same conventions and errors as [`maximize`].
pub fn minimize(
    costs: &[f64],
    n: usize,
    warm: Option<&[usize]>,
    group: &str,
) -> Result<Assignment> {
    solve::<false>(costs, n, warm, group).map(|(a, _)| a)
}

fn solve<const MAX: bool>(
    matrix: &[f64],
    n: usize,
    warm: Option<&[usize]>,
    group: &str,
) -> Result<(Assignment, SolveStats)> {
    let fail = |source: AssignmentError| Error::Assignment {
        group: group.to_string(),
        source,
    };
    validate(matrix, n, warm).map_err(fail)?;
    let mut stats = SolveStats::default();
    let perm = if n == 0 {
        Vec::new()
    } else {
        let mut lap = Lap::<MAX>::new(matrix, n);
        lap.run(warm, &mut stats);
        lap.x.iter().map(|&j| j as usize).collect()
    };
    let score = perm
        .iter()
        .enumerate()
        .map(|(i, &j)| matrix[i * n + j])
        .sum();
    Ok((Assignment { perm, score }, stats))
}

/// Checks the shape, the hint and the values.
fn validate(matrix: &[f64], n: usize, warm: Option<&[usize]>) -> Result<(), AssignmentError> {
    let expected = n.checked_mul(n).ok_or(AssignmentError::Overflow { n })?;
    if matrix.len() != expected {
        return Err(AssignmentError::Length {
            len: matrix.len(),
            n,
        });
    }
    if let Some(hint) = warm {
        if hint.len() != n {
            return Err(AssignmentError::HintLength { len: hint.len(), n });
        }
        let mut seen = vec![false; n];
        for (i, &j) in hint.iter().enumerate() {
            if j >= n {
                return Err(AssignmentError::HintRange {
                    n,
                    entry: i,
                    column: j,
                });
            }
            if std::mem::replace(&mut seen[j], true) {
                return Err(AssignmentError::HintRepeat {
                    n,
                    column: j,
                    entry: i,
                });
            }
        }
    }
    // Fast path: one branch-free pass (vectorises); NaN fails `<=` too.
    let all_ok = matrix.chunks(4096).all(|c| {
        c.iter()
            .fold(true, |ok, &s| ok & (s.abs() <= MAX_ABS_SCORE))
    });
    if all_ok {
        return Ok(());
    }
    let position = |k: usize| (k / n.max(1), k % n.max(1));
    let non_finite = matrix.iter().filter(|s| !s.is_finite()).count();
    if non_finite > 0 {
        let first = matrix.iter().position(|s| !s.is_finite()).unwrap_or(0);
        let (row, column) = position(first);
        return Err(AssignmentError::NonFinite {
            count: non_finite,
            row,
            column,
            value: matrix[first],
        });
    }
    let first = matrix
        .iter()
        .position(|s| s.abs() > MAX_ABS_SCORE)
        .unwrap_or(0);
    let (row, column) = position(first);
    Err(AssignmentError::TooLarge {
        row,
        column,
        value: matrix[first],
    })
}
#[cfg(test)]
mod tests;
