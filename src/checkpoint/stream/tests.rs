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
