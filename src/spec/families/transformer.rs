//! Permutation specs for transformers: BERT/RoBERTa, GPT-2 and the LLaMA
//! family (Llama, Mistral, Qwen2), recognised from Hugging Face tensor names,
//! with head counts from the model directory's `config.json`.
//!
//! Groups (all on by default; `--groups` selects by kind or name):
//!
//! | kind | name | size | what moves together |
//! | --- | --- | --- | --- |
//! | `residual` | `residual` | d_model | embeddings (token, position, type), every LayerNorm/RMSNorm, the input axis of every projection reading the stream, the output axis (and bias) of every projection writing it, the LM head / pooler input (tied or not) |
//! | `ffn` | `layers.i.ffn` | d_ffn | rows of the up (and gate) projection, their biases, columns of the down projection |
//! | `heads` | `layers.i.heads` | KV heads | per KV head: its `head_dim` rows of K and V and the `group·head_dim` rows of Q and columns of O of the query heads that share it (all query heads when there is no GQA) |
//! | `heads` | `layers.i.query_heads` | H / KV | (GQA only) the query heads inside each KV group, the same reordering in every group |
//! | `qk_dims` | `layers.i.qk_dims` | head_dim | (no RoPE only) one reordering of the dimensions inside every Q and K head |
//! | `vo_dims` | `layers.i.vo_dims` | head_dim | one reordering of the dimensions inside every V head and the matching columns of O |
//!
//! Within-head groups are *shared across heads* (one permutation of
//! `head_dim` applied in every head): this is a subset of the true symmetry
//! (each head could reorder its dimensions independently), chosen because
//! shared groups commute with the head permutation, which the spec format's
//! composition of same-axis groups requires. The same holds for the query
//! heads inside a KV group under GQA. With rotary position embeddings (the
//! LLaMA family) Q and K dimensions carry position-dependent rotations
//! pairing dimension `i` with `i + head_dim/2` at a frequency of its own;
//! no permutation other than the identity keeps all of them, so no
//! `qk_dims` group exists there (the spec's notes say so).
//!
//! Head counts come from `config.json` (`num_attention_heads`/`n_head`,
//! `num_key_value_heads`, `head_dim`). Without a config the head groups are
//! left out (a wrong head size would change the function) and a note says
//! so; `ffn` and `residual` need no config.

use std::collections::BTreeSet;

use serde_json::Value;

use super::tables::{Attention, Positions, TransformerTable};
use super::{Family, fail, find_layers, member, opt, params_of, shape_of};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::spec::{AxisMember, PermGroup, PermutationSpec};

/// A projection as stored: its weight (and bias), which weight axis is the
/// output, which the input, and where along the output axis it starts (the
/// thirds of GPT-2's fused `c_attn`).
#[derive(Clone, Debug)]
struct Proj {
    weight: String,
    bias: Option<String>,
    out_axis: usize,
    in_axis: usize,
    out_start: usize,
}

#[derive(Clone, Debug)]
struct Layer {
    index: String,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    /// Up projection(s): `gate_proj` and `up_proj` share the FFN permutation.
    up: Vec<Proj>,
    down: Proj,
    /// Norm weights and biases (residual, axis 0).
    norms: Vec<String>,
}

#[derive(Debug)]
struct Layout {
    /// Tensors whose axis 1 is the residual stream (embeddings, LM head,
    /// pooler input).
    stream_columns: Vec<String>,
    /// Residual vectors outside the layers (final norm, embedding norm).
    stream_vectors: Vec<String>,
    layers: Vec<Layer>,
    /// Q/K dimensions must stay in place.
    rope: bool,
    /// Because of rotary embeddings (a note says so).
    rotary: bool,
    /// Tensors recognised but left untouched (pooler bias ...).
    untouched: Vec<String>,
    notes: Vec<String>,
}

/// Attention geometry from the config.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Heads {
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

const NORM_PARAMS: &[&str] = &["weight", "bias"];

