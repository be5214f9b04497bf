//! Corrupted inputs never panic. Valid fixtures are damaged (bits flipped,
//! bytes truncated, inserted or deleted — mostly in the 8-byte length and
//! the JSON header — or the header rewritten with other dtypes and shapes),
//! then opened, inspected and averaged: every step must return `Ok` or
//! `Err`. Whatever is written must be a valid safetensors file, and a failed
//! merge must leave no file behind. The same damage through the binary must
//! exit with 0 or 1, never 101 (panic) or a signal.

use std::collections::BTreeMap;
use std::fs;

use crate::common::*;
use polymerge::average::{self, MergeInput, MergeOptions};
use polymerge::checkpoint::Checkpoint;
use polymerge::stats::tensor_stats;
use polymerge::write::{CheckpointWriter, OutputLayout};
use proptest::prelude::*;

/// Where a byte-level mutation lands.
#[derive(Clone, Copy, Debug)]
enum Region {
    /// The 8-byte little-endian header length.
    Length,
    /// The JSON header.
    Header,
    /// Anywhere in the file (mostly tensor data).
    Anywhere,
}

/// A position in a collection: a fraction of its length (random cases) or an
/// exact index (the fixed cases).
#[derive(Clone, Copy, Debug)]
enum Index {
    Fraction(u64),
    Exact(usize),
}

impl Index {
    fn index(&self, len: usize) -> usize {
        match *self {
            Index::Fraction(x) => ((len as u128 * x as u128) >> 64) as usize,
            Index::Exact(i) => i.min(len - 1),
        }
    }
}

fn index() -> impl Strategy<Value = Index> {
    any::<u64>().prop_map(Index::Fraction)
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Region, Index, u8),
    Truncate(Region, Index),
    Insert(Region, Index, Vec<u8>),
    Delete(Region, Index, usize),
    SetLength(u64),
    /// Rewrites one tensor's header entry with dtype `ALL_DTYPES[k]` (or an
    /// unknown name) and either the shape that fits its bytes (`None`) or
    /// an arbitrary one; the header is re-serialised with a correct length.
    Retype(Index, usize, Option<Vec<usize>>),
}

const ALL_DTYPES: &[&str] = &[
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
    "Q4_K",
];

fn bits_of(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "C64" | "F64" | "I64" | "U64" => 64,
        _ => return None,
    })
}

fn header_len(bytes: &[u8]) -> usize {
    bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .map(|n| (n as usize).min(bytes.len().saturating_sub(8)))
        .unwrap_or(0)
}

/// A byte range for `region` in the current bytes (never empty when the
/// file is not).
fn range(bytes: &[u8], region: Region) -> std::ops::Range<usize> {
    let r = match region {
        Region::Length => 0..8.min(bytes.len()),
        Region::Header => 8.min(bytes.len())..(8 + header_len(bytes)).min(bytes.len()),
        Region::Anywhere => 0..bytes.len(),
    };
    if r.is_empty() { 0..bytes.len() } else { r }
}

fn pick(bytes: &[u8], region: Region, i: &Index) -> usize {
    let r = range(bytes, region);
    if r.is_empty() {
        0
    } else {
        r.start + i.index(r.len())
    }
}

fn retype(bytes: &[u8], which: &Index, dtype: usize, shape: &Option<Vec<usize>>) -> Vec<u8> {
    if bytes.len() < 8 {
        return bytes.to_vec();
    }
    let n = header_len(bytes);
    let Ok(mut header) = serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n]) else {
        return bytes.to_vec();
    };
    let Some(obj) = header.as_object_mut() else {
        return bytes.to_vec();
    };
    let names: Vec<String> = obj
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    if names.is_empty() {
        return bytes.to_vec();
    }
    let entry = &mut obj[&names[which.index(names.len())]];
    let offsets = &entry["data_offsets"];
    let nbytes = offsets[1]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(offsets[0].as_u64().unwrap_or(0));
    let name = ALL_DTYPES[dtype % ALL_DTYPES.len()];
    entry["dtype"] = name.into();
    match (shape, bits_of(name)) {
        (Some(s), _) => entry["shape"] = serde_json::json!(s),
        (None, Some(bits)) if (nbytes as usize * 8).is_multiple_of(bits) => {
            entry["shape"] = serde_json::json!([nbytes as usize * 8 / bits])
        }
        _ => {}
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Flip(r, i, mask) => {
            if !bytes.is_empty() {
                let p = pick(&bytes, *r, i);
                bytes[p] ^= (*mask).max(1);
            }
        }
        Mutation::Truncate(r, i) => {
            let p = pick(&bytes, *r, i);
            bytes.truncate(p);
        }
        Mutation::Insert(r, i, ins) => {
            let p = pick(&bytes, *r, i);
            bytes.splice(p..p, ins.iter().copied());
        }
        Mutation::Delete(r, i, len) => {
            let p = pick(&bytes, *r, i);
            let end = (p + len).min(bytes.len());
            bytes.drain(p..end);
        }
        Mutation::SetLength(n) => {
            if bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
        Mutation::Retype(i, d, s) => bytes = retype(&bytes, i, *d, s),
    }
    bytes
}

