//! Merge recipes in mergekit's YAML format: the `linear` method over local
//! models, read into a typed [`Recipe`] that the pipeline runs with
//! mergekit's numerics ([`Numerics::MergekitLinear`]).
//!
//! What is understood (everything else is an error naming the key and the
//! file, never ignored):
//!
//! ```yaml
//! merge_method: linear          # required; the only method
//! models:                       # required; local paths, relative to this file
//!   - model: run1/              # a .safetensors file, an index JSON or a model directory
//!     parameters: {weight: 0.7}
//!   - model: run2/model.safetensors
//!     parameters: {weight: 0.3}
//! parameters:
//!   normalize: true             # default true: divide by the sum of the weights
//!   weight: 1.0                 # default weight of models that give none
//! dtype: float32                # compute dtype (default: the inputs' promoted dtype)
//! out_dtype: bfloat16           # output dtype (default: the compute dtype)
//! align: true                   # polymerge extension: true / pairwise, many, false
//! ```

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_yaml_ng::{Mapping, Value};

use crate::average::{Numerics, torch_sum_f32, torch_sum_f64};
use crate::error::{Error, RecipeError, Result};

/// Alignment asked for by a recipe's `align` key (a polymerge extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecipeAlign {
    /// No alignment (mergekit's behaviour; the default).
    #[default]
    None,
    /// `align: true` or `pairwise`: every model matched to the first.
    ToFirst,
    /// `align: many`: Git Re-Basin's MergeMany.
    Many,
}

/// One input model of a recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct RecipeModel {
    /// The path, resolved against the recipe's directory.
    pub path: PathBuf,
    pub weight: f64,
}

/// A validated merge recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// The recipe file.
    pub source: PathBuf,
    pub models: Vec<RecipeModel>,
    pub normalize: bool,
    /// Compute dtype (`dtype`).
    pub dtype: Option<Dtype>,
    /// Output dtype (`out_dtype`).
    pub out_dtype: Option<Dtype>,
    pub align: RecipeAlign,
}

const TOP_KEYS: [&str; 6] = [
    "merge_method",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "align",
];
const PARAMETER_KEYS: [&str; 2] = ["normalize", "weight"];
const MODEL_KEYS: [&str; 2] = ["model", "parameters"];
const MODEL_PARAMETER_KEYS: [&str; 1] = ["weight"];

/// mergekit keys polymerge knows but does not implement, and why.
fn unsupported(key: &str) -> Option<&'static str> {
    Some(match key {
        "slices" | "modules" => "only `models` recipes (whole models, every layer) are supported",
        "base_model" => "the linear method takes no base model",
        "tokenizer_source" | "tokenizer" | "chat_template" => {
            "tokenizers are not merged (a directory output copies the first model's side files)"
        }
        _ => return None,
    })
}

impl Recipe {
    /// Reads and validates the recipe at `path`; every model path must exist.
    pub fn load(path: impl AsRef<Path>) -> Result<Recipe> {
        let path = path.as_ref();
        let text = crate::read_side_file(path)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        Self::parse(&text, dir)
            .map_err(|source| Error::Recipe {
                path: path.to_path_buf(),
                source,
            })
            .map(|mut r| {
                r.source = path.to_path_buf();
                r
            })
    }

    /// Parses recipe text whose relative model paths are relative to `dir`.
    pub fn parse(text: &str, dir: &Path) -> std::result::Result<Recipe, RecipeError> {
        let value: Value = serde_yaml_ng::from_str(text).map_err(RecipeError::Yaml)?;
        let top = mapping(&value, "recipe", "the file")?;
        check_keys(top, "the top level", &TOP_KEYS, true)?;

        let method = string(
            required(top, "merge_method", "the top level")?,
            "merge_method",
            "the top level",
        )?;
        if method != "linear" {
            return Err(RecipeError::Method(method.to_string()));
        }

        let (normalize, default_weight) = match top.get("parameters") {
            None => (true, None),
            Some(p) => {
                let p = mapping(p, "parameters", "the top level")?;
                check_keys(p, "`parameters`", &PARAMETER_KEYS, false)?;
                let normalize = match p.get("normalize") {
                    None => true,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| type_error("normalize", "`parameters`", "true or false"))?,
                };
                let weight = p
                    .get("weight")
                    .map(|w| number(w, "weight", "`parameters`"))
                    .transpose()?;
                (normalize, weight)
            }
        };

        let models = required(top, "models", "the top level")?;
        let models = models
            .as_sequence()
            .ok_or_else(|| type_error("models", "the top level", "a list"))?;
        if models.is_empty() {
            return Err(RecipeError::NoModels);
        }
        let models = models
            .iter()
            .enumerate()
            .map(|(i, m)| model(m, i, dir, default_weight))
            .collect::<std::result::Result<Vec<_>, _>>()?;

        let dtype = top
            .get("dtype")
            .map(|v| dtype_name(v, "dtype"))
            .transpose()?;
        let out_dtype = top
            .get("out_dtype")
            .map(|v| dtype_name(v, "out_dtype"))
            .transpose()?;
        let align = match top.get("align") {
            None | Some(Value::Bool(false)) => RecipeAlign::None,
            Some(Value::Bool(true)) => RecipeAlign::ToFirst,
            Some(Value::String(s)) if s == "pairwise" => RecipeAlign::ToFirst,
            Some(Value::String(s)) if s == "many" => RecipeAlign::Many,
            Some(_) => {
                return Err(type_error(
                    "align",
                    "the top level",
                    "true, false, pairwise or many",
                ));
            }
        };

