//! Tests of the assignment solver against brute force and Kuhn–Munkres.

use super::*;
use proptest::prelude::*;

/// SplitMix64: a small deterministic generator for test matrices.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

fn uniform_matrix(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n * n).map(|_| rng.uniform()).collect()
}

fn score_of(s: &[f64], n: usize, perm: &[usize]) -> f64 {
    perm.iter().enumerate().map(|(i, &j)| s[i * n + j]).sum()
}

fn assert_permutation(perm: &[usize], n: usize) {
    assert_eq!(perm.len(), n);
    let mut seen = vec![false; n];
    for &j in perm {
        assert!(j < n && !seen[j], "not a permutation: {perm:?}");
        seen[j] = true;
    }
}

/// Best total over all permutations (Heap's algorithm), maximising or
/// minimising.
fn brute_force(s: &[f64], n: usize, maximise: bool) -> f64 {
    let mut p: Vec<usize> = (0..n).collect();
    let better = |a: f64, b: f64| if maximise { a > b } else { a < b };
    let mut best = score_of(s, n, &p);
    let mut c = vec![0usize; n];
    let mut i = 0;
    while i < n {
        if c[i] < i {
            if i % 2 == 0 {
                p.swap(0, i);
            } else {
                p.swap(c[i], i);
            }
            let t = score_of(s, n, &p);
            if better(t, best) {
                best = t;
            }
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    best
}

/// Optimal total of `pathfinding::kuhn_munkres` (an independent
/// Hungarian implementation) on integer scores.
fn kuhn_munkres_score(ints: &[i64], n: usize) -> i64 {
    let weights = pathfinding::matrix::Matrix::from_vec(n, n, ints.to_vec()).unwrap();
    pathfinding::kuhn_munkres::kuhn_munkres(&weights).0
}

/// Solves integer scores with both solvers and checks the totals are
/// equal (f64 arithmetic is exact on these integers).
fn assert_agrees_with_kuhn_munkres(ints: &[i64], n: usize, warm: Option<&[usize]>) {
    let s: Vec<f64> = ints.iter().map(|&x| x as f64).collect();
    let a = maximize(&s, n, warm, "test").unwrap();
    assert_permutation(&a.perm, n);
    assert_eq!(a.score, score_of(&s, n, &a.perm));
    assert_eq!(a.score, kuhn_munkres_score(ints, n) as f64, "n = {n}");
}

fn assert_close(a: f64, b: f64) {
    assert!(
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs())),
        "{a} != {b}"
    );
}

#[test]
fn picks_the_anti_diagonal_when_it_scores_highest() {
    // Anti-diagonal 3 + 5 + 7 = 15 beats the diagonal 1 + 5 + 1 = 7
    // and every other permutation.
    let s = [
        1.0, 0.0, 3.0, //
        0.0, 5.0, 0.0, //
        7.0, 0.0, 1.0,
    ];
    let a = maximize(&s, 3, None, "g").unwrap();
    assert_eq!(a.perm, vec![2, 1, 0]);
    assert_eq!(a.score, 15.0);
}

#[test]
fn solves_a_hand_checked_three_by_three() {
    // The six permutations score [0,1,2]: 4+0+2 = 6, [0,2,1]: 4+5+2 = 11,
    // [1,0,2]: 1+2+2 = 5, [1,2,0]: 1+5+3 = 9, [2,0,1]: 3+2+2 = 7,
    // [2,1,0]: 3+0+3 = 6. The maximum is 11 at [0, 2, 1].
    let s = [
        4.0, 1.0, 3.0, //
        2.0, 0.0, 5.0, //
        3.0, 2.0, 2.0,
    ];
    let a = maximize(&s, 3, None, "g").unwrap();
    assert_eq!(a.perm, vec![0, 2, 1]);
    assert_eq!(a.score, 11.0);
}

#[test]
fn minimize_finds_the_cheapest_assignment() {
    // Same matrix as above: the minimum is 5 at [1, 0, 2].
    let c = [
        4.0, 1.0, 3.0, //
        2.0, 0.0, 5.0, //
        3.0, 2.0, 2.0,
    ];
    let a = minimize(&c, 3, None, "g").unwrap();
    assert_eq!(a.perm, vec![1, 0, 2]);
    assert_eq!(a.score, 5.0);
}

#[test]
fn handles_negative_scores() {
    // Row 0 prefers column 1 (-1 > -5), row 1 column 0 (-2 > -3):
    // total -3.
    let s = [-5.0, -1.0, -2.0, -3.0];
    let a = maximize(&s, 2, None, "g").unwrap();
    assert_eq!(a.perm, vec![1, 0]);
    assert_eq!(a.score, -3.0);
}

