//! Inferring a permutation spec from tensor names and shapes.
//!
//! Recognised here: chains of Linear layers in PyTorch layout (`weight`
//! `[out, in]`, `bias` `[out]`) and chains of Conv layers (`[out, in, k…]`) with
//! normalisation layers between them (BatchNorm `running_mean`/`running_var`
//! follow their channels as *buffers*: permuted, but left out of the
//! matching objective; `num_batches_tracked` is an integer and untouched),
//! including the flatten from the last conv into the first Linear
//! (channel-major: each channel is a block of H·W inputs). Layers are taken in
//! natural order of their names (`layers.2` before `layers.10`, `fc1` before
//! `fc2`). The first layer's inputs and the last layer's outputs are never
//! permuted. Anything that does not fit is reported, asking for `--spec`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, Result, SpecError};

use super::{AxisMember, PermGroup, PermutationSpec};

/// Parameter names of a normalisation layer that follow its channels.
const NORM_VECTORS: &[&str] = &["weight", "bias", "running_mean", "running_var"];

/// Infers a spec for `ckpt`: transformers (BERT/RoBERTa, GPT-2, LLaMA
/// family) and torchvision ResNets first, then MLP/CNN chains. Head counts
/// come from the `config.json` of the checkpoint's model directory (or the
/// directory of a single file) when there is one.
pub fn infer(ckpt: &Checkpoint) -> Result<PermutationSpec> {
    let mut spec = infer_groups(ckpt)?;
    spec.mark_running_stats();
    Ok(spec)
}

/// BatchNorm running statistics: buffers, not weights (see
/// [`super::AxisMember::buffer`]).
pub const RUNNING_STATS: &[&str] = &["running_mean", "running_var"];

/// Whether `tensor` is a BatchNorm running statistic (`….running_mean`,
/// `….running_var`).
pub fn is_running_stat(tensor: &str) -> bool {
    let last = tensor.rsplit('.').next().unwrap_or(tensor);
    RUNNING_STATS.contains(&last)
}

fn infer_groups(ckpt: &Checkpoint) -> Result<PermutationSpec> {
    let config = load_config(ckpt)?;
    if let Some(s) = super::families::infer(ckpt, config.as_ref())? {
        return Ok(s);
    }
    infer_chain(ckpt).map_err(|e| match e {
        Error::Spec { path, source } => Error::Spec {
            path,
            source: Box::new(SpecError::UnknownArchitecture {
                config: config
                    .as_ref()
                    .and_then(|c| c.get("architectures"))
                    .and_then(|a| a.get(0))
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string),
                chain: source,
            }),
        },
        other => other,
    })
}

/// The checkpoint's `config.json`: in its model directory, or next to a
/// single file. `None` when there is none (or it is not a JSON object).
pub fn load_config(ckpt: &Checkpoint) -> Result<Option<serde_json::Value>> {
    let dir = match ckpt.model_dir() {
        Some(d) => d.to_path_buf(),
        None => match ckpt.source().parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        },
    };
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = crate::read_side_file(&path)?;
    // A `config.json` that is not a JSON object is not a model config: the
    // transformer families then report that head counts are unknown.
    Ok(serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(serde_json::Value::is_object))
}

fn ambiguous(ckpt: &Checkpoint, reason: String) -> Error {
    Error::spec(SpecError::Chain {
        checkpoint: ckpt.source().to_path_buf(),
        reason,
    })
}

#[derive(Debug)]
struct Module {
    prefix: String,
    /// parameter name (last component) → shape
    params: BTreeMap<String, Vec<usize>>,
}

#[derive(Debug, PartialEq)]
enum Role {
    /// Linear ([out, in]) or Conv ([out, in, k…]).
    Layer { out: usize, inp: usize, conv: bool },
    /// A per-channel vector layer (BatchNorm / LayerNorm / GroupNorm ...).
    Norm {
        channels: usize,
        running_stats: bool,
    },
}

fn role(m: &Module) -> Option<Role> {
    let w = m.params.get("weight")?;
    match w.len() {
        2..=5 => {
            let out = w[0];
            if let Some(b) = m.params.get("bias")
                && b != &vec![out]
            {
                return None;
            }
            if m.params.keys().any(|k| k != "weight" && k != "bias") {
                return None;
            }
            Some(Role::Layer {
                out,
                inp: w[1],
                conv: w.len() > 2,
            })
        }
        1 => {
            let c = w[0];
            let ok = m
                .params
                .iter()
                .all(|(k, s)| NORM_VECTORS.contains(&k.as_str()) && s == &vec![c]);
            ok.then_some(Role::Norm {
                channels: c,
                running_stats: m.params.contains_key("running_mean"),
            })
        }
        _ => None,
    }
}