/// The spec of a transformer of `table`'s family, or `None` when the names
/// are not the family's.
pub fn infer(
    family: &Family,
    table: &TransformerTable,
    ckpt: &Checkpoint,
    names: &BTreeSet<String>,
    config: Option<&Value>,
) -> Result<Option<PermutationSpec>> {
    let Some(layout) = layout(family, table, ckpt, names, config)? else {
        return Ok(None);
    };
    build(family, ckpt, names, layout, config).map(Some)
}

/// Reads the tensors of `table`'s family out of `names`.
fn layout(
    family: &Family,
    table: &TransformerTable,
    ckpt: &Checkpoint,
    names: &BTreeSet<String>,
    config: Option<&Value>,
) -> Result<Option<Layout>> {
    let Some((base, idx)) = find_layers(names, table.layers, table.detect) else {
        return Ok(None);
    };
    let proj = |prefix: String, out_start: usize| {
        let (out_axis, in_axis) = if table.conv1d { (1, 0) } else { (0, 1) };
        Proj {
            weight: format!("{prefix}.weight"),
            bias: opt(names, format!("{prefix}.bias")),
            out_axis,
            in_axis,
            out_start,
        }
    };
    let mut layers = Vec::new();
    for i in &idx {
        let p = format!("{base}{}.{i}.", table.layers);
        let (q, k, v) = match table.attention {
            Attention::Separate { q, k, v } => (
                proj(format!("{p}{q}"), 0),
                proj(format!("{p}{k}"), 0),
                proj(format!("{p}{v}"), 0),
            ),
            Attention::Fused(qkv) => {
                let fused = format!("{p}{qkv}");
                let s = ckpt
                    .get(&format!("{fused}.weight"))
                    .map(|t| t.shape.clone())
                    .unwrap_or_default();
                if s.len() != 2 || s[1] != 3 * s[0] {
                    return Err(fail(
                        ckpt,
                        family,
                        format!("`{fused}.weight` has shape {s:?}, expected [d, 3·d]"),
                    ));
                }
                let d = s[0];
                (
                    proj(fused.clone(), 0),
                    proj(fused.clone(), d),
                    proj(fused, 2 * d),
                )
            }
        };
        let up = (table.up.iter())
            .filter(|(n, required)| *required || names.contains(&format!("{p}{n}.weight")))
            .map(|(n, _)| proj(format!("{p}{n}"), 0))
            .collect();
        layers.push(Layer {
            index: i.clone(),
            q,
            k,
            v,
            o: proj(format!("{p}{}", table.o), 0),
            up,
            down: proj(format!("{p}{}", table.down), 0),
            norms: (table.layer_norms.iter())
                .flat_map(|n| params_of(names, &format!("{p}{n}"), NORM_PARAMS))
                .collect(),
        });
    }
    let mut stream_columns = Vec::new();
    for e in table.embeddings {
        let t = format!("{base}{e}.weight");
        if !names.contains(&t) {
            return Err(fail(ckpt, family, format!("`{t}` is missing")));
        }
        stream_columns.push(t);
    }
    for e in table.optional_embeddings {
        stream_columns.extend(opt(names, format!("{base}{e}.weight")));
    }
    if let Some(model) = table.lm_head_outside {
        // The LM head sits outside the base model (`lm_head.weight` next to
        // `model.`); a tied head is usually not stored at all.
        let outer = base.strip_suffix(model).unwrap_or(&base);
        stream_columns.extend(opt(names, format!("{outer}lm_head.weight")));
    }
    let mut untouched = Vec::new();
    if let Some(pooler) = table.pooler
        && let Some(w) = opt(names, format!("{base}{pooler}.weight"))
    {
        stream_columns.push(w);
        untouched.extend(opt(names, format!("{base}{pooler}.bias")));
    }
    let mut notes = Vec::new();
    let rope = match table.positions {
        Positions::Rotary => true,
        Positions::Absolute => false,
        Positions::FromConfig(key) => match config.and_then(|c| c.get(key)?.as_str()) {
            None | Some("absolute") => false,
            Some(other) => {
                // Relative position embeddings act on Q/K head dimensions
                // too; be safe and leave Q/K dimensions alone.
                notes.push(format!(
                    "{key} `{other}`: Q/K head dimensions are not permuted"
                ));
                true
            }
        },
    };
    Ok(Some(Layout {
        rotary: matches!(table.positions, Positions::Rotary),
        stream_columns,
        stream_vectors: params_of(names, &format!("{base}{}", table.final_norm), NORM_PARAMS),
        layers,
        rope,
        untouched,
        notes,
    }))
}

