//! Transformer and ResNet alignment against the fixtures of
//! `fixtures/generate_transformers.py` (tiny models built by transformers and
//! torchvision, permuted in every group and verified in PyTorch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polymerge::checkpoint::Checkpoint;
use polymerge::spec::{PermFile, PermutationSpec, infer::infer};

use crate::common::{fixtures, polymerge};

const FAMILIES: &[&str] = &[
    "bert",
    "gpt2",
    "llama",
    "qwen2",
    "resnet_basic",
    "resnet_bottleneck",
    "vit_user_spec",
];

/// The fixtures of one family.
fn fixture(family: &str) -> PathBuf {
    fixtures("transformers").join(family)
}

fn spec_of(family: &str) -> PermutationSpec {
    infer(&Checkpoint::open(fixture(family).join("a")).expect("open")).expect("infer")
}

/// (name, size, kind) of every group.
fn groups(spec: &PermutationSpec) -> Vec<(String, usize, String)> {
    spec.groups
        .iter()
        .map(|g| (g.name.clone(), g.size, g.kind.clone().unwrap_or_default()))
        .collect()
}

fn count_kind(spec: &PermutationSpec, kind: &str) -> usize {
    spec.groups
        .iter()
        .filter(|g| g.kind.as_deref() == Some(kind))
        .count()
}

fn find<'a>(spec: &'a PermutationSpec, name: &str) -> &'a polymerge::spec::PermGroup {
    spec.groups
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no group {name}"))
}

/// Runs `align` on a fixture variant; returns (output path, saved perms).
fn align(
    family: &str,
    variant: &str,
    extra: &[&str],
    dir: &Path,
) -> (PathBuf, BTreeMap<String, Vec<usize>>) {
    let out = dir.join(format!("{family}_{variant}.safetensors"));
    let perm = dir.join(format!("{family}_{variant}.perm.json"));
    let f = fixture(family);
    let mut cmd = polymerge();
    cmd.arg("align")
        .arg(f.join("a"))
        .arg(f.join(variant))
        .arg("-o")
        .arg(&out)
        .arg("--save-perm")
        .arg(&perm)
        .arg("--quiet");
    if family == "vit_user_spec" {
        cmd.arg("--spec").arg(f.join("spec.json"));
    }
    cmd.args(extra).assert().success();
    (out, PermFile::load(&perm).expect("perm file").groups)
}

fn truth(family: &str) -> BTreeMap<String, Vec<usize>> {
    PermFile::load(&fixture(family).join("perm.json"))
        .expect("fixture perm")
        .groups
}

/// Tensors whose raw bytes differ between two checkpoints (names must match).
fn differing_tensors(a: &Path, b: &Path) -> Vec<String> {
    let a = Checkpoint::open(a).expect("open a");
    let b = Checkpoint::open(b).expect("open b");
    let mut names_a: Vec<&str> = a.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut names_b: Vec<&str> = b.tensors().iter().map(|t| t.name.as_str()).collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "tensor names differ");
    a.tensors()
        .iter()
        .filter(|t| {
            let u = b.get(&t.name).expect("present");
            t.dtype != u.dtype || t.shape != u.shape || a.bytes(t) != b.bytes(u)
        })
        .map(|t| t.name.clone())
        .collect()
}

#[test]
fn bert_spec_has_residual_heads_qk_and_vo_dims_and_ffn_per_layer() {
    let s = spec_of("bert");
    assert_eq!(s.architecture.as_deref(), Some("BertModel"));
    let g = groups(&s);
    assert_eq!(g[0], ("residual".into(), 32, "residual".into()));
    for l in 0..2 {
        for (name, size, kind) in [
            ("heads", 4, "heads"),
            ("qk_dims", 8, "qk_dims"),
            ("vo_dims", 8, "vo_dims"),
            ("ffn", 64, "ffn"),
        ] {
            assert!(
                g.contains(&(format!("layers.{l}.{name}"), size, kind.into())),
                "{g:?}"
            );
        }
    }
    assert_eq!(g.len(), 9);
    // Embeddings (3), embedding LayerNorm (2), pooler input (1) and per
    // layer: Q/K/V inputs (3), O output + bias (2), 2 LayerNorms (4), FFN
    // up input (1), down output + bias (2) = 12.
    assert_eq!(find(&s, "residual").members.len(), 6 + 2 * 12);
    // Heads move Q, K, V rows and biases in blocks of head_dim, O columns.
    let heads = find(&s, "layers.0.heads");
    assert_eq!(heads.members.len(), 7);
    assert!(heads.members.iter().all(|m| m.block == 8));
}