#[test]
fn an_empty_problem_gives_an_empty_assignment() {
    let a = maximize(&[], 0, None, "g").unwrap();
    assert!(a.perm.is_empty());
    assert_eq!(a.score, 0.0);
    let a = maximize(&[], 0, Some(&[]), "g").unwrap();
    assert!(a.perm.is_empty());
}

#[test]
fn a_one_by_one_problem_assigns_the_only_column() {
    let a = maximize(&[-2.5], 1, None, "g").unwrap();
    assert_eq!(a.perm, vec![0]);
    assert_eq!(a.score, -2.5);
    let a = maximize(&[-2.5], 1, Some(&[0]), "g").unwrap();
    assert_eq!(a.perm, vec![0]);
}

#[test]
fn an_all_zero_matrix_gives_some_permutation_scoring_zero() {
    for n in [2, 5, 64, 300] {
        let s = vec![0.0; n * n];
        let (a, stats) = maximize_with_stats(&s, n, None, "g").unwrap();
        assert_permutation(&a.perm, n);
        assert_eq!(a.score, 0.0);
        assert_eq!(stats.constant_rows, n);
        let a = maximize(&s, n, Some(&Rng(n as u64).permutation(n)), "g").unwrap();
        assert_permutation(&a.perm, n);
    }
}

#[test]
fn identical_rows_score_the_sum_of_the_row_whatever_the_permutation() {
    let mut rng = Rng(7);
    let n = 40;
    let row: Vec<f64> = (0..n).map(|_| (rng.below(5)) as f64).collect();
    let s: Vec<f64> = (0..n).flat_map(|_| row.iter().copied()).collect();
    let a = maximize(&s, n, None, "g").unwrap();
    assert_permutation(&a.perm, n);
    assert_eq!(a.score, row.iter().sum::<f64>());
}

#[test]
fn duplicated_rows_are_split_over_their_best_columns() {
    // Rows 0 and 1 are equal and both want columns 0 and 1; row 2 takes
    // column 2. Best: 9 + 8 + 1 = 18.
    let s = [
        9.0, 8.0, 0.0, //
        9.0, 8.0, 0.0, //
        9.0, 8.0, 1.0,
    ];
    let a = maximize(&s, 3, None, "g").unwrap();
    assert_eq!(a.score, 18.0);
    assert_eq!(a.perm[2], 2);
}

#[test]
fn dead_units_with_all_zero_rows_are_solved_exactly() {
    // 10% (and 40%) zero rows: the constant-row start; a single zero row:
    // JV's start. Both checked against Kuhn–Munkres.
    for (n, dead) in [(50, 5), (50, 20), (120, 12), (120, 1), (200, 20)] {
        let mut rng = Rng(n as u64 * 31 + dead as u64);
        let mut ints: Vec<i64> = (0..n * n).map(|_| rng.below(1000) as i64).collect();
        for &i in &rng.permutation(n)[..dead] {
            ints[i * n..(i + 1) * n].fill(0);
        }
        assert_agrees_with_kuhn_munkres(&ints, n, None);
    }
}

#[test]
fn dead_units_with_all_zero_columns_are_solved_exactly() {
    let n = 80;
    let mut rng = Rng(99);
    let mut ints: Vec<i64> = (0..n * n).map(|_| rng.below(1000) as i64).collect();
    for &j in &rng.permutation(n)[..8] {
        for i in 0..n {
            ints[i * n + j] = 0;
        }
    }
    assert_agrees_with_kuhn_munkres(&ints, n, None);
}

#[test]
fn constant_rows_of_different_values_are_placed_optimally() {
    // Constant rows contribute the same whatever their column, so the
    // optimum is that of the other rows; check against Kuhn–Munkres.
    let n = 150;
    let mut rng = Rng(5);
    let mut ints: Vec<i64> = (0..n * n).map(|_| rng.below(100) as i64).collect();
    for (k, &i) in rng.permutation(n)[..30].iter().enumerate() {
        ints[i * n..(i + 1) * n].fill(k as i64 * 7 - 50);
    }
    assert_agrees_with_kuhn_munkres(&ints, n, None);
}

#[test]
fn rejects_a_nan_with_its_position() {
    let mut s = vec![0.5; 16];
    s[2 * 4 + 3] = f64::NAN;
    let err = maximize(&s, 4, None, "layer1.mlp").unwrap_err().one_line();
    assert_eq!(
        err,
        "assignment problem for group `layer1.mlp`: score matrix has 1 non-finite \
         entry (first at row 2, column 3: NaN)"
    );
}

#[test]
fn rejects_infinities_and_counts_them() {
    let mut s = vec![0.5; 25];
    s[7] = f64::INFINITY;
    s[20] = f64::NEG_INFINITY;
    s[21] = f64::NAN;
    let err = maximize(&s, 5, Some(&[0, 1, 2, 3, 4]), "g")
        .unwrap_err()
        .one_line();
    assert!(
        err.contains("score matrix has 3 non-finite entries (first at row 1, column 2: inf)"),
        "{err}"
    );
    let err = minimize(&s, 5, None, "g").unwrap_err().one_line();
    assert!(err.contains("3 non-finite entries"), "{err}");
}