/// The first of `keys` the config sets (`null` counts as unset); a value
/// that is not a whole number (`-1`, `"4"`, `4.5`) is an error saying so.
fn cfg_usize(cx: &Ctx, config: Option<&Value>, keys: &[&str]) -> Result<Option<usize>> {
    let Some(c) = config else { return Ok(None) };
    for k in keys {
        match c.get(*k) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                    Some(n) => Ok(Some(n)),
                    None => {
                        Err(cx.fail(format!("config.json `{k}` is {v}; expected a whole number")))
                    }
                };
            }
        }
    }
    Ok(None)
}

/// The weight and bias members of a projection's output axis.
fn out_members(p: &Proj, block: usize, repeat: usize) -> Vec<AxisMember> {
    let mut v = vec![member(&p.weight, p.out_axis, p.out_start, block, repeat)];
    if let Some(b) = &p.bias {
        v.push(member(b, 0, p.out_start, block, repeat));
    }
    v
}

/// Tensors a family may carry that no permutation touches.
fn untouched_extra(name: &str) -> bool {
    // Qwen3-style per-head Q/K RMSNorms act on head_dim, shared by all
    // heads: head permutations leave them alone, and there is no qk_dims
    // group with RoPE.
    name.ends_with(".self_attn.q_norm.weight") || name.ends_with(".self_attn.k_norm.weight")
}

/// The residual group's members as they are found, each (tensor, axis)
/// once, and every tensor accounted for.
struct Stream {
    members: Vec<AxisMember>,
    used: BTreeSet<String>,
}

impl Stream {
    fn push(&mut self, m: AxisMember) {
        self.used.insert(m.tensor.clone());
        if !(self.members.iter()).any(|x| x.tensor == m.tensor && x.axis == m.axis) {
            self.members.push(m);
        }
    }

    /// A projection's weight (not its bias) counts as used.
    fn uses(&mut self, p: &Proj) {
        self.used.insert(p.weight.clone());
        self.used.extend(p.bias.iter().cloned());
    }
}

/// What a builder checks against: the checkpoint and its family.
struct Ctx<'a> {
    ckpt: &'a Checkpoint,
    family: &'a Family,
}

impl Ctx<'_> {
    fn shape(&self, n: &str) -> Result<Vec<usize>> {
        shape_of(self.ckpt, self.family, n)
    }

    fn fail(&self, reason: String) -> crate::Error {
        fail(self.ckpt, self.family, reason)
    }
}

