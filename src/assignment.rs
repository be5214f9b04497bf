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

use crate::error::{Error, Result};

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
    /// perm[i] = column assigned to row i.
    pub perm: Vec<usize>,
    /// Σ_i scores[i, perm[i]] summed in f64.
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

/// Solve max Σ_i s[i, perm[i]] exactly. `scores` is row-major n×n (len n*n).
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

/// Solve min Σ_i c[i, perm[i]] exactly; the returned `score` is that
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
    let fail = |reason: String| Error::Assignment {
        group: group.to_string(),
        reason,
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

/// Checks the shape, the hint and the values; returns a lowercase reason.
fn validate(matrix: &[f64], n: usize, warm: Option<&[usize]>) -> std::result::Result<(), String> {
    let expected = n
        .checked_mul(n)
        .ok_or_else(|| format!("matrix size {n}×{n} overflows"))?;
    if matrix.len() != expected {
        return Err(format!(
            "score matrix has {} entries, expected {n}×{n} = {expected}",
            matrix.len()
        ));
    }
    if let Some(hint) = warm {
        if hint.len() != n {
            return Err(format!(
                "warm-start permutation has length {}, expected {n}",
                hint.len()
            ));
        }
        let mut seen = vec![false; n];
        for (i, &j) in hint.iter().enumerate() {
            if j >= n {
                return Err(format!(
                    "warm-start permutation is not a permutation of 0..{n}: \
                     entry {i} is {j}"
                ));
            }
            if std::mem::replace(&mut seen[j], true) {
                return Err(format!(
                    "warm-start permutation is not a permutation of 0..{n}: \
                     column {j} appears twice (again at entry {i})"
                ));
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
        let (r, c) = position(first);
        return Err(format!(
            "score matrix has {non_finite} non-finite {} (first at row {r}, column {c}: {})",
            if non_finite == 1 { "entry" } else { "entries" },
            matrix[first]
        ));
    }
    let first = matrix
        .iter()
        .position(|s| s.abs() > MAX_ABS_SCORE)
        .unwrap_or(0);
    let (r, c) = position(first);
    Err(format!(
        "score matrix has an entry of magnitude above {MAX_ABS_SCORE:e} \
         (row {r}, column {c}: {:e}); rescale the scores",
        matrix[first]
    ))
}

/// Solver state for one problem. `MAX` selects costs `c = -s` (maximise
/// scores) or `c = s` (minimise costs).
struct Lap<'a, const MAX: bool> {
    m: &'a [f64],
    n: usize,
    /// Row → assigned column (`NONE` if free).
    x: Vec<u32>,
    /// Column → assigned row (`NONE` if free).
    y: Vec<u32>,
    /// Column duals.
    v: Vec<f64>,
}

impl<'a, const MAX: bool> Lap<'a, MAX> {
    fn new(m: &'a [f64], n: usize) -> Self {
        Lap {
            m,
            n,
            x: vec![NONE; n],
            y: vec![NONE; n],
            v: vec![0.0; n],
        }
    }

    #[inline(always)]
    fn cost(s: f64) -> f64 {
        if MAX { -s } else { s }
    }

    #[inline(always)]
    fn row(&self, i: usize) -> &'a [f64] {
        &self.m[i * self.n..(i + 1) * self.n]
    }

    fn run(&mut self, warm: Option<&[usize]>, stats: &mut SolveStats) {
        let warm_free = warm.and_then(|hint| self.init_warm(hint, stats));

        let mut constant_rows = Vec::new();
        let mut free = match warm_free {
            Some(free) => free,
            None => {
                self.x.fill(NONE);
                self.y.fill(NONE);
                constant_rows = self.constant_rows();
                stats.constant_rows = constant_rows.len();
                if constant_rows.len() * CONSTANT_ROWS_DIVISOR > self.n {
                    self.init_with_constant_rows(&constant_rows)
                } else {
                    constant_rows.clear();
                    self.init_cold()
                }
            }
        };
        for _ in 0..ARR_PASSES {
            if free.is_empty() {
                break;
            }
            self.augmenting_row_reduction(&mut free, stats);
        }
        if stats.warm_used && !free.is_empty() {
            self.raise_free_column_duals();
        }

        stats.augmentations = free.len();
        let mut ws = Workspace::new(self.n);
        for &i in &free {
            self.augment(i as usize, &mut ws, stats);
        }
        // Constant rows take the columns left over: those all have the
        // largest dual (see `init_with_constant_rows`), which is where a row
        // of equal costs attains its minimum reduced cost.
        let left: Vec<usize> = (0..self.n).filter(|&j| self.y[j] == NONE).collect();
        for (&i, &j) in constant_rows.iter().zip(&left) {
            self.x[i as usize] = j as u32;
            self.y[j] = i;
        }
    }

    /// Rows whose entries are all equal (e.g. all-zero rows of dead units).
    fn constant_rows(&self) -> Vec<u32> {
        (0..self.n)
            .filter(|&i| {
                let row = self.row(i);
                row.iter().all(|&s| s == row[0])
            })
            .map(|i| i as u32)
            .collect()
    }

    /// Start for a matrix with many constant rows, after Bijsterbosch &
    /// Volgenant's treatment of the rectangular problem (2010). A constant
    /// row is indifferent between columns, so the problem is really the
    /// rectangular one of the other rows, whose optimality conditions ask
    /// every column left free to carry the largest dual. JV's column
    /// reduction gives free columns arbitrary duals, and every search from a
    /// constant row then scans about half of the columns. Starting instead
    /// from `v = 0` with no row assigned keeps free columns at `v = 0` and all
    /// others below (augmenting row reduction and the Dijkstra updates only
    /// ever lower the duals of assigned columns), so the constant rows can
    /// simply take the leftover columns at the end. Returns the free rows:
    /// all non-constant ones.
    fn init_with_constant_rows(&mut self, constant_rows: &[u32]) -> Vec<u32> {
        self.v.fill(0.0);
        let mut is_constant = vec![false; self.n];
        for &i in constant_rows {
            is_constant[i as usize] = true;
        }
        (0..self.n as u32)
            .filter(|&i| !is_constant[i as usize])
            .collect()
    }

    /// Column minima of the costs (row by row, cache friendly), with the
    /// first row attaining each.
    fn column_minima(&self) -> (Vec<f64>, Vec<u32>) {
        let n = self.n;
        let mut min = vec![f64::INFINITY; n];
        let mut argmin = vec![0u32; n];
        for i in 0..n {
            let row = self.row(i);
            for ((m, am), &s) in min.iter_mut().zip(argmin.iter_mut()).zip(row) {
                let c = Self::cost(s);
                if c < *m {
                    *m = c;
                    *am = i as u32;
                }
            }
        }
        (min, argmin)
    }

    /// JV column reduction and reduction transfer. Returns the free rows.
    fn init_cold(&mut self) -> Vec<u32> {
        let n = self.n;
        let (min, argmin) = self.column_minima();
        self.v = min;
        // Assign each column to its minimising row if that row is still
        // unassigned (JV scan the columns from last to first).
        let mut matches = vec![0u32; n];
        for j in (0..n).rev() {
            let i = argmin[j] as usize;
            matches[i] += 1;
            if matches[i] == 1 {
                self.x[i] = j as u32;
                self.y[j] = i as u32;
            }
        }
        // Reduction transfer: a row that is the minimum of exactly one
        // column lowers that column's dual until its edge is only as good
        // as the row's second-best reduced cost, which leaves the edge
        // row-minimal and makes the column less attractive to other rows.
        let mut free = Vec::new();
        for (i, &count) in matches.iter().enumerate() {
            match count {
                0 => free.push(i as u32),
                1 => {
                    let j1 = self.x[i] as usize;
                    let row = self.row(i);
                    let mut second = f64::INFINITY;
                    for (k, (&s, &vk)) in row.iter().zip(&self.v).enumerate() {
                        let r = Self::cost(s) - vk;
                        if r < second && k != j1 {
                            second = r;
                        }
                    }
                    if second.is_finite() {
                        // second ≥ 0 = reduced cost of (i, j1), so v only drops.
                        self.v[j1] = Self::cost(row[j1]) - second;
                    }
                }
                _ => {}
            }
        }
        free
    }

    /// One JV augmenting-row-reduction pass over `free` (rewritten in place
    /// with the rows still free afterwards).
    fn augmenting_row_reduction(&mut self, free: &mut Vec<u32>, stats: &mut SolveStats) {
        let n = self.n;
        let todo = free.len();
        let max_steps = todo.saturating_mul(ARR_STEP_FACTOR);
        let mut k = 0; // next entry of `free` to process
        let mut kept = 0; // rows still free, written to free[..kept]
        let mut steps = 0;
        while k < todo {
            let i = free[k] as usize;
            k += 1;
            steps += 1;
            if steps > max_steps {
                // Give up on the rest; they stay free for the augmentation.
                free.copy_within(k - 1..todo, kept);
                kept += todo - (k - 1);
                break;
            }
            // Lowest (u1 at j1) and second-lowest (u2 at j2) reduced cost.
            let row = self.row(i);
            let (mut u1, mut u2) = (f64::INFINITY, f64::INFINITY);
            let (mut j1, mut j2) = (0usize, 0usize);
            for (j, (&s, &vj)) in row.iter().zip(&self.v).enumerate() {
                let r = Self::cost(s) - vj;
                if r < u2 {
                    if r >= u1 {
                        u2 = r;
                        j2 = j;
                    } else {
                        u2 = u1;
                        j2 = j1;
                        u1 = r;
                        j1 = j;
                    }
                }
            }
            if n == 1 {
                j2 = j1;
                u2 = u1;
            }
            let mut i0 = self.y[j1];
            // j1 is strictly better only if lowering its dual by the gap
            // actually changes it: a gap below the rounding of v[j1] counts
            // as a tie, so that every retry below makes progress.
            let lowered = self.v[j1] - (u2 - u1);
            let strictly_better = lowered < self.v[j1];
            if i0 != NONE {
                if strictly_better {
                    // Make j1 exactly as good as j2 for row i: (i, j1)
                    // stays row-minimal, other rows see j1 as worse.
                    self.v[j1] = lowered;
                } else {
                    // Tie: take j2 instead, possibly free.
                    j1 = j2;
                    i0 = self.y[j2];
                }
            }
            self.x[i] = j1 as u32;
            self.y[j1] = i as u32;
            if i0 != NONE {
                self.x[i0 as usize] = NONE;
                if strictly_better {
                    // Retry the displaced row right away (JV).
                    k -= 1;
                    free[k] = i0;
                } else {
                    free[kept] = i0;
                    kept += 1;
                }
            }
        }
        free.truncate(kept);
        stats.arr_steps += steps;
    }

    /// Warm start from `hint`. Returns the free rows, or `None` if the hint
    /// is too poor and the cold start should be used instead.
    ///
    /// The hint `p` is optimal exactly when there are column duals with
    /// `v[j] ≤ v[p_i] + c[i, j] - c[i, p_i]` for all `i, j` (every hint edge
    /// row-minimal). These are shortest-path constraints on the columns
    /// (edge `p_i → j` of length `c[i, j] - c[i, p_i]`), solved here by a
    /// queue-based Bellman–Ford (SPFA) started from the column minima.
    /// Two things keep it cheap:
    ///
    /// * Relative to the column minima `φ` (where `v` starts, and which it
    ///   never exceeds), only the few columns with the smallest
    ///   `c[i, j] - φ[j]` can bind for row `i` while
    ///   `v[p_i] - c[i, p_i] + cutoff_i ≥ 0`, so after one full pass per
    ///   row only its [`WARM_CANDIDATES`] candidate columns are relaxed
    ///   (the full row again, with a candidate list twice as long, once
    ///   `v[p_i]` has dropped further).
    /// * Where the hint is not optimal the constraints contain negative
    ///   cycles and Bellman–Ford would diverge: cycles in the predecessor
    ///   graph are looked for regularly, and their rows are dropped from
    ///   the hint, as are rows relaxed more than
    ///   [`WARM_MAX_RELAX_PER_ROW`] times.
    ///
    /// Rows whose hint edge is already its column's minimum start out
    /// satisfied and are only relaxed once their hint column's dual drops.
    /// Finally exactly the rows whose constraints hold keep their hint
    /// column (all rows not dropped if the queue ran empty; otherwise a full
    /// pass checks each), so the solver's invariant holds whatever happened
    /// before, and the remaining rows are augmented.
    fn init_warm(&mut self, hint: &[usize], stats: &mut SolveStats) -> Option<Vec<u32>> {
        let n = self.n;
        let k = WARM_CANDIDATES.min(n);
        let mut row_of = vec![0u32; n];
        for (i, &p) in hint.iter().enumerate() {
            row_of[p] = i as u32;
        }
        let (phi, _) = self.column_minima();

        self.v.copy_from_slice(&phi);
        // A row whose hint edge is its column's minimum has
        // `a = v[p] - c[i, p] = 0`, and its constraints `v[j] ≤ c[i, j]`
        // hold for v = φ: it needs relaxing only once `v[p]` drops. (On
        // diagonal-dominant similarity matrices that is nearly every row.)
        let queued: Vec<bool> = hint
            .iter()
            .enumerate()
            .map(|(i, &p)| phi[p] < Self::cost(self.m[i * n + p]))
            .collect();
        let mut spfa = Spfa {
            queue: (0..n as u32).filter(|&i| queued[i as usize]).collect(),
            queued,
            dropped: vec![false; n],
            parent: vec![NONE; n],
            row_of,
        };
        // Candidate columns of each row, and the cost relative to the column
        // minima below which all of the row's other columns lie (-∞ until
        // the first relaxation builds the list).
        let mut cands: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut cutoff = vec![f64::NEG_INFINITY; n];
        let mut relax_count = vec![0u32; n];
        let mut selector = Vec::new();
        let mut full_relaxations = 0usize;
        let mut since_check = 0usize;
        let mut converged = true;
        while let Some(i) = spfa.queue.pop_front() {
            let i = i as usize;
            spfa.queued[i] = false;
            if spfa.dropped[i] {
                continue;
            }
            relax_count[i] += 1;
            if relax_count[i] > WARM_MAX_RELAX_PER_ROW {
                spfa.dropped[i] = true;
                continue;
            }
            stats.warm_relaxations += 1;
            let p = hint[i];
            let row = self.row(i);
            let a = self.v[p] - Self::cost(row[p]);
            if a + cutoff[i] >= 0.0 {
                spfa.relax_columns::<MAX>(&mut self.v, row, i, p, a, &cands[i]);
            } else {
                // First relaxation of the row, or its hint column's dual has
                // dropped past what the candidates cover: relax the whole
                // row and (re)build a list twice as long, up to the cap.
                full_relaxations += 1;
                if full_relaxations > WARM_MAX_FULL_RELAX_FACTOR * n {
                    // Give up; the final check frees what is not tight.
                    converged = false;
                    break;
                }
                let want = (2 * cands[i].len()).clamp(k, WARM_MAX_CANDIDATES.min(n).max(k));
                if want > cands[i].len() {
                    cutoff[i] = select_smallest(
                        row.iter().zip(&phi).map(|(&s, &f)| Self::cost(s) - f),
                        want,
                        &mut selector,
                        &mut cands[i],
                    );
                }
                spfa.relax_row::<MAX>(&mut self.v, row, i, p, a);
            }
            since_check += 1;
            if since_check >= n {
                since_check = 0;
                spfa.drop_cycles(hint);
            }
        }

        // Keep the rows whose hint edge is row-minimal. If the queue ran
        // empty, every row not dropped satisfies its constraints (each was
        // relaxed after the last drop of its hint column's dual, or never
        // needed to be); otherwise check them all, with the arithmetic of
        // the relaxation.
        let mut free = Vec::new();
        for (i, &p) in hint.iter().enumerate() {
            let tight = !spfa.dropped[i] && (converged || self.satisfies_hint_constraints(i, p));
            if tight {
                self.x[i] = p as u32;
                self.y[p] = i as u32;
            } else {
                free.push(i as u32);
            }
        }
        let kept = n - free.len();
        if (kept as f64) < WARM_MIN_KEPT_FRACTION * n as f64 {
            return None;
        }
        stats.warm_used = true;
        stats.warm_kept = kept;
        Some(free)
    }

    /// Whether `v[j] ≤ v[p] - c[i, p] + c[i, j]` for all `j ≠ p`.
    fn satisfies_hint_constraints(&self, i: usize, p: usize) -> bool {
        let row = self.row(i);
        let a = self.v[p] - Self::cost(row[p]);
        // Column p itself is skipped: `a + c[i, p]` is `v[p]` only up to
        // rounding.
        let satisfied = |cols: std::ops::Range<usize>| {
            row[cols.clone()]
                .iter()
                .zip(&self.v[cols])
                .fold(true, |ok, (&s, &vj)| ok & (a + Self::cost(s) >= vj))
        };
        satisfied(0..p) && satisfied(p + 1..self.n)
    }

    /// Raises the dual of every free column to the largest value the
    /// invariant allows, `min over assigned rows i of c[i, j] - u_i`. Free
    /// columns are the targets of the augmenting searches, and a search
    /// scans every column that is closer than its target, so making the
    /// targets as attractive as possible shortens all searches. Used after
    /// a warm start, whose dropped rows leave their columns with duals
    /// pulled down by the negative cycles they were on.
    fn raise_free_column_duals(&mut self) {
        let free_cols: Vec<usize> = (0..self.n).filter(|&j| self.y[j] == NONE).collect();
        let mut bound = vec![f64::INFINITY; free_cols.len()];
        for (i, &xi) in self.x.iter().enumerate() {
            if xi == NONE {
                continue;
            }
            let row = self.row(i);
            let u = Self::cost(row[xi as usize]) - self.v[xi as usize];
            for (b, &f) in bound.iter_mut().zip(&free_cols) {
                *b = b.min(Self::cost(row[f]) - u);
            }
        }
        for (&b, &f) in bound.iter().zip(&free_cols) {
            if b.is_finite() {
                self.v[f] = b;
            }
        }
    }

    /// Dijkstra search from free row `i0` to the nearest free column, then
    /// augmentation along the path and the dual update (JV's AUGMENT,
    /// Crouse's Alg. 4). Columns are visited in their natural order so that
    /// every scan streams one matrix row; a scanned column is taken out of
    /// the search by setting its dual to -∞ for the duration (its distances
    /// become +∞), and its true dual is restored in the final update.
    fn augment(&mut self, i0: usize, ws: &mut Workspace, stats: &mut SolveStats) {
        let n = self.n;
        let Workspace {
            dist,
            pred,
            pred_col,
            scanned,
        } = ws;
        scanned.clear();
        let row = self.row(i0);
        let mut best = f64::INFINITY;
        let mut best_j = 0;
        for j in 0..n {
            let d = Self::cost(row[j]) - self.v[j];
            dist[j] = d;
            pred[j] = i0 as u32;
            // Ties go to free columns, which ends the search at once.
            if d <= best && (d < best || self.y[j] == NONE) {
                best = d;
                best_j = j;
            }
        }
        let (sink, lowest) = loop {
            let j = best_j;
            let dj = dist[j];
            pred_col[j] = pred[j];
            if self.y[j] == NONE {
                break (j, dj);
            }
            // Scan column j: relax the row assigned to it.
            scanned.push((j as u32, dj, self.v[j]));
            let i = self.y[j] as usize;
            let row = self.row(i);
            // The distance through row i to column k is dj plus the reduced
            // cost of (i, k) minus that of (i, j).
            let h = dj - (Self::cost(row[j]) - self.v[j]);
            self.v[j] = f64::NEG_INFINITY;
            dist[j] = f64::INFINITY;
            best = f64::INFINITY;
            best_j = 0;
            let iu = i as u32;
            for (k, ((dk, pk), (&s, &vk))) in dist
                .iter_mut()
                .zip(pred.iter_mut())
                .zip(row.iter().zip(self.v.iter()))
                .enumerate()
            {
                let r = h + Self::cost(s) - vk;
                if r < *dk {
                    *dk = r;
                    *pk = iu;
                }
                let d = *dk;
                if d <= best && (d < best || self.y[k] == NONE) {
                    best = d;
                    best_j = k;
                }
            }
            // There are as many free columns as free rows, and free columns
            // are never scanned, so an unscanned free column with a finite
            // distance always remains: `best` is finite, `best_j` unscanned,
            // and the loop ends after at most n scans.
            debug_assert!(best.is_finite() && scanned.len() < n);
        };
        stats.scanned_columns += scanned.len();
        // Dual update: scanned columns move by (their distance - lowest) ≤ 0.
        for &(j, dj, vj) in scanned.iter() {
            self.v[j as usize] = vj + (dj - lowest);
        }
        // Augment along the predecessor chain.
        let mut j = sink;
        loop {
            let i = pred_col[j] as usize;
            self.y[j] = i as u32;
            let previous = std::mem::replace(&mut self.x[i], j as u32);
            if i == i0 {
                break;
            }
            j = previous as usize;
        }
    }
}

/// State of the warm start's Bellman–Ford (SPFA) over the hint.
struct Spfa {
    /// Rows whose hint column's dual dropped since they were last relaxed.
    queue: std::collections::VecDeque<u32>,
    queued: Vec<bool>,
    /// Rows given up on (they start free).
    dropped: Vec<bool>,
    /// Row that last lowered each column's dual (predecessor graph).
    parent: Vec<u32>,
    /// Hint row of each column.
    row_of: Vec<u32>,
}

impl Spfa {
    /// Lowers `v[j]` to `t` on behalf of row `i` and queues the row whose
    /// constraints this may break.
    #[inline]
    fn lower(&mut self, v: &mut [f64], j: usize, t: f64, i: usize) {
        v[j] = t;
        self.parent[j] = i as u32;
        let r = self.row_of[j] as usize;
        if !self.queued[r] && !self.dropped[r] {
            self.queued[r] = true;
            self.queue.push_back(r as u32);
        }
    }

    /// Relaxes every constraint of row `i`: `v[j] ≤ a + c[i, j]`.
    fn relax_row<const MAX: bool>(
        &mut self,
        v: &mut [f64],
        row: &[f64],
        i: usize,
        p: usize,
        a: f64,
    ) {
        let cost = |s: f64| if MAX { -s } else { s };
        // Most relaxations lower nothing or little: test a block first
        // (branch-free, vectorisable), then update it element by element.
        const BLOCK: usize = 64;
        let mut start = 0;
        while start < row.len() {
            let end = (start + BLOCK).min(row.len());
            let any = v[start..end]
                .iter()
                .zip(&row[start..end])
                .fold(false, |any, (&vj, &s)| any | (a + cost(s) < vj));
            if any {
                for j in start..end {
                    let t = a + cost(row[j]);
                    if t < v[j] && j != p {
                        self.lower(v, j, t, i);
                    }
                }
            }
            start = end;
        }
    }

    /// Relaxes the constraints of row `i` on the candidate columns only.
    fn relax_columns<const MAX: bool>(
        &mut self,
        v: &mut [f64],
        row: &[f64],
        i: usize,
        p: usize,
        a: f64,
        cands: &[u32],
    ) {
        for &j in cands {
            let j = j as usize;
            let t = a + if MAX { -row[j] } else { row[j] };
            if t < v[j] && j != p {
                self.lower(v, j, t, i);
            }
        }
    }

    /// Drops the rows on every cycle of the predecessor graph (column `j`
    /// → column of the row that last lowered `v[j]`): in Bellman–Ford such
    /// a cycle is a negative cycle, i.e. the hint can be improved there.
    fn drop_cycles(&mut self, hint: &[usize]) {
        let n = self.parent.len();
        // 0 = unvisited, 1 = on the current walk, 2 = done.
        let mut state = vec![0u8; n];
        let parent_col = |parent: &[u32], dropped: &[bool], j: usize| -> Option<usize> {
            let r = parent[j];
            (r != NONE && !dropped[r as usize]).then(|| hint[r as usize])
        };
        for start in 0..n {
            let mut j = start;
            while state[j] == 0 {
                state[j] = 1;
                match parent_col(&self.parent, &self.dropped, j) {
                    Some(c) => j = c,
                    None => break,
                }
            }
            if state[j] == 1 && parent_col(&self.parent, &self.dropped, j).is_some() {
                // j is on a cycle of the current walk: drop its rows.
                let first = j;
                loop {
                    let r = self.parent[j] as usize;
                    self.dropped[r] = true;
                    j = hint[r];
                    if j == first {
                        break;
                    }
                }
            }
            let mut j = start;
            while state[j] == 1 {
                state[j] = 2;
                let r = self.parent[j];
                if r == NONE {
                    break;
                }
                j = hint[r as usize];
            }
        }
    }
}

/// Sets `out` to the indices of the `k` smallest of `values` (in no
/// particular order) and returns the largest of them, so that every other
/// value is at least that large (+∞ if there are no others).
fn select_smallest(
    values: impl Iterator<Item = f64>,
    k: usize,
    buf: &mut Vec<(f64, u32)>,
    out: &mut Vec<u32>,
) -> f64 {
    let by_value = |a: &(f64, u32), b: &(f64, u32)| a.0.total_cmp(&b.0);
    let largest = |buf: &[(f64, u32)]| buf.iter().fold(f64::NEG_INFINITY, |m, e| m.max(e.0));
    buf.clear();
    // Values at or above `threshold` cannot be among the k smallest.
    let mut threshold = f64::INFINITY;
    let mut len = 0usize;
    for (j, r) in values.enumerate() {
        len += 1;
        if r < threshold {
            buf.push((r, j as u32));
            if buf.len() == 2 * k {
                buf.select_nth_unstable_by(k - 1, by_value);
                buf.truncate(k);
                threshold = largest(buf);
            }
        }
    }
    if buf.len() > k {
        buf.select_nth_unstable_by(k - 1, by_value);
        buf.truncate(k);
    }
    out.clear();
    out.extend(buf.iter().map(|e| e.1));
    if len <= k {
        f64::INFINITY
    } else {
        largest(buf)
    }
}

/// Scratch buffers of the Dijkstra search, reused across augmentations.
struct Workspace {
    /// Tentative distance of each column (+∞ once scanned).
    dist: Vec<f64>,
    /// Row that last lowered each column's distance.
    pred: Vec<u32>,
    /// Predecessor row of each scanned column and of the sink.
    pred_col: Vec<u32>,
    /// Scanned columns with their final distance and their dual.
    scanned: Vec<(u32, f64, f64)>,
}

impl Workspace {
    fn new(n: usize) -> Self {
        Workspace {
            dist: vec![0.0; n],
            pred: vec![NONE; n],
            pred_col: vec![NONE; n],
            scanned: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// SplitMix64: a small deterministic generator for test matrices.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [0, 1).
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Standard normal (Box–Muller).
        fn normal(&mut self) -> f64 {
            let u = 1.0 - self.uniform();
            let v = self.uniform();
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
        fn permutation(&mut self, n: usize) -> Vec<usize> {
            let mut p: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                p.swap(i, self.below(i + 1));
            }
            p
        }
    }

    fn uniform_matrix(rng: &mut Rng, n: usize) -> Vec<f64> {
        (0..n * n).map(|_| rng.uniform()).collect()
    }

    fn score_of(s: &[f64], n: usize, perm: &[usize]) -> f64 {
        perm.iter().enumerate().map(|(i, &j)| s[i * n + j]).sum()
    }

    fn assert_permutation(perm: &[usize], n: usize) {
        assert_eq!(perm.len(), n);
        let mut seen = vec![false; n];
        for &j in perm {
            assert!(j < n && !seen[j], "not a permutation: {perm:?}");
            seen[j] = true;
        }
    }

    /// Best total over all permutations (Heap's algorithm), maximising or
    /// minimising.
    fn brute_force(s: &[f64], n: usize, maximise: bool) -> f64 {
        let mut p: Vec<usize> = (0..n).collect();
        let better = |a: f64, b: f64| if maximise { a > b } else { a < b };
        let mut best = score_of(s, n, &p);
        let mut c = vec![0usize; n];
        let mut i = 0;
        while i < n {
            if c[i] < i {
                if i % 2 == 0 {
                    p.swap(0, i);
                } else {
                    p.swap(c[i], i);
                }
                let t = score_of(s, n, &p);
                if better(t, best) {
                    best = t;
                }
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        best
    }

    /// Optimal total of `pathfinding::kuhn_munkres` (an independent
    /// Hungarian implementation) on integer scores.
    fn kuhn_munkres_score(ints: &[i64], n: usize) -> i64 {
        let weights = pathfinding::matrix::Matrix::from_vec(n, n, ints.to_vec()).unwrap();
        pathfinding::kuhn_munkres::kuhn_munkres(&weights).0
    }

    /// Solves integer scores with both solvers and checks the totals are
    /// equal (f64 arithmetic is exact on these integers).
    fn assert_agrees_with_kuhn_munkres(ints: &[i64], n: usize, warm: Option<&[usize]>) {
        let s: Vec<f64> = ints.iter().map(|&x| x as f64).collect();
        let a = maximize(&s, n, warm, "test").unwrap();
        assert_permutation(&a.perm, n);
        assert_eq!(a.score, score_of(&s, n, &a.perm));
        assert_eq!(a.score, kuhn_munkres_score(ints, n) as f64, "n = {n}");
    }

    fn assert_close(a: f64, b: f64) {
        assert!(
            (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs())),
            "{a} != {b}"
        );
    }

    #[test]
    fn picks_the_anti_diagonal_when_it_scores_highest() {
        // Anti-diagonal 3 + 5 + 7 = 15 beats the diagonal 1 + 5 + 1 = 7
        // and every other permutation.
        let s = [
            1.0, 0.0, 3.0, //
            0.0, 5.0, 0.0, //
            7.0, 0.0, 1.0,
        ];
        let a = maximize(&s, 3, None, "g").unwrap();
        assert_eq!(a.perm, vec![2, 1, 0]);
        assert_eq!(a.score, 15.0);
    }

    #[test]
    fn solves_a_hand_checked_three_by_three() {
        // The six permutations score [0,1,2]: 4+0+2 = 6, [0,2,1]: 4+5+2 = 11,
        // [1,0,2]: 1+2+2 = 5, [1,2,0]: 1+5+3 = 9, [2,0,1]: 3+2+2 = 7,
        // [2,1,0]: 3+0+3 = 6. The maximum is 11 at [0, 2, 1].
        let s = [
            4.0, 1.0, 3.0, //
            2.0, 0.0, 5.0, //
            3.0, 2.0, 2.0,
        ];
        let a = maximize(&s, 3, None, "g").unwrap();
        assert_eq!(a.perm, vec![0, 2, 1]);
        assert_eq!(a.score, 11.0);
    }

    #[test]
    fn minimize_finds_the_cheapest_assignment() {
        // Same matrix as above: the minimum is 5 at [1, 0, 2].
        let c = [
            4.0, 1.0, 3.0, //
            2.0, 0.0, 5.0, //
            3.0, 2.0, 2.0,
        ];
        let a = minimize(&c, 3, None, "g").unwrap();
        assert_eq!(a.perm, vec![1, 0, 2]);
        assert_eq!(a.score, 5.0);
    }

    #[test]
    fn handles_negative_scores() {
        // Row 0 prefers column 1 (-1 > -5), row 1 column 0 (-2 > -3):
        // total -3.
        let s = [-5.0, -1.0, -2.0, -3.0];
        let a = maximize(&s, 2, None, "g").unwrap();
        assert_eq!(a.perm, vec![1, 0]);
        assert_eq!(a.score, -3.0);
    }

    #[test]
    fn an_empty_problem_gives_an_empty_assignment() {
        let a = maximize(&[], 0, None, "g").unwrap();
        assert!(a.perm.is_empty());
        assert_eq!(a.score, 0.0);
        let a = maximize(&[], 0, Some(&[]), "g").unwrap();
        assert!(a.perm.is_empty());
    }

    #[test]
    fn a_one_by_one_problem_assigns_the_only_column() {
        let a = maximize(&[-2.5], 1, None, "g").unwrap();
        assert_eq!(a.perm, vec![0]);
        assert_eq!(a.score, -2.5);
        let a = maximize(&[-2.5], 1, Some(&[0]), "g").unwrap();
        assert_eq!(a.perm, vec![0]);
    }

    #[test]
    fn an_all_zero_matrix_gives_some_permutation_scoring_zero() {
        for n in [2, 5, 64, 300] {
            let s = vec![0.0; n * n];
            let (a, stats) = maximize_with_stats(&s, n, None, "g").unwrap();
            assert_permutation(&a.perm, n);
            assert_eq!(a.score, 0.0);
            assert_eq!(stats.constant_rows, n);
            let a = maximize(&s, n, Some(&Rng(n as u64).permutation(n)), "g").unwrap();
            assert_permutation(&a.perm, n);
        }
    }

    #[test]
    fn identical_rows_score_the_sum_of_the_row_whatever_the_permutation() {
        let mut rng = Rng(7);
        let n = 40;
        let row: Vec<f64> = (0..n).map(|_| (rng.below(5)) as f64).collect();
        let s: Vec<f64> = (0..n).flat_map(|_| row.iter().copied()).collect();
        let a = maximize(&s, n, None, "g").unwrap();
        assert_permutation(&a.perm, n);
        assert_eq!(a.score, row.iter().sum::<f64>());
    }

    #[test]
    fn duplicated_rows_are_split_over_their_best_columns() {
        // Rows 0 and 1 are equal and both want columns 0 and 1; row 2 takes
        // column 2. Best: 9 + 8 + 1 = 18.
        let s = [
            9.0, 8.0, 0.0, //
            9.0, 8.0, 0.0, //
            9.0, 8.0, 1.0,
        ];
        let a = maximize(&s, 3, None, "g").unwrap();
        assert_eq!(a.score, 18.0);
        assert_eq!(a.perm[2], 2);
    }

    #[test]
    fn dead_units_with_all_zero_rows_are_solved_exactly() {
        // 10% (and 40%) zero rows: the constant-row start; a single zero row:
        // JV's start. Both checked against Kuhn–Munkres.
        for (n, dead) in [(50, 5), (50, 20), (120, 12), (120, 1), (200, 20)] {
            let mut rng = Rng(n as u64 * 31 + dead as u64);
            let mut ints: Vec<i64> = (0..n * n).map(|_| rng.below(1000) as i64).collect();
            for &i in &rng.permutation(n)[..dead] {
                ints[i * n..(i + 1) * n].fill(0);
            }
            assert_agrees_with_kuhn_munkres(&ints, n, None);
        }
    }

    #[test]
    fn dead_units_with_all_zero_columns_are_solved_exactly() {
        let n = 80;
        let mut rng = Rng(99);
        let mut ints: Vec<i64> = (0..n * n).map(|_| rng.below(1000) as i64).collect();
        for &j in &rng.permutation(n)[..8] {
            for i in 0..n {
                ints[i * n + j] = 0;
            }
        }
        assert_agrees_with_kuhn_munkres(&ints, n, None);
    }

    #[test]
    fn constant_rows_of_different_values_are_placed_optimally() {
        // Constant rows contribute the same whatever their column, so the
        // optimum is that of the other rows; check against Kuhn–Munkres.
        let n = 150;
        let mut rng = Rng(5);
        let mut ints: Vec<i64> = (0..n * n).map(|_| rng.below(100) as i64).collect();
        for (k, &i) in rng.permutation(n)[..30].iter().enumerate() {
            ints[i * n..(i + 1) * n].fill(k as i64 * 7 - 50);
        }
        assert_agrees_with_kuhn_munkres(&ints, n, None);
    }

    #[test]
    fn rejects_a_nan_with_its_position() {
        let mut s = vec![0.5; 16];
        s[2 * 4 + 3] = f64::NAN;
        let err = maximize(&s, 4, None, "layer1.mlp").unwrap_err().to_string();
        assert_eq!(
            err,
            "assignment problem for group `layer1.mlp`: score matrix has 1 non-finite \
             entry (first at row 2, column 3: NaN)"
        );
    }

    #[test]
    fn rejects_infinities_and_counts_them() {
        let mut s = vec![0.5; 25];
        s[7] = f64::INFINITY;
        s[20] = f64::NEG_INFINITY;
        s[21] = f64::NAN;
        let err = maximize(&s, 5, Some(&[0, 1, 2, 3, 4]), "g")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("score matrix has 3 non-finite entries (first at row 1, column 2: inf)"),
            "{err}"
        );
        let err = minimize(&s, 5, None, "g").unwrap_err().to_string();
        assert!(err.contains("3 non-finite entries"), "{err}");
    }

    #[test]
    fn rejects_scores_too_large_to_add_safely() {
        let mut s = vec![1.0; 9];
        s[4] = -1e200;
        let err = maximize(&s, 3, None, "g").unwrap_err();
        assert!(matches!(err, Error::Assignment { .. }));
        assert!(
            err.to_string().contains("(row 1, column 1: -1e200)"),
            "{err}"
        );
    }

    #[test]
    fn rejects_scores_of_the_wrong_length() {
        let err = maximize(&[1.0; 8], 3, None, "g").unwrap_err().to_string();
        assert_eq!(
            err,
            "assignment problem for group `g`: score matrix has 8 entries, expected 3×3 = 9"
        );
        assert!(maximize(&[1.0], 0, None, "g").is_err());
    }

    #[test]
    fn rejects_a_warm_hint_that_is_not_a_permutation() {
        let s = [1.0; 9];
        let cases: [(&[usize], &str); 3] = [
            (&[0, 1], "warm-start permutation has length 2, expected 3"),
            (&[0, 3, 1], "entry 1 is 3"),
            (&[2, 0, 2], "column 2 appears twice (again at entry 2)"),
        ];
        for (hint, reason) in cases {
            let err = maximize(&s, 3, Some(hint), "g").unwrap_err();
            assert!(matches!(err, Error::Assignment { .. }));
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn a_garbage_warm_hint_still_gives_the_optimum() {
        for n in [10, 100, 400] {
            let mut rng = Rng(n as u64);
            let s = uniform_matrix(&mut rng, n);
            let cold = maximize(&s, n, None, "g").unwrap();
            let reversed: Vec<usize> = (0..n).rev().collect();
            for hint in [rng.permutation(n), reversed, (0..n).collect()] {
                let warm = maximize(&s, n, Some(&hint), "g").unwrap();
                assert_permutation(&warm.perm, n);
                assert_close(warm.score, cold.score);
            }
        }
    }

    #[test]
    fn the_optimal_hint_is_kept_whole_and_needs_no_augmentation() {
        let n = 300;
        let s = uniform_matrix(&mut Rng(3), n);
        let cold = maximize(&s, n, None, "g").unwrap();
        let (warm, stats) = maximize_with_stats(&s, n, Some(&cold.perm), "g").unwrap();
        assert_eq!(warm.perm, cold.perm);
        assert!(stats.warm_used);
        assert_eq!(stats.warm_kept, n);
        assert_eq!(stats.augmentations, 0);
    }

    #[test]
    fn a_warm_start_after_a_small_perturbation_finds_the_new_optimum() {
        let n = 300;
        let mut rng = Rng(11);
        let s = uniform_matrix(&mut rng, n);
        let before = maximize(&s, n, None, "g").unwrap();
        let perturbed: Vec<f64> = s
            .iter()
            .map(|&x| x + (rng.uniform() - 0.5) * 0.2 / n as f64)
            .collect();
        let cold = maximize(&perturbed, n, None, "g").unwrap();
        let (warm, stats) = maximize_with_stats(&perturbed, n, Some(&before.perm), "g").unwrap();
        assert_close(warm.score, cold.score);
        assert!(stats.warm_used, "{stats:?}");
        assert!(stats.warm_kept > n / 2, "{stats:?}");
    }

    #[test]
    fn warm_start_on_integer_ties_matches_kuhn_munkres() {
        for n in [30, 60] {
            let mut rng = Rng(n as u64 + 1000);
            let ints: Vec<i64> = (0..n * n).map(|_| rng.below(3) as i64).collect();
            assert_agrees_with_kuhn_munkres(&ints, n, Some(&rng.permutation(n)));
            let s: Vec<f64> = ints.iter().map(|&x| x as f64).collect();
            let cold = maximize(&s, n, None, "g").unwrap();
            assert_agrees_with_kuhn_munkres(&ints, n, Some(&cold.perm));
        }
    }

    #[test]
    fn recovers_the_hidden_permutation_of_a_similarity_matrix() {
        // S = A Bᵀ with B = A[π] + noise: S[i, j] ≈ a_i · a_π(j), largest
        // where π(j) = i, so the optimum is perm[i] = π⁻¹(i).
        let (n, d) = (256, 64);
        let mut rng = Rng(2024);
        let a: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
        let pi = rng.permutation(n);
        let b: Vec<f64> = (0..n)
            .flat_map(|j| (0..d).map(move |k| (j, k)))
            .map(|(j, k)| a[pi[j] * d + k] + 0.1 * rng.normal())
            .collect();
        let s: Vec<f64> = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| (0..d).map(|k| a[i * d + k] * b[j * d + k]).sum())
            .collect();
        let mut expected = vec![0; n];
        for (j, &i) in pi.iter().enumerate() {
            expected[i] = j;
        }
        assert_eq!(maximize(&s, n, None, "g").unwrap().perm, expected);
        let hint = rng.permutation(n);
        assert_eq!(maximize(&s, n, Some(&hint), "g").unwrap().perm, expected);
    }

    #[test]
    fn maximize_and_minimize_agree_on_negated_scores() {
        let n = 120;
        let s = uniform_matrix(&mut Rng(8), n);
        let neg: Vec<f64> = s.iter().map(|&x| -x).collect();
        let a = maximize(&s, n, None, "g").unwrap();
        let b = minimize(&neg, n, None, "g").unwrap();
        assert_close(a.score, -b.score);
    }

    #[test]
    fn agrees_with_kuhn_munkres_on_scaled_real_scores() {
        // Real scores scaled by 1e6 and rounded to integers, so that both
        // solvers see exactly the same problem.
        for (seed, n) in [(1, 7), (2, 20), (3, 45), (4, 60), (5, 60)] {
            let mut rng = Rng(seed);
            let ints: Vec<i64> = (0..n * n)
                .map(|_| (rng.normal() * 1e6).round() as i64)
                .collect();
            assert_agrees_with_kuhn_munkres(&ints, n, None);
        }
    }

    #[test]
    fn agrees_with_kuhn_munkres_at_a_few_hundred_rows() {
        // Large enough for augmenting row reduction and long augmenting
        // paths; one wide and one tie-heavy value range.
        for (n, range) in [(300, 1_000_000), (300, 4)] {
            let mut rng = Rng(n as u64 * range);
            let ints: Vec<i64> = (0..n * n)
                .map(|_| rng.below(range as usize) as i64)
                .collect();
            assert_agrees_with_kuhn_munkres(&ints, n, None);
        }
    }

    fn matrix_and_hint(
        values: impl Strategy<Value = f64> + Clone,
    ) -> impl Strategy<Value = (usize, Vec<f64>, Vec<usize>)> {
        (1usize..=7).prop_flat_map(move |n| {
            (
                Just(n),
                proptest::collection::vec(values.clone(), n * n),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matches_brute_force_on_small_random_matrices(
            (n, s, hint) in matrix_and_hint(-1e3f64..1e3)
        ) {
            let best = brute_force(&s, n, true);
            let a = maximize(&s, n, None, "p").unwrap();
            assert_permutation(&a.perm, n);
            prop_assert!((a.score - best).abs() <= 1e-9 * (1.0 + best.abs()));
            let w = maximize(&s, n, Some(&hint), "p").unwrap();
            prop_assert!((w.score - best).abs() <= 1e-9 * (1.0 + best.abs()));
            let worst = brute_force(&s, n, false);
            let m = minimize(&s, n, Some(&hint), "p").unwrap();
            prop_assert!((m.score - worst).abs() <= 1e-9 * (1.0 + worst.abs()));
        }

        #[test]
        fn matches_brute_force_on_small_integer_matrices_with_ties(
            (n, s, hint) in matrix_and_hint((0i32..3).prop_map(f64::from))
        ) {
            // Integer scores: every solver step is exact, so equality is.
            let best = brute_force(&s, n, true);
            prop_assert_eq!(maximize(&s, n, None, "p").unwrap().score, best);
            prop_assert_eq!(maximize(&s, n, Some(&hint), "p").unwrap().score, best);
            let worst = brute_force(&s, n, false);
            prop_assert_eq!(minimize(&s, n, None, "p").unwrap().score, worst);
        }

        #[test]
        fn matches_brute_force_with_zero_rows(
            (n, mut s, hint) in matrix_and_hint((0i32..10).prop_map(f64::from)),
            dead in proptest::collection::vec(any::<bool>(), 7),
        ) {
            for i in 0..n {
                if dead[i] {
                    s[i * n..(i + 1) * n].fill(0.0);
                }
            }
            let best = brute_force(&s, n, true);
            prop_assert_eq!(maximize(&s, n, None, "p").unwrap().score, best);
            prop_assert_eq!(maximize(&s, n, Some(&hint), "p").unwrap().score, best);
        }

        #[test]
        fn agrees_with_kuhn_munkres_on_random_sizes(
            n in 8usize..=60,
            range in prop_oneof![Just(2i64), Just(10), Just(1_000_000)],
            seed in any::<u64>(),
            warm in any::<bool>(),
        ) {
            let mut rng = Rng(seed);
            let ints: Vec<i64> = (0..n * n).map(|_| rng.below(range as usize) as i64).collect();
            let hint = rng.permutation(n);
            assert_agrees_with_kuhn_munkres(&ints, n, warm.then_some(&hint[..]));
        }
    }
}
