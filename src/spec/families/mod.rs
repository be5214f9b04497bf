//! Built-in architectures as data: every family polymerge recognises is an
//! entry of [`FAMILIES`] ([`tables`]) — a table of tensor-name templates —
//! read by the builder of its structure (transformer blocks:
//! [`transformer`], residual conv stages: [`resnet`]). [`infer`] tries the
//! entries in order; adding a family whose structure is known is adding a
//! table entry.

pub mod resnet;
pub mod tables;
pub mod transformer;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::infer::natural_cmp;
use super::{AxisMember, PermutationSpec};
use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, Result, SpecError};
pub use tables::{FAMILIES, Family, Structure};

/// The spec of the first family whose tensor names `ckpt` has, or `None`
/// when it has none of them. `config` is the model's `config.json`.
pub fn infer(ckpt: &Checkpoint, config: Option<&Value>) -> Result<Option<PermutationSpec>> {
    let names = float_names(ckpt);
    for family in FAMILIES {
        let spec = match family.structure {
            Structure::Transformer(t) => transformer::infer(family, t, ckpt, &names, config)?,
            Structure::ResidualConv(t) => resnet::infer(family, t, ckpt, &names)?,
        };
        if spec.is_some() {
            return Ok(spec);
        }
    }
    Ok(None)
}

/// The names of the float tensors of `ckpt`.
fn float_names(ckpt: &Checkpoint) -> BTreeSet<String> {
    ckpt.tensors()
        .iter()
        .filter(|t| dtype::is_float(t.dtype))
        .map(|t| t.name.clone())
        .collect()
}

/// A layout that does not fit the family its names suggest.
fn fail(ckpt: &Checkpoint, family: &Family, reason: String) -> Error {
    Error::spec(SpecError::Family {
        checkpoint: ckpt.source().to_path_buf(),
        family: family.name.to_string(),
        reason,
    })
}

/// The shape of tensor `n`, or an error naming it as missing.
fn shape_of(ckpt: &Checkpoint, family: &Family, n: &str) -> Result<Vec<usize>> {
    ckpt.get(n)
        .map(|t| t.shape.clone())
        .ok_or_else(|| fail(ckpt, family, format!("`{n}` is missing")))
}

/// Finds `{base}{layers}.{i}.{suffix}` names; returns the base and the layer
/// indices in natural order (all with the same base).
fn find_layers(
    names: &BTreeSet<String>,
    layers: &str,
    suffix: &str,
) -> Option<(String, Vec<String>)> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let key = format!("{layers}.");
    for n in names {
        let Some(rest) = n.strip_suffix(suffix) else {
            continue;
        };
        let Some(pos) = rest.rfind(&key) else {
            continue;
        };
        let idx = &rest[pos + key.len()..];
        let idx = idx.strip_suffix('.').unwrap_or(idx);
        if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        found
            .entry(rest[..pos].to_string())
            .or_default()
            .push(idx.to_string());
    }
    let (base, mut idx) = found.into_iter().max_by_key(|(_, v)| v.len())?;
    idx.sort_by(|a, b| natural_cmp(a, b));
    Some((base, idx))
}

/// `n` if the checkpoint has it.
fn opt(names: &BTreeSet<String>, n: String) -> Option<String> {
    names.contains(&n).then_some(n)
}

/// The parameters `{prefix}.{p}` for each `p` of `params` that exist.
fn params_of(names: &BTreeSet<String>, prefix: &str, params: &[&str]) -> Vec<String> {
    params
        .iter()
        .filter_map(|p| opt(names, format!("{prefix}.{p}")))
        .collect()
}

fn member(t: &str, axis: usize, start: usize, block: usize, repeat: usize) -> AxisMember {
    AxisMember {
        tensor: t.to_string(),
        axis,
        start,
        block,
        repeat,
        buffer: false,
    }
}