fn build(
    family: &Family,
    ckpt: &Checkpoint,
    names: &BTreeSet<String>,
    layout: Layout,
    config: Option<&Value>,
) -> Result<PermutationSpec> {
    let cx = Ctx { ckpt, family };
    let embed = &layout.stream_columns[0];
    let es = cx.shape(embed)?;
    if es.len() != 2 {
        return Err(cx.fail(format!("`{embed}` is not a matrix")));
    }
    let d = es[1];
    if let Some(h) = cfg_usize(&cx, config, &["hidden_size", "n_embd", "d_model"])?
        && h != d
    {
        return Err(cx.fail(format!(
            "config.json says hidden_size {h} but `{embed}` has {d} columns"
        )));
    }
    let mut notes = layout.notes.clone();
    let heads = heads(&cx, config, d, &mut notes)?;
    let mut stream = Stream {
        members: Vec::new(),
        used: layout.untouched.iter().cloned().collect(),
    };
    for t in &layout.stream_columns {
        stream.push(AxisMember::plain(t.clone(), 1));
    }
    let mut layer_groups = Vec::new();
    for layer in &layout.layers {
        for n in &layer.norms {
            stream.push(AxisMember::plain(n.clone(), 0));
        }
        layer_groups.extend(attention(&cx, layer, d, heads, layout.rope, &mut stream)?);
        layer_groups.push(ffn(&cx, layer, d, &mut stream)?);
    }
    for n in &layout.stream_vectors {
        stream.push(AxisMember::plain(n.clone(), 0));
    }
    // Every float tensor must be accounted for: an unknown one might need
    // permuting, and silently leaving it would change the function.
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !stream.used.contains(*n) && !untouched_extra(n))
        .collect();
    if !unknown.is_empty() {
        let shown: Vec<String> = unknown.iter().take(8).map(|s| format!("`{s}`")).collect();
        return Err(cx.fail(format!(
            "{} tensor(s) are not part of the supported layout ({}{})",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > 8 { ", …" } else { "" }
        )));
    }
    if layout.rotary {
        notes.push(
            "rotary position embeddings: Q/K dimensions inside a head are never permuted (each rotary pair has its own frequency); heads, V/O dimensions, FFN and residual are".into(),
        );
    }
    if heads.is_some() {
        notes.push(
            "within-head dimension groups (and query heads inside a KV group) use one permutation shared by all heads of a layer, a subset of the full symmetry".into(),
        );
    }
    let arch = config
        .and_then(|c| c.get("architectures"))
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .or_else(|| config?.get("model_type")?.as_str())
        .unwrap_or(family.name)
        .to_string();
    let mut groups = vec![PermGroup {
        name: "residual".into(),
        size: d,
        kind: Some("residual".into()),
        members: stream.members,
    }];
    groups.extend(layer_groups);
    let mut spec = PermutationSpec::new(Some(arch), groups);
    spec.notes = notes;
    Ok(spec)
}

/// Head geometry from the config (`None`, with a note, without one).
fn heads(
    cx: &Ctx,
    config: Option<&Value>,
    d: usize,
    notes: &mut Vec<String>,
) -> Result<Option<Heads>> {
    let Some(h) = cfg_usize(cx, config, &["num_attention_heads", "n_head", "num_heads"])? else {
        notes.push(
            if config.is_some() {
                "config.json sets no num_attention_heads: head and within-head groups are left out (write them into a spec)"
            } else {
                "no config.json with num_attention_heads next to the checkpoint: head and within-head groups are left out (pass a model directory, or write them into a spec)"
            }
            .into(),
        );
        return Ok(None);
    };
    let kv = cfg_usize(cx, config, &["num_key_value_heads", "n_kv_heads"])?.unwrap_or(h);
    let hd = cfg_usize(cx, config, &["head_dim"])?.unwrap_or(d.checked_div(h).unwrap_or(0));
    if h == 0 || kv == 0 || hd == 0 || h % kv != 0 {
        return Err(cx.fail(format!(
            "config.json has {h} attention heads, {kv} KV heads and head_dim {hd}"
        )));
    }
    Ok(Some(Heads {
        n_heads: h,
        n_kv: kv,
        head_dim: hd,
    }))
}

/// The attention block of `layer`: its stream members, and its head and
/// within-head groups when the head geometry is known.
fn attention(
    cx: &Ctx,
    layer: &Layer,
    d: usize,
    heads: Option<Heads>,
    rope: bool,
    stream: &mut Stream,
) -> Result<Vec<PermGroup>> {
    let li = &layer.index;
    let qs = cx.shape(&layer.q.weight)?;
    let ks = cx.shape(&layer.k.weight)?;
    let os = cx.shape(&layer.o.weight)?;
    for (p, s) in [(&layer.q, &qs), (&layer.k, &ks), (&layer.o, &os)] {
        if s.len() != 2 || s[p.in_axis.max(p.out_axis)] == 0 {
            return Err(cx.fail(format!("`{}` is not a matrix", p.weight)));
        }
    }
    // Width of Q's and K's output (a third of c_attn for GPT-2).
    let fused = layer.q.weight == layer.k.weight;
    let q_width = if fused {
        qs[layer.q.out_axis] / 3
    } else {
        qs[layer.q.out_axis]
    };
    let k_width = if fused { q_width } else { ks[layer.k.out_axis] };
    if qs[layer.q.in_axis] != d || os[layer.o.out_axis] != d || os[layer.o.in_axis] != q_width {
        return Err(cx.fail(format!(
            "layer {li}: Q is {qs:?} and O is {os:?}, which do not fit d_model {d}"
        )));
    }
    for p in [&layer.q, &layer.k, &layer.v] {
        stream.push(member(&p.weight, p.in_axis, 0, 1, 1));
        stream.uses(p);
    }
    stream.push(member(&layer.o.weight, layer.o.out_axis, 0, 1, 1));
    if let Some(b) = &layer.o.bias {
        stream.push(AxisMember::plain(b.clone(), 0));
    }
    let Some(h) = heads else {
        return Ok(Vec::new());
    };
    if h.n_heads * h.head_dim != q_width || h.n_kv * h.head_dim != k_width {
        return Err(cx.fail(format!(
            "layer {li}: config.json gives {} heads, {} KV heads of {} dims, but Q has {q_width} and K {k_width} outputs",
            h.n_heads, h.n_kv, h.head_dim
        )));
    }
    Ok(head_groups(layer, h, rope))
}

