//! Tests of the tensor stream's chunking.

use super::*;

#[test]
fn chunks_are_whole_work_items_within_the_release_budget() {
    // Two bf16 inputs: 4 bytes per element, a full chunk fits the budget.
    assert_eq!(chunk_elems(4), CHUNK_ELEMS);
    // 300 f32 inputs: 1200 bytes per element, 16 MiB / 1200 = 13981
    // elements, below one work item: one work item.
    assert_eq!(chunk_elems(1200), SUB_ELEMS);
    // 40 bytes per element: 16 MiB / 40 = 419430, rounded down to 25 work
    // items of 16 Ki.
    assert_eq!(chunk_elems(40), 25 * SUB_ELEMS);
    for in_elem in 1..2000 {
        let c = chunk_elems(in_elem);
        assert_eq!(c % SUB_ELEMS, 0, "{in_elem}");
        assert!((SUB_ELEMS..=CHUNK_ELEMS).contains(&c), "{in_elem}");
        assert!(c == SUB_ELEMS || c * in_elem <= RELEASE_BYTES, "{in_elem}");
    }
}

#[test]
fn a_tensor_streams_as_consecutive_chunks_and_an_empty_one_as_one_empty_chunk() {
    let ckpt = Checkpoint::open(format!(
        "{}/fixtures/io/a_f32.safetensors",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let t = &ckpt.tensors()[0];
    let sources = [TensorSource::plain(&ckpt, t)];
    // Pretend the tensor is long: the ranges only depend on `numel`.
    let numel = 3 * CHUNK_ELEMS + 5;
    let ranges: Vec<_> = Chunks::new(&sources[..0], numel).collect();
    assert_eq!(
        ranges,
        vec![
            0..CHUNK_ELEMS,
            CHUNK_ELEMS..2 * CHUNK_ELEMS,
            2 * CHUNK_ELEMS..3 * CHUNK_ELEMS,
            3 * CHUNK_ELEMS..numel
        ]
    );
    let ranges: Vec<_> = Chunks::new(&sources, 0).collect();
    assert_eq!(ranges, vec![0..0]);
    let ranges: Vec<_> = Chunks::new(&sources, t.numel()).collect();
    assert_eq!(ranges, vec![0..t.numel()]);
}

/// Resident KiB of the mapping of this process that holds address `at`
/// (from `/proc/self/smaps`).
#[cfg(target_os = "linux")]
fn resident_kib(at: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = (lo..hi).contains(&at);
        } else if inside && let Some(kib) = line.strip_prefix("Rss:") {
            return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
        }
    }
    panic!("no mapping holds {at:#x}");
}

#[cfg(target_os = "linux")]
#[test]
fn pages_mapped_again_behind_the_read_position_are_dropped_by_the_next_release() {
    // One 48 MiB f32 tensor: chunks of 4 MiB, released every 16 MiB. After
    // the first release, a page behind the read position is mapped again,
    // as the kernel does when a fault maps a whole large folio of the page
    // cache; streaming to the end must leave nothing of the file mapped.
    let numel = 12 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let data = vec![0u8; numel * 4];
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![numel], &data).unwrap();
    std::fs::write(&path, safetensors::serialize([("t", view)], None).unwrap()).unwrap();
    drop(data);
    let ckpt = Checkpoint::open(&path).unwrap();
    let t = &ckpt.tensors()[0];
    let bytes = ckpt.bytes(t);
    let sources = [TensorSource::plain(&ckpt, t)];
    let mut touched_behind = false;
    for range in Chunks::new(&sources, numel) {
        // Read the chunk (every page of it).
        let sum: u64 = bytes[range.start * 4..range.end * 4]
            .iter()
            .step_by(4096)
            .map(|&b| u64::from(b))
            .sum();
        std::hint::black_box(sum);
        if range.start >= 5 << 20 && !touched_behind {
            // Past the first release (16 MiB = 4 Mi elements consumed).
            std::hint::black_box(bytes[(15 << 20) + 123]);
            touched_behind = true;
        }
    }
    assert!(touched_behind);
    assert_eq!(resident_kib(bytes.as_ptr() as usize), 0);
}
