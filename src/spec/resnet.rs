//! Permutation specs for ResNets in torchvision naming (`conv1`, `bn1`,
//! `layerS.B.conv1…conv3`, `layerS.B.downsample.{0,1}`, `fc`), with
//! BasicBlock and Bottleneck blocks.
//!
//! Groups:
//! - `channels` (`layerS.B.conv1`, `layerS.B.conv2` for Bottleneck): the
//!   inner channels of a block: output channels of the conv, its BatchNorm
//!   (weight, bias, running mean and variance), input channels of the next
//!   conv of the block.
//! - `residual` (`residual.stem`, `residual.layerS`): the channels of the
//!   residual stream, one group per stretch between changes of width: the
//!   stem conv (or block 0's downsample shortcut) writing it, every block's
//!   last conv and BatchNorm adding to it, every block's first conv and the
//!   next downsample reading it, and `fc` reading the last one after global
//!   pooling.
//!
//! `num_batches_tracked` is an integer counter and is left alone.

use std::collections::BTreeSet;

use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, Result, SpecError};

use super::infer::natural_cmp;
use super::{AxisMember, PermGroup, PermutationSpec};

const BN: &[&str] = &["weight", "bias", "running_mean", "running_var"];

fn fail(ckpt: &Checkpoint, reason: String) -> Error {
    Error::spec(SpecError::Family {
        checkpoint: ckpt.source().to_path_buf(),
        family: "torchvision ResNet".into(),
        reason,
    })
}

