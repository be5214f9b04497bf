//! Tests of shard splitting, headers, direct I/O and cleanup.

use super::WriteMode;
use super::layout::split_shards;
use super::shard::{DIRECT_BLOCK, ShardFile};
use super::*;
use crate::checkpoint::MODEL_FILE;
use safetensors::Dtype;

fn plan(name: &str, n: usize) -> TensorPlan {
    TensorPlan {
        name: name.into(),
        dtype: Dtype::F32,
        shape: vec![n],
    }
}

#[test]
fn shards_split_before_the_tensor_that_would_overflow() {
    // 40 + 40 bytes fit in 100, the third 40 does not: shards [a b] [c].
    let p = vec![plan("a", 10), plan("b", 10), plan("c", 10)];
    let s = split_shards(&p, 100);
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].first, s[0].end, s[0].data_bytes), (0, 2, 80));
    assert_eq!(s[1].file_name, "model-00002-of-00002.safetensors");
}

#[test]
fn a_tensor_larger_than_the_shard_limit_gets_a_shard_of_its_own() {
    let p = vec![plan("small", 1), plan("huge", 100), plan("tail", 1)];
    let s = split_shards(&p, 16);
    let spans: Vec<_> = s.iter().map(|s| (s.first, s.end)).collect();
    assert_eq!(spans, vec![(0, 1), (1, 2), (2, 3)]);
}

#[test]
fn a_model_that_fits_one_shard_is_plain_model_safetensors() {
    let s = split_shards(&[plan("a", 4)], DEFAULT_MAX_SHARD_BYTES);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].file_name, MODEL_FILE);
}

#[test]
fn headers_are_padded_to_eight_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let mut w = CheckpointWriter::create(
        OutputLayout::File(out.clone()),
        vec![plan("abc", 3)],
        BTreeMap::new(),
        false,
    )
    .unwrap();
    w.write(&[0u8; 12]).unwrap();
    w.finish().unwrap();
    let bytes = fs::read(&out).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    assert_eq!(bytes.len(), 8 + n + 12);
}

/// Deterministic bytes that differ at every offset modulo 251.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_large_shard_written_in_odd_pieces_reads_back_exactly_in_either_mode() {
    // 20 MiB + 4 bytes of data: above DIRECT_MIN_BYTES (direct I/O where
    // the filesystem supports it), not a multiple of the block size.
    for mode in [WriteMode::PageCache, WriteMode::Direct] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        let n = (5 << 20) + 1;
        let mut w = CheckpointWriter::create_with(
            OutputLayout::File(out.clone()),
            vec![plan("big", n)],
            BTreeMap::new(),
            false,
            mode,
        )
        .unwrap();
        let data = pattern(4 * n);
        for piece in data.chunks((1 << 20) + 7) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap();
        let bytes = fs::read(&out).unwrap();
        let h = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 8 + h + data.len(), "{mode:?}");
        assert!(bytes[8 + h..] == data[..], "data differs ({mode:?})");
    }
}

#[test]
fn a_shard_that_leaves_direct_io_midway_is_still_exact() {
    // As when the filesystem refuses a direct write: what is staged is
    // rewritten through the page cache and writing goes on there.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    let data = pattern(3 * DIRECT_BLOCK + 12345);
    let mut f = ShardFile::create(&path, data.len() as u64, WriteMode::Direct).unwrap();
    let (a, rest) = data.split_at(DIRECT_BLOCK + 999);
    let (b, c) = rest.split_at(DIRECT_BLOCK);
    f.write(a).unwrap();
    f.leave_direct().unwrap();
    f.write(b).unwrap();
    f.write(c).unwrap();
    f.finish().unwrap();
    assert!(fs::read(&path).unwrap() == data, "data differs");
}

#[test]
fn a_dropped_unfinished_writer_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    {
        let mut w = CheckpointWriter::create(
            OutputLayout::File(out.clone()),
            vec![plan("abc", 3)],
            BTreeMap::new(),
            false,
        )
        .unwrap();
        w.write(&[0u8; 4]).unwrap();
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_existing_output_is_refused_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    fs::write(&out, b"keep me").unwrap();
    let err = CheckpointWriter::create(
        OutputLayout::File(out.clone()),
        vec![plan("a", 1)],
        BTreeMap::new(),
        false,
    )
    .err()
    .unwrap();
    assert!(err.one_line().ends_with("already exists"), "{err}");
    assert!(matches!(
        err,
        Error::Output {
            source: crate::error::OutputError::Exists,
            ..
        }
    ));
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn an_interrupt_during_a_swap_waits_until_the_swap_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().join(".out.polymerge-tmp-x");
    std::fs::write(&temp, b"staged").unwrap();
    let guard = super::swapping();
    let t = temp.clone();
    let remover = std::thread::spawn(move || super::remove_listed(|| vec![t]));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(temp.exists(), "removed while the swap was in progress");
    assert!(!remover.is_finished());
    drop(guard);
    remover.join().unwrap();
    assert!(!temp.exists(), "not removed after the swap");
}

#[test]
fn two_temporaries_for_one_target_get_different_unpredictable_names() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.safetensors");
    let make = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
    };
    let prefix = super::temp::prefix_for(&target);
    let (_, a) = super::temp::create_in(dir.path(), &prefix, make).unwrap();
    let (_, b) = super::temp::create_in(dir.path(), &prefix, make).unwrap();
    assert_ne!(a, b);
    let pid = format!(".out.safetensors.polymerge-tmp-{}", std::process::id());
    for p in [&a, &b] {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".out.safetensors.polymerge-tmp-"),
            "{name}"
        );
        assert_ne!(name, pid);
        super::unregister(p);
    }
}

#[test]
fn only_model_safetensors_and_numbered_shards_count_as_polymerges_weight_names() {
    use super::swap::is_weight_name;
    assert!(is_weight_name("model.safetensors"));
    assert!(is_weight_name("model-00001-of-00003.safetensors"));
    assert!(is_weight_name("model-123456-of-123456.safetensors"));
    assert!(!is_weight_name("model-0001-of-0003.safetensors"));
    assert!(!is_weight_name("model-00001-of-00003-of-00004.safetensors"));
    assert!(!is_weight_name("adapter_model.safetensors"));
    assert!(!is_weight_name("model-0000a-of-00003.safetensors"));
    assert!(!is_weight_name("../model.safetensors"));
}
