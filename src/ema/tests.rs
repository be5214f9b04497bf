//! Tests of EMA weights: power, window, warnings, properties, and the
//! numpy/mpmath/torch reference (`fixtures/ema/reference.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use proptest::prelude::*;

pub(super) fn decay(beta: f64) -> EmaProfile {
    EmaProfile::Decay {
        decay: Decay::from_beta(beta).unwrap(),
        warmup: None,
    }
}

pub(super) fn with_warmup(beta: f64, w: Warmup) -> EmaProfile {
    EmaProfile::Decay {
        decay: Decay::from_beta(beta).unwrap(),
        warmup: Some(w),
    }
}

pub(super) fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) || (a - b).abs() < 1e-300
}

pub(super) fn assert_close(got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*g, *w, rel),
            "weight {i}: got {g:e}, want {w:e} (all: {got:?} vs {want:?})"
        );
    }
}

/// Runs `e ← d e + (1 − d) θ` over every training step `s` in
/// `(t_0, t_n]`, with `θ` = the checkpoint whose interval `(t_{k−1}, t_k]`
/// holds `s`, on one-hot vectors: the result is the weight vector.
pub(super) fn simulate(steps: &[u64], decay_of_update: impl Fn(u64) -> f64) -> Vec<f64> {
    let n = steps.len();
    let mut e = vec![0.0; n];
    e[0] = 1.0; // the first checkpoint initialises the average
    let mut k = 0;
    for s in steps[0] + 1..=steps[n - 1] {
        while steps[k] < s {
            k += 1;
        }
        let d = decay_of_update(s - 1);
        for (i, x) in e.iter_mut().enumerate() {
            *x = d * *x + (1.0 - d) * if i == k { 1.0 } else { 0.0 };
        }
    }
    e
}

// --- power --------------------------------------------------------------

#[test]
fn power_profile_with_gamma_1_on_steps_2_and_4_gives_a_quarter_and_three_quarters() {
    // ∫_0^2 τ dτ = 2, ∫_2^4 τ dτ = 6, total 8.
    let w = weights(&EmaProfile::Power { gamma: 1.0 }, &[2, 4]).unwrap();
    assert_close(&w, &[0.25, 0.75], 1e-15);
    // Steps 1, 2, 4: ∫ = 1/2, 3/2, 6 of 8.
    let w = weights(&EmaProfile::Power { gamma: 1.0 }, &[1, 2, 4]).unwrap();
    assert_close(&w, &[1.0 / 16.0, 3.0 / 16.0, 12.0 / 16.0], 1e-15);
}

#[test]
fn power_profile_with_gamma_2_on_steps_1_2_3_gives_1_7_19_over_27() {
    // ∫ τ² = τ³/3: 1/3, 7/3, 19/3 of 9.
    let w = weights(&EmaProfile::Power { gamma: 2.0 }, &[1, 2, 3]).unwrap();
    assert_close(&w, &[1.0 / 27.0, 7.0 / 27.0, 19.0 / 27.0], 1e-15);
}

#[test]
fn power_profile_with_gamma_0_is_the_running_mean_over_the_steps_each_checkpoint_covers() {
    let w = weights(&EmaProfile::Power { gamma: 0.0 }, &[0, 10, 40]).unwrap();
    assert_close(&w, &[0.0, 0.25, 0.75], 1e-15);
}

#[test]
fn power_weights_equal_edm2_per_step_recurrence_with_theta_held() {
    // EDM2 tracks the profile with β_s = (1 − 1/s)^{γ+1} at every step s.
    let steps = [3, 5, 6, 20, 21, 50];
    for gamma in [0.5, 6.94, 16.97] {
        let want = simulate(&steps, |t| {
            let s = (t + 1) as f64;
            (1.0 - 1.0 / s).powf(gamma + 1.0)
        });
        let got = weights(&EmaProfile::Power { gamma }, &steps).unwrap();
        assert_close(&got, &want, 1e-12);
    }
}

