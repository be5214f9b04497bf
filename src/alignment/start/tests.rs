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

/// A `[rows, width]` matrix of small varied values (exact in f32).
fn varied(rows: usize, width: usize, seed: u32) -> Vec<f32> {
    (0..rows * width)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1999) as f32 / 64.0 - 15.0)
        .collect()
}

#[test]
fn columns_standardized_in_place_are_the_bits_of_the_transposed_rows() {
    let (rows, width) = (9, 6);
    let mut x = varied(rows, width, 7);
    for r in 0..rows {
        x[r * width + 2] = 3.25; // a constant column stays zero
        x[r * width + 4] = -0.0; // an all −0.0 column: the sums' starting sign shows
    }
    let m = ndarray::Array2::from_shape_vec((rows, width), x.clone()).unwrap();
    for cols in [0..width, 1..5] {
        let rows_way = standardized(m.slice(ndarray::s![.., cols.clone()]).t().to_owned());
        let cols_way = standardized_columns(x.clone(), &[rows, width], cols.clone());
        let bits = |a: ndarray::ArrayView2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(cols_way.t()),
            bits(rows_way.view()),
            "columns {cols:?}"
        );
    }
}

#[test]
fn the_column_product_is_the_bits_of_the_row_product() {
    // Large enough for several of matrixmultiply's packed panels.
    let (rows, width) = (515, 70);
    let za = standardized_columns(varied(rows, width, 1), &[rows, width], 0..width);
    let zb = standardized_columns(varied(rows, width, 2), &[rows, width], 0..width);
    let by_columns = za.t().dot(&zb);
    let by_rows = za.t().to_owned().dot(&zb.t().to_owned().t());
    let bits = |a: &ndarray::Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&by_columns), bits(&by_rows));
}

#[test]
fn only_whole_consecutive_columns_of_a_matrix_are_unit_columns() {
    let one = |ps: &[usize]| ps.iter().map(|&p| vec![p]).collect::<Vec<_>>();
    assert_eq!(unit_columns(&[10, 4], 1, &one(&[0, 1, 2, 3])), Some(0..4));
    assert_eq!(unit_columns(&[10, 6], 1, &one(&[2, 3, 4])), Some(2..5));
    // Rows, a 3-D tensor, shuffled or blocked units take the copying path.
    assert_eq!(unit_columns(&[10, 4], 0, &one(&[0, 1, 2, 3])), None);
    assert_eq!(unit_columns(&[2, 10, 4], 2, &one(&[0, 1, 2, 3])), None);
    assert_eq!(unit_columns(&[10, 4], 1, &one(&[1, 0, 2, 3])), None);
    assert_eq!(unit_columns(&[10, 4], 1, &[vec![0, 1], vec![2, 3]]), None);
}
