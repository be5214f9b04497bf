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

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, Result, SpecError};

use super::infer::natural_cmp;
use super::{AxisMember, PermGroup, PermutationSpec};

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
    family: &'static str,
    /// Tensors whose axis 1 is the residual stream (embeddings, LM head,
    /// pooler input).
    stream_columns: Vec<String>,
    /// Residual vectors outside the layers (final norm, embedding norm).
    stream_vectors: Vec<String>,
    layers: Vec<Layer>,
    rope: bool,
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

fn fail(ckpt: &Checkpoint, family: &str, reason: String) -> Error {
    Error::spec(SpecError::Family {
        checkpoint: ckpt.source().to_path_buf(),
        family: family.to_string(),
        reason,
    })
}

/// Recognises a transformer from tensor names and builds its spec, or
/// returns `None` when the names match no supported family.
pub fn infer(ckpt: &Checkpoint, config: Option<&Value>) -> Result<Option<PermutationSpec>> {
    let names: BTreeSet<String> = ckpt
        .tensors()
        .iter()
        .filter(|t| dtype::is_float(t.dtype))
        .map(|t| t.name.clone())
        .collect();
    let layout = if let Some(l) = llama(ckpt, &names, config)? {
        l
    } else if let Some(l) = gpt2(ckpt, &names)? {
        l
    } else if let Some(l) = bert(ckpt, &names, config)? {
        l
    } else {
        return Ok(None);
    };
    build(ckpt, &names, layout, config).map(Some)
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

fn opt(names: &BTreeSet<String>, n: String) -> Option<String> {
    names.contains(&n).then_some(n)
}

fn linear(names: &BTreeSet<String>, prefix: &str) -> Proj {
    Proj {
        weight: format!("{prefix}.weight"),
        bias: opt(names, format!("{prefix}.bias")),
        out_axis: 0,
        in_axis: 1,
        out_start: 0,
    }
}

fn norm(names: &BTreeSet<String>, prefix: &str) -> Vec<String> {
    ["weight", "bias"]
        .iter()
        .filter_map(|p| opt(names, format!("{prefix}.{p}")))
        .collect()
}

fn cfg_usize(config: Option<&Value>, keys: &[&str]) -> Option<usize> {
    let c = config?;
    keys.iter()
        .find_map(|k| c.get(*k).and_then(Value::as_u64))
        .map(|v| v as usize)
}

fn cfg_str<'a>(config: Option<&'a Value>, key: &str) -> Option<&'a str> {
    config?.get(key)?.as_str()
}

/// Llama, Mistral, Qwen2 (and look-alikes): `…layers.i.self_attn.q_proj`.
fn llama(
    ckpt: &Checkpoint,
    names: &BTreeSet<String>,
    _config: Option<&Value>,
) -> Result<Option<Layout>> {
    let Some((base, idx)) = find_layers(names, "layers", ".self_attn.q_proj.weight") else {
        return Ok(None);
    };
    let family = "LLaMA-family";
    let mut layers = Vec::new();
    for i in &idx {
        let p = format!("{base}layers.{i}.");
        let mlp = |n: &str| format!("{p}mlp.{n}");
        let mut up = Vec::new();
        if names.contains(&mlp("gate_proj.weight")) {
            up.push(linear(names, &mlp("gate_proj")));
        }
        up.push(linear(names, &mlp("up_proj")));
        let mut norms = norm(names, &format!("{p}input_layernorm"));
        norms.extend(norm(names, &format!("{p}post_attention_layernorm")));
        layers.push(Layer {
            index: i.clone(),
            q: linear(names, &format!("{p}self_attn.q_proj")),
            k: linear(names, &format!("{p}self_attn.k_proj")),
            v: linear(names, &format!("{p}self_attn.v_proj")),
            o: linear(names, &format!("{p}self_attn.o_proj")),
            up,
            down: linear(names, &mlp("down_proj")),
            norms,
        });
    }
    let embed = format!("{base}embed_tokens.weight");
    if !names.contains(&embed) {
        return Err(fail(ckpt, family, format!("`{embed}` is missing")));
    }
    let mut stream_columns = vec![embed];
    // The LM head sits outside the base model (`lm_head.weight` next to
    // `model.`); a tied head is usually not stored at all.
    let outer = base.strip_suffix("model.").unwrap_or(&base);
    if let Some(h) = opt(names, format!("{outer}lm_head.weight")) {
        stream_columns.push(h);
    }
    Ok(Some(Layout {
        family,
        stream_columns,
        stream_vectors: norm(names, &format!("{base}norm")),
        layers,
        rope: true,
        untouched: Vec::new(),
        notes: Vec::new(),
    }))
}

