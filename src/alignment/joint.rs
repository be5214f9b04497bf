//! The joint head step: a heads group and its per-head within-head groups
//! solved together, so that head matching does not depend on the order of
//! the dimensions inside each head.
//!
//! While within-head dimensions are unmatched, every pair of heads scores
//! alike under a plain step and the head permutation stays where it is. The
//! joint step scores head pair `(h, h')` by the best the two heads' own
//! blocks can reach over their within-head groups (a small weight matching
//! on the pair's Gram blocks: one assignment per within-head group,
//! alternated while they are coupled, as GQA query heads and V/O dimensions
//! are), takes the head permutation from an outer assignment over those
//! scores, and sets the within-head groups of the chosen pairs from the
//! inner optima. No other group acts on the axes of the heads group's
//! members, so the change of the objective is exact from the Gram blocks.
//!
//! A heads group qualifies when every group nested in its heads lies inside
//! one head, is listed before it (it acts on B's stored head and travels
//! with it), and every head has the same within-head groups in the same
//! layout; the per-head spec of [`crate::spec::per_head`] is of that form.
//! RoPE needs nothing special: positions no within-head group moves (Q/K
//! dimensions under rotary embeddings) count where they are.

use std::collections::HashMap;

use rayon::prelude::*;

use super::source::{Permuted, WeightSource};
use super::{IMPROVEMENT_EPS, model_permutation};
use crate::assignment;
use crate::error::Result;
use crate::permute::GroupPerms;
use crate::similarity;
use crate::spec::PermutationSpec;
use crate::spec::per_head::unit_positions;

/// Most alternations of the within-head groups of one head pair.
const LOCAL_ROUNDS: usize = 20;

/// One within-head group, the same in every head (`groups[j]` is head `j`'s).
#[derive(Clone, Debug)]
struct Slot {
    size: usize,
    /// Per member: the heads group's member it lies in, and for each unit
    /// its positions as indices inside that member's head block.
    members: LocalMembers,
    groups: Vec<usize>,
}

/// A within-head group's members: the heads group's member each lies in, and
/// per unit its positions inside that member's head block.
type LocalMembers = Vec<(usize, Vec<Vec<usize>>)>;

/// A tensor as read for a joint step: shape, A, and B with the other groups.
type ReadPair = (Vec<usize>, Vec<f32>, Vec<f32>);

/// A heads group that takes joint steps, and its within-head groups.
#[derive(Clone, Debug)]
pub(crate) struct HeadLayout {
    pub(crate) group: usize,
    n: usize,
    /// `blocks[mi][h]`: axis positions of head `h` in member `mi`.
    blocks: Vec<Vec<Vec<usize>>>,
    slots: Vec<Slot>,
}

/// Permutations of other groups that come with a group's new one.
pub(crate) type Moves = Vec<(usize, Vec<usize>)>;

/// What a joint step found.
pub(crate) struct JointVisit {
    /// The heads' block objective now, and with the new permutations.
    pub(crate) current: f64,
    pub(crate) score: f64,
    pub(crate) heads: Vec<usize>,
    /// New permutations of the within-head groups.
    pub(crate) children: Moves,
}

impl HeadLayout {
    /// The spec groups nested in this heads group.
    pub(crate) fn children(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().flat_map(|s| s.groups.iter().copied())
    }
}

/// Every heads group of `spec` that qualifies for joint steps (see the
/// module docs).
pub(crate) fn layouts(spec: &PermutationSpec) -> Vec<HeadLayout> {
    (0..spec.groups.len())
        .filter(|&g| spec.groups[g].kind.as_deref() == Some("heads"))
        .filter_map(|g| layout(spec, g))
        .collect()
}

