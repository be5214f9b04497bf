//! Tests of weight matching: per-head relabelling, streamed similarities,
//! row views, and the skip rule.

use super::heads::tie_siblings;
use super::source::{Mem, ROWS_CHUNK_ELEMS};
use super::step::later_maps;
use super::*;
use crate::permute::TensorPermutation;
use crate::permute::{GroupPerms, ModelPermutation};
use crate::similarity;
use crate::spec::{AxisMember, PermGroup};
use std::collections::HashMap;

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
    let tied = tie_siblings(&per_head_spec()).expect("siblings");
    let (tied, owner) = (tied.spec, tied.owner);
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
    let perms = GroupPerms::new(vec![vec![0, 1, 2], vec![0, 1, 2], vec![1, 0]]);
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
fn mlp_pair() -> (PermutationSpec, Mem, Mem, GroupPerms) {
    mlp_pair_with_rows(ROWS_CHUNK_ELEMS / 6 + 40)
}

/// [`mlp_pair`] with `rows` rows in `e` (few: quick in debug builds).
fn mlp_pair_with_rows(rows: usize) -> (PermutationSpec, Mem, Mem, GroupPerms) {
    let (h1, h2) = (6usize, 5usize);
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
    let perms = GroupPerms::new(vec![vec![3, 0, 5, 1, 4, 2], vec![4, 2, 0, 1, 3]]);
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
    // Group h1's member e (axis 1, > ROWS_CHUNK_ELEMS) is streamed.
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
    let r = weight_matching(&spec, &a, &b, &AlignOptions::default(), &()).unwrap();
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

/// Records the alignment events of a run as short strings.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl crate::observe::Observer for Recorder {
    fn event(&self, e: &Event<'_>) {
        let s = match *e {
            Event::Started { phase, .. } => format!("start {phase:?}"),
            Event::Finished { phase } => format!("end {phase:?}"),
            Event::GroupStarted {
                sweep,
                position,
                groups,
                group,
                units,
            } => format!("group s{sweep} {position}/{groups} {group} {units}"),
            Event::GroupVisited { sweep, group, .. } => format!("visited s{sweep} {group}"),
            Event::MergeManyStep { round, model, .. } => format!("step r{round} m{model}"),
            Event::MergeManyDone { rounds, .. } => format!("done {rounds}"),
            _ => return,
        };
        self.0.lock().unwrap().push(s);
    }
}

#[test]
fn every_group_visit_is_announced_with_its_sweep_position_and_units_then_reported() {
    let (spec, a, b, _) = mlp_pair_with_rows(12);
    let rec = Recorder::default();
    let r = weight_matching(&spec, &a, &b, &AlignOptions::default(), &rec).unwrap();
    let ev = rec.0.into_inner().unwrap();
    assert_eq!(ev.first().map(String::as_str), Some("start Align"));
    assert_eq!(ev.last().map(String::as_str), Some("end Align"));
    let inner = &ev[1..ev.len() - 1];
    assert_eq!(inner.len() % 2, 0, "{ev:?}");
    let visits: usize = r.groups.iter().map(|g| g.visits).sum();
    assert_eq!(
        inner.len() / 2,
        visits,
        "one announcement per visit: {ev:?}"
    );
    let mut last = (0usize, 0usize);
    for pair in inner.chunks(2) {
        // "group s1 2/2 h2 5" then "visited s1 h2".
        let w: Vec<&str> = pair[0].split(' ').collect();
        assert_eq!(w[0], "group", "{pair:?}");
        let sweep: usize = w[1][1..].parse().unwrap();
        let (pos, of) = w[2].split_once('/').unwrap();
        let pos: usize = pos.parse().unwrap();
        assert_eq!(of, "2");
        let units = if w[3] == "h1" { "6" } else { "5" };
        assert_eq!(w[4], units, "{pair:?}");
        assert_eq!(pair[1], format!("visited s{sweep} {}", w[3]));
        assert!(
            (sweep, pos) > last && (1..=r.sweeps).contains(&sweep),
            "{ev:?}"
        );
        last = (sweep, pos);
    }
    // Skipped visits (the confirming sweep skips one) are not announced.
    assert!(visits < r.sweeps * 2, "{:?}", r.groups);
}

