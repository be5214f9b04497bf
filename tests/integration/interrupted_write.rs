//! Writes that fail or are interrupted part-way leave nothing behind: a file
//! size limit (`ulimit -f`, standing in for a full disk) makes the write fail
//! with an error naming the output, and SIGINT exits with 130; in both cases
//! the temporary file or staging directory is removed.

#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Writes two f32 checkpoints of `elems` elements each (split over four
/// tensors) into `dir` as `a.safetensors` and `b.safetensors`.
fn big_inputs(dir: &Path, elems: usize) {
    for (name, seed) in [("a.safetensors", 1u32), ("b.safetensors", 2u32)] {
        let quarter = elems / 4;
        let data: Vec<u8> = (0..quarter as u32)
            .flat_map(|i| ((i ^ seed) as f32 * 1e-3).to_le_bytes())
            .collect();
        let views: Vec<(String, TensorView)> = (0..4)
            .map(|k| {
                let view = TensorView::new(Dtype::F32, vec![quarter], &data).unwrap();
                (format!("layers.{k}.weight"), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(name)).unwrap();
    }
}

/// Runs `polymerge avg a b -o <out> <extra…>` in `dir` under
/// `ulimit -f <blocks>` with SIGXFSZ ignored, so that writing past the limit
/// fails with EFBIG instead of killing the process.
fn avg_under_file_size_limit(
    dir: &Path,
    blocks: u32,
    out: &str,
    extra: &[&str],
) -> std::process::Output {
    let script = format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\"");
    Command::new("sh")
        .current_dir(dir)
        .args(["-c", &script])
        .arg(polymerge_path())
        .args(["avg", "a.safetensors", "b.safetensors", "-o", out])
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("sh runs")
}

#[test]
fn a_write_that_hits_the_file_size_limit_fails_naming_the_output_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    big_inputs(dir.path(), 512 * 1024); // 2 MiB per input
    let before = listing(dir.path());
    // 1 block (512 or 1024 bytes, depending on the shell) lets the header
    // through but not the 2 MiB of data.
    let out = avg_under_file_size_limit(dir.path(), 1, "out.safetensors", &[]);
    let line = assert_one_error_line(&out, &["out.safetensors", "cannot write"]);
    assert!(line.to_lowercase().contains("file too large"), "{line}");
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn a_write_that_fails_on_the_header_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    big_inputs(dir.path(), 4 * 1024);
    let before = listing(dir.path());
    let out = avg_under_file_size_limit(dir.path(), 0, "out.safetensors", &[]);
    assert_one_error_line(&out, &["out.safetensors", "cannot write"]);
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn a_sharded_directory_write_that_fails_midway_leaves_no_staging_directory() {
    let dir = tempfile::tempdir().unwrap();
    big_inputs(dir.path(), 512 * 1024);
    let before = listing(dir.path());
    // Four 512 KiB tensors → four shards; the first one already exceeds the limit.
    let out = avg_under_file_size_limit(dir.path(), 64, "soup", &["--max-shard-size", "600KB"]);
    assert_one_error_line(&out, &["soup", "cannot write"]);
    assert_eq!(listing(dir.path()), before);
}

/// Starts `polymerge avg a b -o <out>` in `dir`, waits until its temporary
/// output appears, sends SIGINT, and returns the exit code.
fn interrupt_avg(dir: &Path, out: &str, extra: &[&str]) -> Option<i32> {
    let mut child = Command::new(polymerge_path())
        .current_dir(dir)
        .args(["avg", "a.safetensors", "b.safetensors", "-o", out, "-q"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let writing = std::fs::read_dir(dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".polymerge-tmp-")
        });
        if writing {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("polymerge finished ({status}) before its temporary output was seen");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary output appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let it write for a moment, then interrupt it.
    std::thread::sleep(Duration::from_millis(50));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    status.code()
}

#[test]
fn sigint_during_a_merge_exits_130_and_removes_the_temporary_file_and_staging_directory() {
    let dir = tempfile::tempdir().unwrap();
    // 2 × 128 MiB: several seconds of work in a debug build, still more than
    // the 50 ms the test waits in a release build.
    big_inputs(dir.path(), 32 * 1024 * 1024);
    let before = listing(dir.path());
    assert_eq!(interrupt_avg(dir.path(), "out.safetensors", &[]), Some(130));
    assert_eq!(listing(dir.path()), before, "file output");
    assert_eq!(
        interrupt_avg(dir.path(), "soup", &["--max-shard-size", "40MB"]),
        Some(130)
    );
    assert_eq!(listing(dir.path()), before, "directory output");
}
