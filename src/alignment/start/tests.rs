//! Anchored members and standardised rows, by hand.

use super::*;
use crate::spec::{AxisMember, PermGroup};

#[test]
fn a_standardized_row_has_zero_mean_and_unit_norm() {
    let x = ndarray::arr2(&[[1.0f32, 2.0, 3.0], [5.0, 5.0, 5.0]]);
    let z = standardized(x);
    let h = 1.0 / 2f32.sqrt();
    assert!((z[[0, 0]] + h).abs() < 1e-6 && z[[0, 1]].abs() < 1e-6 && (z[[0, 2]] - h).abs() < 1e-6);
    // A constant row stays zero.
    assert_eq!(z.row(1).to_vec(), vec![0.0, 0.0, 0.0]);
}

struct Shapes;

impl WeightSource for Shapes {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(match name {
            "embed" => vec![10, 4],
            "mix" => vec![4, 4],
            _ => vec![4],
        })
    }
    fn read(&self, _: &str) -> Result<Vec<f32>> {
        unreachable!("only shapes are read")
    }
    fn float_names(&self) -> Vec<String> {
        Vec::new()
    }
}

#[test]
fn only_members_whose_other_axes_no_group_moves_are_anchored() {
    let spec = PermutationSpec::new(
        None,
        vec![PermGroup {
            name: "residual".into(),
            size: 4,
            kind: None,
            members: vec![
                AxisMember::plain("embed", 1),
                AxisMember::plain("mix", 0),
                AxisMember::plain("mix", 1),
                AxisMember::plain("norm", 0),
            ],
        }],
    );
    let t = touching(&spec);
    // The embedding's vocabulary axis is never permuted; `mix` reads and
    // writes the group itself; a vector has no other axis.
    assert_eq!(
        informative(&spec, 0, &Shapes, &t, &[false]).unwrap(),
        vec![0]
    );
    // Once the group is solved, `mix` is informative too.
    assert_eq!(
        informative(&spec, 0, &Shapes, &t, &[true]).unwrap(),
        vec![0, 1, 2]
    );
}