#[test]
fn gpt2_spec_acts_on_blocks_inside_the_fused_c_attn_axis() {
    let s = spec_of("gpt2");
    let heads = find(&s, "layers.0.heads");
    let starts: Vec<(usize, usize)> = heads
        .members
        .iter()
        .filter(|m| m.tensor.ends_with("c_attn.weight"))
        .map(|m| (m.axis, m.start))
        .collect();
    // Conv1D stores [in, out]: the fused Q|K|V outputs are axis 1.
    assert_eq!(starts, vec![(1, 0), (1, 32), (1, 64)]);
    let qk = find(&s, "layers.0.qk_dims");
    assert!(qk.members.iter().all(|m| m.repeat == 4 && m.start < 64));
    let vo = find(&s, "layers.0.vo_dims");
    assert!(
        vo.members
            .iter()
            .any(|m| m.tensor.ends_with("c_attn.weight") && m.start == 64)
    );
    assert!(
        vo.members
            .iter()
            .any(|m| m.tensor.ends_with("attn.c_proj.weight") && m.axis == 0)
    );
    assert_eq!(find(&s, "layers.1.ffn").size, 128);
    // Tied LM head: only wte is stored, and it is in the residual group.
    let res = find(&s, "residual");
    assert!(
        res.members
            .iter()
            .any(|m| m.tensor == "transformer.wte.weight" && m.axis == 1)
    );
    assert!(!res.members.iter().any(|m| m.tensor == "lm_head.weight"));
}

#[test]
fn llama_spec_moves_query_heads_with_their_kv_head_and_never_permutes_qk_dims() {
    let s = spec_of("llama");
    let g = groups(&s);
    assert_eq!(count_kind(&s, "qk_dims"), 0, "RoPE: no Q/K dimension group");
    assert!(g.contains(&("layers.0.heads".into(), 2, "heads".into())));
    assert!(g.contains(&("layers.0.query_heads".into(), 2, "heads".into())));
    assert!(g.contains(&("layers.0.vo_dims".into(), 8, "vo_dims".into())));
    assert!(g.contains(&("layers.1.ffn".into(), 48, "ffn".into())));
    let heads = find(&s, "layers.0.heads");
    let block = |suffix: &str| {
        heads
            .members
            .iter()
            .find(|m| m.tensor.ends_with(suffix))
            .map(|m| m.block)
    };
    // 4 query heads over 2 KV heads: a KV head carries 2 query heads.
    assert_eq!(block("q_proj.weight"), Some(16));
    assert_eq!(block("k_proj.weight"), Some(8));
    assert_eq!(block("o_proj.weight"), Some(16));
    assert!(s.notes.iter().any(|n| n.contains("rotary")));
    // Gate and up share the FFN permutation.
    let ffn = find(&s, "layers.0.ffn");
    assert!(
        ffn.members
            .iter()
            .any(|m| m.tensor.ends_with("gate_proj.weight"))
    );
    assert!(
        ffn.members
            .iter()
            .any(|m| m.tensor.ends_with("up_proj.weight"))
    );
    // Untied LM head reads the stream.
    assert!(
        find(&s, "residual")
            .members
            .iter()
            .any(|m| m.tensor == "lm_head.weight" && m.axis == 1)
    );
}

#[test]
fn qwen2_spec_moves_qkv_biases_with_heads_and_keeps_tied_embeddings_consistent() {
    let s = spec_of("qwen2");
    let heads = find(&s, "layers.0.heads");
    for b in ["q_proj.bias", "k_proj.bias", "v_proj.bias"] {
        assert!(heads.members.iter().any(|m| m.tensor.ends_with(b)), "{b}");
    }
    assert_eq!(find(&s, "layers.0.query_heads").size, 4);
    assert_eq!(find(&s, "layers.0.vo_dims").size, 4);
    let res = find(&s, "residual");
    assert!(
        res.members
            .iter()
            .any(|m| m.tensor == "model.embed_tokens.weight" && m.axis == 1)
    );
}