#[test]
fn sigma_rel_0_05_and_0_10_are_edm2s_gamma_16_97_and_6_94() {
    let g05 = sigma_rel_to_gamma(0.05).unwrap();
    let g10 = sigma_rel_to_gamma(0.10).unwrap();
    assert!((g05 - 16.97).abs() < 0.005, "{g05}");
    assert!((g10 - 6.94).abs() < 0.005, "{g10}");
    // numpy.roots([1, 7, 16 − σ⁻², 12 − σ⁻²]).real.max():
    assert!(close(g05, 16.972_198_602_303_447, 1e-12), "{g05}");
    assert!(close(g10, 6.937_203_937_601_809, 1e-12), "{g10}");
}

#[test]
fn sigma_rel_and_gamma_round_trip() {
    for g in [0.0, 1e-6, 0.1, 1.0, 3.0, 6.94, 16.97, 100.0, 1e4, 1e7] {
        let s = gamma_to_sigma_rel(g);
        let back = sigma_rel_to_gamma(s).unwrap();
        assert!(
            (back - g).abs() <= 1e-9 * g.max(1e-3),
            "{g} -> {s} -> {back}"
        );
    }
    for s in [1e-6, 0.01, 0.05, 0.1, 0.2, 0.28] {
        let back = gamma_to_sigma_rel(sigma_rel_to_gamma(s).unwrap());
        assert!(close(back, s, 1e-12), "{s} -> {back}");
    }
    assert_eq!(sigma_rel_to_gamma(SIGMA_REL_MAX).unwrap(), 0.0);
    assert!(close(gamma_to_sigma_rel(0.0), 1.0 / 12f64.sqrt(), 1e-15));
}

#[test]
fn sigma_rel_outside_0_to_1_over_sqrt_12_and_negative_gamma_are_rejected() {
    assert!(sigma_rel_to_gamma(0.0).is_err());
    assert!(sigma_rel_to_gamma(0.3).is_err());
    assert!(sigma_rel_to_gamma(f64::NAN).is_err());
    assert!(EmaProfile::power(-0.5).is_err());
    assert!(weights(&EmaProfile::Power { gamma: f64::NAN }, &[1, 2]).is_err());
}

// --- window -------------------------------------------------------------

#[test]
fn window_of_2_puts_half_on_each_of_the_last_two_checkpoints() {
    let w = weights(&EmaProfile::Window { k: 2 }, &[100, 200, 300, 400, 500]).unwrap();
    assert_eq!(w, vec![0.0, 0.0, 0.0, 0.5, 0.5]);
    let w = weights(&EmaProfile::Window { k: 3 }, &[1, 2, 3]).unwrap();
    assert_eq!(w, vec![1.0 / 3.0; 3]);
}

#[test]
fn window_larger_than_the_inputs_or_zero_is_an_error() {
    let e = weights(&EmaProfile::Window { k: 4 }, &[1, 2, 3]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "window of 4 checkpoints needs at least 4 inputs, got 3"
    );
    assert!(EmaProfile::window(0).is_err());
}

// --- general ------------------------------------------------------------

#[test]
fn steps_that_are_not_strictly_increasing_are_an_error() {
    let e = weights(&decay(0.9), &[10, 10]).unwrap_err().to_string();
    assert_eq!(
        e,
        "steps must be strictly increasing, but step 10 follows step 10"
    );
    assert!(weights(&decay(0.9), &[]).is_err());
}

#[test]
fn effective_half_life_in_checkpoints_is_half_life_over_spacing() {
    let steps: Vec<u64> = (0..50).map(|i| 10 * i).collect();
    for (h, want) in [(10.0, 1.0), (20.0, 2.0), (40.0, 4.0)] {
        let p = EmaProfile::Decay {
            decay: Decay::from_half_life(h).unwrap(),
            warmup: None,
        };
        let w = weights(&p, &steps).unwrap();
        let m = effective_half_life_checkpoints(&w);
        assert!((m - want).abs() < 1e-9, "h = {h}: {m}");
    }
    let w = weights(&EmaProfile::Window { k: 6 }, &steps).unwrap();
    assert!((effective_half_life_checkpoints(&w) - 3.0).abs() < 1e-12);
}