/// GPT-2: `…h.i.attn.c_attn` (Conv1D, weights stored [in, out]).
fn gpt2(ckpt: &Checkpoint, names: &BTreeSet<String>) -> Result<Option<Layout>> {
    let Some((base, idx)) = find_layers(names, "h", ".attn.c_attn.weight") else {
        return Ok(None);
    };
    let family = "GPT-2";
    let conv1d = |prefix: String, out_start: usize| Proj {
        weight: format!("{prefix}.weight"),
        bias: opt(names, format!("{prefix}.bias")),
        out_axis: 1,
        in_axis: 0,
        out_start,
    };
    let shape = |n: &str| ckpt.get(n).map(|t| t.shape.clone()).unwrap_or_default();
    let mut layers = Vec::new();
    for i in &idx {
        let p = format!("{base}h.{i}.");
        let c_attn = format!("{p}attn.c_attn");
        let s = shape(&format!("{c_attn}.weight"));
        if s.len() != 2 || s[1] != 3 * s[0] {
            return Err(fail(
                ckpt,
                family,
                format!("`{c_attn}.weight` has shape {s:?}, expected [d, 3·d]"),
            ));
        }
        let d = s[0];
        let mut norms = norm(names, &format!("{p}ln_1"));
        norms.extend(norm(names, &format!("{p}ln_2")));
        layers.push(Layer {
            index: i.clone(),
            q: conv1d(c_attn.clone(), 0),
            k: conv1d(c_attn.clone(), d),
            v: conv1d(c_attn, 2 * d),
            o: conv1d(format!("{p}attn.c_proj"), 0),
            up: vec![conv1d(format!("{p}mlp.c_fc"), 0)],
            down: conv1d(format!("{p}mlp.c_proj"), 0),
            norms,
        });
    }
    let mut stream_columns = Vec::new();
    for n in ["wte", "wpe"] {
        let t = format!("{base}{n}.weight");
        if !names.contains(&t) {
            return Err(fail(ckpt, family, format!("`{t}` is missing")));
        }
        stream_columns.push(t);
    }
    let outer = base.strip_suffix("transformer.").unwrap_or(&base);
    if let Some(h) = opt(names, format!("{outer}lm_head.weight")) {
        stream_columns.push(h);
    }
    Ok(Some(Layout {
        family,
        stream_columns,
        stream_vectors: norm(names, &format!("{base}ln_f")),
        layers,
        rope: false,
        untouched: Vec::new(),
        notes: Vec::new(),
    }))
}