#[test]
fn resnet_specs_share_stage_channels_with_the_downsample_shortcut() {
    let s = spec_of("resnet_basic");
    assert_eq!(s.architecture.as_deref(), Some("resnet-basic"));
    assert_eq!(count_kind(&s, "residual"), 4);
    assert_eq!(
        count_kind(&s, "channels"),
        8,
        "one inner group per BasicBlock"
    );
    let l2 = find(&s, "residual.layer2");
    assert_eq!(l2.size, 8);
    let has = |g: &polymerge::spec::PermGroup, t: &str, axis: usize| {
        g.members.iter().any(|m| m.tensor == t && m.axis == axis)
    };
    assert!(has(l2, "layer2.0.downsample.0.weight", 0));
    assert!(has(l2, "layer2.0.downsample.1.running_var", 0));
    // Running statistics are buffers (permuted, not matched on); the
    // weights of the same norm are not.
    for m in s.groups.iter().flat_map(|g| &g.members) {
        let stat = m.tensor.ends_with("running_mean") || m.tensor.ends_with("running_var");
        assert_eq!(m.buffer, stat, "{}", m.tensor);
    }
    assert!(has(l2, "layer2.1.conv2.weight", 0));
    assert!(has(l2, "layer3.0.conv1.weight", 1));
    assert!(has(l2, "layer3.0.downsample.0.weight", 1));
    assert!(has(find(&s, "residual.layer4"), "fc.weight", 1));
    // The stem's channels run through layer1 (no downsample in layer1).
    assert!(has(
        find(&s, "residual.stem"),
        "layer1.1.bn2.running_mean",
        0
    ));

    let s = spec_of("resnet_bottleneck");
    assert_eq!(s.architecture.as_deref(), Some("resnet-bottleneck"));
    assert_eq!(count_kind(&s, "residual"), 5, "layer1 widens to 4× too");
    assert_eq!(
        count_kind(&s, "channels"),
        12,
        "two inner groups per Bottleneck"
    );
    assert_eq!(find(&s, "layer1.0.conv2").size, 4);
    assert_eq!(find(&s, "residual.layer1").size, 16);
}

#[test]
fn without_config_json_head_groups_are_left_out_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gpt2.safetensors");
    std::fs::copy(fixture("gpt2").join("a/model.safetensors"), &file).unwrap();
    let s = infer(&Checkpoint::open(&file).unwrap()).unwrap();
    let kinds: Vec<String> = s.groups.iter().filter_map(|g| g.kind.clone()).collect();
    assert!(
        kinds.iter().all(|k| k == "residual" || k == "ffn"),
        "{kinds:?}"
    );
    assert_eq!(s.groups.len(), 3);
    assert!(s.notes.iter().any(|n| n.contains("config.json")));
}

#[test]
fn spec_command_prints_a_json_spec_for_every_family() {
    for family in FAMILIES.iter().filter(|f| **f != "vit_user_spec") {
        let out = polymerge()
            .arg("spec")
            .arg(fixture(family).join("a"))
            .assert()
            .success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        let spec: PermutationSpec = serde_json::from_str(&text).expect("spec JSON");
        assert!(spec.groups.len() >= 5, "{family}");
    }
}

#[test]
fn align_recovers_every_permuted_copy_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let (out, perms) = align(family, "permuted", &[], dir.path());
        let diff = differing_tensors(&fixture(family).join("a"), &out);
        assert!(
            diff.is_empty(),
            "{family}: {diff:?} differ from the original"
        );
        let truth = truth(family);
        assert_eq!(perms, truth, "{family}: permutations");
    }
}

#[test]
fn align_puts_at_least_99_percent_of_units_back_from_noisy_copies() {
    let dir = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let (_, perms) = align(family, "noisy", &[], dir.path());
        let truth = truth(family);
        assert_eq!(perms.len(), truth.len(), "{family}: group count");
        for (name, want) in &truth {
            let got = &perms[name];
            let right = got.iter().zip(want).filter(|(a, b)| a == b).count();
            let frac = right as f64 / want.len() as f64;
            assert!(
                frac >= 0.99,
                "{family} {name}: {right}/{} units",
                want.len()
            );
        }
    }
}

