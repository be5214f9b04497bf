//! Validating the inputs against each other and planning every output
//! tensor: its dtype, shape and what produces it ([`Action`]).

use std::collections::BTreeSet;

use safetensors::Dtype;

use super::{Accumulation, Action, MergeInput, MergeOptions, Plan, PlannedTensor};
use crate::checkpoint::dtype::{self, Kind};
use crate::error::{Error, Result};
use crate::write::TensorPlan;

/// Validates the inputs against each other and plans every output tensor, in
/// the first input's storage order.
pub fn plan(inputs: &[MergeInput], opts: &MergeOptions) -> Result<Plan> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::Invalid("no inputs to merge".into()))?
        .checkpoint;
    validate_weights(&opts.weights, inputs.len())?;
    check_same_names(inputs)?;
    let mut warnings = Vec::new();
    let mut planned = Vec::with_capacity(first.tensors().len());
    for t in first.tensors() {
        let kind0 = dtype::kind(t.dtype);
        for inp in &inputs[1..] {
            let c = inp.checkpoint;
            let u = c.require(&t.name)?;
            if u.shape != t.shape {
                return Err(Error::Mismatch(format!(
                    "tensor `{}` has shape {:?} in `{}` but {:?} in `{}`",
                    t.name,
                    t.shape,
                    first.shard_path(t).display(),
                    u.shape,
                    c.shard_path(u).display()
                )));
            }
            let k = dtype::kind(u.dtype);
            let both_float = matches!(kind0, Kind::Float | Kind::Double)
                && matches!(k, Kind::Float | Kind::Double);
            if !both_float && u.dtype != t.dtype {
                return Err(Error::Mismatch(format!(
                    "tensor `{}` is {:?} in `{}` but {:?} in `{}`",
                    t.name,
                    t.dtype,
                    first.shard_path(t).display(),
                    u.dtype,
                    c.shard_path(u).display()
                )));
            }
        }
        let (out_dtype, action) = match kind0 {
            Kind::Float | Kind::Double => {
                let out = opts.dtype.unwrap_or(t.dtype);
                let f64_acc = opts.accumulation == Accumulation::F64 || out == Dtype::F64;
                let single_copy = inputs.len() == 1 && out == t.dtype;
                let action = if single_copy {
                    Action::Copy
                } else if f64_acc {
                    Action::AverageF64
                } else {
                    Action::AverageF32
                };
                (out, action)
            }
            Kind::Exact if inputs.len() > 1 => (t.dtype, Action::CopyExact),
            Kind::Exact => (t.dtype, Action::Copy),
            Kind::Opaque => {
                if inputs.len() > 1 {
                    warnings.push(format!(
                        "tensor `{}` has dtype {:?}, which is not averaged: copied from `{}`",
                        t.name,
                        t.dtype,
                        first.shard_path(t).display()
                    ));
                }
                (t.dtype, Action::Copy)
            }
        };
        planned.push(PlannedTensor {
            plan: TensorPlan {
                name: t.name.clone(),
                dtype: out_dtype,
                shape: t.shape.clone(),
            },
            action,
        });
    }
    Ok(Plan {
        tensors: planned,
        warnings,
    })
}

/// Checks that weights are as many as inputs, finite, and do not sum to zero.
pub fn validate_weights(weights: &[f64], inputs: usize) -> Result<()> {
    if weights.len() != inputs {
        return Err(Error::Invalid(format!(
            "{} weights given for {} inputs",
            weights.len(),
            inputs
        )));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(Error::Invalid(format!(
            "weight {} is {w}; weights must be finite",
            i + 1
        )));
    }
    let sum: f64 = weights.iter().sum();
    if sum == 0.0 || (sum as f32) == 0.0 {
        return Err(Error::Invalid("weights sum to zero".into()));
    }
    Ok(())
}

fn check_same_names(inputs: &[MergeInput]) -> Result<()> {
    let first = inputs[0].checkpoint;
    let names0: BTreeSet<&str> = first.tensors().iter().map(|t| t.name.as_str()).collect();
    for inp in &inputs[1..] {
        let c = inp.checkpoint;
        let names: BTreeSet<&str> = c.tensors().iter().map(|t| t.name.as_str()).collect();
        if names != names0 {
            let missing: Vec<&str> = names0.difference(&names).copied().collect();
            let extra: Vec<&str> = names.difference(&names0).copied().collect();
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!(
                    "lacks {} of `{}`'s tensors ({})",
                    missing.len(),
                    first.source().display(),
                    first_few(&missing)
                ));
            }
            if !extra.is_empty() {
                parts.push(format!(
                    "has {} tensor(s) `{}` lacks ({})",
                    extra.len(),
                    first.source().display(),
                    first_few(&extra)
                ));
            }
            return Err(Error::Mismatch(format!(
                "`{}` {}",
                c.source().display(),
                parts.join(" and ")
            )));
        }
    }
    Ok(())
}

fn first_few(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
    if names.len() > SHOWN {
        s.push(format!("… {} more", names.len() - SHOWN));
    }
    s.join(", ")
}