#[test]
fn warnings_flag_a_half_life_shorter_than_two_checkpoints_and_a_dominant_first_checkpoint() {
    let steps: Vec<u64> = (0..10).map(|i| 100 * i).collect();
    let p = EmaProfile::Decay {
        decay: Decay::from_half_life(50.0).unwrap(),
        warmup: None,
    };
    let w = weights(&p, &steps).unwrap();
    let msgs = warnings(&p, &steps, &w);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].starts_with("ema: half of the weight sits on the newest 0.67 checkpoints (half-life 50.0000 steps, checkpoints every 100.0 steps"),
        "{}",
        msgs[0]
    );

    let p = EmaProfile::Decay {
        decay: Decay::from_half_life(5000.0).unwrap(),
        warmup: None,
    };
    let w = weights(&p, &steps).unwrap();
    let msgs = warnings(&p, &steps, &w);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].contains("the first checkpoint (step 0) keeps 88.3% of the weight"),
        "{}",
        msgs[0]
    );

    let p = EmaProfile::Decay {
        decay: Decay::from_half_life(300.0).unwrap(),
        warmup: None,
    };
    let w = weights(&p, &steps).unwrap();
    assert!(warnings(&p, &steps, &w).is_empty());
    let p = EmaProfile::Window { k: 1 };
    let w = weights(&p, &steps).unwrap();
    assert!(warnings(&p, &steps, &w).is_empty());
}

proptest! {
    #[test]
    fn decay_weights_are_non_negative_and_sum_to_one(
        gaps in prop::collection::vec(1u64..2_000_000, 0..300),
        start in 0u64..1000,
        tau_exp in -9.0f64..-0.01,
    ) {
        let mut steps = vec![start];
        for g in gaps { steps.push(steps.last().unwrap() + g); }
        let d = Decay::from_tau(10f64.powf(tau_exp)).unwrap();
        let w = weights(&EmaProfile::Decay { decay: d, warmup: None }, &steps).unwrap();
        prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
        prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn power_and_warmup_weights_are_non_negative_and_sum_to_one(
        gaps in prop::collection::vec(1u64..5_000, 0..60),
        start in 0u64..100,
        gamma in 0.0f64..50.0,
        beta in 0.5f64..0.9999,
    ) {
        let mut steps = vec![start];
        for g in gaps { steps.push(steps.last().unwrap() + g); }
        for p in [
            EmaProfile::Power { gamma },
            with_warmup(beta, Warmup::Rational),
            with_warmup(beta, Warmup::INV_GAMMA_DEFAULT),
        ] {
            let w = weights(&p, &steps).unwrap();
            prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0), "{p}: {w:?}");
            prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p}");
        }
    }

    #[test]
    fn decay_weights_match_the_simulation_for_small_step_counts(
        gaps in prop::collection::vec(1u64..30, 0..12),
        start in 0u64..20,
        beta in 0.3f64..0.99,
    ) {
        let mut steps = vec![start];
        for g in gaps { steps.push(steps.last().unwrap() + g); }
        let want = simulate(&steps, |_| beta);
        let got = weights(&decay(beta), &steps).unwrap();
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(close(*g, *w, 1e-11), "{got:?} vs {want:?}");
        }
        let want = simulate(&steps, |t| beta.min((1.0 + t as f64) / (10.0 + t as f64)));
        let got = weights(&with_warmup(beta, Warmup::Rational), &steps).unwrap();
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(close(*g, *w, 1e-11), "{got:?} vs {want:?}");
        }
    }
}

// --- fixtures/ema/reference.json (fixtures/generate_ema_reference.py) ---

fn reference() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ema/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn profile_from_json(p: &serde_json::Value) -> EmaProfile {
    let f = |k: &str| p.get(k).and_then(serde_json::Value::as_f64);
    match p["kind"].as_str().unwrap() {
        "decay" => {
            let decay = if let Some(b) = f("beta") {
                Decay::from_beta(b)
            } else if let Some(t) = f("tau") {
                Decay::from_tau(t)
            } else {
                Decay::from_half_life(f("half_life").unwrap())
            }
            .unwrap();
            let warmup = p.get("warmup").map(|w| match w["kind"].as_str().unwrap() {
                "rational" => Warmup::Rational,
                "inv_gamma" => Warmup::InvGamma {
                    inv_gamma: w["inv_gamma"].as_f64().unwrap(),
                    power: w["power"].as_f64().unwrap(),
                },
                other => panic!("unknown warm-up {other}"),
            });
            EmaProfile::Decay { decay, warmup }
        }
        "power" => match f("gamma") {
            Some(g) => EmaProfile::power(g).unwrap(),
            None => EmaProfile::power_from_sigma_rel(f("sigma_rel").unwrap()).unwrap(),
        },
        "window" => EmaProfile::window(p["k"].as_u64().unwrap() as usize).unwrap(),
        other => panic!("unknown profile {other}"),
    }
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn weights_match_the_numpy_mpmath_and_torch_reference_to_1e_12() {
    let r = reference();
    let mut cases: Vec<&serde_json::Value> = r["cases"].as_array().unwrap().iter().collect();
    cases.extend(r["trajectory"]["outputs"].as_array().unwrap());
    assert!(cases.len() >= 20);
    for c in cases {
        let name = c.get("name").or(c.get("file")).unwrap();
        let profile = profile_from_json(&c["profile"]);
        let got = weights(&profile, &u64s(&c["steps"])).unwrap();
        let want = f64s(&c["weights"]);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(close(*g, *w, 1e-12), "{name}: weight {i}: {g:e} vs {w:e}");
        }
    }
}

