//! Weight matching (Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin",
//! Algorithm 1): coordinate descent over permutation groups, each step an
//! exact linear assignment problem.
//!
//! Starting from the identity (or given permutations), every sweep visits
//! the groups in a random order (seeded); for group `g` it builds
//! `S = Σ_members A_t · π(B_t)ᵀ` with every other group's current
//! permutation applied to B ([`crate::similarity`]), solves
//! `max_p Σ_i S[i, p[i]]` exactly ([`crate::assignment`]) warm-started from
//! `g`'s current permutation, and keeps the new permutation only if it
//! scores strictly better. A sweep with no improvement ends the descent.
//! A visit is skipped when no group sharing a tensor with `g` has changed
//! since `g`'s last visit: its matrix and warm start would be the same, so
//! the solve would repeat its last answer (this changes no result, only
//! saves the work, which matters most in the final, confirming sweep).
//! The objective reported is `Σ_t ⟨A_t, π(B)_t⟩` over all float tensors, in
//! f64.
//!
//! For more than two models, [`merge_many`] is the paper's MergeMany: each
//! model in turn is matched to the mean of the others until no permutation
//! changes.

use std::time::Instant;

use rayon::prelude::*;

use crate::assignment;
use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, Result};
use crate::permute::{ModelPermutation, permuted};
use crate::similarity;
use crate::spec::PermutationSpec;

/// A new permutation must beat the current one by this relative margin to be
/// accepted: the paper's `newL > oldL + 1e-12`, made relative so it is
/// meaningful for both tiny and huge score scales.
const IMPROVEMENT_EPS: f64 = 1e-12;
/// Default cap on sweeps (the reference implementation uses 100).
pub const DEFAULT_MAX_ITER: usize = 100;

/// Weights that can be read as f32 tensors by name: a checkpoint, or a
/// virtual model such as the mean of several checkpoints.
pub trait WeightSource: Sync {
    /// Shape of a tensor.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// A float tensor decoded to f32.
    fn read(&self, name: &str) -> Result<Vec<f32>>;
    /// Names of all float tensors.
    fn float_names(&self) -> Vec<String>;
    /// The slices `rows` (indices along axis 0, in this order) of a float
    /// tensor, decoded to f32 and concatenated. The default reads the whole
    /// tensor; checkpoints and permuted views decode only what is asked, so
    /// large tensors can be streamed in row chunks.
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let shape = self.shape(name)?;
        let x = self.read(name)?;
        let row: usize = shape.iter().skip(1).product();
        let mut out = Vec::with_capacity(rows.len() * row);
        for &r in rows {
            out.extend_from_slice(&x[r * row..(r + 1) * row]);
        }
        Ok(out)
    }
}

/// Row chunks hold about this many elements (16 MiB of f32) when a large
/// tensor is streamed through a similarity matrix.
const CHUNK_ELEMS: usize = 1 << 22;

impl WeightSource for Checkpoint {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.require(name)?.shape.clone())
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        let v = self.read_f32(t)?;
        self.release(t, 0..t.nbytes());
        Ok(v)
    }
    fn float_names(&self) -> Vec<String> {
        self.tensors()
            .iter()
            .filter(|t| dtype::is_float(t.dtype))
            .map(|t| t.name.clone())
            .collect()
    }
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        if !dtype::is_float(t.dtype) {
            return self.read_f32(t);
        }
        let row: usize = t.shape.iter().skip(1).product();
        let esize = dtype::size_of(t.dtype);
        let bytes = self.bytes(t);
        let mut out = vec![0f32; rows.len() * row];
        // Decode runs of consecutive rows at once, then drop their pages.
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[j - 1] + 1 {
                j += 1;
            }
            let (b0, b1) = (rows[i] * row * esize, (rows[j - 1] + 1) * row * esize);
            dtype::decode_f32(t.dtype, &bytes[b0..b1], &mut out[i * row..j * row]);
            self.release(t, b0..b1);
            i = j;
        }
        Ok(out)
    }
}

/// A checkpoint seen through a permutation.
pub struct Permuted<'a> {
    pub source: &'a dyn WeightSource,
    pub perm: &'a ModelPermutation,
}

