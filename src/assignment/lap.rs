//! The solver state and its cold start, augmenting row reduction and
//! Dijkstra augmentation (JV 1987, Crouse 2016).

use super::{ARR_PASSES, ARR_STEP_FACTOR, CONSTANT_ROWS_DIVISOR, NONE, SolveStats};

/// Solver state for one problem. `MAX` selects costs `c = -s` (maximise
/// scores) or `c = s` (minimise costs).
pub(super) struct Lap<'a, const MAX: bool> {
    pub(super) m: &'a [f64],
    pub(super) n: usize,
    /// Row → assigned column (`NONE` if free).
    pub(super) x: Vec<u32>,
    /// Column → assigned row (`NONE` if free).
    pub(super) y: Vec<u32>,
    /// Column duals.
    pub(super) v: Vec<f64>,
}

impl<'a, const MAX: bool> Lap<'a, MAX> {
    pub(super) fn new(m: &'a [f64], n: usize) -> Self {
        Lap {
            m,
            n,
            x: vec![NONE; n],
            y: vec![NONE; n],
            v: vec![0.0; n],
        }
    }

    #[inline(always)]
    pub(super) fn cost(s: f64) -> f64 {
        if MAX { -s } else { s }
    }

    #[inline(always)]
    pub(super) fn row(&self, i: usize) -> &'a [f64] {
        &self.m[i * self.n..(i + 1) * self.n]
    }

    pub(super) fn run(&mut self, warm: Option<&[usize]>, stats: &mut SolveStats) {
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
    pub(super) fn column_minima(&self) -> (Vec<f64>, Vec<u32>) {
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
    pub(super) fn init_cold(&mut self) -> Vec<u32> {
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

/// Sets `out` to the indices of the `k` smallest of `values` (in no
/// particular order) and returns the largest of them, so that every other
/// value is at least that large (+∞ if there are no others).
pub(super) fn select_smallest(
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
    pub(super) fn new(n: usize) -> Self {
        Workspace {
            dist: vec![0.0; n],
            pred: vec![NONE; n],
            pred_col: vec![NONE; n],
            scanned: Vec::new(),
        }
    }
}
