//! The joint head step on two heads of two dimensions, by hand.

use std::collections::HashMap;

use super::*;
use crate::alignment::source::Mem;
use crate::spec::{AxisMember, PermGroup};

fn rows(r: &[[f32; 3]]) -> Mem {
    let data = r.iter().flatten().copied().collect();
    Mem(HashMap::from([("v".to_string(), (vec![r.len(), 3], data))]))
}

fn group(name: &str, size: usize, kind: &str, start: usize, block: usize) -> PermGroup {
    PermGroup {
        name: name.into(),
        size,
        kind: Some(kind.into()),
        members: vec![AxisMember {
            start,
            block,
            ..AxisMember::plain("v", 0)
        }],
    }
}

/// Rows of `v`: 2 heads of 2 dimensions, each head its own dimension group.
fn per_head() -> PermutationSpec {
    PermutationSpec::new(
        None,
        vec![
            group("vo_dims.0", 2, "vo_dims", 0, 1),
            group("vo_dims.1", 2, "vo_dims", 2, 1),
            group("heads", 2, "heads", 0, 2),
        ],
    )
}

const A: [[f32; 3]; 4] = [[1., 0., 0.], [0., 2., 0.], [0., 0., 3.], [4., 0., 1.]];

#[test]
fn a_per_head_spec_gives_one_layout_with_one_slot_per_head() {
    let l = layouts(&per_head());
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].group, 2);
    assert_eq!(l[0].children().collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn a_within_head_group_shared_by_both_heads_gives_no_layout() {
    let mut spec = per_head();
    spec.groups.drain(0..2);
    spec.groups.push(PermGroup {
        members: vec![AxisMember {
            repeat: 2,
            ..AxisMember::plain("v", 0)
        }],
        ..group("vo_dims", 2, "vo_dims", 0, 1)
    });
    assert!(layouts(&spec).is_empty());
}

#[test]
fn a_within_head_group_listed_after_its_heads_gives_no_layout() {
    let mut spec = per_head();
    spec.groups.rotate_left(1);
    assert!(layouts(&spec).is_empty());
}

#[test]
fn the_joint_step_swaps_the_heads_and_reorders_the_moved_heads_dimensions() {
    // B stores A's head 1 with its dimensions reversed, then A's head 0.
    let a = rows(&A);
    let b = rows(&[A[3], A[2], A[0], A[1]]);
    let spec = per_head();
    let l = &layouts(&spec)[0];
    let j = joint_step(&spec, l, &a, &b, &spec.identity()).unwrap();
    // ⟨A, B⟩ at the identity: A0·A3 = 4, the other rows are orthogonal.
    assert_eq!(j.current, 4.0);
    // ‖A‖² = 1 + 4 + 9 + 17.
    assert_eq!(j.score, 31.0);
    assert_eq!(j.heads, vec![1, 0]);
    // B's head 0 (vo_dims.0) goes to A's head 1 with its dimensions swapped;
    // B's head 1 (vo_dims.1) keeps its order.
    let mut children = j.children.clone();
    children.sort();
    assert_eq!(children, vec![(0, vec![1, 0]), (1, vec![0, 1])]);
}

#[test]
fn positions_no_within_head_group_moves_count_where_they_are() {
    // Only head dimension 0 has a group (size 1): the score of a head pair
    // is the sum of the matching rows, none moved.
    let spec = PermutationSpec::new(
        None,
        vec![
            group("d.0", 1, "qk_dims", 0, 1),
            group("d.1", 1, "qk_dims", 2, 1),
            group("heads", 2, "heads", 0, 2),
        ],
    );
    let a = rows(&A);
    let b = rows(&[A[2], A[3], A[0], A[1]]);
    let l = &layouts(&spec)[0];
    let j = joint_step(&spec, l, &a, &b, &spec.identity()).unwrap();
    assert_eq!(j.heads, vec![1, 0]);
    assert_eq!(j.score, 31.0);
}