fn layout(spec: &PermutationSpec, hi: usize) -> Option<HeadLayout> {
    let h = &spec.groups[hi];
    let n = h.size;
    let blocks: Vec<Vec<Vec<usize>>> = h.members.iter().map(|m| unit_positions(m, n)).collect();
    // (tensor, axis, position) → (member, head, index in the head's block)
    let mut at: HashMap<(&str, usize, usize), (usize, usize, usize)> = HashMap::new();
    for (mi, m) in h.members.iter().enumerate() {
        for (head, b) in blocks[mi].iter().enumerate() {
            for (i, &p) in b.iter().enumerate() {
                at.insert((m.tensor.as_str(), m.axis, p), (mi, head, i));
            }
        }
    }
    let axes: Vec<(&str, usize)> = h
        .members
        .iter()
        .map(|m| (m.tensor.as_str(), m.axis))
        .collect();
    let mut per_head: Vec<Vec<(usize, LocalMembers)>> = vec![Vec::new(); n];
    for (gi, g) in spec.groups.iter().enumerate() {
        if gi == hi
            || !g
                .members
                .iter()
                .any(|m| axes.contains(&(m.tensor.as_str(), m.axis)))
        {
            continue;
        }
        // A group on the heads' axes must be a within-head group of one head.
        let nested = matches!(g.kind.as_deref(), Some("qk_dims" | "vo_dims" | "heads"));
        if !nested || gi > hi {
            return None;
        }
        let mut head = None;
        let mut members = Vec::new();
        for m in &g.members {
            let mut mi0 = None;
            let mut loc = Vec::with_capacity(g.size);
            for unit in unit_positions(m, g.size) {
                let mut idx = Vec::with_capacity(unit.len());
                for p in unit {
                    let &(mi, hd, i) = at.get(&(m.tensor.as_str(), m.axis, p))?;
                    if *head.get_or_insert(hd) != hd || *mi0.get_or_insert(mi) != mi {
                        return None;
                    }
                    idx.push(i);
                }
                loc.push(idx);
            }
            members.push((mi0?, loc));
        }
        per_head[head?].push((gi, members));
    }
    if per_head[0].is_empty() {
        return None;
    }
    let mut slots = Vec::new();
    for (s, (g0, members)) in per_head[0].iter().enumerate() {
        let mut groups = vec![*g0];
        for list in &per_head[1..] {
            let (gj, mj) = list.get(s)?;
            if spec.groups[*gj].size != spec.groups[*g0].size || mj != members {
                return None;
            }
            groups.push(*gj);
        }
        slots.push(Slot {
            size: spec.groups[*g0].size,
            members: members.clone(),
            groups,
        });
    }
    if per_head.iter().any(|l| l.len() != slots.len()) {
        return None;
    }
    Some(HeadLayout {
        group: hi,
        n,
        blocks,
        slots,
    })
}

/// The Gram matrices of one joint step: per member of the heads group,
/// `G[(h·L + p), (h'·L + q)] = ⟨A at head h position p, B' at head h'
/// position q⟩` (B' = B with every other group applied).
struct Grams {
    n: usize,
    len: Vec<usize>,
    g: Vec<Vec<f64>>,
}

impl Grams {
    fn at(&self, mi: usize, h: usize, hb: usize, p: usize, q: usize) -> f64 {
        let l = self.len[mi];
        self.g[mi][(h * l + p) * (self.n * l) + hb * l + q]
    }
}

/// The joint step of `layout` from `perms`.
pub(crate) fn joint_step(
    spec: &PermutationSpec,
    layout: &HeadLayout,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    perms: &GroupPerms,
) -> Result<JointVisit> {
    let grams = gram_blocks(spec, layout, a, b, perms)?;
    let n = layout.n;
    let cur_local = |hb: usize| -> Vec<Vec<usize>> {
        layout
            .slots
            .iter()
            .map(|s| perms[s.groups[hb]].clone())
            .collect()
    };
    let identity: Vec<Vec<usize>> = layout.slots.iter().map(|s| (0..s.size).collect()).collect();
    let heads = &perms[layout.group];
    let solved: Vec<(f64, Vec<Vec<usize>>)> = (0..n * n)
        .into_par_iter()
        .map(|k| {
            let (h, hb) = (k / n, k % n);
            let mut best = local_match(layout, &grams, h, hb, identity.clone());
            if heads[h] == hb {
                let from_current = local_match(layout, &grams, h, hb, cur_local(hb));
                if from_current.0 > best.0 {
                    best = from_current;
                }
            }
            best
        })
        .collect();
    let current: f64 = (0..n)
        .map(|h| local_value(layout, &grams, h, heads[h], &cur_local(heads[h]), None))
        .sum();
    let scores: Vec<f64> = solved.iter().map(|s| s.0).collect();
    let name = &spec.groups[layout.group].name;
    let sigma = assignment::maximize(&scores, n, Some(heads), name)?;
    let mut children = Vec::new();
    for (h, &hb) in sigma.perm.iter().enumerate() {
        for (s, q) in layout.slots.iter().zip(&solved[h * n + hb].1) {
            children.push((s.groups[hb], q.clone()));
        }
    }
    Ok(JointVisit {
        current,
        score: sigma.score,
        heads: sigma.perm,
        children,
    })
}

