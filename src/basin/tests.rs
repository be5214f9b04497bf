//! Tests of the pair sums, the streaming pass, diagnostics and verdicts.

use super::*;
use crate::average::MergeInput;
use crate::checkpoint::Checkpoint;

#[test]
fn lane_sums_equal_the_element_by_element_sums_up_to_rounding() {
    // 1003 elements: 125 full lanes of 8 and a remainder of 3.
    let a: Vec<f32> = (0..1003)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let b: Vec<f32> = (0..1003)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
        .collect();
    let fast = PairSums::of(&a, &b);
    let slow = PairSums::of_checked(&a, &b);
    assert_eq!(fast.numel, 1003);
    for (x, y) in [
        (fast.dot, slow.dot),
        (fast.sq_a, slow.sq_a),
        (fast.sq_b, slow.sq_b),
        (fast.sq_diff, slow.sq_diff),
    ] {
        assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn a_nan_anywhere_leaves_just_that_pair_out() {
    // (1,2) and (3,4) count; the NaN pair does not: dot = 2 + 12 = 14.
    let s = PairSums::of(&[1.0, f32::NAN, 3.0], &[2.0, 5.0, 4.0]);
    assert_eq!((s.numel, s.nonfinite), (2, 1));
    assert_eq!(s.dot, 14.0);
}

fn sums(a: &[f32], b: &[f32]) -> PairSums {
    PairSums::of(a, b)
}

#[test]
fn identical_tensors_have_cosine_one_and_midpoint_ratio_one() {
    let s = sums(&[1.0, -2.0, 3.0], &[1.0, -2.0, 3.0]);
    assert!((s.cos().unwrap() - 1.0).abs() < 1e-15);
    assert_eq!(s.rel_distance(), Some(0.0));
    assert!((s.midpoint_ratio().unwrap() - 1.0).abs() < 1e-15);
}

#[test]
fn orthogonal_tensors_of_equal_norm_have_midpoint_ratio_one_over_root_two() {
    let s = sums(&[1.0, 0.0], &[0.0, 1.0]);
    assert_eq!(s.cos(), Some(0.0));
    assert!((s.midpoint_ratio().unwrap() - 0.5f64.sqrt()).abs() < 1e-15);
    assert!((s.rel_distance().unwrap() - 2f64.sqrt()).abs() < 1e-15);
}

#[test]
fn midpoint_ratio_is_root_of_one_plus_cos_over_two_for_equal_norms() {
    // a = (1, 0), b = (cos t, sin t)
    let t = 1.1f64;
    let s = sums(&[1.0, 0.0], &[t.cos() as f32, t.sin() as f32]);
    let expect = ((1.0 + s.cos().unwrap()) / 2.0).sqrt();
    assert!((s.midpoint_ratio().unwrap() - expect).abs() < 1e-7);
}

#[test]
fn zero_tensors_have_no_cosine() {
    let s = sums(&[0.0, 0.0], &[1.0, 2.0]);
    assert_eq!(s.cos(), None);
    assert_eq!(sums(&[0.0], &[0.0]).rel_distance(), None);
}

#[test]
fn non_finite_pairs_are_counted_and_left_out() {
    let s = sums(&[1.0, f32::NAN, 2.0], &[1.0, 3.0, f32::INFINITY]);
    assert_eq!(s.nonfinite, 2);
    assert_eq!(s.numel, 1);
    assert_eq!(s.dot, 1.0);
}

#[test]
fn the_streaming_pass_matches_whole_tensor_sums_for_every_float_dtype() {
    // f16 goes through the F16C slice conversion, bf16/f32 through
    // `decode_f32`; special values (subnormals, ±0, near-max) included.
    for d in ["f32", "f16", "bf16"] {
        let a = Checkpoint::open(format!("fixtures/io/a_{d}.safetensors")).unwrap();
        let b = Checkpoint::open(format!("fixtures/io/b_{d}.safetensors")).unwrap();
        let got = stream_sums(
            &[MergeInput::plain(&a), MergeInput::plain(&b)],
            &[(0, 1)],
            &(),
        )
        .unwrap()
        .remove(0);
        assert_eq!(got.len(), 6, "{d}");
        for (name, _, s) in got {
            let ta = a.require(&name).unwrap();
            let tb = b.require(&name).unwrap();
            let want = PairSums::of(&a.read_f32(ta).unwrap(), &b.read_f32(tb).unwrap());
            assert_eq!(s, want, "{d} {name}");
        }
    }
}

fn diag(specs: &[(&str, usize, f64)]) -> Diagnostics {
    // Tensors [n/16, 16] with the requested cosine (equal norms).
    let th = Thresholds::default();
    let rows = specs
        .iter()
        .map(|&(name, n, c)| {
            let s = PairSums {
                numel: n as u64,
                dot: c * n as f64,
                sq_a: n as f64,
                sq_b: n as f64,
                sq_diff: 2.0 * n as f64 * (1.0 - c),
                nonfinite: 0,
            };
            (name.to_string(), vec![n / 16, 16], s)
        })
        .collect();
    diagnose(rows, None, &th)
}

#[test]
fn unrelated_large_tensors_make_a_pair_disconnected() {
    let d = diag(&[("a.weight", 4096, 0.01), ("b.weight", 4096, 0.02)]);
    let a = assess(&d, None, &Thresholds::default());
    assert_eq!(a.verdict, Verdict::Disconnected);
    assert!(a.reasons[0].contains("unrelated"), "{:?}", a.reasons);
    assert!(
        a.reasons.iter().any(|r| r.contains("~0.71x")),
        "{:?}",
        a.reasons
    );
}

#[test]
fn close_large_tensors_make_a_pair_connected() {
    // midpoint ratios √0.95 = 0.975 and √0.9 = 0.949; geometric mean 0.962
    // per block, 0.925 over the 2 blocks (`a`, `b`) ≥ 0.80; lowest cos 0.8.
    let d = diag(&[("a.weight", 4096, 0.9), ("b.weight", 4096, 0.8)]);
    assert_eq!(d.summary.layers, Some(2));
    let c = d.summary.compounded_midpoint_ratio.unwrap();
    assert!((c - 0.95f64.sqrt() * 0.9f64.sqrt()).abs() < 1e-12, "{c}");
    assert_eq!(
        assess(&d, None, &Thresholds::default()).verdict,
        Verdict::Connected
    );
}

#[test]
fn related_but_far_large_tensors_are_uncertain_not_connected() {
    // Like aligned independent runs: no tensor unrelated, but √0.7 · √0.615
    // = 0.656 over 2 blocks < 0.80 (and the lowest cos 0.23 < 0.5).
    let d = diag(&[("a.weight", 4096, 0.4), ("b.weight", 4096, 0.23)]);
    let c = d.summary.compounded_midpoint_ratio.unwrap();
    assert!((c - 0.7f64.sqrt() * 0.615f64.sqrt()).abs() < 1e-12, "{c}");
    let a = assess(&d, None, &Thresholds::default());
    assert_eq!(a.verdict, Verdict::Uncertain);
    assert!(a.reasons[0].contains("related but not close"), "{a:?}");
}

#[test]
fn blocks_are_names_up_to_their_first_number() {
    let names = [
        "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_fc.weight",
        "layer2.0.conv1.weight",
        "layer2.1.conv1.weight",
        "fc1.weight",
    ];
    // wte, h.0, h.1, layer2.0, layer2.1, fc1
    assert_eq!(blocks(names), 6);
}

#[test]
fn a_weak_band_or_a_mix_is_uncertain() {
    let th = Thresholds::default();
    let d = diag(&[("a.weight", 4096, 0.12)]);
    assert_eq!(assess(&d, None, &th).verdict, Verdict::Uncertain);
    // one unrelated tensor (a re-initialised head) among 10 related ones:
    // 1/11 < 10% unrelated, but not every cos ≥ 0.5
    let names: Vec<String> = (0..10).map(|i| format!("l{i}.weight")).collect();
    let mut rows: Vec<(&str, usize, f64)> = names.iter().map(|n| (n.as_str(), 4096, 0.9)).collect();
    rows.push(("head.weight", 1024, 0.0));
    let d = diag(&rows);
    assert_eq!(assess(&d, None, &th).verdict, Verdict::Uncertain);
    // two of 12 (17% ≥ 10%): disconnected
    rows.push(("head2.weight", 1024, 0.0));
    let d = diag(&rows);
    assert_eq!(assess(&d, None, &th).verdict, Verdict::Disconnected);
}

#[test]
fn small_and_one_dimensional_tensors_do_not_vote() {
    let th = Thresholds::default();
    let rows = vec![
        (
            "norm.weight".to_string(),
            vec![4096],
            sums(&[1.0; 8], &[1.0; 8]),
        ),
        (
            "tiny.weight".to_string(),
            vec![4, 4],
            sums(&[1.0; 16], &[1.0; 16]),
        ),
    ];
    let d = diagnose(rows, None, &th);
    assert_eq!(d.summary.judged_tensors, 0);
    assert_eq!(assess(&d, None, &th).verdict, Verdict::Uncertain);
}

fn group(churn: f64, before: f64, after: f64) -> GroupDiagnostics {
    let th = Thresholds::default();
    let class = if churn <= th.churn_same {
        GroupClass::SameOrder
    } else if churn >= th.churn_permuted && after - before >= th.gain_permuted {
        GroupClass::Permuted
    } else {
        GroupClass::Partial
    };
    GroupDiagnostics {
        name: "fc1".into(),
        kind: None,
        size: 512,
        cos_before: Some(before),
        cos_after: Some(after),
        gain: Some(after - before),
        churn: Some(churn),
        class: Some(class),
    }
}

#[test]
fn a_permuted_group_makes_the_pair_disconnected_whatever_the_cosines() {
    let th = Thresholds::default();
    let d = diag(&[("a.weight", 4096, 0.9)]);
    let a = assess(&d, Some(&[group(0.97, 0.3, 0.9)]), &th);
    assert_eq!(a.verdict, Verdict::Disconnected);
    assert_eq!(a.data_free, Verdict::Connected);
    assert!(
        a.reasons[0].contains("97.0% of 512 units permuted"),
        "{:?}",
        a.reasons
    );
}

#[test]
fn unchanged_unit_order_alone_does_not_make_a_pair_connected() {
    let th = Thresholds::default();
    // An aligned copy keeps its unit order: churn 0, yet far weights.
    let d = diag(&[("a.weight", 4096, 0.3)]);
    let a = assess(&d, Some(&[group(0.0, 0.3, 0.3)]), &th);
    assert_eq!(a.verdict, Verdict::Uncertain);
    // Close weights in the same order: connected; a partial churn caps it.
    let d = diag(&[("a.weight", 4096, 0.9)]);
    let a = assess(&d, Some(&[group(0.0, 0.9, 0.9)]), &th);
    assert_eq!(a.verdict, Verdict::Connected);
    let a = assess(&d, Some(&[group(0.3, 0.9, 0.91)]), &th);
    assert_eq!(a.verdict, Verdict::Uncertain);
}
