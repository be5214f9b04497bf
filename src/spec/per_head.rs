//! Per-head within-head groups: the full head symmetry of attention.
//!
//! An inferred transformer spec first has *shared* within-head groups (one
//! permutation of `head_dim` applied in every head: `layers.i.qk_dims`,
//! `layers.i.vo_dims`, and under GQA `layers.i.query_heads`, one reordering
//! of the query heads in every KV group). Each head may in fact reorder its
//! own dimensions: [`split`] turns every group nested in a heads group `H`
//! into one group per head of `H`, `<name>.<j>`, listed before `H` so that
//! it acts on B's stored head `j` and travels with it when `H` moves heads.
//! The shared form is a subset of this symmetry (all `<name>.<j>` equal).

use std::collections::HashMap;

use super::{AxisMember, PermGroup, PermutationSpec};

/// Kinds of groups that may live inside the heads of a heads group.
const NESTED_KINDS: &[&str] = &["qk_dims", "vo_dims", "heads"];

/// For one group: (tensor, axis) → (axis position → unit owning it).
type Owners<'a> = HashMap<(&'a str, usize), HashMap<usize, usize>>;

fn owners(g: &PermGroup) -> Owners<'_> {
    let mut out: Owners = HashMap::new();
    for m in &g.members {
        let map = out.entry((m.tensor.as_str(), m.axis)).or_default();
        for (u, positions) in unit_positions(m, g.size).into_iter().enumerate() {
            for p in positions {
                map.insert(p, u);
            }
        }
    }
    out
}

/// The axis positions of each unit of a member, in (repetition, offset) order.
pub(crate) fn unit_positions(m: &AxisMember, size: usize) -> Vec<Vec<usize>> {
    (0..size)
        .map(|u| {
            (0..m.repeat)
                .flat_map(|r| (0..m.block).map(move |i| m.position(size, r, u, i)))
                .collect()
        })
        .collect()
}

/// The heads of `h` (by `owners`) holding the positions of member `m` of a
/// group of `size`; `None` if a position lies outside every head.
fn heads_of(owners: &Owners, m: &AxisMember, size: usize) -> Option<Vec<usize>> {
    let map = owners.get(&(m.tensor.as_str(), m.axis))?;
    unit_positions(m, size)
        .into_iter()
        .flatten()
        .map(|p| map.get(&p).copied())
        .collect()
}

/// True when every position of `c` lies inside a head of `h`.
fn nested_in(c: &PermGroup, h_owners: &Owners) -> bool {
    c.kind.as_deref().is_some_and(|k| NESTED_KINDS.contains(&k))
        && c.members
            .iter()
            .all(|m| heads_of(h_owners, m, c.size).is_some())
}

/// `c` cut into one group per head of a heads group of `n` heads, or `None`
/// when `c`'s repetitions do not run over the heads in order.
fn per_head_copies(c: &PermGroup, n: usize, h_owners: &Owners) -> Option<Vec<PermGroup>> {
    let mut copies = Vec::with_capacity(n);
    for j in 0..n {
        let mut members = Vec::with_capacity(c.members.len());
        for m in &c.members {
            if m.repeat % n != 0 {
                return None;
            }
            let k = m.repeat / n;
            // Checked: a spec whose numbers overflow here is left unsplit
            // (its own validation against the tensors then reports it).
            let offset = j
                .checked_mul(k)?
                .checked_mul(c.size)?
                .checked_mul(m.block)?;
            let part = AxisMember {
                start: m.start.checked_add(offset)?,
                repeat: k,
                ..m.clone()
            };
            // Every position of the copy must lie in head j.
            if heads_of(h_owners, &part, c.size)?.iter().any(|&h| h != j) {
                return None;
            }
            members.push(part);
        }
        copies.push(PermGroup {
            name: format!("{}.{j}", c.name),
            size: c.size,
            kind: c.kind.clone(),
            members,
        });
    }
    Some(copies)
}

/// The spec with every group nested in a heads group split into one group
/// per head (see the module docs); other groups as they are, in order.
/// Returns the spec unchanged when nothing is nested.
pub fn split(spec: &PermutationSpec) -> PermutationSpec {
    let groups = &spec.groups;
    let all_owners: Vec<Option<Owners>> = groups
        .iter()
        .map(|g| (g.kind.as_deref() == Some("heads")).then(|| owners(g)))
        .collect();
    // For each heads group, the groups nested in it.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    let mut nested: Vec<bool> = vec![false; groups.len()];
    for (hi, ho) in all_owners.iter().enumerate() {
        let Some(ho) = ho else { continue };
        for (ci, c) in groups.iter().enumerate() {
            if ci != hi && nested_in(c, ho) {
                children[hi].push(ci);
                nested[ci] = true;
            }
        }
    }
    // Top-level heads groups (not nested in another) and their copies.
    let mut copies: HashMap<usize, Vec<PermGroup>> = HashMap::new();
    let mut emitted_with: Vec<bool> = vec![false; groups.len()];
    for hi in 0..groups.len() {
        if nested[hi] || children[hi].is_empty() {
            continue;
        }
        let ho = all_owners[hi].as_ref().expect("heads group");
        let n = groups[hi].size;
        let parts: Option<Vec<Vec<PermGroup>>> = children[hi]
            .iter()
            .map(|&ci| per_head_copies(&groups[ci], n, ho))
            .collect();
        let Some(parts) = parts else { continue };
        for &ci in &children[hi] {
            emitted_with[ci] = true;
        }
        copies.insert(hi, parts.into_iter().flatten().collect());
    }
    let mut out = Vec::with_capacity(groups.len());
    for (gi, g) in groups.iter().enumerate() {
        if let Some(c) = copies.remove(&gi) {
            out.extend(c);
            out.push(g.clone());
        } else if !emitted_with[gi] {
            out.push(g.clone());
        }
    }
    PermutationSpec {
        groups: out,
        ..spec.clone()
    }
}

#[cfg(test)]
mod tests;