impl WeightSource for Permuted<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.source.shape(name)
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let x = self.source.read(name)?;
        Ok(match self.perm.get(name) {
            Some(p) => permuted(&x, &self.source.shape(name)?, p),
            None => x,
        })
    }
    fn float_names(&self) -> Vec<String> {
        self.source.float_names()
    }
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let Some(p) = self.perm.get(name) else {
            return self.source.read_rows(name, rows);
        };
        let shape = self.source.shape(name)?;
        let src_rows: Vec<usize> = match p.axes.first().and_then(|m| m.as_ref()) {
            Some(m) => rows.iter().map(|&r| m[r]).collect(),
            None => rows.to_vec(),
        };
        let x = self.source.read_rows(name, &src_rows)?;
        if p.axes.iter().skip(1).all(|m| m.is_none()) {
            return Ok(x);
        }
        let mut rest = p.clone();
        rest.axes[0] = None;
        let mut sub = shape;
        sub[0] = rows.len();
        Ok(permuted(&x, &sub, &rest))
    }
}

/// The element-wise mean of several sources (MergeMany's target).
pub struct Mean<'a> {
    pub sources: Vec<&'a dyn WeightSource>,
}

impl WeightSource for Mean<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.sources[0].shape(name)
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let mut acc = self.sources[0].read(name)?;
        for s in &self.sources[1..] {
            for (a, b) in acc.iter_mut().zip(s.read(name)?) {
                *a += b;
            }
        }
        let k = self.sources.len() as f32;
        acc.iter_mut().for_each(|a| *a /= k);
        Ok(acc)
    }
    fn float_names(&self) -> Vec<String> {
        self.sources[0].float_names()
    }
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let mut acc = self.sources[0].read_rows(name, rows)?;
        for s in &self.sources[1..] {
            for (a, b) in acc.iter_mut().zip(s.read_rows(name, rows)?) {
                *a += b;
            }
        }
        let k = self.sources.len() as f32;
        acc.iter_mut().for_each(|a| *a /= k);
        Ok(acc)
    }
}

/// Options of a weight-matching run.
#[derive(Clone, Debug)]
pub struct AlignOptions {
    pub seed: u64,
    pub max_iter: usize,
    /// Starting permutations (one per spec group), default identity.
    pub init: Option<Vec<Vec<usize>>>,
}

impl Default for AlignOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            max_iter: DEFAULT_MAX_ITER,
            init: None,
        }
    }
}

/// Per-group outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupReport {
    pub name: String,
    pub kind: Option<String>,
    pub size: usize,
    /// ⟨S, P⟩ for the starting permutation at the group's first visit.
    pub score_before: f64,
    /// ⟨S, P⟩ for the final permutation at the group's last visit.
    pub score_after: f64,
    /// Fraction of units not at their own index in the final permutation.
    pub churn: f64,
    /// Times the group's permutation changed.
    pub updates: usize,
    pub seconds_similarity: f64,
    pub seconds_assignment: f64,
    /// Visits that rebuilt the similarity matrix and solved.
    pub visits: usize,
    /// Visits skipped because no group sharing a tensor with this one had
    /// changed since its last visit (the solve would repeat itself).
    pub skipped: usize,
}