/// BERT / RoBERTa encoders: `…encoder.layer.i.attention.self.query`.
fn bert(
    ckpt: &Checkpoint,
    names: &BTreeSet<String>,
    config: Option<&Value>,
) -> Result<Option<Layout>> {
    let Some((base, idx)) = find_layers(names, "encoder.layer", ".attention.self.query.weight")
    else {
        return Ok(None);
    };
    let family = "BERT/RoBERTa";
    let mut layers = Vec::new();
    for i in &idx {
        let p = format!("{base}encoder.layer.{i}.");
        let mut norms = norm(names, &format!("{p}attention.output.LayerNorm"));
        norms.extend(norm(names, &format!("{p}output.LayerNorm")));
        layers.push(Layer {
            index: i.clone(),
            q: linear(names, &format!("{p}attention.self.query")),
            k: linear(names, &format!("{p}attention.self.key")),
            v: linear(names, &format!("{p}attention.self.value")),
            o: linear(names, &format!("{p}attention.output.dense")),
            up: vec![linear(names, &format!("{p}intermediate.dense"))],
            down: linear(names, &format!("{p}output.dense")),
            norms,
        });
    }
    let e = format!("{base}embeddings.");
    let word = format!("{e}word_embeddings.weight");
    if !names.contains(&word) {
        return Err(fail(ckpt, family, format!("`{word}` is missing")));
    }
    let mut stream_columns = vec![word];
    for n in ["position_embeddings", "token_type_embeddings"] {
        if let Some(t) = opt(names, format!("{e}{n}.weight")) {
            stream_columns.push(t);
        }
    }
    let mut untouched = Vec::new();
    // The pooler reads the stream (its output is the model's output).
    if let Some(w) = opt(names, format!("{base}pooler.dense.weight")) {
        stream_columns.push(w);
        untouched.extend(opt(names, format!("{base}pooler.dense.bias")));
    }
    let mut notes = Vec::new();
    let mut rope = false;
    match cfg_str(config, "position_embedding_type") {
        None | Some("absolute") => {}
        Some(other) => {
            // Relative position embeddings act on Q/K head dimensions too;
            // be safe and leave Q/K dimensions alone.
            rope = true;
            notes.push(format!(
                "position_embedding_type `{other}`: Q/K head dimensions are not permuted"
            ));
        }
    }
    Ok(Some(Layout {
        family,
        stream_columns,
        stream_vectors: norm(names, &format!("{e}LayerNorm")),
        layers,
        rope,
        untouched,
        notes,
    }))
}

/// Tensors a family may carry that no permutation touches.
fn untouched_extra(name: &str) -> bool {
    // Qwen3-style per-head Q/K RMSNorms act on head_dim, shared by all
    // heads: head permutations leave them alone, and there is no qk_dims
    // group with RoPE.
    name.ends_with(".self_attn.q_norm.weight") || name.ends_with(".self_attn.k_norm.weight")
}

fn member(t: &str, axis: usize, start: usize, block: usize, repeat: usize) -> AxisMember {
    AxisMember {
        tensor: t.to_string(),
        axis,
        start,
        block,
        repeat,
    }
}

/// The weight and bias members of a projection's output axis.
fn out_members(p: &Proj, block: usize, repeat: usize) -> Vec<AxisMember> {
    let mut v = vec![member(&p.weight, p.out_axis, p.out_start, block, repeat)];
    if let Some(b) = &p.bias {
        v.push(member(b, 0, p.out_start, block, repeat));
    }
    v
}