fn region() -> impl Strategy<Value = Region> {
    prop_oneof![
        3 => Just(Region::Length),
        4 => Just(Region::Header),
        2 => Just(Region::Anywhere),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (region(), index(), any::<u8>()).prop_map(|(r, i, m)| Mutation::Flip(r, i, m)),
        1 => (region(), index()).prop_map(|(r, i)| Mutation::Truncate(r, i)),
        1 => (region(), index(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(r, i, b)| Mutation::Insert(r, i, b)),
        1 => (region(), index(), 1usize..9).prop_map(|(r, i, n)| Mutation::Delete(r, i, n)),
        1 => prop_oneof![any::<u64>(), 0u64..2048].prop_map(Mutation::SetLength),
        3 => (
            index(),
            0..ALL_DTYPES.len(),
            prop::option::weighted(0.3, prop::collection::vec(0usize..300, 0..3)),
        )
            .prop_map(|(i, d, s)| Mutation::Retype(i, d, s)),
    ]
}

const BASES: &[&str] = &[
    "a_f32.safetensors",
    "a_bf16.safetensors",
    "unaligned_f32.safetensors",
    "sharded_bf16/model-00002-of-00002.safetensors",
];

/// Opens, inspects and averages the damaged file with the library. Panics
/// (failing the test) only if polymerge panics or breaks its contracts.
fn exercise(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    fs::write(&path, bytes).unwrap();
    let ckpt = match Checkpoint::open(&path) {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "error names the file: {msg}"
            );
            return;
        }
    };
    for t in ckpt.tensors() {
        let _ = tensor_stats(&ckpt, t);
        let _ = ckpt.read_f32(t);
    }
    let a = Checkpoint::open(fixture("a_f32.safetensors")).unwrap();
    let pairs: [&[&Checkpoint]; 3] = [&[&ckpt], &[&ckpt, &ckpt], &[&a, &ckpt]];
    for (k, ins) in pairs.into_iter().enumerate() {
        let inputs: Vec<MergeInput> = ins.iter().map(|c| MergeInput::plain(c)).collect();
        let opts = MergeOptions::uniform(inputs.len());
        let Ok(planned) = average::plan(&inputs, &opts) else {
            continue;
        };
        let out = dir.path().join(format!("out{k}.safetensors"));
        let writer = CheckpointWriter::create(
            OutputLayout::File(out.clone()),
            planned.tensor_plans(),
            BTreeMap::new(),
            false,
        )
        .unwrap();
        match average::run(&inputs, &planned, &opts, writer, &(), None) {
            Ok(_) => {
                // What polymerge writes, the safetensors crate reads.
                let f = read_file(&out);
                assert_eq!(f.tensors.len(), planned.tensors.len());
            }
            Err(_) => assert!(!out.exists(), "a failed merge leaves no output"),
        }
    }
    let left: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|n| n.contains("polymerge-tmp"))
        .collect();
    assert!(left.is_empty(), "temporaries left behind: {left:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn damaged_files_are_opened_inspected_and_averaged_without_panicking(
        base in 0..=BASES.len(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = match BASES.get(base) {
            Some(rel) => fs::read(fixture(rel)).unwrap(),
            None => generated_base(),
        };
        for m in &mutations {
            bytes = apply(bytes, m);
        }
        exercise(&bytes);
    }
}

/// A small valid file with tensors whose byte counts are multiples of 3, so
/// that they can be retyped to the 6-bit F6 dtypes.
fn generated_base() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.safetensors");
    write_safetensors(
        &p,
        &[
            (
                "w",
                safetensors::Dtype::F32,
                vec![3],
                [1f32, -0.5, 2.0].map(f32::to_le_bytes).concat(),
            ),
            (
                "h",
                safetensors::Dtype::BF16,
                vec![3, 1],
                vec![0x80, 0x3f, 0, 0xc0, 0, 0],
            ),
            (
                "ids",
                safetensors::Dtype::I64,
                vec![3],
                [1i64, 2, 3].map(i64::to_le_bytes).concat(),
            ),
        ],
        None,
    );
    fs::read(p).unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in header")
}