#[test]
fn rejects_scores_too_large_to_add_safely() {
    let mut s = vec![1.0; 9];
    s[4] = -1e200;
    let err = maximize(&s, 3, None, "g").unwrap_err();
    assert!(matches!(err, Error::Assignment { .. }));
    assert!(
        err.one_line().contains("(row 1, column 1: -1e200)"),
        "{err}"
    );
}

#[test]
fn rejects_scores_of_the_wrong_length() {
    let err = maximize(&[1.0; 8], 3, None, "g").unwrap_err().one_line();
    assert_eq!(
        err,
        "assignment problem for group `g`: score matrix has 8 entries, expected 3×3 = 9"
    );
    assert!(maximize(&[1.0], 0, None, "g").is_err());
}

#[test]
fn rejects_a_warm_hint_that_is_not_a_permutation() {
    let s = [1.0; 9];
    let cases: [(&[usize], &str); 3] = [
        (&[0, 1], "warm-start permutation has length 2, expected 3"),
        (&[0, 3, 1], "entry 1 is 3"),
        (&[2, 0, 2], "column 2 appears twice (again at entry 2)"),
    ];
    for (hint, reason) in cases {
        let err = maximize(&s, 3, Some(hint), "g").unwrap_err();
        assert!(matches!(err, Error::Assignment { .. }));
        assert!(err.one_line().contains(reason), "{err}");
    }
}

#[test]
fn a_garbage_warm_hint_still_gives_the_optimum() {
    for n in [10, 100, 400] {
        let mut rng = Rng(n as u64);
        let s = uniform_matrix(&mut rng, n);
        let cold = maximize(&s, n, None, "g").unwrap();
        let reversed: Vec<usize> = (0..n).rev().collect();
        for hint in [rng.permutation(n), reversed, (0..n).collect()] {
            let warm = maximize(&s, n, Some(&hint), "g").unwrap();
            assert_permutation(&warm.perm, n);
            assert_close(warm.score, cold.score);
        }
    }
}

#[test]
fn the_optimal_hint_is_kept_whole_and_needs_no_augmentation() {
    let n = 300;
    let s = uniform_matrix(&mut Rng(3), n);
    let cold = maximize(&s, n, None, "g").unwrap();
    let (warm, stats) = maximize_with_stats(&s, n, Some(&cold.perm), "g").unwrap();
    assert_eq!(warm.perm, cold.perm);
    assert!(stats.warm_used);
    assert_eq!(stats.warm_kept, n);
    assert_eq!(stats.augmentations, 0);
}

#[test]
fn a_warm_start_after_a_small_perturbation_finds_the_new_optimum() {
    let n = 300;
    let mut rng = Rng(11);
    let s = uniform_matrix(&mut rng, n);
    let before = maximize(&s, n, None, "g").unwrap();
    let perturbed: Vec<f64> = s
        .iter()
        .map(|&x| x + (rng.uniform() - 0.5) * 0.2 / n as f64)
        .collect();
    let cold = maximize(&perturbed, n, None, "g").unwrap();
    let (warm, stats) = maximize_with_stats(&perturbed, n, Some(&before.perm), "g").unwrap();
    assert_close(warm.score, cold.score);
    assert!(stats.warm_used, "{stats:?}");
    assert!(stats.warm_kept > n / 2, "{stats:?}");
}

#[test]
fn warm_start_on_integer_ties_matches_kuhn_munkres() {
    for n in [30, 60] {
        let mut rng = Rng(n as u64 + 1000);
        let ints: Vec<i64> = (0..n * n).map(|_| rng.below(3) as i64).collect();
        assert_agrees_with_kuhn_munkres(&ints, n, Some(&rng.permutation(n)));
        let s: Vec<f64> = ints.iter().map(|&x| x as f64).collect();
        let cold = maximize(&s, n, None, "g").unwrap();
        assert_agrees_with_kuhn_munkres(&ints, n, Some(&cold.perm));
    }
}

#[test]
fn recovers_the_hidden_permutation_of_a_similarity_matrix() {
    // S = A Bᵀ with B = A[π] + noise: S[i, j] ≈ a_i · a_π(j), largest
    // where π(j) = i, so the optimum is perm[i] = π⁻¹(i).
    let (n, d) = (256, 64);
    let mut rng = Rng(2024);
    let a: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let pi = rng.permutation(n);
    let b: Vec<f64> = (0..n)
        .flat_map(|j| (0..d).map(move |k| (j, k)))
        .map(|(j, k)| a[pi[j] * d + k] + 0.1 * rng.normal())
        .collect();
    let s: Vec<f64> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| (0..d).map(|k| a[i * d + k] * b[j * d + k]).sum())
        .collect();
    let mut expected = vec![0; n];
    for (j, &i) in pi.iter().enumerate() {
        expected[i] = j;
    }
    assert_eq!(maximize(&s, n, None, "g").unwrap().perm, expected);
    let hint = rng.permutation(n);
    assert_eq!(maximize(&s, n, Some(&hint), "g").unwrap().perm, expected);
}

