//! Tests of the tensor stream: chunking, reads with `pread`, releases of
//! mapped pages.

use super::*;

/// The ranges of every chunk of `numel` elements of `sources`.
fn ranges(sources: &[TensorSource], numel: usize) -> Vec<Range<usize>> {
    let mut chunks = Chunks::new(sources, numel);
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next_chunk().unwrap() {
        out.push(chunk.range());
    }
    out
}

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
    let ranges = ranges(&sources[..0], numel);
    assert_eq!(
        ranges,
        vec![
            0..CHUNK_ELEMS,
            CHUNK_ELEMS..2 * CHUNK_ELEMS,
            2 * CHUNK_ELEMS..3 * CHUNK_ELEMS,
            3 * CHUNK_ELEMS..numel
        ]
    );
    assert_eq!(self::ranges(&sources, 0), vec![0..0]);
    assert_eq!(self::ranges(&sources, t.numel()), vec![0..t.numel()]);
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

/// A checkpoint of one f32 tensor `t` of `numel` elements, element `i`
/// holding `i` (as f32, [`bytes_of`]), in `dir`.
fn counting_checkpoint(dir: &std::path::Path, numel: usize) -> std::path::PathBuf {
    let path = dir.join("t.safetensors");
    let data = bytes_of(0..numel);
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![numel], &data).unwrap();
    std::fs::write(&path, safetensors::serialize([("t", view)], None).unwrap()).unwrap();
    path
}

#[cfg(target_os = "linux")]
#[test]
fn a_source_read_with_pread_has_the_files_bytes_and_maps_no_page_of_it() {
    // One 48 MiB f32 tensor in chunks of 4 MiB: every chunk must hold the
    // file's elements, read while nothing of the file is mapped. Read
    // through the mapping instead, the same check fails (the chunk's pages
    // are mapped until the next release).
    let numel = 12 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = counting_checkpoint(dir.path(), numel);
    for pread in [true, false] {
        let mut ckpt = Checkpoint::open(&path).unwrap();
        if !pread {
            ckpt.close_readers();
        }
        let t = &ckpt.tensors()[0];
        let at = ckpt.bytes(t).as_ptr() as usize;
        let sources = [TensorSource::plain(&ckpt, t)];
        let mut chunks = Chunks::new(&sources, numel);
        let (mut seen, mut mapped_max) = (0, 0);
        let mut scratch = Vec::new();
        while let Some(chunk) = chunks.next_chunk().unwrap() {
            let r = chunk.range();
            let bytes = chunk.fetch(0, r.clone(), &mut scratch);
            for (k, e) in bytes.chunks_exact(4).enumerate().step_by(997) {
                let want = ((r.start + k) as f32).to_le_bytes();
                assert_eq!(e, want, "element {} (pread: {pread})", r.start + k);
            }
            // The whole chunk copied out (what a copied tensor takes).
            let mut copied = vec![0u8; bytes.len()];
            chunk.copy_into(0, &mut copied);
            assert!(copied == bytes, "copy of chunk {r:?} (pread: {pread})");
            // A sub-range of the chunk: the work items' view.
            let sub = r.start + 5..r.start + 9;
            let got = chunk.fetch(0, sub.clone(), &mut scratch);
            assert_eq!(got, &bytes_of(sub)[..]);
            mapped_max = mapped_max.max(resident_kib(at));
            seen += r.len();
        }
        assert_eq!(seen, numel);
        if pread {
            assert_eq!(mapped_max, 0, "pread mapped pages of the file");
        } else {
            assert!(mapped_max >= 4096, "only {mapped_max} KiB mapped");
        }
    }
}

/// The bytes of elements `r` of [`counting_checkpoint`]'s tensor.
fn bytes_of(r: Range<usize>) -> Vec<u8> {
    r.flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn a_file_that_shrank_since_it_was_opened_fails_the_read_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = counting_checkpoint(dir.path(), 1 << 20);
    let ckpt = Checkpoint::open(&path).unwrap();
    let t = &ckpt.tensors()[0];
    assert!(
        ckpt.can_read(t),
        "descriptor budget exhausted in a unit test"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let sources = [TensorSource::plain(&ckpt, t)];
    let mut chunks = Chunks::new(&sources, 1 << 20);
    let chunk = chunks.next_chunk().unwrap().expect("one chunk");
    let mut scratch = vec![7u8; 3];
    let bytes = chunk.fetch(0, 0..1024, &mut scratch);
    assert_eq!(bytes, &[0u8; 4096][..], "a failed read gives zeros");
    let err = chunks
        .next_chunk()
        .err()
        .expect("the failed read is reported");
    let line = err.one_line();
    assert!(line.contains("t.safetensors"), "{line}");
    assert!(line.contains("tensor `t`"), "{line}");
    assert!(line.contains("input changed while reading"), "{line}");
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
    let mut ckpt = Checkpoint::open(&path).unwrap();
    // Read through the mapping (as beyond the descriptor budget).
    ckpt.close_readers();
    let t = &ckpt.tensors()[0];
    let bytes = ckpt.bytes(t);
    let sources = [TensorSource::plain(&ckpt, t)];
    let mut touched_behind = false;
    let mut chunks = Chunks::new(&sources, numel);
    while let Some(chunk) = chunks.next_chunk().unwrap() {
        let range = chunk.range();
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
