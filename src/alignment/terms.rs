//! The terms of a similarity matrix, kept between visits (issue 12, item 3).
//!
//! A group's matrix is a sum over its members, `S = Σ_m A_m · π(B_m)ᵀ`, and
//! member `m`'s term depends on nothing but the two tensors, the member's
//! place in them, and the permutation the *other* groups put on B's tensor
//! (`π`, a [`TensorPermutation`]). In coordinate descent most of those
//! stay put between two visits of a group: an MLP layer's term from the
//! layer before only changes when that layer's group moved. So each term
//! is stored with the exact `π` it was computed under and reused when the
//! next visit asks for the same one (compared element by element, not by a
//! hash). Reuse gives the same f32 term, added to `S` in the same member
//! order, so a cached descent is bit-identical to an uncached one.
//!
//! Memory is bounded: terms are `n × n` f32, kept while their total stays
//! within a byte budget. Each member place holds at most `per_place` terms
//! (one per concurrent descent, so parallel restarts share the terms
//! computed under the same permutations, e.g. the identity they all start
//! from, without evicting each other's); a newer term of a place replaces
//! its least recently used one. When the budget is full, a new term only
//! displaces terms that are cheaper to recompute per byte kept (a term
//! costs `2·n²·L` flops for `4·n²` bytes, so its worth is its reduction
//! length `L`), least recently used first; otherwise it is not kept. A
//! plain least-recently-used rule would keep nothing useful when a sweep
//! needs more terms than fit (a cyclic scan evicts each term just before
//! it is asked for again); this rule keeps the first ones that fit.
//!
//! The key is what the term is computed from, not a group index, so one
//! cache serves every spec a run uses (the tied first phase of
//! `heads::tied_then_free` and the free descent after it).
//!
//! **Updated terms.** A term is linear in B's tensor, so when the
//! permutation it is asked under differs from the kept one in a few
//! places, `T(π') = T(π) + A · (π'(B) - π(B))ᵀ` where the difference is
//! zero outside the columns (positions of the other axes) that moved: a
//! product of reduction length `k` instead of `L` (`step::updated_term`).
//! Late in a descent a neighbouring group typically moves 5–15% of its
//! units, so most visits cost a fraction of a full product. An updated
//! term differs from a recomputed one by rounding only (a few f32 ulps of
//! its largest entries), so a descent with updates is not bit-identical to
//! one without; it is deterministic, because updates are only made when
//! one descent owns each place (`per_place == 1`: one restart), and
//! [`MAX_TERM_UPDATES`] bounds how far rounding can drift before a full
//! recomputation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::permute::TensorPermutation;
use crate::spec::AxisMember;

/// Default budget of kept terms: 256 MiB, every term of the 64-2048×4-10
/// MLP benchmark (12 terms of 2048² f32 = 192 MiB) while the 0.49 B LLaMA
/// benchmark stays within 1 GiB of peak memory (`docs/bench-align.md`).
pub const DEFAULT_TERM_CACHE_BYTES: usize = 256 << 20;

/// Updates in a row before a term is computed afresh. Each update adds
/// at most about one f32 rounding of the term's largest entries
/// (`2⁻²⁴` relative), so 16 of them stay below the rounding a single
/// full f32 GEMM of reduction length 2048 already carries (`√L·2⁻²⁴`,
/// about `45·2⁻²⁴`, Higham 2002, §3.1's probabilistic bound).
pub const MAX_TERM_UPDATES: u32 = 16;

/// Where a term comes from: the member's tensor and place, and the group
/// size (the term is `size × size`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Place {
    tensor: String,
    axis: usize,
    start: usize,
    block: usize,
    repeat: usize,
    size: usize,
}

impl Place {
    fn of(m: &AxisMember, size: usize) -> Self {
        Self {
            tensor: m.tensor.clone(),
            axis: m.axis,
            start: m.start,
            block: m.block,
            repeat: m.repeat,
            size,
        }
    }
}

/// A term and the permutation of B's tensor it was computed under.
struct Entry {
    under: Option<TensorPermutation>,
    term: Arc<Vec<f32>>,
    /// Its reduction length `L` (what recomputing it costs per byte).
    worth: usize,
    /// Updates since it was last computed in full.
    updates: u32,
    last_used: u64,
}

/// A kept term to update into the term under another permutation.
pub struct Base {
    /// The permutation of B's tensor it holds the term under.
    pub under: Option<TensorPermutation>,
    pub term: Arc<Vec<f32>>,
    /// Updates since it was last computed in full.
    pub updates: u32,
}

#[derive(Default)]
struct Inner {
    places: HashMap<Place, Vec<Entry>>,
    bytes: usize,
    clock: u64,
}

/// Counts of a cache's lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TermCounts {
    /// Terms found under the same permutation (no reads, no GEMM).
    pub reused: usize,
    /// Terms computed in full.
    pub computed: usize,
    /// Terms updated from a kept term under a nearby permutation.
    pub updated: usize,
}