#[test]
fn merge_many_passes_on_the_group_visits_of_each_match_but_not_their_start_and_end() {
    let (spec, a, b, _) = mlp_pair_with_rows(12);
    let rec = Recorder::default();
    let opts = AlignOptions::default();
    let r = many::merge_many(&spec, &[&a, &b, &b], &opts, &rec).unwrap();
    let ev = rec.0.into_inner().unwrap();
    assert_eq!(ev[0], "start MergeMany");
    assert_eq!(ev[ev.len() - 2], "end MergeMany");
    assert_eq!(ev[ev.len() - 1], format!("done {}", r.rounds));
    let inner = &ev[1..ev.len() - 2];
    assert!(!inner.iter().any(|e| e.contains("Align")), "{ev:?}");
    let steps = inner.iter().filter(|e| e.starts_with("step")).count();
    assert!(steps >= 3, "every model matched at least once: {ev:?}");
    let groups = inner.iter().filter(|e| e.starts_with("group")).count();
    let visited = inner.iter().filter(|e| e.starts_with("visited")).count();
    assert!(groups >= steps && groups == visited, "{ev:?}");
}

/// One group of 2 units: a weight `w` [2, 2] and a buffer `rv` [2]. B's
/// weights are A's with the units swapped, while its buffer, large and alike
/// across runs (like BatchNorm running variances), sits in A's order: matched
/// on the buffer too, the identity wins; as a buffer it is permuted with the
/// group but ignored by the matching.
#[test]
fn buffers_are_permuted_but_never_matched_on() {
    let mem = |w: [f32; 4], rv: [f32; 2]| {
        Mem(HashMap::from([
            ("w".to_string(), (vec![2, 2], w.to_vec())),
            ("rv".to_string(), (vec![2], rv.to_vec())),
        ]))
    };
    let a = mem([1.0, 2.0, 3.0, 4.0], [100.0, 1.0]);
    let b = mem([3.0, 4.0, 1.0, 2.0], [100.0, 1.0]);
    let spec_with = |buffer: bool| {
        PermutationSpec::new(
            None,
            vec![group(
                "g",
                2,
                "channels",
                vec![
                    AxisMember::plain("w", 0),
                    AxisMember {
                        buffer,
                        ..AxisMember::plain("rv", 0)
                    },
                ],
            )],
        )
    };
    let opts = AlignOptions::default();
    // As a weight: identity scores 1·3+2·4+3·1+4·2 + 100·100+1 = 10023,
    // the swap 1+4+9+16 + 100+100 = 230: the buffer keeps the wrong order.
    let r = weight_matching(&spec_with(false), &a, &b, &opts, &()).unwrap();
    assert_eq!(r.perms[0], vec![0, 1]);
    assert_eq!(r.objective_after, 10023.0);
    // As a buffer: only `w` counts (22 -> 30), and the swap is found.
    let spec = spec_with(true);
    assert_eq!(
        spec.buffer_tensors().into_iter().collect::<Vec<_>>(),
        vec!["rv"]
    );
    let r = weight_matching(&spec, &a, &b, &opts, &()).unwrap();
    assert_eq!(r.perms[0], vec![1, 0]);
    assert_eq!((r.objective_before, r.objective_after), (22.0, 30.0));
    // The buffer still moves with its group.
    let perm = model_permutation(&spec, &b, &r.perms, None).unwrap();
    assert_eq!(perm.tensors["rv"].axes[0], Some(vec![1, 0]));
}

