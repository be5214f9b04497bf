//! Tests of decays and warm-ups: hand-checked weights and step-by-step
//! simulations of the recurrence.

use super::*;
use crate::ema::tests::{assert_close, close, decay, simulate, with_warmup};
use crate::ema::{EmaProfile, weights};

// --- decay ------------------------------------------------------------

#[test]
fn two_checkpoints_ten_steps_apart_with_decay_0_9_weigh_0_9_pow_10_and_the_rest() {
    let w = weights(&decay(0.9), &[0, 10]).unwrap();
    // 0.9^10 = 0.3486784401
    assert_close(&w, &[0.348_678_440_1, 0.651_321_559_9], 1e-14);
}

#[test]
fn three_checkpoints_with_uneven_gaps_follow_the_product_formula() {
    // β = 0.5, steps 0, 1, 3: Δ = 1, 2.
    // w_2 = 1 − 0.5² = 0.75, w_1 = (1 − 0.5)·0.25 = 0.125, w_0 = 0.5·0.25 = 0.125.
    let w = weights(&decay(0.5), &[0, 1, 3]).unwrap();
    assert_close(&w, &[0.125, 0.125, 0.75], 1e-15);
}

#[test]
fn a_single_checkpoint_gets_all_the_weight_under_every_profile() {
    for p in [
        decay(0.99),
        with_warmup(0.99, Warmup::Rational),
        EmaProfile::Power { gamma: 7.0 },
        EmaProfile::Window { k: 1 },
    ] {
        assert_eq!(weights(&p, &[1234]).unwrap(), vec![1.0], "{p}");
    }
    assert_eq!(
        weights(&EmaProfile::Power { gamma: 1.0 }, &[0]).unwrap(),
        vec![1.0]
    );
}

#[test]
fn decay_weights_equal_a_step_by_step_simulation_of_the_recurrence() {
    let steps = [3, 4, 9, 10, 25, 26, 27, 40];
    for beta in [0.5, 0.9, 0.97] {
        let want = simulate(&steps, |_| beta);
        let got = weights(&decay(beta), &steps).unwrap();
        assert_close(&got, &want, 1e-12);
    }
}

#[test]
fn consecutive_steps_reproduce_torch_averaged_model_weights() {
    // AveragedModel(get_ema_multi_avg_fn(β)): first update copies, then
    // e = β e + (1 − β) θ_k, so θ_0 gets β^{n−1}, θ_k gets (1 − β) β^{n−1−k}.
    let beta: f64 = 0.8;
    let w = weights(&decay(beta), &[100, 101, 102, 103]).unwrap();
    let want = [beta.powi(3), 0.2 * beta.powi(2), 0.2 * beta, 0.2];
    assert_close(&w, &want, 1e-14);
}

#[test]
fn hundreds_of_sparse_checkpoints_at_decay_0_9999_do_not_underflow_to_nan() {
    // 400 checkpoints, gaps up to 1e6 steps: Σ Δ ln β ≈ −2e4, far below f64's range.
    let mut steps = vec![0u64];
    let mut x: u64 = 12345;
    for _ in 0..399 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let gap = 1 + (x >> 33) % 1_000_000;
        steps.push(steps.last().unwrap() + gap);
    }
    let d = Decay::from_beta(0.9999).unwrap();
    let w = weights(
        &EmaProfile::Decay {
            decay: d,
            warmup: None,
        },
        &steps,
    )
    .unwrap();
    assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
    let last_gap = (steps[399] - steps[398]) as f64;
    assert!(close(w[399], -(last_gap * d.ln_beta()).exp_m1(), 1e-15));
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(w[0], 0.0, "the initialisation is ~e^-20000 away");
}

#[test]
fn decay_very_close_to_one_keeps_its_precision_in_log_space() {
    // τ = 1e-9 over 10 steps: w_1 = 1 − (1 − 1e-9)^10 ≈ 1e-8 − 4.5e-17.
    let d = Decay::from_tau(1e-9).unwrap();
    let w = weights(
        &EmaProfile::Decay {
            decay: d,
            warmup: None,
        },
        &[0, 10],
    )
    .unwrap();
    assert!(close(w[1], 1e-8 - 45e-18, 1e-12), "{}", w[1]);
}

#[test]
fn half_life_of_10_steps_is_decay_0_5_pow_0_1() {
    let b = half_life_to_decay(10.0).unwrap();
    assert!(close(b, 0.5f64.powf(0.1), 1e-15));
    assert!(close(b, 0.933_032_991_536_807_4, 1e-15));
    assert!(close(decay_to_half_life(b).unwrap(), 10.0, 1e-12));
    // After one half-life the old state has exactly half of the weight.
    let w = weights(
        &EmaProfile::Decay {
            decay: Decay::from_half_life(10.0).unwrap(),
            warmup: None,
        },
        &[0, 10],
    )
    .unwrap();
    assert_close(&w, &[0.5, 0.5], 1e-14);
}

#[test]
fn tau_is_one_minus_decay() {
    let d = Decay::from_tau(0.005).unwrap();
    assert_eq!(d.tau(), 0.005);
    assert!(close(d.beta(), 0.995, 1e-15));
    let w1 = weights(
        &EmaProfile::Decay {
            decay: d,
            warmup: None,
        },
        &[0, 7, 9],
    )
    .unwrap();
    let w2 = weights(&decay(0.995), &[0, 7, 9]).unwrap();
    assert_close(&w1, &w2, 1e-12);
}

