//! Residual conv networks: ResNets in torchvision naming (`conv1`, `bn1`,
//! `layerS.B.conv1…conv3`, `layerS.B.downsample.{0,1}`, `fc`), with
//! BasicBlock and Bottleneck blocks, described by a [`ResNetTable`] (see
//! [`super::tables::RESNET`]).
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

use super::tables::ResNetTable;
use super::{Family, fail, params_of, shape_of};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::spec::infer::natural_cmp;
use crate::spec::{AxisMember, PermGroup, PermutationSpec};

/// The residual stream being built: the group it will be, and every
/// tensor accounted for.
struct Stream<'t> {
    table: &'t ResNetTable,
    names: &'t BTreeSet<String>,
    name: String,
    size: usize,
    members: Vec<AxisMember>,
    used: BTreeSet<String>,
}

impl Stream<'_> {
    /// Members for the norm `prefix` (axis 0), marked used.
    fn norm_members(&mut self, prefix: &str) -> Vec<AxisMember> {
        let params = params_of(self.names, prefix, self.table.norm_params);
        self.used.extend(params.iter().cloned());
        params
            .into_iter()
            .map(|n| AxisMember::plain(n, 0))
            .collect()
    }

    /// Ends the current stretch as a group and starts one named `name` of
    /// `size` channels.
    fn restart(&mut self, name: String, size: usize) -> PermGroup {
        PermGroup {
            name: std::mem::replace(&mut self.name, name),
            size: std::mem::replace(&mut self.size, size),
            kind: Some("residual".into()),
            members: std::mem::take(&mut self.members),
        }
    }
}

/// The spec of a network of `table`'s family, or `None` when the names
/// are not the family's.
pub fn infer(
    family: &Family,
    table: &ResNetTable,
    ckpt: &Checkpoint,
    names: &BTreeSet<String>,
) -> Result<Option<PermutationSpec>> {
    let first = format!("{}1.0.{}.weight", table.stage, table.convs[0]);
    let Some(base) = names
        .iter()
        .find_map(|n| n.strip_suffix(&first))
        .map(str::to_string)
    else {
        return Ok(None);
    };
    let stem = format!("{base}{}.weight", table.stem.0);
    if !names.contains(&stem) {
        return Ok(None);
    }
    let blocks = blocks(table, names, &base);
    let ss = shape_of(ckpt, family, &stem)?;
    let mut stream = Stream {
        table,
        names,
        name: "residual.stem".into(),
        size: ss[0],
        members: vec![AxisMember::plain(stem.clone(), 0)],
        used: BTreeSet::from([stem]),
    };
    let stem_norm = stream.norm_members(&format!("{base}{}", table.stem.1));
    stream.members.extend(stem_norm);
    let mut groups: Vec<PermGroup> = Vec::new();
    let mut inner_groups = Vec::new();
    for (s, b) in &blocks {
        let p = format!("{base}{}{s}.{b}.", table.stage);
        inner_groups.extend(block(
            family,
            ckpt,
            &p,
            *s,
            &base,
            &mut stream,
            &mut groups,
        )?);
    }
    let fc = format!("{base}{}.weight", table.head);
    if let Some(t) = ckpt.get(&fc) {
        if t.shape.len() != 2 || t.shape[1] != stream.size {
            return Err(fail(
                ckpt,
                family,
                format!("`{fc}` does not read the last stage's channels"),
            ));
        }
        stream.members.push(AxisMember::plain(fc.clone(), 1));
        stream.used.insert(fc);
        stream
            .used
            .extend(names.get(&format!("{base}{}.bias", table.head)).cloned());
    }
    groups.push(stream.restart(String::new(), 0));
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !stream.used.contains(*n))
        .take(8)
        .map(|s| format!("`{s}`"))
        .collect();
    if !unknown.is_empty() {
        return Err(fail(
            ckpt,
            family,
            format!("tensors outside the ResNet layout: {}", unknown.join(", ")),
        ));
    }
    groups.extend(inner_groups);
    let last_conv = table.convs[table.convs.len() - 1];
    let bottleneck = (blocks.iter())
        .any(|(s, b)| names.contains(&format!("{base}{}{s}.{b}.{last_conv}.weight", table.stage)));
    let arch = if bottleneck {
        "resnet-bottleneck"
    } else {
        "resnet-basic"
    };
    Ok(Some(PermutationSpec::new(Some(arch.into()), groups)))
}

