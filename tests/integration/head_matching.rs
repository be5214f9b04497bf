//! Head matching on trained transformers (issue 9): heads move on an
//! independently trained pair, and permuted copies of trained models are
//! recovered exactly at every seed 0–9 with the default options.

use polymerge::alignment::{
    AlignOptions, Permuted, WeightSource, model_permutation, weight_matching,
};
use polymerge::checkpoint::Checkpoint;
use polymerge::observe::Silent;
use polymerge::spec::{SpecSource, resolve};
use rayon::prelude::*;

use crate::common::{json_out, polymerge, repo};

fn trained(rel: &str) -> Checkpoint {
    Checkpoint::open(repo(&format!("fixtures/trained/{rel}"))).unwrap()
}

/// Seeds (of 0–9) at which default weight matching of `b` onto `a` gives a
/// copy equal to `a`, tensor by tensor, and the objectives found.
fn recovered_seeds(a: &str, b: &str) -> (Vec<u64>, Vec<f64>) {
    let (ca, cb) = (trained(a), trained(b));
    let spec = resolve(&SpecSource::Infer, None, &[&ca, &cb]).unwrap();
    let runs: Vec<(u64, bool, f64)> = (0..10u64)
        .into_par_iter()
        .map(|seed| {
            let opts = AlignOptions {
                seed,
                ..AlignOptions::default()
            };
            let r = weight_matching(&spec, &ca, &cb, &opts, &Silent).unwrap();
            let map = model_permutation(&spec, &cb, &r.perms, None).unwrap();
            let view = Permuted {
                source: &cb,
                perm: &map,
            };
            let same = ca
                .float_names()
                .iter()
                .all(|n| ca.read(n).unwrap() == view.read(n).unwrap());
            (seed, same, r.objective_after)
        })
        .collect();
    let ok = runs.iter().filter(|r| r.1).map(|r| r.0).collect();
    (ok, runs.iter().map(|r| r.2).collect())
}

#[test]
fn heads_move_on_an_independently_trained_gpt2_pair() {
    let dir = tempfile::tempdir().unwrap();
    let j = json_out(
        polymerge()
            .arg("align")
            .arg(repo("fixtures/trained/gpt2/seed0"))
            .arg(repo("fixtures/trained/gpt2/seed1"))
            .arg("-o")
            .arg(dir.path().join("b.safetensors"))
            .arg("--json"),
    );
    let heads: Vec<(String, f64)> = j["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["name"].as_str().unwrap().ends_with(".heads"))
        .map(|g| {
            (
                g["name"].as_str().unwrap().into(),
                g["churn"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(heads.iter().any(|h| h.1 > 0.0), "no head moved: {heads:?}");
    // The residual stream was solved from the embeddings first.
    let residual = &j["groups"][0];
    assert_eq!(residual["name"], "residual");
    assert_eq!(residual["start"], "anchored");
    assert!(j["objective_after"].as_f64() > j["objective_before"].as_f64());
    assert_eq!(j["restarts"].as_array().unwrap().len(), 1);
}

#[test]
fn only_the_residual_stream_is_anchored_and_each_layer_s_groups_are_propagated_from_it() {
    // Each layer's FFN and heads groups act on tensors whose other axis is
    // the residual stream: solved from A's rows against raw B's rows they
    // would compare B in the wrong residual order, so they are visited
    // with the residual permutation applied instead.
    let (a, b) = (trained("llama/seed0"), trained("llama/seed1"));
    let spec = resolve(&SpecSource::Infer, None, &[&a, &b]).unwrap();
    let r = weight_matching(&spec, &a, &b, &AlignOptions::default(), &Silent).unwrap();
    // How each group named `…suffix` started, as the JSON report says it.
    let start = |suffix: &str| -> Vec<String> {
        r.groups
            .iter()
            .filter(|g| g.name.ends_with(suffix))
            .map(|g| serde_json::to_value(g.start).unwrap().to_string())
            .collect()
    };
    assert_eq!(start("residual"), vec!["\"anchored\""]);
    for suffix in [".ffn", ".heads"] {
        let s = start(suffix);
        assert_eq!(s.len(), 3, "{suffix}: one group per layer");
        assert!(s.iter().all(|p| p == "\"propagated\""), "{suffix}: {s:?}");
    }
}

#[test]
fn a_permuted_trained_gpt2_is_recovered_exactly_at_every_seed() {
    let (ok, objectives) = recovered_seeds("gpt2/seed0", "gpt2/seed0_permuted");
    assert_eq!(ok, (0..10).collect::<Vec<_>>(), "objectives {objectives:?}");
}

#[test]
fn a_per_head_permuted_trained_gpt2_is_recovered_exactly_at_every_seed() {
    let (ok, objectives) = recovered_seeds("gpt2/seed0", "gpt2/seed0_permuted_per_head");
    assert_eq!(ok, (0..10).collect::<Vec<_>>(), "objectives {objectives:?}");
}

#[test]
fn a_permuted_trained_bert_is_recovered_exactly_at_every_seed() {
    let (ok, objectives) = recovered_seeds("bert/seed0", "bert/seed0_permuted");
    assert_eq!(ok, (0..10).collect::<Vec<_>>(), "objectives {objectives:?}");
}

#[test]
fn every_restart_is_reported_and_the_best_objective_kept() {
    let dir = tempfile::tempdir().unwrap();
    let j = json_out(
        polymerge()
            .arg("align")
            .arg(repo("fixtures/trained/llama/seed0"))
            .arg(repo("fixtures/trained/llama/seed1"))
            .arg("-o")
            .arg(dir.path().join("b.safetensors"))
            .args(["--restarts", "3", "--seed", "5", "--json"]),
    );
    let restarts = j["restarts"].as_array().unwrap();
    let seeds: Vec<u64> = restarts
        .iter()
        .map(|r| r["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, vec![5, 6, 7]);
    let best = restarts
        .iter()
        .map(|r| r["objective_after"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(j["objective_after"].as_f64().unwrap(), best);
    let kept = j["kept_restart"].as_u64().unwrap() as usize;
    assert_eq!(restarts[kept]["objective_after"].as_f64().unwrap(), best);
}