#[test]
fn permuting_the_original_with_the_fixture_perm_file_gives_the_permuted_copy_back() {
    // perm.json undoes the fixture's permutation: applying its inverse to A is
    // the permuted copy; applying it to the permuted copy is A.
    let dir = tempfile::tempdir().unwrap();
    for family in ["bert", "llama", "resnet_bottleneck"] {
        let out = dir.path().join(format!("{family}.safetensors"));
        polymerge()
            .arg("permute")
            .arg(fixture(family).join("permuted"))
            .arg("--perm")
            .arg(fixture(family).join("perm.json"))
            .arg("-o")
            .arg(&out)
            .arg("--quiet")
            .assert()
            .success();
        let diff = differing_tensors(&fixture(family).join("a"), &out);
        assert!(diff.is_empty(), "{family}: {diff:?}");
    }
}

#[test]
fn groups_flag_keeps_only_the_selected_kinds() {
    let out = polymerge()
        .args(["spec", "--groups", "ffn,heads,residual"])
        .arg(fixture("bert").join("a"))
        .assert()
        .success();
    let spec: PermutationSpec = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let mut kinds: Vec<String> = spec.groups.iter().filter_map(|g| g.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, vec!["ffn", "heads", "residual"]);
    assert_eq!(spec.groups.len(), 5);
    // A single group by name.
    let out = polymerge()
        .args(["spec", "--groups", "layers.1.vo_dims"])
        .arg(fixture("llama").join("a"))
        .assert()
        .success();
    let spec: PermutationSpec = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        groups(&spec),
        vec![("layers.1.vo_dims".into(), 8, "vo_dims".into())]
    );
}

#[test]
fn align_with_a_group_subset_recovers_a_copy_permuted_only_in_those_groups() {
    let dir = tempfile::tempdir().unwrap();
    // Keep only the FFN and head permutations of the fixture's perm file, and
    // apply them to A (perm files are inverses, so this permutes A).
    let mut file = PermFile::load(&fixture("llama").join("perm.json")).unwrap();
    file.groups
        .retain(|name, _| name.ends_with(".ffn") || name.ends_with("heads"));
    assert_eq!(file.groups.len(), 6);
    let perm = dir.path().join("subset.json");
    std::fs::write(&perm, serde_json::to_string(&file).unwrap()).unwrap();
    let b = dir.path().join("b.safetensors");
    // A copy of A's directory so that config.json is found next to it.
    let b_dir = dir.path().join("b");
    polymerge()
        .arg("permute")
        .arg(fixture("llama").join("a"))
        .arg("--perm")
        .arg(&perm)
        .arg("-o")
        .arg(&b)
        .arg("--quiet")
        .assert()
        .success();
    std::fs::create_dir(&b_dir).unwrap();
    std::fs::rename(&b, b_dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        fixture("llama").join("a/config.json"),
        b_dir.join("config.json"),
    )
    .unwrap();
    assert!(!differing_tensors(&fixture("llama").join("a"), &b_dir).is_empty());
    let out = dir.path().join("aligned.safetensors");
    let saved = dir.path().join("aligned.perm.json");
    polymerge()
        .arg("align")
        .arg(fixture("llama").join("a"))
        .arg(&b_dir)
        .args(["--groups", "ffn,heads", "-o"])
        .arg(&out)
        .arg("--save-perm")
        .arg(&saved)
        .arg("--quiet")
        .assert()
        .success();
    let got = PermFile::load(&saved).unwrap();
    assert_eq!(got.groups.len(), 6, "only ffn and heads groups are aligned");
    let diff = differing_tensors(&fixture("llama").join("a"), &out);
    assert!(diff.is_empty(), "{diff:?}");
}