#[test]
fn sigma_rel_to_gamma_matches_the_reference_roots_to_1e_12() {
    let r = reference();
    for pair in r["sigma_rel_gamma"].as_array().unwrap() {
        let s = pair["sigma_rel"].as_f64().unwrap();
        let g = pair["gamma"].as_f64().unwrap();
        let got = sigma_rel_to_gamma(s).unwrap();
        assert!(close(got, g, 1e-12), "sigma_rel {s}: {got} vs {g}");
    }
}

#[test]
fn trajectory_file_names_give_the_reference_steps() {
    let r = reference();
    let inputs = r["trajectory"]["inputs"].as_array().unwrap();
    let mut paths: Vec<&str> = inputs.iter().map(|i| i["file"].as_str().unwrap()).collect();
    paths.reverse(); // any order in, step order out
    let got = resolve_steps(&paths, None, |_| Ok(())).unwrap();
    let want: Vec<u64> = inputs.iter().map(|i| i["step"].as_u64().unwrap()).collect();
    assert_eq!(got.iter().map(|i| i.step).collect::<Vec<_>>(), want);
}

fn read_f64_tensors(path: &Path) -> BTreeMap<String, Vec<f64>> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = match t.dtype() {
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, v)
        })
        .collect()
}

/// The expected tensors are the EMA computed step by step in numpy; this
/// module's weights applied to the trajectory must give them. Reads the
/// committed trajectory (`fixtures/mlp/traj`, or `POLYMERGE_TRAJ_DIR`).
#[test]
fn weighted_sums_of_the_trajectory_reproduce_the_expected_ema_tensors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let traj = std::env::var_os("POLYMERGE_TRAJ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("fixtures/mlp/traj"));
    // The trajectory is committed: a missing one is a failure, not a skip.
    assert!(
        traj.is_dir(),
        "no trajectory at {} (fixtures/generate_mlp.py writes it)",
        traj.display()
    );
    let r = reference();
    for out in r["trajectory"]["outputs"].as_array().unwrap() {
        let inputs: Vec<PathBuf> = out["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| traj.join(Path::new(f.as_str().unwrap()).file_name().unwrap()))
            .collect();
        let ckpts: Vec<_> = inputs.iter().map(|p| read_f64_tensors(p)).collect();
        // Steps from the files' metadata, as the CLI would find them.
        let steps: Vec<u64> = if out["cli"].as_str().unwrap().contains("--steps") {
            u64s(&out["steps"])
        } else {
            inputs
                .iter()
                .map(|p| {
                    let bytes = std::fs::read(p).unwrap();
                    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
                    discover_step(0, p, meta.metadata()).unwrap().step
                })
                .collect()
        };
        assert_eq!(steps, u64s(&out["steps"]));
        let w = weights(&profile_from_json(&out["profile"]), &steps).unwrap();
        let file = root.join(out["file"].as_str().unwrap());
        for (name, want) in read_f64_tensors(&file) {
            for (i, want) in want.iter().enumerate() {
                let got: f64 = ckpts.iter().zip(&w).map(|(c, wk)| wk * c[&name][i]).sum();
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs().max(1e-3),
                    "{}: {name}[{i}]: {got} vs {want}",
                    file.display()
                );
            }
        }
    }
}
