//! The bookkeeping of a descent, kept out of Algorithm 1's loop: when each
//! group was last solved and last changed (for the skip rule), per-group
//! reports, sweep times, and the final [`Alignment`].

use std::collections::HashMap;
use std::time::Instant;

use super::start::{StartPhase, StartVisit};
use super::step::Visit;
use crate::observe::{Event, Observer, Silent};
use crate::permute::GroupPerms;
use crate::spec::PermutationSpec;

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
    /// How the starting permutation was found (absent: identity or given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<StartPhase>,
    /// Times the permutation was set by a joint step of its heads group.
    pub joint_updates: usize,
    /// Member terms of its similarity matrices reused from an earlier visit
    /// (same permutation of B's tensor), and computed.
    pub terms_reused: usize,
    pub terms_computed: usize,
    /// Member terms updated from a kept term under a nearby permutation
    /// (see [`crate::alignment::terms`]).
    pub terms_updated: usize,
}

/// One descent of a run with restarts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestartReport {
    pub restart: usize,
    /// The seed of its group order.
    pub seed: u64,
    pub objective_after: f64,
    pub sweeps: usize,
    pub converged: bool,
    pub seconds: f64,
}

impl RestartReport {
    pub(super) fn of(restart: usize, seed: u64, a: &Alignment) -> Self {
        Self {
            restart,
            seed,
            objective_after: a.objective_after,
            sweeps: a.sweeps,
            converged: a.converged,
            seconds: a.seconds,
        }
    }
}

/// The result of weight matching B onto A.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Alignment {
    /// One permutation per spec group: B's unit `perm[u]` goes to position `u`.
    pub perms: GroupPerms,
    pub objective_before: f64,
    pub objective_after: f64,
    pub sweeps: usize,
    pub converged: bool,
    pub seconds: f64,
    /// Wall-clock seconds of each sweep.
    pub sweep_seconds: Vec<f64>,
    pub groups: Vec<GroupReport>,
    /// The restart kept (highest objective), and every restart.
    pub kept_restart: usize,
    pub restarts: Vec<RestartReport>,
}

/// What one descent records.
pub(super) struct Log<'s> {
    spec: &'s PermutationSpec,
    reports: Vec<GroupReport>,
    /// Groups sharing a tensor with each group: the only ones whose
    /// permutations enter its similarity matrix.
    neighbors: Vec<Vec<usize>>,
    /// Step counter (one step per group in each sweep's order), and when
    /// each group was last solved and last changed.
    step: usize,
    last_visit: Vec<Option<usize>>,
    last_change: Vec<usize>,
    sweeps: usize,
    sweep_seconds: Vec<f64>,
    sweep_start: Instant,
}

impl<'s> Log<'s> {
    pub(super) fn new(spec: &'s PermutationSpec, phase: Option<&[Option<StartPhase>]>) -> Self {
        let reports = spec
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| GroupReport {
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
                start: phase.and_then(|p| p[i]),
                joint_updates: 0,
                terms_reused: 0,
                terms_computed: 0,
                terms_updated: 0,
            })
            .collect();
        let n = spec.groups.len();
        Self {
            spec,
            reports,
            neighbors: neighbors(spec),
            step: 0,
            last_visit: vec![None; n],
            last_change: vec![0; n],
            sweeps: 0,
            sweep_seconds: Vec::new(),
            sweep_start: Instant::now(),
        }
    }

    /// Sweeps begun so far.
    pub(super) fn sweeps(&self) -> usize {
        self.sweeps
    }

    pub(super) fn begin_sweep(&mut self) {
        self.sweeps += 1;
        self.sweep_start = Instant::now();
    }

    pub(super) fn end_sweep(&mut self) {
        self.sweep_seconds
            .push(self.sweep_start.elapsed().as_secs_f64());
    }

    /// Counts a step for group `g`; true (and counted as skipped) when no
    /// group sharing a tensor with `g` changed since `g` was last solved:
    /// the same similarity matrix and warm start would give the same answer.
    pub(super) fn unchanged_since_last_visit(&mut self, g: usize) -> bool {
        self.step += 1;
        if let Some(v) = self.last_visit[g]
            && self.neighbors[g].iter().all(|&h| self.last_change[h] < v)
        {
            self.reports[g].skipped += 1;
            return true;
        }
        self.last_visit[g] = Some(self.step);
        false
    }

    /// Records a visit of group `g` (its new permutation kept if `accepted`)
    /// and reports it.
    pub(super) fn visited(
        &mut self,
        g: usize,
        visit: &Visit,
        accepted: bool,
        observer: &dyn Observer,
    ) {
        let r = &mut self.reports[g];
        if r.score_before.is_nan() {
            r.score_before = visit.current;
        }
        r.seconds_similarity += visit.seconds_similarity;
        r.seconds_assignment += visit.seconds_assignment;
        r.visits += 1;
        r.terms_reused += visit.terms.reused;
        r.terms_computed += visit.terms.computed;
        r.terms_updated += visit.terms.updated;
        if accepted {
            self.last_change[g] = self.step;
            r.updates += 1;
            r.score_after = visit.best.score;
        } else {
            r.score_after = visit.current;
        }
        observer.event(&Event::GroupVisited {
            sweep: self.sweeps,
            group: &self.spec.groups[g].name,
            units: self.spec.groups[g].size,
            score_before: visit.current,
            score_after: r.score_after,
        });
    }

    /// Records the propagation sweep of the anchored start, before the
    /// first sweep (unreported to the observer): its visits count as the
    /// groups' visits, their time and score included, and its changes as
    /// changes, so a group whose plain step saw the same neighbours as
    /// the first sweep would is skipped there (the same matrix and warm
    /// start would repeat the answer).
    pub(super) fn started(&mut self, visits: &[StartVisit]) {
        for v in visits {
            self.step += 1;
            if v.plain {
                self.last_visit[v.group] = Some(self.step);
            }
            self.visited(v.group, &v.visit, v.accepted, &Silent);
            for &c in &v.moved {
                self.last_change[c] = self.step;
                self.reports[c].joint_updates += 1;
            }
        }
    }

    /// Group `c`'s permutation, `old`, replaced by `new` along with the
    /// joint step of its heads group.
    pub(super) fn moved_along(&mut self, c: usize, old: &[usize], new: &[usize]) {
        if old != new {
            self.last_change[c] = self.step;
            self.reports[c].joint_updates += 1;
        }
    }

    /// The [`Alignment`] of the descent that ended with `perms`.
    pub(super) fn finish(
        mut self,
        perms: GroupPerms,
        objective_before: f64,
        objective_after: f64,
        converged: bool,
        start: Instant,
    ) -> Alignment {
        for (g, r) in self.reports.iter_mut().enumerate() {
            r.churn = perms.churn(g);
        }
        Alignment {
            perms,
            objective_before,
            objective_after,
            sweeps: self.sweeps,
            converged,
            seconds: start.elapsed().as_secs_f64(),
            sweep_seconds: self.sweep_seconds,
            groups: self.reports,
            kept_restart: 0,
            restarts: Vec::new(),
        }
    }
}

/// For each group, the other groups sharing a tensor with it.
fn neighbors(spec: &PermutationSpec) -> Vec<Vec<usize>> {
    let mut by_tensor: HashMap<&str, Vec<usize>> = HashMap::new();
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
}
