use super::*;

fn m(tensor: &str, axis: usize, start: usize, block: usize, repeat: usize) -> AxisMember {
    AxisMember {
        tensor: tensor.into(),
        axis,
        start,
        block,
        repeat,
        buffer: false,
    }
}

fn g(name: &str, size: usize, kind: &str, members: Vec<AxisMember>) -> PermGroup {
    PermGroup {
        name: name.into(),
        size,
        kind: Some(kind.into()),
        members,
    }
}

fn names(s: &PermutationSpec) -> Vec<&str> {
    s.groups.iter().map(|g| g.name.as_str()).collect()
}

/// 2 heads of 3 dims: V rows 0..6, O columns 0..6.
fn shared_spec() -> PermutationSpec {
    PermutationSpec::new(
        None,
        vec![
            g("residual", 4, "residual", vec![m("o", 0, 0, 1, 1)]),
            g(
                "heads",
                2,
                "heads",
                vec![m("v", 0, 0, 3, 1), m("o", 1, 0, 3, 1)],
            ),
            g(
                "vo_dims",
                3,
                "vo_dims",
                vec![m("v", 0, 0, 1, 2), m("o", 1, 0, 1, 2)],
            ),
        ],
    )
}

#[test]
fn a_shared_within_head_group_becomes_one_group_per_head_before_its_heads() {
    let s = split(&shared_spec());
    assert_eq!(names(&s), ["residual", "vo_dims.0", "vo_dims.1", "heads"]);
    // head 1 owns V rows 3, 4, 5: start 3, one repetition
    assert_eq!(
        s.groups[2].members,
        vec![m("v", 0, 3, 1, 1), m("o", 1, 3, 1, 1)]
    );
    assert_eq!(s.groups[1].members[0], m("v", 0, 0, 1, 1));
}

#[test]
fn query_heads_of_a_kv_group_and_its_vo_dims_are_split_per_kv_head() {
    // 2 KV heads of 2 dims, 2 query heads per KV head: Q rows 0..8, K/V rows 0..4.
    let spec = PermutationSpec::new(
        None,
        vec![
            g(
                "heads",
                2,
                "heads",
                vec![
                    m("q", 0, 0, 4, 1),
                    m("k", 0, 0, 2, 1),
                    m("v", 0, 0, 2, 1),
                    m("o", 1, 0, 4, 1),
                ],
            ),
            g(
                "query_heads",
                2,
                "heads",
                vec![m("q", 0, 0, 2, 2), m("o", 1, 0, 2, 2)],
            ),
            g(
                "vo_dims",
                2,
                "vo_dims",
                vec![m("v", 0, 0, 1, 2), m("o", 1, 0, 1, 4)],
            ),
        ],
    );
    let s = split(&spec);
    assert_eq!(
        names(&s),
        [
            "query_heads.0",
            "query_heads.1",
            "vo_dims.0",
            "vo_dims.1",
            "heads"
        ]
    );
    // KV head 1: its query heads are Q rows 4..8; its V/O dims are V rows
    // 2, 3 and O columns 4..8 (two query heads of 2).
    assert_eq!(
        s.groups[1].members,
        vec![m("q", 0, 4, 2, 1), m("o", 1, 4, 2, 1)]
    );
    assert_eq!(
        s.groups[3].members,
        vec![m("v", 0, 2, 1, 1), m("o", 1, 4, 1, 2)]
    );
}

#[test]
fn a_spec_without_nested_groups_is_unchanged() {
    let mut spec = shared_spec();
    spec.groups.truncate(2);
    assert_eq!(split(&spec), spec);
}

#[test]
fn a_within_head_group_that_does_not_cut_into_heads_is_left_shared() {
    // Units of 3 positions across 3 heads of 2: one repetition cannot be
    // cut into 3 heads, so the group stays as it is.
    let mut spec = shared_spec();
    spec.groups[1].size = 3;
    spec.groups[1].members = vec![m("v", 0, 0, 2, 1), m("o", 1, 0, 2, 1)];
    spec.groups[2].size = 2;
    spec.groups[2].members = vec![m("v", 0, 0, 3, 1), m("o", 1, 0, 3, 1)];
    assert_eq!(split(&spec), spec);
}