/// Compares names with digit runs compared as numbers: `layers.2 < layers.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let vx: u128 = std::str::from_utf8(&x[..nx])
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(u128::MAX);
                let vy: u128 = std::str::from_utf8(&y[..ny])
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(u128::MAX);
                match vx.cmp(&vy) {
                    Ordering::Equal => {
                        x = &x[nx..];
                        y = &y[ny..];
                    }
                    o => return o,
                }
            }
            (Some(c), Some(d)) => match c.cmp(d) {
                Ordering::Equal => {
                    x = &x[1..];
                    y = &y[1..];
                }
                o => return o,
            },
        }
    }
}

/// Splits `features.bn1` into (`features.`, `bn`, `1`) for pairing norms
/// with the layer they follow (`bn1` ↔ `conv1`).
fn stem_number(prefix: &str) -> (String, String) {
    let (parent, last) = match prefix.rfind('.') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let digits: String = last
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (parent.to_string(), digits)
}

fn infer_chain(ckpt: &Checkpoint) -> Result<PermutationSpec> {
    let mods = modules(ckpt)?;
    let layers: Vec<usize> = (0..mods.len())
        .filter(|&i| matches!(mods[i].1, Role::Layer { .. }))
        .collect();
    if layers.len() < 2 {
        return Err(ambiguous(
            ckpt,
            format!(
                "found {} Linear/Conv layer(s); a chain needs at least 2 to have hidden units",
                layers.len()
            ),
        ));
    }
    let (norms_of, notes) = attach_norms(ckpt, &mods, &layers)?;
    let groups = chain_groups(ckpt, &mods, &layers, &norms_of)?;
    let any_conv = layers
        .iter()
        .any(|&l| matches!(mods[l].1, Role::Layer { conv: true, .. }));
    let mut spec = PermutationSpec::new(
        Some(if any_conv { "cnn-chain" } else { "mlp-chain" }.into()),
        groups,
    );
    spec.notes = notes;
    Ok(spec)
}

