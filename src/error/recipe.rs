//! Causes of errors in a merge recipe (mergekit YAML).

use std::path::PathBuf;

/// What is wrong with a recipe file. `place` is where in the file, e.g.
/// `models[2].parameters` or `the top level`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    #[error("not valid YAML")]
    Yaml(#[source] serde_yaml_ng::Error),
    #[error("unknown key `{key}` in {place} (polymerge understands: {})", known.join(", "))]
    UnknownKey {
        key: String,
        place: String,
        known: Vec<&'static str>,
    },
    #[error("missing `{key}` in {place}")]
    Missing { key: &'static str, place: String },
    #[error("`{key}` in {place} must be {expected}")]
    Type {
        key: String,
        place: String,
        expected: &'static str,
    },
    #[error(
        "merge_method `{0}` is not supported: polymerge implements `linear` (mergekit's weighted average)"
    )]
    Method(String),
    #[error("`{key}` is not supported by polymerge: {why}")]
    Unsupported { key: String, why: &'static str },
    #[error("{key} `{value}` is not a dtype polymerge knows (bfloat16, float16, float32, float64)")]
    Dtype { key: &'static str, value: String },
    #[error("models[{index}]: `{}` does not exist", path.display())]
    ModelMissing { index: usize, path: PathBuf },
    #[error("`models` is empty")]
    NoModels,
    #[error("weight of models[{index}] is {value}; weights must be finite")]
    Weight { index: usize, value: f64 },
    #[error("the weights sum to zero, so `normalize: true` would divide by zero")]
    SumZero,
}