/// The blocks `(stage, block index)`, in order.
fn blocks(table: &ResNetTable, names: &BTreeSet<String>, base: &str) -> Vec<(usize, String)> {
    let suffix = format!(".{}.weight", table.convs[0]);
    let mut blocks: Vec<(usize, String)> = names
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(base)?.strip_prefix(table.stage)?;
            let (s, b) = rest.strip_suffix(&suffix)?.split_once('.')?;
            let s = s.parse::<usize>().ok()?;
            (!b.is_empty() && b.bytes().all(|c| c.is_ascii_digit())).then(|| (s, b.to_string()))
        })
        .collect();
    blocks.sort_by(|x, y| x.0.cmp(&y.0).then_with(|| natural_cmp(&x.1, &y.1)));
    blocks
}

/// One block with prefix `p` in stage `s`: its members of the stream (a
/// downsample ends the stretch into `groups`), and its inner groups.
fn block(
    family: &Family,
    ckpt: &Checkpoint,
    p: &str,
    s: usize,
    base: &str,
    stream: &mut Stream,
    groups: &mut Vec<PermGroup>,
) -> Result<Vec<PermGroup>> {
    let table = stream.table;
    let convs: Vec<String> = (table.convs.iter())
        .map(|c| format!("{p}{c}.weight"))
        .filter(|n| stream.names.contains(n))
        .collect();
    if convs.len() < 2 {
        return Err(fail(
            ckpt,
            family,
            format!("block `{p}` has fewer than two convs"),
        ));
    }
    let shapes: Vec<Vec<usize>> = (convs.iter())
        .map(|c| shape_of(ckpt, family, c))
        .collect::<Result<_>>()?;
    if shapes.iter().any(|s| s.len() != 4) {
        return Err(fail(
            ckpt,
            family,
            format!("block `{p}` has convs that are not 4-D"),
        ));
    }
    if shapes[0][1] != stream.size {
        return Err(fail(
            ckpt,
            family,
            format!(
                "`{}` reads {} channels but the residual stream has {}",
                convs[0], shapes[0][1], stream.size
            ),
        ));
    }
    // Readers of the incoming stream.
    stream.members.push(AxisMember::plain(convs[0].clone(), 1));
    let ds_conv = format!("{p}{}.weight", table.downsample.0);
    if stream.names.contains(&ds_conv) {
        stream.members.push(AxisMember::plain(ds_conv.clone(), 1));
        let ds = shape_of(ckpt, family, &ds_conv)?;
        groups.push(stream.restart(format!("residual.{}{s}", table.stage), ds[0]));
        stream.used.insert(ds_conv.clone());
        stream.members.push(AxisMember::plain(ds_conv, 0));
        let norm = stream.norm_members(&format!("{p}{}", table.downsample.1));
        stream.members.extend(norm);
    }
    // Inner channels: conv k output + norm k, conv k+1 input.
    let mut inner = Vec::new();
    for k in 0..convs.len() - 1 {
        let prefix = convs[k].strip_suffix(".weight").unwrap_or(&convs[k]);
        let mut m = vec![AxisMember::plain(convs[k].clone(), 0)];
        m.extend(stream.norm_members(&format!("{p}{}{}", table.norm, k + 1)));
        m.push(AxisMember::plain(convs[k + 1].clone(), 1));
        if shapes[k + 1][1] != shapes[k][0] {
            return Err(fail(
                ckpt,
                family,
                format!(
                    "`{}` does not read the outputs of `{}`",
                    convs[k + 1],
                    convs[k]
                ),
            ));
        }
        inner.push(PermGroup {
            name: prefix.strip_prefix(base).unwrap_or(prefix).to_string(),
            size: shapes[k][0],
            kind: Some("channels".into()),
            members: m,
        });
        stream.used.insert(convs[k].clone());
    }
    // The last conv writes the stream.
    let last = convs.last().expect("two convs");
    if shapes.last().expect("two convs")[0] != stream.size {
        return Err(fail(
            ckpt,
            family,
            format!("`{last}` writes a stream of a different width without a downsample"),
        ));
    }
    stream.members.push(AxisMember::plain(last.clone(), 0));
    stream.used.insert(last.clone());
    let norm = stream.norm_members(&format!("{p}{}{}", table.norm, convs.len()));
    stream.members.extend(norm);
    Ok(inner)
}