/// The float tensors grouped into modules (by name prefix), each with its
/// role, in natural name order; unknown modules are an error.
fn modules(ckpt: &Checkpoint) -> Result<Vec<(Module, Role)>> {
    let mut modules: BTreeMap<String, Module> = BTreeMap::new();
    for t in ckpt.tensors() {
        if !dtype::is_float(t.dtype) {
            continue;
        }
        let (prefix, param) = match t.name.rfind('.') {
            Some(i) => (&t.name[..i], &t.name[i + 1..]),
            None => ("", t.name.as_str()),
        };
        modules
            .entry(prefix.to_string())
            .or_insert_with(|| Module {
                prefix: prefix.to_string(),
                params: BTreeMap::new(),
            })
            .params
            .insert(param.to_string(), t.shape.clone());
    }
    let mut mods: Vec<(Module, Role)> = Vec::new();
    let mut unknown = Vec::new();
    for (_, m) in modules {
        match role(&m) {
            Some(r) => mods.push((m, r)),
            None => unknown.push(
                m.params
                    .keys()
                    .map(|k| format!("{}.{k}", m.prefix))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
    if !unknown.is_empty() {
        return Err(ambiguous(
            ckpt,
            format!(
                "tensors that are neither Linear/Conv layers nor per-channel norms: {}{}",
                unknown
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
                if unknown.len() > 5 {
                    format!("; … ({} modules in all)", unknown.len())
                } else {
                    String::new()
                }
            ),
        ));
    }
    mods.sort_by(|a, b| natural_cmp(&a.0.prefix, &b.0.prefix));
    Ok(mods)
}

/// For each layer, the norms that normalise its outputs (by name, else the
/// nearest layer before them), and notes on norms without running stats.
#[allow(clippy::type_complexity)]
fn attach_norms(
    ckpt: &Checkpoint,
    mods: &[(Module, Role)],
    layers: &[usize],
) -> Result<(BTreeMap<usize, Vec<usize>>, Vec<String>)> {
    // Attach each norm to the layer whose outputs it normalises.
    let mut norms_of: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut notes = Vec::new();
    for i in 0..mods.len() {
        let Role::Norm {
            channels,
            running_stats,
        } = mods[i].1
        else {
            continue;
        };
        let before = layers.iter().rev().find(|&&l| l < i).copied();
        let by_name = {
            let (parent, num) = stem_number(&mods[i].0.prefix);
            layers.iter().copied().find(|&l| {
                !num.is_empty() && stem_number(&mods[l].0.prefix) == (parent.clone(), num.clone())
            })
        };
        let fits = |l: usize| matches!(mods[l].1, Role::Layer { out, .. } if out == channels);
        let owner = match (by_name, before) {
            (Some(l), _) if fits(l) => l,
            (_, Some(l)) if fits(l) => l,
            _ => {
                return Err(ambiguous(
                    ckpt,
                    format!(
                        "cannot tell which layer the norm `{}` ({channels} channels) follows",
                        mods[i].0.prefix
                    ),
                ));
            }
        };
        if !running_stats {
            notes.push(format!(
                "`{}` is taken to normalise each channel independently or all channels together (BatchNorm, LayerNorm, GroupNorm with 1 or C groups); GroupNorm with other group counts needs a spec with block structure",
                mods[i].0.prefix
            ));
        }
        norms_of.entry(owner).or_default().push(i);
    }
    Ok((norms_of, notes))
}

/// One group per hidden layer: its outputs (with bias and norms) and the
/// next layer's inputs (blocked channel-major after a conv → Linear flatten).
fn chain_groups(
    ckpt: &Checkpoint,
    mods: &[(Module, Role)],
    layers: &[usize],
    norms_of: &BTreeMap<usize, Vec<usize>>,
) -> Result<Vec<PermGroup>> {
    let mut groups = Vec::new();
    for w in layers.windows(2) {
        let (k, next) = (w[0], w[1]);
        let Role::Layer { out, conv, .. } = mods[k].1 else {
            unreachable!()
        };
        let Role::Layer {
            inp,
            conv: next_conv,
            ..
        } = mods[next].1
        else {
            unreachable!()
        };
        let block = if inp == out {
            1
        } else if conv && !next_conv && out > 0 && inp % out == 0 {
            inp / out
        } else {
            return Err(ambiguous(
                ckpt,
                format!(
                    "`{}.weight` has {inp} inputs but the preceding layer `{}.weight` has {out} outputs",
                    mods[next].0.prefix, mods[k].0.prefix
                ),
            ));
        };
        let mut members = vec![AxisMember::plain(format!("{}.weight", mods[k].0.prefix), 0)];
        if mods[k].0.params.contains_key("bias") {
            members.push(AxisMember::plain(format!("{}.bias", mods[k].0.prefix), 0));
        }
        for &n in norms_of.get(&k).map(Vec::as_slice).unwrap_or(&[]) {
            for p in mods[n].0.params.keys() {
                members.push(AxisMember::plain(format!("{}.{p}", mods[n].0.prefix), 0));
            }
        }
        members.push(AxisMember {
            block,
            ..AxisMember::plain(format!("{}.weight", mods[next].0.prefix), 1)
        });
        groups.push(PermGroup {
            name: mods[k].0.prefix.clone(),
            size: out,
            kind: Some(if conv { "channels" } else { "hidden" }.into()),
            members,
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_puts_layer_two_before_layer_ten() {
        assert_eq!(natural_cmp("layers.2", "layers.10"), Ordering::Less);
        assert_eq!(natural_cmp("fc1", "fc2"), Ordering::Less);
        assert_eq!(natural_cmp("a.b", "a.b"), Ordering::Equal);
        assert_eq!(natural_cmp("conv10", "conv9"), Ordering::Greater);
    }

    #[test]
    fn a_norm_is_paired_with_the_layer_of_the_same_number() {
        assert_eq!(
            stem_number("features.bn1"),
            ("features.".into(), "1".into())
        );
        assert_eq!(stem_number("conv12"), ("".into(), "12".into()));
    }

    #[test]
    fn a_linear_layer_with_a_matching_bias_is_a_layer() {
        let m = Module {
            prefix: "fc1".into(),
            params: [
                ("weight".to_string(), vec![4, 3]),
                ("bias".to_string(), vec![4]),
            ]
            .into(),
        };
        assert_eq!(
            role(&m),
            Some(Role::Layer {
                out: 4,
                inp: 3,
                conv: false
            })
        );
    }

    #[test]
    fn batchnorm_vectors_make_a_norm_with_running_stats() {
        let m = Module {
            prefix: "bn1".into(),
            params: ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .map(|k| (k.to_string(), vec![8]))
                .collect(),
        };
        assert_eq!(
            role(&m),
            Some(Role::Norm {
                channels: 8,
                running_stats: true
            })
        );
    }
}