/// The result of weight matching B onto A.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Alignment {
    /// One permutation per spec group: B's unit `perm[u]` goes to position `u`.
    pub perms: Vec<Vec<usize>>,
    pub objective_before: f64,
    pub objective_after: f64,
    pub sweeps: usize,
    pub converged: bool,
    pub seconds: f64,
    /// Wall-clock seconds of each sweep.
    pub sweep_seconds: Vec<f64>,
    pub groups: Vec<GroupReport>,
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny seeded generator, enough
/// to shuffle the group visiting order reproducibly.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Fisher–Yates shuffle.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Σ_t ⟨A_t, B_t⟩ over the given float tensors, in f64.
pub fn objective(a: &dyn WeightSource, b: &dyn WeightSource, names: &[String]) -> Result<f64> {
    names
        .par_iter()
        .map(|n| {
            let dot = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| *p as f64 * *q as f64)
                    .sum::<f64>()
            };
            let shape = a.shape(n)?;
            let numel: usize = shape.iter().product();
            if numel <= CHUNK_ELEMS || shape.len() < 2 {
                return Ok(dot(&a.read(n)?, &b.read(n)?));
            }
            // Large tensors in row chunks: no whole f32 copies.
            let row: usize = shape[1..].iter().product::<usize>().max(1);
            let per = (CHUNK_ELEMS / row).max(1);
            let mut sum = 0.0;
            for start in (0..shape[0]).step_by(per) {
                let rows: Vec<usize> = (start..(start + per).min(shape[0])).collect();
                sum += dot(&a.read_rows(n, &rows)?, &b.read_rows(n, &rows)?);
            }
            Ok(sum)
        })
        .try_reduce(|| 0.0, |p, q| Ok(p + q))
}

/// Builds the per-tensor maps of `perms` for `spec` (shapes from `src`).
pub fn model_permutation(
    spec: &PermutationSpec,
    src: &dyn WeightSource,
    perms: &[Vec<usize>],
    skip: Option<usize>,
) -> Result<ModelPermutation> {
    spec.model_permutation(&|name: &str| src.shape(name), perms, skip)
}

