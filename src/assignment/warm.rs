//! The warm start from a previous permutation: a queue-based Bellman–Ford
//! (SPFA) over the hint's dual constraints, dropping rows on negative
//! cycles, then keeping exactly the hint edges that are row-minimal.

use super::lap::{Lap, select_smallest};
use super::{
    NONE, SolveStats, WARM_CANDIDATES, WARM_MAX_CANDIDATES, WARM_MAX_FULL_RELAX_FACTOR,
    WARM_MAX_RELAX_PER_ROW, WARM_MIN_KEPT_FRACTION,
};

impl<const MAX: bool> Lap<'_, MAX> {
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
    pub(super) fn init_warm(&mut self, hint: &[usize], stats: &mut SolveStats) -> Option<Vec<u32>> {
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