/// The head, query-head and within-head groups of one layer.
fn head_groups(layer: &Layer, h: Heads, rope: bool) -> Vec<PermGroup> {
    let li = &layer.index;
    let group = |name: &str, size: usize, kind: &str, members: Vec<AxisMember>| PermGroup {
        name: format!("layers.{li}.{name}"),
        size,
        kind: Some(kind.into()),
        members,
    };
    let g = h.n_heads / h.n_kv;
    let hd = h.head_dim;
    let o = &layer.o;
    let mut groups = Vec::new();
    if h.n_kv > 1 {
        let mut m = out_members(&layer.q, g * hd, 1);
        m.extend(out_members(&layer.k, hd, 1));
        m.extend(out_members(&layer.v, hd, 1));
        m.push(member(&o.weight, o.in_axis, 0, g * hd, 1));
        groups.push(group("heads", h.n_kv, "heads", m));
    }
    if g > 1 {
        let mut m = out_members(&layer.q, hd, h.n_kv);
        m.push(member(&o.weight, o.in_axis, 0, hd, h.n_kv));
        groups.push(group("query_heads", g, "heads", m));
    }
    if hd > 1 {
        if !rope {
            let mut m = out_members(&layer.q, 1, h.n_heads);
            m.extend(out_members(&layer.k, 1, h.n_kv));
            groups.push(group("qk_dims", hd, "qk_dims", m));
        }
        let mut m = out_members(&layer.v, 1, h.n_kv);
        m.push(member(&o.weight, o.in_axis, 0, 1, h.n_heads));
        groups.push(group("vo_dims", hd, "vo_dims", m));
    }
    groups
}

/// The FFN block of `layer`: its stream members and its group.
fn ffn(cx: &Ctx, layer: &Layer, d: usize, stream: &mut Stream) -> Result<PermGroup> {
    let li = &layer.index;
    let (up, down) = (&layer.up[0], &layer.down);
    let us = cx.shape(&up.weight)?;
    let ds = cx.shape(&down.weight)?;
    if us.len() != 2 || ds.len() != 2 {
        return Err(cx.fail(format!("layer {li}: FFN weights are not matrices")));
    }
    let f = us[up.out_axis];
    if ds[down.in_axis] != f || ds[down.out_axis] != d || us[up.in_axis] != d {
        return Err(cx.fail(format!(
            "layer {li}: FFN up is {us:?} and down is {ds:?}, which do not fit"
        )));
    }
    let mut m = Vec::new();
    for u in &layer.up {
        m.extend(out_members(u, 1, 1));
        stream.push(member(&u.weight, u.in_axis, 0, 1, 1));
        stream.uses(u);
    }
    m.push(member(&down.weight, down.in_axis, 0, 1, 1));
    stream.push(member(&down.weight, down.out_axis, 0, 1, 1));
    if let Some(b) = &down.bias {
        stream.push(AxisMember::plain(b.clone(), 0));
    }
    Ok(PermGroup {
        name: format!("layers.{li}.ffn"),
        size: f,
        kind: Some("ffn".into()),
        members: m,
    })
}