#[test]
fn an_unknown_architecture_gets_a_message_pointing_to_spec() {
    let out = polymerge()
        .arg("spec")
        .arg(fixture("vit_user_spec").join("a"))
        .assert()
        .failure();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("unknown architecture"), "{err}");
    assert!(err.contains("TinyViT"), "{err}");
    assert!(err.contains("--spec"), "{err}");
    // And align without --spec fails the same way.
    let dir = tempfile::tempdir().unwrap();
    let out = polymerge()
        .arg("align")
        .arg(fixture("vit_user_spec").join("a"))
        .arg(fixture("vit_user_spec").join("permuted"))
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .assert()
        .failure();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("--spec"), "{err}");
}

#[test]
fn the_readme_user_spec_example_loads_and_covers_every_vit_symmetry() {
    let spec = PermutationSpec::load(&fixture("vit_user_spec").join("spec.json")).unwrap();
    let ckpt = Checkpoint::open(fixture("vit_user_spec").join("a")).unwrap();
    spec.validate(&ckpt).unwrap();
    let mut kinds: Vec<String> = spec.groups.iter().filter_map(|g| g.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        vec!["ffn", "heads", "qk_dims", "residual", "vo_dims"]
    );
    // The residual group includes the non-Linear parameters (cls token and
    // position embedding, axis 2).
    let res = find(&spec, "residual");
    assert!(
        res.members
            .iter()
            .any(|m| m.tensor == "cls_token" && m.axis == 2)
    );
    assert!(
        res.members
            .iter()
            .any(|m| m.tensor == "pos_embed" && m.axis == 2)
    );
}

/// Copies a model directory, adding `lm_head.weight` as a stored copy of
/// the token embedding (a tied head saved explicitly).
fn with_stored_tied_head(src: &Path, dst: &Path) {
    let c = Checkpoint::open(src).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = c
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                c.bytes(t).to_vec(),
            )
        })
        .collect();
    let embed = owned
        .iter()
        .find(|t| t.0 == "model.embed_tokens.weight")
        .cloned()
        .unwrap();
    owned.push(("lm_head.weight".into(), embed.1, embed.2, embed.3));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(dst).unwrap();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
}

#[test]
fn a_tied_head_stored_next_to_the_embedding_gets_the_same_permutation() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    with_stored_tied_head(&fixture("qwen2").join("a"), &a);
    with_stored_tied_head(&fixture("qwen2").join("permuted"), &b);
    let spec = infer(&Checkpoint::open(&a).unwrap()).unwrap();
    let res = find(&spec, "residual");
    for t in ["model.embed_tokens.weight", "lm_head.weight"] {
        assert!(
            res.members.iter().any(|m| m.tensor == t && m.axis == 1),
            "{t}"
        );
    }
    let out = dir.path().join("aligned.safetensors");
    polymerge()
        .arg("align")
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&out)
        .arg("--quiet")
        .assert()
        .success();
    assert!(differing_tensors(&a, &out).is_empty());
    let o = Checkpoint::open(&out).unwrap();
    let head = o.get("lm_head.weight").unwrap();
    let embed = o.get("model.embed_tokens.weight").unwrap();
    assert_eq!(o.bytes(head), o.bytes(embed), "still tied after alignment");
}

#[test]
fn a_user_spec_with_independent_per_head_groups_recovers_a_per_head_permuted_copy() {
    // Per-head groups listed before `heads` act on the stored model's heads;
    // they do not commute with `heads`, and weight matching relabels their
    // units through it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("aligned.safetensors");
    let perm = dir.path().join("perm.json");
    let f = fixture("llama");
    polymerge()
        .arg("align")
        .arg(f.join("a"))
        .arg(f.join("permuted_per_head"))
        .arg("--spec")
        .arg(f.join("per_head_spec.json"))
        .arg("-o")
        .arg(&out)
        .arg("--save-perm")
        .arg(&perm)
        .arg("--quiet")
        .assert()
        .success();
    let diff = differing_tensors(&f.join("a"), &out);
    assert!(diff.is_empty(), "{diff:?}");
    let want = PermFile::load(&f.join("perm_per_head.json"))
        .unwrap()
        .groups;
    let got = PermFile::load(&perm).unwrap().groups;
    assert_eq!(got, want);
    // The per-head permutations really differ between heads.
    assert_ne!(want["layers.0.vo_dims.0"], want["layers.0.vo_dims.1"]);
}