        let recipe = Recipe {
            source: PathBuf::new(),
            models,
            normalize,
            dtype,
            out_dtype,
            align,
        };
        if normalize {
            let w32: Vec<f32> = recipe.weights().iter().map(|&w| w as f32).collect();
            let zero = if dtype == Some(Dtype::F64) {
                torch_sum_f64(&recipe.weights()) == 0.0
            } else {
                torch_sum_f32(&w32) == 0.0
            };
            if zero {
                return Err(RecipeError::SumZero);
            }
        }
        Ok(recipe)
    }

    /// The model paths, in recipe order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.models.iter().map(|m| m.path.clone()).collect()
    }

    /// The weights, in recipe order.
    pub fn weights(&self) -> Vec<f64> {
        self.models.iter().map(|m| m.weight).collect()
    }

    /// mergekit's linear numerics with this recipe's compute dtype and
    /// normalisation (the output dtype is [`Recipe::out_dtype`]).
    pub fn numerics(&self) -> Numerics {
        Numerics::MergekitLinear {
            compute: self.dtype,
            normalize: self.normalize,
        }
    }
}

fn model(
    m: &Value,
    index: usize,
    dir: &Path,
    default_weight: Option<f64>,
) -> std::result::Result<RecipeModel, RecipeError> {
    let place = format!("models[{index}]");
    let map = mapping(m, &place, "`models`")?;
    check_keys(map, &place, &MODEL_KEYS, false)?;
    let path = match required(map, "model", &place)? {
        Value::String(s) => dir.join(s),
        _ => return Err(type_error("model", &place, "a local path (a string)")),
    };
    let weight = match map.get("parameters") {
        None => None,
        Some(p) => {
            let pp = format!("{place}.parameters");
            let p = mapping(p, "parameters", &place)?;
            check_keys(p, &pp, &MODEL_PARAMETER_KEYS, false)?;
            p.get("weight")
                .map(|w| number(w, "weight", &pp))
                .transpose()?
        }
    };
    let weight = weight
        .or(default_weight)
        .ok_or_else(|| RecipeError::Missing {
            key: "weight",
            place: format!("{place}.parameters (and no default in `parameters`)"),
        })?;
    if !weight.is_finite() {
        return Err(RecipeError::Weight {
            index,
            value: weight,
        });
    }
    if !path.exists() {
        return Err(RecipeError::ModelMissing { index, path });
    }
    Ok(RecipeModel { path, weight })
}

fn type_error(key: &str, place: &str, expected: &'static str) -> RecipeError {
    RecipeError::Type {
        key: key.to_string(),
        place: place.to_string(),
        expected,
    }
}

fn mapping<'v>(
    v: &'v Value,
    key: &str,
    place: &str,
) -> std::result::Result<&'v Mapping, RecipeError> {
    v.as_mapping()
        .ok_or_else(|| type_error(key, place, "a mapping of keys to values"))
}

fn required<'v>(
    m: &'v Mapping,
    key: &'static str,
    place: &str,
) -> std::result::Result<&'v Value, RecipeError> {
    m.get(key).ok_or_else(|| RecipeError::Missing {
        key,
        place: place.to_string(),
    })
}

fn string<'v>(v: &'v Value, key: &str, place: &str) -> std::result::Result<&'v str, RecipeError> {
    v.as_str().ok_or_else(|| type_error(key, place, "a string"))
}

fn number(v: &Value, key: &str, place: &str) -> std::result::Result<f64, RecipeError> {
    v.as_f64().ok_or_else(|| {
        type_error(
            key,
            place,
            "a number (gradients and per-tensor filters are not supported)",
        )
    })
}

/// Every key of `m` must be in `known` (or, at the top level, a mergekit
/// key polymerge reports as unsupported).
fn check_keys(
    m: &Mapping,
    place: &str,
    known: &[&'static str],
    top: bool,
) -> std::result::Result<(), RecipeError> {
    for k in m.keys() {
        let key = match k {
            Value::String(s) => s.as_str(),
            other => {
                return Err(RecipeError::UnknownKey {
                    key: serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                    place: place.to_string(),
                    known: known.to_vec(),
                });
            }
        };
        if known.contains(&key) {
            continue;
        }
        if top && let Some(why) = unsupported(key) {
            return Err(RecipeError::Unsupported {
                key: key.to_string(),
                why,
            });
        }
        return Err(RecipeError::UnknownKey {
            key: key.to_string(),
            place: place.to_string(),
            known: known.to_vec(),
        });
    }
    Ok(())
}

/// A mergekit dtype name (`bfloat16`, `torch.float16` …).
fn dtype_name(v: &Value, key: &'static str) -> std::result::Result<Dtype, RecipeError> {
    let name = string(v, key, "the top level")?;
    match name.strip_prefix("torch.").unwrap_or(name) {
        "bfloat16" => Ok(Dtype::BF16),
        "float16" => Ok(Dtype::F16),
        "float32" => Ok(Dtype::F32),
        "float64" => Ok(Dtype::F64),
        _ => Err(RecipeError::Dtype {
            key,
            value: name.to_string(),
        }),
    }
}