/// Two unrelated random MLPs 4 → 8 → 8 → 8 → 2 with biases: the descent
/// moves every group for several sweeps, so terms go stale and come back.
fn random_chain() -> (PermutationSpec, Mem, Mem) {
    let h = 8usize;
    let layers = [
        ("w0", [h, 4]),
        ("w1", [h, h]),
        ("w2", [h, h]),
        ("w3", [2, h]),
    ];
    let groups = (0..3)
        .map(|k| PermGroup {
            name: format!("h{k}"),
            size: h,
            kind: None,
            members: vec![
                AxisMember::plain(format!("w{k}"), 0),
                AxisMember::plain(format!("b{k}"), 0),
                AxisMember::plain(format!("w{}", k + 1), 1),
            ],
        })
        .collect();
    let model = |seed: u64| {
        let mut t: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
        for (i, (name, shape)) in layers.iter().enumerate() {
            let s = seed * 100 + i as u64;
            t.insert(
                name.to_string(),
                (shape.to_vec(), values(shape[0] * shape[1], s)),
            );
            t.insert(format!("b{i}"), (vec![shape[0]], values(shape[0], s + 50)));
        }
        Mem(t)
    };
    (PermutationSpec::new(None, groups), model(1), model(2))
}

#[test]
fn kept_similarity_terms_change_no_bit_of_the_result_and_are_reused() {
    let (spec, a, b) = random_chain();
    for restarts in [1, 3] {
        let run = |term_cache: usize| {
            let opts = AlignOptions {
                restarts,
                term_cache,
                term_updates: false,
                ..AlignOptions::default()
            };
            weight_matching(&spec, &a, &b, &opts, &()).unwrap()
        };
        let (off, on) = (run(0), run(DEFAULT_TERM_CACHE_BYTES));
        assert!(
            off.sweeps >= 3,
            "a descent of several sweeps: {}",
            off.sweeps
        );
        assert_eq!(on.perms, off.perms);
        assert_eq!(on.objective_after.to_bits(), off.objective_after.to_bits());
        for (x, y) in on.groups.iter().zip(&off.groups) {
            assert_eq!(
                x.score_after.to_bits(),
                y.score_after.to_bits(),
                "{}",
                x.name
            );
            assert_eq!(x.visits, y.visits);
            // Every visit needs each of its 3 members' terms, kept or not.
            assert_eq!(x.terms_reused + x.terms_computed, 3 * x.visits);
            assert_eq!(y.terms_reused, 0);
        }
        // Each group's bias term and, for h0, the first layer's rows depend on
        // no other group: computed once, reused at every later visit.
        let reused: usize = on.groups.iter().map(|g| g.terms_reused).sum();
        let visits: usize = on.groups.iter().map(|g| g.visits).sum();
        assert!(
            reused >= visits - 3,
            "{reused} terms reused in {visits} visits"
        );
    }
}

#[test]
fn updated_terms_reach_the_exact_descent_s_permutations_and_objective() {
    let (spec, a, b) = random_chain();
    let run = |restarts: usize, term_updates: bool| {
        let opts = AlignOptions {
            restarts,
            term_updates,
            ..AlignOptions::default()
        };
        weight_matching(&spec, &a, &b, &opts, &()).unwrap()
    };
    let (exact, updated) = (run(1, false), run(1, true));
    assert_eq!(updated.perms, exact.perms);
    let rel = (updated.objective_after - exact.objective_after).abs() / exact.objective_after.abs();
    assert!(rel < 1e-6, "objective {rel:e} apart");
    let count = |r: &Alignment| r.groups.iter().map(|g| g.terms_updated).sum::<usize>();
    assert_eq!(count(&exact), 0);
    assert!(count(&updated) > 0, "no term was updated");
    for g in &updated.groups {
        assert_eq!(
            g.terms_reused + g.terms_computed + g.terms_updated,
            3 * g.visits
        );
    }
    // Parallel restarts share places: no updates, so no dependence on timing.
    assert_eq!(count(&run(3, true)), 0);
}

#[test]
fn a_budget_too_small_for_one_term_computes_every_term() {
    let (spec, a, b) = random_chain();
    let opts = AlignOptions {
        term_cache: 8 * 8 * 4 - 1,
        ..AlignOptions::default()
    };
    let r = weight_matching(&spec, &a, &b, &opts, &()).unwrap();
    assert!(r.groups.iter().all(|g| g.terms_reused == 0));
}