fn gram_blocks(
    spec: &PermutationSpec,
    layout: &HeadLayout,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    perms: &GroupPerms,
) -> Result<Grams> {
    let mut others = perms.clone();
    for g in std::iter::once(layout.group).chain(layout.children()) {
        others.set(g, (0..spec.groups[g].size).collect());
    }
    let map = model_permutation(spec, b, &others, None)?;
    let view = Permuted {
        source: b,
        perm: &map,
    };
    let h = &spec.groups[layout.group];
    let mut read: HashMap<&str, ReadPair> = HashMap::new();
    let mut g = Vec::with_capacity(h.members.len());
    let mut len = Vec::with_capacity(h.members.len());
    for (mi, m) in h.members.iter().enumerate() {
        if !read.contains_key(m.tensor.as_str()) {
            let t = (
                a.shape(&m.tensor)?,
                a.read(&m.tensor)?,
                view.read(&m.tensor)?,
            );
            read.insert(m.tensor.as_str(), t);
        }
        let (shape, x, y) = &read[m.tensor.as_str()];
        let units: Vec<Vec<usize>> = layout.blocks[mi]
            .iter()
            .flatten()
            .map(|&p| vec![p])
            .collect();
        let mut s = vec![0.0; units.len() * units.len()];
        similarity::accumulate_positions(&mut s, x, y, shape, m.axis, &units);
        len.push(layout.blocks[mi][0].len());
        g.push(s);
    }
    Ok(Grams {
        n: layout.n,
        len,
        g,
    })
}

/// The local map of every member's head block (index → index) with the
/// within-head groups at `q`, leaving out slot `skip`.
fn local_maps(
    layout: &HeadLayout,
    grams: &Grams,
    q: &[Vec<usize>],
    skip: Option<usize>,
) -> Vec<Vec<usize>> {
    let mut maps: Vec<Vec<usize>> = grams.len.iter().map(|&l| (0..l).collect()).collect();
    for (s, slot) in layout.slots.iter().enumerate() {
        if Some(s) == skip {
            continue;
        }
        for (mi, loc) in &slot.members {
            let old = maps[*mi].clone();
            for (u, &pu) in q[s].iter().enumerate() {
                for (i, &p) in loc[u].iter().enumerate() {
                    maps[*mi][p] = old[loc[pu][i]];
                }
            }
        }
    }
    maps
}

/// `Σ_p G[h, hb][p, φ(p)]` over the members: the objective of A's head `h`
/// against B's head `hb` with the within-head groups at `q`.
fn local_value(
    layout: &HeadLayout,
    grams: &Grams,
    h: usize,
    hb: usize,
    q: &[Vec<usize>],
    maps: Option<&[Vec<usize>]>,
) -> f64 {
    let owned;
    let maps = match maps {
        Some(m) => m,
        None => {
            owned = local_maps(layout, grams, q, None);
            &owned
        }
    };
    maps.iter()
        .enumerate()
        .map(|(mi, map)| {
            map.iter()
                .enumerate()
                .map(|(p, &fp)| grams.at(mi, h, hb, p, fp))
                .sum::<f64>()
        })
        .sum()
}

/// Weight matching of A's head `h` against B's head `hb` over the
/// within-head groups, from `q`: each group's assignment in turn until none
/// improves. Returns the pair's objective and the permutations.
fn local_match(
    layout: &HeadLayout,
    grams: &Grams,
    h: usize,
    hb: usize,
    mut q: Vec<Vec<usize>>,
) -> (f64, Vec<Vec<usize>>) {
    for _ in 0..LOCAL_ROUNDS {
        let mut changed = false;
        for (s, slot) in layout.slots.iter().enumerate() {
            let others = local_maps(layout, grams, &q, Some(s));
            let k = slot.size;
            let mut sim = vec![0.0f64; k * k];
            for (mi, loc) in &slot.members {
                let phi = &others[*mi];
                for u in 0..k {
                    for v in 0..k {
                        sim[u * k + v] += loc[u]
                            .iter()
                            .zip(&loc[v])
                            .map(|(&pu, &pv)| grams.at(*mi, h, hb, pu, phi[pv]))
                            .sum::<f64>();
                    }
                }
            }
            let cur: f64 = (0..k).map(|u| sim[u * k + q[s][u]]).sum();
            // The matrices are finite (Gram blocks), so the solve cannot fail.
            let Ok(best) = assignment::maximize(&sim, k, Some(&q[s]), "within-head") else {
                continue;
            };
            if best.score > cur + IMPROVEMENT_EPS * cur.abs().max(1.0) {
                q[s] = best.perm;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let value = local_value(layout, grams, h, hb, &q, None);
    (value, q)
}

#[cfg(test)]
mod tests;