/// A fixed set of damaged files, one per kind of damage, and whether the
/// damage leaves a file the reader should accept.
fn fixed_damage() -> Vec<(&'static str, Vec<u8>, bool)> {
    let a = fs::read(fixture("a_f32.safetensors")).unwrap();
    let g = generated_base();
    let n = header_len(&a);
    let retyped = |base: &[u8], d: &str, t: usize| {
        let k = ALL_DTYPES.iter().position(|x| *x == d).unwrap();
        apply(base.to_vec(), &Mutation::Retype(Index::Exact(t), k, None))
    };
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = a.clone();
        f(&mut b);
        b
    };
    vec![
        ("length lowest bit flipped", edit(&|b| b[0] ^= 1), false),
        ("length highest byte set", edit(&|b| b[7] = 0x80), false),
        (
            "length zero",
            apply(a.clone(), &Mutation::SetLength(0)),
            false,
        ),
        (
            "length u64::MAX",
            apply(a.clone(), &Mutation::SetLength(u64::MAX)),
            false,
        ),
        (
            "length one short",
            apply(a.clone(), &Mutation::SetLength(n as u64 - 1)),
            false,
        ),
        (
            "header opening brace flipped",
            edit(&|b| b[8] ^= 0x20),
            false,
        ),
        (
            "a data offset digit changed",
            edit(&|b| {
                let p = find(b, b"[0,8]") + 3;
                b[p] = b'9';
            }),
            false,
        ),
        (
            "a tensor name byte flipped",
            edit(&|b| b[8 + n / 2] ^= 0x01),
            true,
        ),
        ("cut inside the length", a[..5].to_vec(), false),
        ("cut inside the header", a[..8 + n / 3].to_vec(), false),
        ("cut right after the header", a[..8 + n].to_vec(), false),
        (
            "one byte inserted at the start of the data",
            edit(&|b| b.insert(8 + n, 0)),
            false,
        ),
        (
            "last data byte flipped",
            edit(&|b| {
                let last = b.len() - 1;
                b[last] ^= 0xff;
            }),
            true,
        ),
        ("a tensor retyped to F4", retyped(&a, "F4", 2), true),
        (
            "a tensor retyped to F6_E3M2",
            retyped(&g, "F6_E3M2", 0),
            true,
        ),
        (
            "a tensor retyped to F6_E2M3",
            retyped(&g, "F6_E2M3", 1),
            true,
        ),
        (
            "a tensor retyped to F8_E4M3",
            retyped(&a, "F8_E4M3", 4),
            true,
        ),
        ("a tensor retyped to C64", retyped(&a, "C64", 5), true),
        (
            "a tensor retyped to an unknown dtype",
            retyped(&a, "Q4_K", 1),
            false,
        ),
        (
            "an F32 tensor retyped to F6 with its old shape",
            retyped(&a, "F6_E2M3", 3),
            false,
        ),
    ]
}

#[test]
fn fixed_kinds_of_damage_never_panic_in_the_library() {
    for (what, bytes, _) in fixed_damage() {
        eprintln!("{what}");
        exercise(&bytes);
    }
}

fn assert_exit_0_or_1(out: &std::process::Output, what: &str) {
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "{what}: exit {code:?}, stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if code == Some(1) {
        let lines = stderr_lines(out);
        assert!(
            lines
                .last()
                .is_some_and(|l| l.starts_with("polymerge: error: ")),
            "{what}: {lines:#?}"
        );
    }
}

#[test]
fn damaged_files_through_the_binary_exit_with_0_or_1_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let a = fixture("a_f32.safetensors");
    for (k, (what, bytes, _)) in fixed_damage().into_iter().enumerate() {
        let c = dir.path().join(format!("c{k}.safetensors"));
        fs::write(&c, &bytes).unwrap();
        let out = dir.path().join(format!("out{k}.safetensors"));
        for inputs in [
            vec![a.as_path(), c.as_path()],
            vec![c.as_path(), c.as_path()],
        ] {
            let _ = fs::remove_file(&out);
            let o = polymerge()
                .arg("avg")
                .args(&inputs)
                .arg("-o")
                .arg(&out)
                .arg("-q")
                .output()
                .unwrap();
            assert_exit_0_or_1(&o, what);
            if o.status.code() == Some(1) {
                assert!(!out.exists(), "{what}: no output after an error");
            }
        }
        for args in [
            &["inspect", "--stats"][..],
            &["inspect", "--json", "--stats"][..],
        ] {
            let o = polymerge().args(args).arg(&c).output().unwrap();
            assert_exit_0_or_1(&o, what);
        }
    }
    let left: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|n| n.contains("polymerge-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_fixed_damage_is_what_it_claims_to_be() {
    // The fixed set is only useful if the damage is what it says: the
    // structural damage is refused by the reader, while renamed, retyped
    // (to valid sub-byte, F8 and complex dtypes) and data-only damage gives
    // a readable file that must then be merged or refused without a panic.
    for (what, bytes, opens) in fixed_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        fs::write(&p, &bytes).unwrap();
        assert_eq!(Checkpoint::open(&p).is_ok(), opens, "{what}");
        assert_eq!(
            parse_bytes(&bytes).is_ok(),
            opens,
            "{what}: safetensors crate agrees"
        );
    }
}