/// Recognises a torchvision-style ResNet, or returns `None`.
pub fn infer(ckpt: &Checkpoint) -> Result<Option<PermutationSpec>> {
    let names: BTreeSet<String> = ckpt
        .tensors()
        .iter()
        .filter(|t| dtype::is_float(t.dtype))
        .map(|t| t.name.clone())
        .collect();
    let Some(base) = names
        .iter()
        .find_map(|n| n.strip_suffix("layer1.0.conv1.weight"))
        .map(str::to_string)
    else {
        return Ok(None);
    };
    let stem = format!("{base}conv1.weight");
    if !names.contains(&stem) {
        return Ok(None);
    }
    let shape = |n: &str| -> Result<Vec<usize>> {
        ckpt.get(n)
            .map(|t| t.shape.clone())
            .ok_or_else(|| fail(ckpt, format!("`{n}` is missing")))
    };
    let mut used: BTreeSet<String> = BTreeSet::new();
    let bn_members = |prefix: &str, used: &mut BTreeSet<String>| -> Vec<AxisMember> {
        BN.iter()
            .filter_map(|p| {
                let n = format!("{prefix}.{p}");
                names.contains(&n).then(|| {
                    used.insert(n.clone());
                    AxisMember::plain(n, 0)
                })
            })
            .collect()
    };
    // Blocks in order: (stage, block index).
    let mut blocks: Vec<(usize, String)> = Vec::new();
    for n in &names {
        let Some(rest) = n.strip_prefix(&base) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix("layer") else {
            continue;
        };
        let Some(rest) = rest.strip_suffix(".conv1.weight") else {
            continue;
        };
        let Some((s, b)) = rest.split_once('.') else {
            continue;
        };
        if let Ok(s) = s.parse::<usize>()
            && !b.is_empty()
            && b.bytes().all(|c| c.is_ascii_digit())
        {
            blocks.push((s, b.to_string()));
        }
    }
    blocks.sort_by(|x, y| x.0.cmp(&y.0).then_with(|| natural_cmp(&x.1, &y.1)));
    let mut groups: Vec<PermGroup> = Vec::new();
    // The current residual stream: its name and members.
    let ss = shape(&stem)?;
    used.insert(stem.clone());
    let mut stream_name = "residual.stem".to_string();
    let mut stream_size = ss[0];
    let mut stream = vec![AxisMember::plain(stem, 0)];
    stream.extend(bn_members(&format!("{base}bn1"), &mut used));
    let mut inner_groups = Vec::new();
    for (s, b) in &blocks {
        let p = format!("{base}layer{s}.{b}.");
        let convs: Vec<String> = (1..=3)
            .map(|k| format!("{p}conv{k}.weight"))
            .filter(|n| names.contains(n))
            .collect();
        if convs.len() < 2 {
            return Err(fail(ckpt, format!("block `{p}` has fewer than two convs")));
        }
        let shapes: Vec<Vec<usize>> = convs.iter().map(|c| shape(c)).collect::<Result<_>>()?;
        if shapes.iter().any(|s| s.len() != 4) {
            return Err(fail(
                ckpt,
                format!("block `{p}` has convs that are not 4-D"),
            ));
        }
        if shapes[0][1] != stream_size {
            return Err(fail(
                ckpt,
                format!(
                    "`{}` reads {} channels but the residual stream has {stream_size}",
                    convs[0], shapes[0][1]
                ),
            ));
        }
        // Readers of the incoming stream.
        stream.push(AxisMember::plain(convs[0].clone(), 1));
        let ds_conv = format!("{p}downsample.0.weight");
        let new_stream = names.contains(&ds_conv);
        if new_stream {
            stream.push(AxisMember::plain(ds_conv.clone(), 1));
            groups.push(PermGroup {
                name: stream_name.clone(),
                size: stream_size,
                kind: Some("residual".into()),
                members: std::mem::take(&mut stream),
            });
            let ds = shape(&ds_conv)?;
            used.insert(ds_conv.clone());
            stream_name = format!("residual.layer{s}");
            stream_size = ds[0];
            stream.push(AxisMember::plain(ds_conv, 0));
            stream.extend(bn_members(&format!("{p}downsample.1"), &mut used));
        }
        // Inner channels: conv k output + bn k, conv k+1 input.
        for k in 0..convs.len() - 1 {
            let prefix = convs[k].strip_suffix(".weight").unwrap_or(&convs[k]);
            let bn = format!("{p}bn{}", k + 1);
            let mut m = vec![AxisMember::plain(convs[k].clone(), 0)];
            m.extend(bn_members(&bn, &mut used));
            m.push(AxisMember::plain(convs[k + 1].clone(), 1));
            if shapes[k + 1][1] != shapes[k][0] {
                return Err(fail(
                    ckpt,
                    format!(
                        "`{}` does not read the outputs of `{}`",
                        convs[k + 1],
                        convs[k]
                    ),
                ));
            }
            inner_groups.push(PermGroup {
                name: prefix.strip_prefix(&base).unwrap_or(prefix).to_string(),
                size: shapes[k][0],
                kind: Some("channels".into()),
                members: m,
            });
            used.insert(convs[k].clone());
        }
        // The last conv writes the stream.
        let last = convs.last().expect("two convs");
        if shapes.last().expect("two convs")[0] != stream_size {
            return Err(fail(
                ckpt,
                format!("`{last}` writes a stream of a different width without a downsample"),
            ));
        }
        stream.push(AxisMember::plain(last.clone(), 0));
        used.insert(last.clone());
        stream.extend(bn_members(&format!("{p}bn{}", convs.len()), &mut used));
    }
    let fc = format!("{base}fc.weight");
    if let Some(t) = ckpt.get(&fc) {
        if t.shape.len() != 2 || t.shape[1] != stream_size {
            return Err(fail(
                ckpt,
                format!("`{fc}` does not read the last stage's channels"),
            ));
        }
        stream.push(AxisMember::plain(fc.clone(), 1));
        used.insert(fc);
        used.extend(names.get(&format!("{base}fc.bias")).cloned());
    }
    groups.push(PermGroup {
        name: stream_name,
        size: stream_size,
        kind: Some("residual".into()),
        members: stream,
    });
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !used.contains(*n))
        .take(8)
        .map(|s| format!("`{s}`"))
        .collect();
    if !unknown.is_empty() {
        return Err(fail(
            ckpt,
            format!("tensors outside the ResNet layout: {}", unknown.join(", ")),
        ));
    }
    groups.extend(inner_groups);
    let bottleneck = blocks
        .iter()
        .any(|(s, b)| names.contains(&format!("{base}layer{s}.{b}.conv3.weight")));
    Ok(Some(PermutationSpec::new(
        Some(
            if bottleneck {
                "resnet-bottleneck"
            } else {
                "resnet-basic"
            }
            .into(),
        ),
        groups,
    )))
}
