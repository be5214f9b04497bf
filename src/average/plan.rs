//! Validating the inputs against each other and planning every output
//! tensor: its dtype, shape and what produces it ([`Action`]).

use std::collections::BTreeSet;

use safetensors::Dtype;

use super::{Accumulation, Action, MergeInput, MergeOptions, Numerics, Plan, PlannedTensor};
use crate::checkpoint::dtype::{self, Kind};
use crate::error::{MismatchError, Result, UsageError, WeightsError};
use crate::write::TensorPlan;

/// Validates the inputs against each other and plans every output tensor, in
/// the first input's storage order.
pub fn plan(inputs: &[MergeInput], opts: &MergeOptions) -> Result<Plan> {
    let first = inputs.first().ok_or(UsageError::NoInputs)?.checkpoint;
    match opts.numerics {
        // mergekit's unnormalised sums (task arithmetic) may have Σw = 0.
        Numerics::MergekitLinear {
            normalize: false, ..
        } => validate_weight_values(&opts.weights, inputs.len())?,
        _ => validate_weights(&opts.weights, inputs.len())?,
    }
    check_same_names(inputs)?;
    let mut warnings = Vec::new();
    let mut planned = Vec::with_capacity(first.tensors().len());
    for t in first.tensors() {
        let kind0 = dtype::kind(t.dtype);
        let mut promoted = t.dtype;
        for inp in &inputs[1..] {
            let c = inp.checkpoint;
            let u = c.require(&t.name)?;
            if u.shape != t.shape {
                return Err(MismatchError::Shape {
                    tensor: t.name.clone(),
                    a: first.shard_path(t).to_path_buf(),
                    a_shape: t.shape.clone(),
                    b: c.shard_path(u).to_path_buf(),
                    b_shape: u.shape.clone(),
                }
                .into());
            }
            let k = dtype::kind(u.dtype);
            let both_float = matches!(kind0, Kind::Float | Kind::Double)
                && matches!(k, Kind::Float | Kind::Double);
            if !both_float && u.dtype != t.dtype {
                return Err(MismatchError::Dtype {
                    tensor: t.name.clone(),
                    a: first.shard_path(t).to_path_buf(),
                    a_dtype: t.dtype,
                    b: c.shard_path(u).to_path_buf(),
                    b_dtype: u.dtype,
                }
                .into());
            }
            promoted = promote(promoted, u.dtype);
        }
        let (out_dtype, action) = match kind0 {
            Kind::Float | Kind::Double
                if let Numerics::MergekitLinear { compute, .. } = opts.numerics =>
            {
                let compute = compute.unwrap_or(promoted);
                (opts.dtype.unwrap_or(compute), Action::Linear { compute })
            }
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
            Kind::Exact if inputs.len() > 1 && super::is_counter(&t.name) => {
                let from = match opts.counters {
                    super::CounterRule::First => 0,
                    super::CounterRule::Last => inputs.len() - 1,
                };
                (t.dtype, Action::Counter(from))
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

/// `torch.promote_types` of two float dtypes: the wider one, and F32 for
/// F16 with BF16.
fn promote(a: Dtype, b: Dtype) -> Dtype {
    match (a, b) {
        _ if a == b => a,
        (Dtype::F64, _) | (_, Dtype::F64) => Dtype::F64,
        _ => Dtype::F32,
    }
}

/// Checks that weights are as many as inputs, finite, and do not sum to zero.
pub fn validate_weights(weights: &[f64], inputs: usize) -> Result<()> {
    validate_weight_values(weights, inputs)?;
    let sum: f64 = weights.iter().sum();
    // The division is by f32(Σw).
    if !sum.is_finite() || !(sum as f32).is_finite() {
        return Err(WeightsError::SumRange.into());
    }
    if sum == 0.0 || (sum as f32) == 0.0 {
        return Err(WeightsError::SumZero.into());
    }
    Ok(())
}

/// Checks that weights are as many as inputs and finite.
fn validate_weight_values(weights: &[f64], inputs: usize) -> Result<()> {
    if weights.len() != inputs {
        return Err(WeightsError::Count {
            weights: weights.len(),
            inputs,
        }
        .into());
    }
    if let Some((i, &w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(WeightsError::NotFinite {
            position: i + 1,
            value: w,
        }
        .into());
    }
    // The merge uses each weight as f32 and accumulates Σ wᵢ·xᵢ in f32:
    // check what is used, not the f64 given.
    if let Some((i, &w)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(**w as f32).is_finite())
    {
        return Err(WeightsError::F32Range {
            position: i + 1,
            value: w,
        }
        .into());
    }
    let magnitude: f32 = weights.iter().map(|&w| (w as f32).abs()).sum();
    if !magnitude.is_finite() {
        return Err(WeightsError::SumRange.into());
    }
    Ok(())
}

/// How many names of a missing or extra set an error lists.
const SHOWN: usize = 5;

fn check_same_names(inputs: &[MergeInput]) -> Result<()> {
    let first = inputs[0].checkpoint;
    let names0: BTreeSet<&str> = first.tensors().iter().map(|t| t.name.as_str()).collect();
    for inp in &inputs[1..] {
        let c = inp.checkpoint;
        let names: BTreeSet<&str> = c.tensors().iter().map(|t| t.name.as_str()).collect();
        if names != names0 {
            let missing: Vec<&str> = names0.difference(&names).copied().collect();
            let extra: Vec<&str> = names.difference(&names0).copied().collect();
            let shown = |v: &[&str]| v.iter().take(SHOWN).map(|n| n.to_string()).collect();
            return Err(MismatchError::Tensors {
                input: c.source().to_path_buf(),
                first: first.source().to_path_buf(),
                missing: missing.len(),
                missing_shown: shown(&missing),
                extra: extra.len(),
                extra_shown: shown(&extra),
            }
            .into());
        }
    }
    Ok(())
}