fn build(
    ckpt: &Checkpoint,
    names: &BTreeSet<String>,
    layout: Layout,
    config: Option<&Value>,
) -> Result<PermutationSpec> {
    let family = layout.family;
    let shape = |n: &str| -> Result<Vec<usize>> {
        ckpt.get(n)
            .map(|t| t.shape.clone())
            .ok_or_else(|| fail(ckpt, family, format!("`{n}` is missing")))
    };
    let embed = &layout.stream_columns[0];
    let es = shape(embed)?;
    if es.len() != 2 {
        return Err(fail(ckpt, family, format!("`{embed}` is not a matrix")));
    }
    let d = es[1];
    if let Some(h) = cfg_usize(config, &["hidden_size", "n_embd", "d_model"])
        && h != d
    {
        return Err(fail(
            ckpt,
            family,
            format!("config.json says hidden_size {h} but `{embed}` has {d} columns"),
        ));
    }
    let mut notes = layout.notes.clone();
    // Head geometry from the config, checked against the tensors.
    let heads = match cfg_usize(config, &["num_attention_heads", "n_head", "num_heads"]) {
        None => {
            notes.push(
                "no config.json with num_attention_heads next to the checkpoint: head and within-head groups are left out (pass a model directory, or write them into a spec)".into(),
            );
            None
        }
        Some(h) => {
            let kv = cfg_usize(config, &["num_key_value_heads", "n_kv_heads"]).unwrap_or(h);
            let hd = cfg_usize(config, &["head_dim"]).unwrap_or(d.checked_div(h).unwrap_or(0));
            if h == 0 || kv == 0 || hd == 0 || h % kv != 0 {
                return Err(fail(
                    ckpt,
                    family,
                    format!("config.json has {h} attention heads, {kv} KV heads and head_dim {hd}"),
                ));
            }
            Some(Heads {
                n_heads: h,
                n_kv: kv,
                head_dim: hd,
            })
        }
    };
    let mut used: BTreeSet<String> = layout.untouched.iter().cloned().collect();
    let mut residual: Vec<AxisMember> = Vec::new();
    let push_res = |m: AxisMember, res: &mut Vec<AxisMember>| {
        if !res.iter().any(|x| x.tensor == m.tensor && x.axis == m.axis) {
            res.push(m);
        }
    };
    for t in &layout.stream_columns {
        push_res(AxisMember::plain(t.clone(), 1), &mut residual);
        used.insert(t.clone());
    }
    let mut layer_groups = Vec::new();
    for layer in &layout.layers {
        let li = &layer.index;
        for n in &layer.norms {
            push_res(AxisMember::plain(n.clone(), 0), &mut residual);
            used.insert(n.clone());
        }
        // Attention geometry.
        let qs = shape(&layer.q.weight)?;
        let ks = shape(&layer.k.weight)?;
        let os = shape(&layer.o.weight)?;
        for (p, s) in [(&layer.q, &qs), (&layer.k, &ks), (&layer.o, &os)] {
            if s.len() != 2 || s[p.in_axis.max(p.out_axis)] == 0 {
                return Err(fail(
                    ckpt,
                    family,
                    format!("`{}` is not a matrix", p.weight),
                ));
            }
        }
        // Width of Q's and K's output (a third of c_attn for GPT-2).
        let q_width = if layer.q.weight == layer.k.weight {
            qs[layer.q.out_axis] / 3
        } else {
            qs[layer.q.out_axis]
        };
        let k_width = if layer.q.weight == layer.k.weight {
            q_width
        } else {
            ks[layer.k.out_axis]
        };
        if qs[layer.q.in_axis] != d || os[layer.o.out_axis] != d || os[layer.o.in_axis] != q_width {
            return Err(fail(
                ckpt,
                family,
                format!("layer {li}: Q is {qs:?} and O is {os:?}, which do not fit d_model {d}"),
            ));
        }
        for p in [&layer.q, &layer.k, &layer.v] {
            push_res(member(&p.weight, p.in_axis, 0, 1, 1), &mut residual);
            used.insert(p.weight.clone());
            used.extend(p.bias.iter().cloned());
        }
        push_res(
            member(&layer.o.weight, layer.o.out_axis, 0, 1, 1),
            &mut residual,
        );
        used.insert(layer.o.weight.clone());
        if let Some(b) = &layer.o.bias {
            push_res(AxisMember::plain(b.clone(), 0), &mut residual);
            used.insert(b.clone());
        }
        if let Some(h) = heads {
            if h.n_heads * h.head_dim != q_width || h.n_kv * h.head_dim != k_width {
                return Err(fail(
                    ckpt,
                    family,
                    format!(
                        "layer {li}: config.json gives {} heads, {} KV heads of {} dims, but Q has {q_width} and K {k_width} outputs",
                        h.n_heads, h.n_kv, h.head_dim
                    ),
                ));
            }
            let g = h.n_heads / h.n_kv;
            let hd = h.head_dim;
            if h.n_kv > 1 {
                let mut m = out_members(&layer.q, g * hd, 1);
                m.extend(out_members(&layer.k, hd, 1));
                m.extend(out_members(&layer.v, hd, 1));
                m.push(member(&layer.o.weight, layer.o.in_axis, 0, g * hd, 1));
                layer_groups.push(PermGroup {
                    name: format!("layers.{li}.heads"),
                    size: h.n_kv,
                    kind: Some("heads".into()),
                    members: m,
                });
            }
            if g > 1 {
                let mut m = out_members(&layer.q, hd, h.n_kv);
                m.push(member(&layer.o.weight, layer.o.in_axis, 0, hd, h.n_kv));
                layer_groups.push(PermGroup {
                    name: format!("layers.{li}.query_heads"),
                    size: g,
                    kind: Some("heads".into()),
                    members: m,
                });
            }
            if hd > 1 {
                if !layout.rope {
                    let mut m = out_members(&layer.q, 1, h.n_heads);
                    m.extend(out_members(&layer.k, 1, h.n_kv));
                    layer_groups.push(PermGroup {
                        name: format!("layers.{li}.qk_dims"),
                        size: hd,
                        kind: Some("qk_dims".into()),
                        members: m,
                    });
                }
                let mut m = out_members(&layer.v, 1, h.n_kv);
                m.push(member(&layer.o.weight, layer.o.in_axis, 0, 1, h.n_heads));
                layer_groups.push(PermGroup {
                    name: format!("layers.{li}.vo_dims"),
                    size: hd,
                    kind: Some("vo_dims".into()),
                    members: m,
                });
            }
        }
        // FFN.
        let us = shape(&layer.up[0].weight)?;
        let ds = shape(&layer.down.weight)?;
        if us.len() != 2 || ds.len() != 2 {
            return Err(fail(
                ckpt,
                family,
                format!("layer {li}: FFN weights are not matrices"),
            ));
        }
        let f = us[layer.up[0].out_axis];
        if ds[layer.down.in_axis] != f
            || ds[layer.down.out_axis] != d
            || us[layer.up[0].in_axis] != d
        {
            return Err(fail(
                ckpt,
                family,
                format!("layer {li}: FFN up is {us:?} and down is {ds:?}, which do not fit"),
            ));
        }
        let mut m = Vec::new();
        for u in &layer.up {
            m.extend(out_members(u, 1, 1));
            push_res(member(&u.weight, u.in_axis, 0, 1, 1), &mut residual);
            used.insert(u.weight.clone());
            used.extend(u.bias.iter().cloned());
        }
        m.push(member(&layer.down.weight, layer.down.in_axis, 0, 1, 1));
        push_res(
            member(&layer.down.weight, layer.down.out_axis, 0, 1, 1),
            &mut residual,
        );
        used.insert(layer.down.weight.clone());
        if let Some(b) = &layer.down.bias {
            push_res(AxisMember::plain(b.clone(), 0), &mut residual);
            used.insert(b.clone());
        }
        layer_groups.push(PermGroup {
            name: format!("layers.{li}.ffn"),
            size: f,
            kind: Some("ffn".into()),
            members: m,
        });
    }
    for n in &layout.stream_vectors {
        push_res(AxisMember::plain(n.clone(), 0), &mut residual);
        used.insert(n.clone());
    }
    // Every float tensor must be accounted for: an unknown one might need
    // permuting, and silently leaving it would change the function.
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !used.contains(*n) && !untouched_extra(n))
        .collect();
    if !unknown.is_empty() {
        let shown: Vec<String> = unknown.iter().take(8).map(|s| format!("`{s}`")).collect();
        return Err(fail(
            ckpt,
            family,
            format!(
                "{} tensor(s) are not part of the supported layout ({}{})",
                unknown.len(),
                shown.join(", "),
                if unknown.len() > 8 { ", …" } else { "" }
            ),
        ));
    }
    if layout.rope && family == "LLaMA-family" {
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
        .map(str::to_string)
        .or_else(|| cfg_str(config, "model_type").map(str::to_string))
        .unwrap_or_else(|| family.to_string());
    let mut groups = vec![PermGroup {
        name: "residual".into(),
        size: d,
        kind: Some("residual".into()),
        members: residual,
    }];
    groups.extend(layer_groups);
    let mut spec = PermutationSpec::new(Some(arch), groups);
    spec.notes = notes;
    Ok(spec)
}