/// Similarity terms kept across the visits of one weight-matching run.
pub struct TermCache {
    budget: usize,
    per_place: usize,
    updating: bool,
    inner: Mutex<Inner>,
}

impl TermCache {
    /// A cache holding at most `budget` bytes of terms, `per_place` terms
    /// per member place (at least 1).
    pub fn new(budget: usize, per_place: usize) -> Self {
        Self {
            budget,
            per_place: per_place.max(1),
            updating: false,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The cache offering its terms for updates ([`TermCache::base`]) when
    /// `on` and one descent owns each place (`per_place == 1`).
    pub fn updating(mut self, on: bool) -> Self {
        self.updating = on && self.per_place == 1;
        self
    }

    /// The kept term of member `m` to update from, if updates are on and
    /// it has been updated fewer than [`MAX_TERM_UPDATES`] times in a row.
    pub fn base(&self, m: &AxisMember, size: usize) -> Option<Base> {
        if !self.updating {
            return None;
        }
        let inner = self.lock();
        let e = inner.places.get(&Place::of(m, size))?.first()?;
        (e.updates < MAX_TERM_UPDATES).then(|| Base {
            under: e.under.clone(),
            term: Arc::clone(&e.term),
            updates: e.updates,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere leaves the map consistent (every update below
        // is completed before the guard drops), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The term of member `m` of a group of `size` units under `under` (B's
    /// tensor permutation by the other groups), if kept.
    pub fn get(
        &self,
        m: &AxisMember,
        size: usize,
        under: Option<&TensorPermutation>,
    ) -> Option<Arc<Vec<f32>>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let entries = inner.places.get_mut(&Place::of(m, size))?;
        let e = entries.iter_mut().find(|e| e.under.as_ref() == under)?;
        e.last_used = now;
        Some(Arc::clone(&e.term))
    }

    /// Keeps `term`, computed under `under` with reduction length `worth`
    /// and `updates` updates away from its last full computation, if the
    /// budget allows (see the module documentation for what makes room).
    pub fn put(
        &self,
        m: &AxisMember,
        size: usize,
        under: Option<&TensorPermutation>,
        worth: usize,
        term: Arc<Vec<f32>>,
        updates: u32,
    ) {
        let bytes = term.len() * size_of::<f32>();
        if bytes > self.budget {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let place = Place::of(m, size);
        let per_place = self.per_place;
        let mut freed = 0;
        if let Some(entries) = inner.places.get_mut(&place) {
            if entries.iter().any(|e| e.under.as_ref() == under) {
                return;
            }
            while entries.len() >= per_place {
                freed += remove_oldest(entries);
            }
        }
        inner.bytes -= freed;
        while inner.bytes + bytes > self.budget {
            // The resident term least worth keeping, least recently used
            // among equals; it goes only if the new term is worth more.
            let Some((victim, i)) = inner
                .places
                .iter()
                .flat_map(|(p, es)| es.iter().enumerate().map(move |(i, e)| (p, i, e)))
                .filter(|(_, _, e)| e.worth < worth)
                .min_by_key(|(_, _, e)| (e.worth, e.last_used))
                .map(|(p, i, _)| (p.clone(), i))
            else {
                return;
            };
            let entries = inner.places.get_mut(&victim).expect("place just found");
            let freed = entries.swap_remove(i).term.len() * size_of::<f32>();
            if entries.is_empty() {
                inner.places.remove(&victim);
            }
            inner.bytes -= freed;
        }
        inner.bytes += bytes;
        inner.places.entry(place).or_default().push(Entry {
            under: under.cloned(),
            term,
            worth,
            updates,
            last_used: now,
        });
    }

    /// Bytes of terms kept now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Removes the least recently used entry; its size in bytes.
fn remove_oldest(entries: &mut Vec<Entry>) -> usize {
    let Some(i) = (0..entries.len()).min_by_key(|&i| entries[i].last_used) else {
        return 0;
    };
    entries.swap_remove(i).term.len() * size_of::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(tensor: &str, axis: usize) -> AxisMember {
        AxisMember::plain(tensor, axis)
    }

    fn perm(p: &[usize]) -> TensorPermutation {
        TensorPermutation {
            axes: vec![None, Some(p.to_vec())],
        }
    }

    fn term(x: f32) -> Arc<Vec<f32>> {
        Arc::new(vec![x; 4])
    }

    #[test]
    fn a_term_is_found_only_under_the_same_permutation() {
        let c = TermCache::new(1 << 20, 1);
        let m = member("fc2.weight", 1);
        c.put(&m, 2, Some(&perm(&[1, 0])), 8, term(1.0), 0);
        assert_eq!(c.get(&m, 2, Some(&perm(&[1, 0]))).unwrap()[0], 1.0);
        assert!(c.get(&m, 2, Some(&perm(&[0, 1]))).is_none());
        assert!(c.get(&m, 2, None).is_none());
        // Another place of the same tensor, or another group size, is another term.
        assert!(
            c.get(&member("fc2.weight", 0), 2, Some(&perm(&[1, 0])))
                .is_none()
        );
        assert!(c.get(&m, 3, Some(&perm(&[1, 0]))).is_none());
    }

    #[test]
    fn one_term_per_place_replaces_the_older_one() {
        let c = TermCache::new(1 << 20, 1);
        let m = member("fc2.weight", 1);
        c.put(&m, 2, None, 8, term(1.0), 0);
        c.put(&m, 2, Some(&perm(&[1, 0])), 8, term(2.0), 0);
        assert!(c.get(&m, 2, None).is_none());
        assert_eq!(c.get(&m, 2, Some(&perm(&[1, 0]))).unwrap()[0], 2.0);
        assert_eq!(c.bytes(), 16);
    }

    #[test]
    fn two_descents_keep_a_term_each_per_place() {
        let c = TermCache::new(1 << 20, 2);
        let m = member("fc2.weight", 1);
        c.put(&m, 2, None, 8, term(1.0), 0);
        c.put(&m, 2, Some(&perm(&[1, 0])), 8, term(2.0), 0);
        assert_eq!(c.get(&m, 2, None).unwrap()[0], 1.0);
        assert_eq!(c.get(&m, 2, Some(&perm(&[1, 0]))).unwrap()[0], 2.0);
        assert_eq!(c.bytes(), 32);
    }

    #[test]
    fn a_full_budget_keeps_the_terms_it_has_against_terms_worth_the_same() {
        // Two 16-byte terms fill a 40-byte budget; a third of the same
        // worth is not kept (a cyclic sweep then still finds x and y).
        let c = TermCache::new(40, 1);
        let (x, y, z) = (member("x", 0), member("y", 0), member("z", 0));
        c.put(&x, 2, None, 8, term(1.0), 0);
        c.put(&y, 2, None, 8, term(2.0), 0);
        c.put(&z, 2, None, 8, term(3.0), 0);
        assert!(c.get(&z, 2, None).is_none());
        assert!(c.get(&x, 2, None).is_some());
        assert!(c.get(&y, 2, None).is_some());
        assert_eq!(c.bytes(), 32);
    }

    #[test]
    fn a_term_worth_more_displaces_the_cheapest_least_recently_used_one() {
        // x and y are worth 1 (bias-like), w worth 8; z (worth 64) needs
        // one slot: it takes the cheaper one not used most recently, x.
        let c = TermCache::new(48, 1);
        let (x, y, w, z) = (
            member("x", 0),
            member("y", 0),
            member("w", 0),
            member("z", 0),
        );
        c.put(&x, 2, None, 1, term(1.0), 0);
        c.put(&y, 2, None, 1, term(2.0), 0);
        c.put(&w, 2, None, 8, term(4.0), 0);
        assert!(c.get(&y, 2, None).is_some());
        c.put(&z, 2, None, 64, term(3.0), 0);
        assert!(c.get(&x, 2, None).is_none());
        assert!(c.get(&y, 2, None).is_some());
        assert!(c.get(&w, 2, None).is_some());
        assert!(c.get(&z, 2, None).is_some());
        assert_eq!(c.bytes(), 48);
    }

    #[test]
    fn a_term_is_offered_for_update_to_one_descent_only_and_16_times_in_a_row() {
        let m = member("fc2.weight", 1);
        let p = perm(&[1, 0]);
        let shared = TermCache::new(1 << 20, 2).updating(true);
        shared.put(&m, 2, None, 8, term(1.0), 0);
        assert!(shared.base(&m, 2).is_none(), "two descents: no updates");
        let off = TermCache::new(1 << 20, 1);
        off.put(&m, 2, None, 8, term(1.0), 0);
        assert!(off.base(&m, 2).is_none(), "updates not asked for");
        let c = TermCache::new(1 << 20, 1).updating(true);
        assert!(c.base(&m, 2).is_none(), "nothing kept yet");
        c.put(&m, 2, None, 8, term(1.0), 0);
        let base = c.base(&m, 2).unwrap();
        assert_eq!((base.under, base.term[0], base.updates), (None, 1.0, 0));
        c.put(&m, 2, Some(&p), 8, term(2.0), MAX_TERM_UPDATES - 1);
        let base = c.base(&m, 2).unwrap();
        assert_eq!((base.under, base.updates), (Some(p.clone()), 15));
        c.put(&m, 2, None, 8, term(3.0), MAX_TERM_UPDATES);
        assert!(c.base(&m, 2).is_none(), "the 17th is computed in full");
        assert_eq!(c.bytes(), 16, "each update replaced the place's term");
    }

    #[test]
    fn a_term_larger_than_the_budget_is_not_kept() {
        let c = TermCache::new(15, 1);
        let m = member("x", 0);
        c.put(&m, 2, None, 8, term(1.0), 0);
        assert!(c.get(&m, 2, None).is_none());
        assert_eq!(c.bytes(), 0);
        let off = TermCache::new(0, 1);
        off.put(&m, 2, None, 8, term(1.0), 0);
        assert!(off.get(&m, 2, None).is_none());
    }
}