#[test]
fn maximize_and_minimize_agree_on_negated_scores() {
    let n = 120;
    let s = uniform_matrix(&mut Rng(8), n);
    let neg: Vec<f64> = s.iter().map(|&x| -x).collect();
    let a = maximize(&s, n, None, "g").unwrap();
    let b = minimize(&neg, n, None, "g").unwrap();
    assert_close(a.score, -b.score);
}

#[test]
fn agrees_with_kuhn_munkres_on_scaled_real_scores() {
    // Real scores scaled by 1e6 and rounded to integers, so that both
    // solvers see exactly the same problem.
    for (seed, n) in [(1, 7), (2, 20), (3, 45), (4, 60), (5, 60)] {
        let mut rng = Rng(seed);
        let ints: Vec<i64> = (0..n * n)
            .map(|_| (rng.normal() * 1e6).round() as i64)
            .collect();
        assert_agrees_with_kuhn_munkres(&ints, n, None);
    }
}

#[test]
fn agrees_with_kuhn_munkres_at_a_few_hundred_rows() {
    // Large enough for augmenting row reduction and long augmenting
    // paths; one wide and one tie-heavy value range.
    for (n, range) in [(300, 1_000_000), (300, 4)] {
        let mut rng = Rng(n as u64 * range);
        let ints: Vec<i64> = (0..n * n)
            .map(|_| rng.below(range as usize) as i64)
            .collect();
        assert_agrees_with_kuhn_munkres(&ints, n, None);
    }
}

fn matrix_and_hint(
    values: impl Strategy<Value = f64> + Clone,
) -> impl Strategy<Value = (usize, Vec<f64>, Vec<usize>)> {
    (1usize..=7).prop_flat_map(move |n| {
        (
            Just(n),
            proptest::collection::vec(values.clone(), n * n),
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn matches_brute_force_on_small_random_matrices(
        (n, s, hint) in matrix_and_hint(-1e3f64..1e3)
    ) {
        let best = brute_force(&s, n, true);
        let a = maximize(&s, n, None, "p").unwrap();
        assert_permutation(&a.perm, n);
        prop_assert!((a.score - best).abs() <= 1e-9 * (1.0 + best.abs()));
        let w = maximize(&s, n, Some(&hint), "p").unwrap();
        prop_assert!((w.score - best).abs() <= 1e-9 * (1.0 + best.abs()));
        let worst = brute_force(&s, n, false);
        let m = minimize(&s, n, Some(&hint), "p").unwrap();
        prop_assert!((m.score - worst).abs() <= 1e-9 * (1.0 + worst.abs()));
    }

    #[test]
    fn matches_brute_force_on_small_integer_matrices_with_ties(
        (n, s, hint) in matrix_and_hint((0i32..3).prop_map(f64::from))
    ) {
        // Integer scores: every solver step is exact, so equality is.
        let best = brute_force(&s, n, true);
        prop_assert_eq!(maximize(&s, n, None, "p").unwrap().score, best);
        prop_assert_eq!(maximize(&s, n, Some(&hint), "p").unwrap().score, best);
        let worst = brute_force(&s, n, false);
        prop_assert_eq!(minimize(&s, n, None, "p").unwrap().score, worst);
    }

    #[test]
    fn matches_brute_force_with_zero_rows(
        (n, mut s, hint) in matrix_and_hint((0i32..10).prop_map(f64::from)),
        dead in proptest::collection::vec(any::<bool>(), 7),
    ) {
        for i in 0..n {
            if dead[i] {
                s[i * n..(i + 1) * n].fill(0.0);
            }
        }
        let best = brute_force(&s, n, true);
        prop_assert_eq!(maximize(&s, n, None, "p").unwrap().score, best);
        prop_assert_eq!(maximize(&s, n, Some(&hint), "p").unwrap().score, best);
    }

    #[test]
    fn agrees_with_kuhn_munkres_on_random_sizes(
        n in 8usize..=60,
        range in prop_oneof![Just(2i64), Just(10), Just(1_000_000)],
        seed in any::<u64>(),
        warm in any::<bool>(),
    ) {
        let mut rng = Rng(seed);
        let ints: Vec<i64> = (0..n * n).map(|_| rng.below(range as usize) as i64).collect();
        let hint = rng.permutation(n);
        assert_agrees_with_kuhn_munkres(&ints, n, warm.then_some(&hint[..]));
    }
}
