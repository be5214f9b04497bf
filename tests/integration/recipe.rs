//! `polymerge recipe`: mergekit recipes give mergekit's bytes (the outputs
//! of `mergekit-yaml` on the same recipes, committed by
//! `fixtures/generate_recipe.py`), the `align` extension works, and bad
//! recipes are refused with the file and key named, writing nothing.

use std::fs;
use std::path::Path;

use crate::common::*;

/// Every recipe `fixtures/generate_recipe.py` ran through mergekit.
const RECIPES: [&str; 7] = [
    "f32_three_normalized",
    "f32_five_normalized",
    "bf16_two_unnormalized",
    "bf16_three_native",
    "bf16_three_f32_compute_bf16_out",
    "mixed_f16_compute_f32_out",
    "f32_f64_compute_default_weight",
];

fn run_recipe(recipe: &Path, out: &Path) {
    polymerge()
        .arg("recipe")
        .arg(recipe)
        .arg("-o")
        .arg(out)
        .args(["--quiet", "--no-basin-check"])
        .assert()
        .success();
}

#[test]
fn every_fixture_recipe_gives_the_bytes_mergekit_wrote() {
    let dir = tempfile::tempdir().unwrap();
    for name in RECIPES {
        let out = dir.path().join(format!("{name}.safetensors"));
        run_recipe(&fixtures(&format!("recipe/{name}.yml")), &out);
        let got = read_file(&out).tensors;
        let want = read_file(&fixtures(&format!("recipe/expected/{name}.safetensors"))).tensors;
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name}: tensor names"
        );
        for (t, w) in &want {
            let g = &got[t];
            assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{name}: `{t}`");
            assert!(
                g.data == w.data,
                "{name}: `{t}` differs from mergekit's bytes"
            );
        }
    }
}

#[test]
fn the_fixture_recipes_tell_mergekit_numerics_from_polymerge_s_own_average() {
    // The same weights through `avg` (PyTorch's sum(w*t)/sum(w)) do not give
    // mergekit's bytes, so the test above checks the recipe numerics.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("avg.safetensors");
    let m = |i| fx(&format!("recipe/models/m{i}_f32"));
    polymerge()
        .args(["avg", &m(0), &m(1), &m(2), "--weights", "0.1,0.7,0.3333"])
        .arg("-o")
        .arg(&out)
        .args(["--quiet", "--no-basin-check"])
        .assert()
        .success();
    let got = read_file(&out).tensors;
    let want = read_file(&fixtures(
        "recipe/expected/f32_three_normalized.safetensors",
    ))
    .tensors;
    let differing = want.iter().filter(|(t, w)| got[*t].data != w.data).count();
    assert!(
        differing > want.len() / 2,
        "only {differing} tensors differ"
    );
}

#[test]
fn align_true_in_a_recipe_undoes_a_permutation_before_averaging() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("aligned.yml");
    fs::write(
        &recipe,
        format!(
            "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5}}\nalign: true\n",
            fx("mlp/run_seed0.safetensors"),
            fx("mlp/run_seed0_permuted.safetensors"),
        ),
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    run_recipe(&recipe, &out);
    // The permuted copy aligned back is run_seed0 itself, and
    // fma(x, 0.5, fma(x, 0.5, 0)) / 1 = x exactly.
    let got = read_file(&out).tensors;
    let want = read_file(&fixtures("mlp/run_seed0.safetensors")).tensors;
    assert_eq!(got, want);
    // Without `align` the average is not the model.
    fs::write(
        &recipe,
        fs::read_to_string(&recipe)
            .unwrap()
            .replace("align: true\n", ""),
    )
    .unwrap();
    let naive = dir.path().join("naive.safetensors");
    run_recipe(&recipe, &naive);
    assert_ne!(read_file(&naive).tensors, want);
}

/// Runs a recipe that must be refused: exit 1, one stderr line naming the
/// recipe file and containing `needle`, and no output written.
fn refused(text: &str, needle: &str) {
    let stderr = refused_with(text, needle);
    assert!(stderr.contains("bad.yml: "), "{stderr}");
}

/// [`refused`] for errors about the models rather than the recipe; returns
/// the error line.
fn refused_with(text: &str, needle: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.yml");
    fs::write(&recipe, text).unwrap();
    let out = dir.path().join("out.safetensors");
    let assert = polymerge()
        .current_dir(fixtures("recipe"))
        .arg("recipe")
        .arg(&recipe)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("polymerge: error: "), "{stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(!out.exists(), "an output was written");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "stray files");
    stderr
}

fn two_models(extra: &str) -> String {
    format!(
        "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 1}}\n  - model: {}\n    parameters: {{weight: 2}}\n{extra}",
        fx("recipe/models/m0_f32"),
        fx("recipe/models/m1_f32"),
    )
}

#[test]
fn an_unknown_merge_method_is_refused() {
    refused(
        &two_models("").replace("linear", "slerp"),
        "merge_method `slerp` is not supported: polymerge implements `linear`",
    );
}

#[test]
fn an_unknown_key_is_refused_by_name_and_place() {
    refused(
        &two_models("tokenizer_sorce: base\n"),
        "unknown key `tokenizer_sorce` in the top level",
    );
    refused(
        &two_models("").replace("{weight: 2}", "{weight: 2, density: 0.5}"),
        "unknown key `density` in models[1].parameters",
    );
}

#[test]
fn a_missing_model_is_refused_with_its_path_resolved_against_the_recipe() {
    // Relative to the recipe's directory, not to the working directory
    // (fixtures/recipe, where models/m0_f32 does exist).
    refused(
        &two_models("").replace(&fx("recipe/models/m0_f32"), "models/m0_f32"),
        "models[0]: `",
    );
    refused(
        &two_models("").replace(&fx("recipe/models/m1_f32"), "no/such/model"),
        "no/such/model` does not exist",
    );
}

#[test]
fn a_bad_weight_is_refused() {
    refused(
        &two_models("").replace("{weight: 2}", "{weight: two}"),
        "`weight` in models[1].parameters must be a number",
    );
    refused(
        &two_models("").replace("{weight: 2}", "{weight: -1}"),
        "the weights sum to zero",
    );
    refused(
        &two_models("").replace("    parameters: {weight: 2}\n", ""),
        "missing `weight` in models[1].parameters",
    );
}

#[test]
fn models_that_do_not_fit_together_are_refused_before_writing() {
    let stderr = refused_with(
        &two_models("").replace(
            &fx("recipe/models/m1_f32"),
            &fx("mlp/run_seed0.safetensors"),
        ),
        "inputs do not match",
    );
    assert!(
        stderr.contains("run_seed0.safetensors` lacks 21 of"),
        "{stderr}"
    );
}
