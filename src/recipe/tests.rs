//! Recipe parsing: what is read, and every kind of error.

use super::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/io")
}

fn parse(text: &str) -> std::result::Result<Recipe, RecipeError> {
    Recipe::parse(text, &dir())
}

fn err(text: &str) -> String {
    parse(text)
        .expect_err("the recipe must be refused")
        .to_string()
}

const TWO: &str = "merge_method: linear\nmodels:\n  - model: a_f32.safetensors\n    parameters: {weight: 0.25}\n  - model: b_f32.safetensors\n    parameters: {weight: 0.75}\n";

#[test]
fn a_linear_recipe_gives_paths_relative_to_its_directory_weights_and_defaults() {
    let r = parse(TWO).unwrap();
    assert_eq!(
        r.paths(),
        vec![
            dir().join("a_f32.safetensors"),
            dir().join("b_f32.safetensors")
        ]
    );
    assert_eq!(r.weights(), vec![0.25, 0.75]);
    assert!(r.normalize);
    assert_eq!(
        (r.dtype, r.out_dtype, r.align),
        (None, None, RecipeAlign::None)
    );
}

#[test]
fn dtypes_normalize_align_and_a_default_weight_are_read() {
    let r = parse(
        "merge_method: linear\nmodels:\n  - model: a_f32.safetensors\n  - model: b_f32.safetensors\n    parameters: {weight: 3}\nparameters: {normalize: false, weight: 0.5}\ndtype: torch.bfloat16\nout_dtype: float16\nalign: many\n",
    )
    .unwrap();
    assert_eq!(r.weights(), vec![0.5, 3.0]);
    assert!(!r.normalize);
    assert_eq!(
        (r.dtype, r.out_dtype),
        (Some(Dtype::BF16), Some(Dtype::F16))
    );
    assert_eq!(r.align, RecipeAlign::Many);
    let t = parse(&format!("{TWO}align: true\n")).unwrap();
    assert_eq!(t.align, RecipeAlign::ToFirst);
}

#[test]
fn an_unknown_method_is_refused_by_name() {
    let e = err(&TWO.replace("linear", "ties"));
    assert!(e.contains("merge_method `ties` is not supported"), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_their_place() {
    let e = err(&format!("{TWO}int8_mask: true\n"));
    assert!(
        e.contains("unknown key `int8_mask` in the top level"),
        "{e}"
    );
    let e = err(&TWO.replace("{weight: 0.25}", "{weight: 0.25, density: 0.5}"));
    assert!(
        e.contains("unknown key `density` in models[0].parameters"),
        "{e}"
    );
    let e = err(&TWO.replace(
        "  - model: b_f32.safetensors\n",
        "  - model: b_f32.safetensors\n    lora: x\n",
    ));
    assert!(e.contains("unknown key `lora` in models[1]"), "{e}");
    let e = err(&format!("{TWO}parameters: {{normalise: true}}\n"));
    assert!(e.contains("unknown key `normalise` in `parameters`"), "{e}");
}

#[test]
fn mergekit_features_polymerge_lacks_are_named() {
    let e = err(&format!("{TWO}base_model: a_f32.safetensors\n"));
    assert!(e.contains("`base_model` is not supported"), "{e}");
    let e = err("merge_method: linear\nslices:\n  - sources: []\n");
    assert!(e.contains("`slices` is not supported"), "{e}");
}

#[test]
fn bad_values_are_refused() {
    let e = err(&TWO.replace("{weight: 0.25}", "{weight: [0.1, 0.9]}"));
    assert!(
        e.contains("`weight` in models[0].parameters must be a number"),
        "{e}"
    );
    let e = err(&TWO.replace("{weight: 0.25}", "{weight: .nan}"));
    assert!(e.contains("weight of models[0] is NaN"), "{e}");
    let e = err(&TWO.replace("    parameters: {weight: 0.25}\n", ""));
    assert!(
        e.contains("missing `weight` in models[0].parameters"),
        "{e}"
    );
    let e = err(&format!("{TWO}dtype: float8\n"));
    assert!(
        e.contains("dtype `float8` is not a dtype polymerge knows"),
        "{e}"
    );
    let e = err(&format!("{TWO}parameters: {{normalize: 1}}\n"));
    assert!(
        e.contains("`normalize` in `parameters` must be true or false"),
        "{e}"
    );
    let e = err(&TWO.replace("0.75", "-0.25"));
    assert!(e.contains("sum to zero"), "{e}");
    // Without normalisation a zero sum is a valid task-arithmetic recipe.
    parse(&format!(
        "{}parameters: {{normalize: false}}\n",
        TWO.replace("0.75", "-0.25")
    ))
    .unwrap();
    let e = err("merge_method: linear\nmodels: []\n");
    assert!(e.contains("`models` is empty"), "{e}");
    let e = err("merge_method: [linear\n");
    assert!(e.contains("not valid YAML"), "{e}");
}

#[test]
fn a_missing_model_is_named_with_its_resolved_path() {
    let e = err(&TWO.replace("b_f32.safetensors", "nope/model.safetensors"));
    assert!(e.contains("models[1]: `"), "{e}");
    assert!(e.contains("nope/model.safetensors` does not exist"), "{e}");
}

#[test]
fn torch_sum_adds_short_vectors_in_order_and_longer_ones_as_pytorch_does() {
    // Sums of torch.tensor(v, dtype=torch.float32).sum() on an AVX2 CPU
    // (PyTorch 2.15); added in order they would be 1.0, 13.0 and 50.0.
    assert_eq!(torch_sum_f32(&[0.1, 0.2, 0.7]), (0.1f32 + 0.2f32) + 0.7f32);
    assert_eq!(torch_sum_f32(&[3.0, 1e8, 1.0, -1e8, 5.0, 7.0, 1.0]), 16.0);
    let ten = [1e8, 3.0, 5.0, 7.0, 1.0, -1e8, 9.0, 11.0, 13.0, 1.0];
    assert_eq!(torch_sum_f32(&ten), 52.0);
    assert_ne!(ten.iter().fold(0.0f32, |a, &b| a + b), 52.0);
}