#[test]
fn decay_of_one_or_zero_and_out_of_range_tau_are_rejected_with_a_reason() {
    let e = Decay::from_beta(1.0).unwrap_err().to_string();
    assert!(
        e.contains("never moves the average off the first checkpoint"),
        "{e}"
    );
    let e = Decay::from_beta(0.0).unwrap_err().to_string();
    assert!(e.contains("keeps only the last checkpoint"), "{e}");
    assert!(Decay::from_beta(f64::NAN).is_err());
    assert!(Decay::from_beta(-0.5).is_err());
    assert!(Decay::from_tau(0.0).is_err());
    assert!(Decay::from_tau(1.0).is_err());
    assert!(Decay::from_half_life(0.0).is_err());
    assert!(Decay::from_half_life(-3.0).is_err());
    assert!(Decay::from_half_life(f64::INFINITY).is_err());
}

// --- warm-up ------------------------------------------------------------

#[test]
fn rational_warmup_over_two_steps_from_zero_is_a_product_of_0_1_and_2_over_11() {
    // Updates t = 0, 1: decays 1/10 and 2/11; the first checkpoint keeps 0.2/11.
    let w = weights(&with_warmup(0.99, Warmup::Rational), &[0, 2]).unwrap();
    assert_close(&w, &[0.2 / 11.0, 10.8 / 11.0], 1e-15);
}

#[test]
fn rational_warmup_weights_equal_a_step_by_step_simulation_of_min_beta_1_plus_t_over_10_plus_t() {
    let steps = [0, 1, 5, 17, 18, 60, 150, 151, 400];
    for beta in [0.9f64, 0.95, 0.999] {
        let want = simulate(&steps, |t| beta.min((1.0 + t as f64) / (10.0 + t as f64)));
        let got = weights(&with_warmup(beta, Warmup::Rational), &steps).unwrap();
        assert_close(&got, &want, 1e-12);
    }
    // Starting later than step 0.
    let steps = [40, 45, 300];
    let want = simulate(&steps, |t| {
        0.98f64.min((1.0 + t as f64) / (10.0 + t as f64))
    });
    let got = weights(&with_warmup(0.98, Warmup::Rational), &steps).unwrap();
    assert_close(&got, &want, 1e-12);
}

#[test]
fn inv_gamma_warmup_weights_equal_a_step_by_step_simulation_of_the_diffusers_formula() {
    let steps = [0, 1, 2, 10, 64, 65, 300, 1000];
    for (beta, g, p) in [
        (0.999f64, 1.0f64, 2.0f64 / 3.0),
        (0.99, 1.0, 0.75),
        (0.9, 5.0, 1.0),
    ] {
        let w = Warmup::InvGamma {
            inv_gamma: g,
            power: p,
        };
        let want = simulate(&steps, |t| beta.min(1.0 - (1.0 + t as f64 / g).powf(-p)));
        let got = weights(&with_warmup(beta, w), &steps).unwrap();
        assert_close(&got, &want, 1e-12);
    }
}

#[test]
fn inv_gamma_warmup_with_a_zero_first_decay_gives_no_weight_to_a_checkpoint_at_step_0() {
    // d_0 = 1 − 1^−p = 0: the update into step 1 copies θ.
    let w = weights(&with_warmup(0.99, Warmup::INV_GAMMA_DEFAULT), &[0, 1, 2]).unwrap();
    assert_eq!(w[0], 0.0);
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
}

#[test]
fn warmup_saturates_at_the_first_update_whose_schedule_reaches_beta() {
    // (1+t)/(10+t) ≥ 0.93 ⇔ t ≥ 8.3/0.07 = 118.6, so from t = 119 on.
    let d = Decay::from_beta(0.93).unwrap();
    assert_eq!(Warmup::Rational.saturation_step(d), 119);
    assert_eq!(Warmup::Rational.decay_at(d, 118), 119.0 / 128.0);
    assert_eq!(Warmup::Rational.decay_at(d, 119), 0.93);
    // 1 − (1+t)^−1 ≥ 0.985 ⇔ 1 + t ≥ 66.7, so from t = 66 on.
    let w = Warmup::InvGamma {
        inv_gamma: 1.0,
        power: 1.0,
    };
    let d = Decay::from_beta(0.985).unwrap();
    assert_eq!(w.saturation_step(d), 66);
    assert_eq!(w.decay_at(d, 65), 1.0 - 1.0 / 66.0);
    assert_eq!(w.decay_at(d, 66), 0.985);
}

#[test]
fn warmup_names_parse_and_bad_parameters_are_rejected() {
    assert_eq!(Warmup::parse("tf", None, None).unwrap(), Warmup::Rational);
    assert_eq!(
        Warmup::parse("rational", None, None).unwrap(),
        Warmup::Rational
    );
    assert_eq!(
        Warmup::parse("inv-gamma", None, None).unwrap(),
        Warmup::INV_GAMMA_DEFAULT
    );
    assert_eq!(
        Warmup::parse("diffusers", Some(2.0), Some(0.75)).unwrap(),
        Warmup::InvGamma {
            inv_gamma: 2.0,
            power: 0.75
        }
    );
    assert!(Warmup::parse("timmy", None, None).is_err());
    assert!(Warmup::parse("rational", Some(1.0), None).is_err());
    assert!(Warmup::parse("inv-gamma", Some(0.0), None).is_err());
    assert!(Warmup::parse("inv-gamma", None, Some(-1.0)).is_err());
}