/// Weight matching of `b` onto `a`. `progress` receives one line per step.
///
/// When the spec has per-head groups (kinds `qk_dims`, `vo_dims`, `heads`
/// named `stem.k` with siblings `stem.0`, `stem.1`, … of one size) and no
/// starting permutations are given, the descent runs in two phases: first
/// with each set of siblings tied to one shared permutation (a valid
/// sub-symmetry whose head similarities are not scrambled by independent
/// within-head orders), then with every group free, starting from there.
/// Independent per-head groups from the identity get stuck in local optima
/// where a wrong head pairing is propped up by within-head orders tuned to
/// it; the tied phase finds the pairing first.
pub fn weight_matching(
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Alignment> {
    let start = Instant::now();
    if opts.init.is_none()
        && let Some((tied, owner)) = tie_siblings(spec)
    {
        let first = descend(&tied, a, b, opts, progress)?;
        let init: Vec<Vec<usize>> = owner.iter().map(|&t| first.perms[t].clone()).collect();
        let second = AlignOptions {
            init: Some(init),
            ..opts.clone()
        };
        let mut r = descend(spec, a, b, &second, progress)?;
        r.objective_before = first.objective_before;
        r.sweeps += first.sweeps;
        let mut sweeps = first.sweep_seconds;
        sweeps.extend(&r.sweep_seconds);
        r.sweep_seconds = sweeps;
        for g in &mut r.groups {
            // Time and visits of the tied phase, charged to its groups.
            if let Some(t) = first.groups.iter().find(|t| {
                t.name == g.name
                    || g.name
                        .strip_prefix(t.name.as_str())
                        .is_some_and(is_index_suffix)
            }) {
                g.seconds_similarity += t.seconds_similarity / siblings(spec, &t.name) as f64;
                g.seconds_assignment += t.seconds_assignment / siblings(spec, &t.name) as f64;
            }
        }
        r.seconds = start.elapsed().as_secs_f64();
        return Ok(r);
    }
    descend(spec, a, b, opts, progress)
}

/// `.17`: a sibling index.
fn is_index_suffix(s: &str) -> bool {
    s.strip_prefix('.')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
}

/// Groups of `spec` named `stem` or `stem.k`.
fn siblings(spec: &PermutationSpec, stem: &str) -> usize {
    spec.groups
        .iter()
        .filter(|g| g.name == stem || g.name.strip_prefix(stem).is_some_and(is_index_suffix))
        .count()
        .max(1)
}

/// The spec with per-head sibling groups merged into one group each, and
/// for every original group the index of the group standing for it.
fn tie_siblings(spec: &PermutationSpec) -> Option<(PermutationSpec, Vec<usize>)> {
    let stem_of = |g: &crate::spec::PermGroup| -> Option<String> {
        let kind = g.kind.as_deref()?;
        if !matches!(kind, "qk_dims" | "vo_dims" | "heads") {
            return None;
        }
        let dot = g.name.rfind('.')?;
        is_index_suffix(&g.name[dot..]).then(|| g.name[..dot].to_string())
    };
    let mut tied = PermutationSpec::new(spec.architecture.clone(), Vec::new());
    let mut owner = Vec::with_capacity(spec.groups.len());
    let mut by_stem: std::collections::HashMap<String, usize> = Default::default();
    let mut merged = false;
    for g in &spec.groups {
        if let Some(stem) = stem_of(g) {
            if let Some(&t) = by_stem.get(&stem)
                && tied.groups[t].size == g.size
            {
                tied.groups[t].members.extend(g.members.iter().cloned());
                owner.push(t);
                merged = true;
                continue;
            }
            by_stem.insert(stem.clone(), tied.groups.len());
            owner.push(tied.groups.len());
            tied.groups.push(crate::spec::PermGroup {
                name: stem,
                ..g.clone()
            });
            continue;
        }
        owner.push(tied.groups.len());
        tied.groups.push(g.clone());
    }
    merged.then_some((tied, owner))
}

fn descend(
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Alignment> {
    let start = Instant::now();
    let names = a.float_names();
    let mut perms: Vec<Vec<usize>> = match &opts.init {
        Some(p) => p.clone(),
        None => spec.groups.iter().map(|g| (0..g.size).collect()).collect(),
    };
    if perms.len() != spec.groups.len() {
        return Err(Error::Invalid(format!(
            "{} initial permutations for {} groups",
            perms.len(),
            spec.groups.len()
        )));
    }
    let initial = model_permutation(spec, b, &perms, None)?;
    let objective_before = objective(
        a,
        &Permuted {
            source: b,
            perm: &initial,
        },
        &names,
    )?;
    let mut reports: Vec<GroupReport> = spec
        .groups
        .iter()
        .map(|g| GroupReport {
            name: g.name.clone(),
            kind: g.kind.clone(),
            size: g.size,
            score_before: f64::NAN,
            score_after: f64::NAN,
            churn: 0.0,
            updates: 0,
            seconds_similarity: 0.0,
            seconds_assignment: 0.0,
            visits: 0,
            skipped: 0,
        })
        .collect();
    // Groups sharing a tensor with each group: the only ones whose
    // permutations enter its similarity matrix.
    let neighbors: Vec<Vec<usize>> = {
        let mut by_tensor: std::collections::HashMap<&str, Vec<usize>> = Default::default();
        for (gi, g) in spec.groups.iter().enumerate() {
            for m in &g.members {
                let v = by_tensor.entry(m.tensor.as_str()).or_default();
                if v.last() != Some(&gi) {
                    v.push(gi);
                }
            }
        }
        let mut out = vec![Vec::new(); spec.groups.len()];
        for v in by_tensor.values() {
            for &g in v {
                out[g].extend(v.iter().copied().filter(|&h| h != g));
            }
        }
        for o in &mut out {
            o.sort_unstable();
            o.dedup();
        }
        out
    };
    // Step counters: when each group was last solved, and last changed.
    let mut step = 0usize;
    let mut last_visit: Vec<Option<usize>> = vec![None; spec.groups.len()];
    let mut last_change: Vec<usize> = vec![0; spec.groups.len()];
    let mut sweep_seconds = Vec::new();
    let mut rng = SplitMix64(opts.seed);
    let mut order: Vec<usize> = (0..spec.groups.len()).collect();
    let mut sweeps = 0;
    let mut converged = spec.groups.is_empty();
    while sweeps < opts.max_iter && !converged {
        sweeps += 1;
        let sweep_start = Instant::now();
        rng.shuffle(&mut order);
        let mut improved = false;
        for &g in &order {
            let group = &spec.groups[g];
            let n = group.size;
            step += 1;
            // Same similarity matrix and warm start as at the last visit:
            // the solve would give the same answer, so skip it.
            if let Some(v) = last_visit[g]
                && neighbors[g].iter().all(|&h| last_change[h] < v)
            {
                reports[g].skipped += 1;
                continue;
            }
            last_visit[g] = Some(step);
            let t0 = Instant::now();
            let others = model_permutation(spec, b, &perms, Some(g))?;
            let view = Permuted {
                source: b,
                perm: &others,
            };
            let after = later_maps(spec, g, b, &perms)?;
            let s = if after.iter().all(Option::is_none) {
                similarity_matrix(spec, g, a, &view)?
            } else {
                relabelled_similarity(spec, g, a, &view, &after)?
            };
            let t1 = Instant::now();
            let old: f64 = (0..n).map(|i| s[i * n + perms[g][i]]).sum();
            let sol = assignment::maximize(&s, n, Some(&perms[g]), &group.name)?;
            let t2 = Instant::now();
            let r = &mut reports[g];
            if r.score_before.is_nan() {
                r.score_before = old;
            }
            r.seconds_similarity += (t1 - t0).as_secs_f64();
            r.seconds_assignment += (t2 - t1).as_secs_f64();
            r.visits += 1;
            if sol.score > old + IMPROVEMENT_EPS * old.abs().max(1.0) {
                improved = true;
                last_change[g] = step;
                r.updates += 1;
                r.score_after = sol.score;
                perms[g] = sol.perm;
            } else {
                r.score_after = old;
            }
            progress(&format!(
                "sweep {sweeps} group {} ({n} units): {:.6e} -> {:.6e}",
                group.name, old, r.score_after
            ));
        }
        sweep_seconds.push(sweep_start.elapsed().as_secs_f64());
        converged = !improved;
    }
    for (r, p) in reports.iter_mut().zip(&perms) {
        let moved = p.iter().enumerate().filter(|(i, j)| i != *j).count();
        r.churn = if p.is_empty() {
            0.0
        } else {
            moved as f64 / p.len() as f64
        };
    }
    let final_perm = model_permutation(spec, b, &perms, None)?;
    let objective_after = objective(
        a,
        &Permuted {
            source: b,
            perm: &final_perm,
        },
        &names,
    )?;
    Ok(Alignment {
        perms,
        objective_before,
        objective_after,
        sweeps,
        converged,
        seconds: start.elapsed().as_secs_f64(),
        sweep_seconds,
        groups: reports,
    })
}

/// The `n × n` similarity matrix of group `g` between `a` and `b` (b with the
/// other groups' permutations already applied).
pub fn similarity_matrix(
    spec: &PermutationSpec,
    g: usize,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
) -> Result<Vec<f64>> {
    let group = &spec.groups[g];
    let n = group.size;
    let mut s = vec![0.0f64; n * n];
    for m in &group.members {
        let shape = a.shape(&m.tensor)?;
        let numel: usize = shape.iter().product();
        if m.axis == 0 || numel <= CHUNK_ELEMS || shape[0] < 2 {
            let x = a.read(&m.tensor)?;
            let y = b.read(&m.tensor)?;
            similarity::accumulate(&mut s, &x, &y, &shape, m, n);
            continue;
        }
        // Stream in chunks of whole axis-0 slices: never a whole f32 copy
        // of an embedding-sized tensor, for either model.
        let row: usize = shape[1..].iter().product::<usize>().max(1);
        let per = (CHUNK_ELEMS / row).max(1);
        let mut acc = vec![0.0f32; n * n];
        let mut sub = shape.clone();
        for start in (0..shape[0]).step_by(per) {
            let rows: Vec<usize> = (start..(start + per).min(shape[0])).collect();
            let x = a.read_rows(&m.tensor, &rows)?;
            let y = b.read_rows(&m.tensor, &rows)?;
            sub[0] = rows.len();
            similarity::accumulate_f32(&mut acc, &x, &y, &sub, m, n);
        }
        for (x, y) in s.iter_mut().zip(&acc) {
            *x += *y as f64;
        }
    }
    Ok(s)
}

/// For each member of group `g`: the composed map of the groups *after* `g`
/// in spec order acting on the same tensor axis, or `None` when they leave
/// it in place.
///
/// Maps compose in spec order, `M = M_before ∘ m_g ∘ M_after` (output
/// position → stored position), while a coordinate step needs `g` applied
/// last: `M = M_before ∘ M_after ∘ m'_g` with `m'_g = M_after⁻¹ ∘ m_g ∘
/// M_after`. `m'_g` is `g` acting on relabelled positions: unit `u` owns
/// `M_after⁻¹` of its positions. For groups that commute with the later
/// ones (nested blocks) the relabelling changes nothing; for a per-head
/// group listed before the head group it moves the group's units to the
/// slot where the head group puts that head.
fn later_maps(
    spec: &PermutationSpec,
    g: usize,
    src: &dyn WeightSource,
    perms: &[Vec<usize>],
) -> Result<Vec<Option<Vec<usize>>>> {
    spec.groups[g]
        .members
        .iter()
        .map(|m| {
            let len = src.shape(&m.tensor)?[m.axis];
            let mut map: Option<Vec<usize>> = None;
            for (h, group) in spec.groups.iter().enumerate().skip(g + 1) {
                if perms[h].iter().enumerate().all(|(i, &j)| i == j) {
                    continue;
                }
                for mh in group
                    .members
                    .iter()
                    .filter(|x| x.tensor == m.tensor && x.axis == m.axis)
                {
                    let cur = map.get_or_insert_with(|| (0..len).collect());
                    let old = cur.clone();
                    for r in 0..mh.repeat {
                        for (u, &pu) in perms[h].iter().enumerate() {
                            for i in 0..mh.block {
                                cur[mh.position(group.size, r, u, i)] =
                                    old[mh.position(group.size, r, pu, i)];
                            }
                        }
                    }
                }
            }
            Ok(map.filter(|v| v.iter().enumerate().any(|(i, &j)| i != j)))
        })
        .collect()
}

/// [`similarity_matrix`] for a group whose members' positions are
/// relabelled through the later groups' maps (see [`later_maps`]).
fn relabelled_similarity(
    spec: &PermutationSpec,
    g: usize,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    after: &[Option<Vec<usize>>],
) -> Result<Vec<f64>> {
    let group = &spec.groups[g];
    let n = group.size;
    let mut s = vec![0.0f64; n * n];
    for (m, map) in group.members.iter().zip(after) {
        let shape = a.shape(&m.tensor)?;
        let x = a.read(&m.tensor)?;
        let y = b.read(&m.tensor)?;
        match map {
            None => similarity::accumulate(&mut s, &x, &y, &shape, m, n),
            Some(map) => {
                let inv = crate::permute::inverse(map);
                let units: Vec<Vec<usize>> = (0..n)
                    .map(|u| {
                        (0..m.repeat)
                            .flat_map(|r| (0..m.block).map(move |i| (r, i)))
                            .map(|(r, i)| inv[m.position(n, r, u, i)])
                            .collect()
                    })
                    .collect();
                similarity::accumulate_positions(&mut s, &x, &y, &shape, m.axis, &units);
            }
        }
    }
    Ok(s)
}

/// Result of MergeMany over N models.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ManyAlignment {
    /// One set of group permutations per model (the first may move too).
    pub perms: Vec<Vec<Vec<usize>>>,
    pub rounds: usize,
    pub seconds: f64,
}

/// MergeMany (Git Re-Basin, Algorithm 3): repeatedly match each model to the
/// mean of all the others (each seen through its current permutation) until
/// a full round changes no permutation or `max_iter` rounds have run.
pub fn merge_many(
    spec: &PermutationSpec,
    models: &[&dyn WeightSource],
    opts: &AlignOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ManyAlignment> {
    let start = Instant::now();
    let k = models.len();
    let identity: Vec<Vec<usize>> = spec.groups.iter().map(|g| (0..g.size).collect()).collect();
    let mut perms = vec![identity; k];
    let mut rng = SplitMix64(opts.seed);
    let mut order: Vec<usize> = (0..k).collect();
    let mut rounds = 0;
    while rounds < opts.max_iter {
        rounds += 1;
        rng.shuffle(&mut order);
        let mut changed = false;
        for &i in &order {
            let maps: Vec<ModelPermutation> = perms
                .iter()
                .map(|p| model_permutation(spec, models[0], p, None))
                .collect::<Result<_>>()?;
            let views: Vec<Permuted> = (0..k)
                .filter(|&j| j != i)
                .map(|j| Permuted {
                    source: models[j],
                    perm: &maps[j],
                })
                .collect();
            let target = Mean {
                sources: views.iter().map(|v| v as &dyn WeightSource).collect(),
            };
            let sub = AlignOptions {
                seed: rng.next(),
                max_iter: opts.max_iter,
                init: Some(perms[i].clone()),
            };
            let r = weight_matching(spec, &target, models[i], &sub, &|_| {})?;
            if r.perms != perms[i] {
                changed = true;
                perms[i] = r.perms;
            }
            progress(&format!(
                "round {rounds} model {}: objective {:.6e}",
                i + 1,
                r.objective_after
            ));
        }
        if !changed {
            break;
        }
    }
    Ok(ManyAlignment {
        perms,
        rounds,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permute::TensorPermutation;
    use crate::spec::{AxisMember, PermGroup};
    use std::collections::HashMap;

    /// Tensors in memory, with the default `read_rows`.
    struct Mem(HashMap<String, (Vec<usize>, Vec<f32>)>);

    impl WeightSource for Mem {
        fn shape(&self, name: &str) -> Result<Vec<usize>> {
            Ok(self.0[name].0.clone())
        }
        fn read(&self, name: &str) -> Result<Vec<f32>> {
            Ok(self.0[name].1.clone())
        }
        fn float_names(&self) -> Vec<String> {
            let mut v: Vec<String> = self.0.keys().cloned().collect();
            v.sort();
            v
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64(seed);
        (0..n)
            .map(|_| (r.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn group(name: &str, size: usize, kind: &str, members: Vec<AxisMember>) -> PermGroup {
        PermGroup {
            name: name.into(),
            size,
            kind: Some(kind.into()),
            members,
        }
    }

    /// Per-head V dims (2 heads of 3) listed before the head group.
    fn per_head_spec() -> PermutationSpec {
        let dims = |k: usize| {
            group(
                &format!("vo_dims.{k}"),
                3,
                "vo_dims",
                vec![AxisMember {
                    start: 3 * k,
                    ..AxisMember::plain("v", 0)
                }],
            )
        };
        PermutationSpec::new(
            None,
            vec![
                dims(0),
                dims(1),
                group(
                    "heads",
                    2,
                    "heads",
                    vec![AxisMember {
                        block: 3,
                        ..AxisMember::plain("v", 0)
                    }],
                ),
            ],
        )
    }

    #[test]
    fn sibling_per_head_groups_are_tied_into_one_for_the_first_phase() {
        let (tied, owner) = tie_siblings(&per_head_spec()).expect("siblings");
        assert_eq!(tied.groups.len(), 2);
        assert_eq!(tied.groups[0].name, "vo_dims");
        assert_eq!(tied.groups[0].members.len(), 2);
        assert_eq!(owner, vec![0, 0, 1]);
        // No siblings: nothing to tie.
        let mut single = per_head_spec();
        single.groups.remove(1);
        assert!(tie_siblings(&single).is_none());
    }

    #[test]
    fn a_per_head_group_is_relabelled_to_the_slot_its_head_moves_to() {
        let spec = per_head_spec();
        let src = Mem([("v".to_string(), (vec![6, 1], values(6, 9)))].into());
        // Heads swapped: head 0's dims end up in slot 1 (positions 3..6).
        let perms = vec![vec![0, 1, 2], vec![0, 1, 2], vec![1, 0]];
        let maps = later_maps(&spec, 0, &src, &perms).unwrap();
        assert_eq!(maps[0], Some(vec![3, 4, 5, 0, 1, 2]));
        // The head group itself is last: nothing after it.
        assert_eq!(later_maps(&spec, 2, &src, &perms).unwrap(), vec![None]);
    }

    #[test]
    fn permuted_rows_are_the_rows_of_the_permuted_tensor() {
        let src = Mem([("w".to_string(), (vec![4, 3], values(12, 1)))].into());
        let perm = ModelPermutation {
            tensors: [(
                "w".to_string(),
                TensorPermutation {
                    axes: vec![Some(vec![2, 0, 3, 1]), Some(vec![1, 2, 0])],
                },
            )]
            .into(),
        };
        let view = Permuted {
            source: &src,
            perm: &perm,
        };
        let whole = view.read("w").unwrap();
        let rows = view.read_rows("w", &[3, 1]).unwrap();
        assert_eq!(rows[..3], whole[9..12]);
        assert_eq!(rows[3..], whole[3..6]);
    }

    /// A 3-layer MLP with an embedding-like input table `e` large enough to
    /// be streamed in row chunks (its axis 1 is group h1, like the residual
    /// stream's embedding), and B = A with both hidden layers permuted.
    fn mlp_pair() -> (PermutationSpec, Mem, Mem, Vec<Vec<usize>>) {
        let (h1, h2) = (6usize, 5usize);
        let rows = CHUNK_ELEMS / h1 + 40;
        let spec = PermutationSpec::new(
            None,
            vec![
                PermGroup {
                    name: "h1".into(),
                    size: h1,
                    kind: None,
                    members: vec![AxisMember::plain("e", 1), AxisMember::plain("w2", 1)],
                },
                PermGroup {
                    name: "h2".into(),
                    size: h2,
                    kind: None,
                    members: vec![AxisMember::plain("w2", 0), AxisMember::plain("w3", 1)],
                },
            ],
        );
        let a = Mem([
            ("e".to_string(), (vec![rows, h1], values(rows * h1, 2))),
            ("w2".to_string(), (vec![h2, h1], values(h2 * h1, 3))),
            ("w3".to_string(), (vec![3, h2], values(3 * h2, 4))),
        ]
        .into());
        let perms = vec![vec![3, 0, 5, 1, 4, 2], vec![4, 2, 0, 1, 3]];
        let map = model_permutation(&spec, &a, &perms, None).unwrap();
        let view = Permuted {
            source: &a,
            perm: &map,
        };
        let b = Mem(a
            .0
            .keys()
            .map(|k| (k.clone(), (a.0[k].0.clone(), view.read(k).unwrap())))
            .collect());
        (spec, a, b, perms)
    }

    #[test]
    fn a_streamed_member_gives_the_same_similarity_as_a_whole_one() {
        let (spec, a, b, _) = mlp_pair();
        // Group h1's member e (axis 1, > CHUNK_ELEMS) is streamed.
        let s = similarity_matrix(&spec, 0, &a, &b).unwrap();
        let n = 6;
        let mut whole = vec![0.0f64; n * n];
        for m in &spec.groups[0].members {
            let shape = a.shape(&m.tensor).unwrap();
            similarity::accumulate(
                &mut whole,
                &a.read(&m.tensor).unwrap(),
                &b.read(&m.tensor).unwrap(),
                &shape,
                m,
                n,
            );
        }
        for (x, y) in s.iter().zip(&whole) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
        }
    }

    #[test]
    fn visits_whose_neighbours_did_not_change_are_skipped_and_the_answer_is_exact() {
        let (spec, a, b, perms) = mlp_pair();
        let r = weight_matching(&spec, &a, &b, &AlignOptions::default(), &|_| {}).unwrap();
        assert!(r.converged);
        // Recovering B's permutation: aligned unit u is B's unit p[u].
        for (found, applied) in r.perms.iter().zip(&perms) {
            let inv = crate::permute::inverse(applied);
            assert_eq!(found, &inv);
        }
        // The confirming sweep skips at least the group whose only neighbour
        // did not change after it was solved.
        let skipped: usize = r.groups.iter().map(|g| g.skipped).sum();
        assert!(skipped >= 1, "{:?}", r.groups);
        assert_eq!(r.sweep_seconds.len(), r.sweeps);
        let objective_a = objective(&a, &a, &a.float_names()).unwrap();
        assert!((r.objective_after - objective_a).abs() <= 1e-6 * objective_a);
    }
}
