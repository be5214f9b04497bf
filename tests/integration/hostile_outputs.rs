//! Hostile outputs (issue 10, items 2–5): `--save-perm` follows the output
//! rules, temporaries cannot be redirected by planted links, device nodes
//! and FIFOs are never replaced, and signals (`SIGXFSZ`, `SIGBUS`) end in
//! one error line with no temporary left behind.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{assert_one_error_line, fixtures, listing, polymerge, polymerge_path};

fn mlp(dir: &Path, seed: u32) -> PathBuf {
    let to = dir.join(format!("seed{seed}.safetensors"));
    fs::copy(fixtures(&format!("mlp/run_seed{seed}.safetensors")), &to).unwrap();
    to
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn temporaries(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.contains(".polymerge-"))
        .collect()
}

/// `align A B -o OUT --save-perm P` with extra flags, in `dir`.
fn align_saving(dir: &Path, perm: &Path, extra: &[&str]) -> std::process::Output {
    let (a, b) = (mlp(dir, 0), mlp(dir, 1));
    polymerge()
        .current_dir(dir)
        .args(["align", s(&a), s(&b), "-o"])
        .arg(dir.join("out.safetensors"))
        .arg("--save-perm")
        .arg(perm)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn save_perm_never_overwrites_an_input_even_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = mlp(dir.path(), 0);
    let before = fs::read(&input).unwrap();
    let out = align_saving(dir.path(), &input, &["--force"]);
    assert_one_error_line(&out, &["seed0.safetensors", "is the input"]);
    assert_eq!(fs::read(&input).unwrap(), before);
    assert!(
        !dir.path().join("out.safetensors").exists(),
        "work done before the check"
    );
}

#[test]
fn save_perm_over_an_existing_file_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let perm = dir.path().join("perm.json");
    fs::write(&perm, "my notes").unwrap();
    let out = align_saving(dir.path(), &perm, &[]);
    assert_one_error_line(&out, &["perm.json", "already exists"]);
    assert_eq!(fs::read_to_string(&perm).unwrap(), "my notes");
    assert!(!dir.path().join("out.safetensors").exists());
    let out = align_saving(dir.path(), &perm, &["--force", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::read_to_string(&perm)
            .unwrap()
            .contains("polymerge-perm/1")
    );
    assert_eq!(temporaries(dir.path()), Vec::<String>::new());
}

#[test]
fn save_perm_equal_to_the_output_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.safetensors");
    let out = align_saving(dir.path(), &out_path, &["--force"]);
    assert_one_error_line(&out, &["out.safetensors", "is also the checkpoint output"]);
    assert!(!out_path.exists());
}

#[test]
fn save_perm_in_a_missing_directory_fails_before_the_output_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = align_saving(dir.path(), &dir.path().join("nowhere/perm.json"), &[]);
    assert_one_error_line(&out, &["nowhere", "does not exist"]);
    assert!(!dir.path().join("out.safetensors").exists());
    assert_eq!(temporaries(dir.path()), Vec::<String>::new());
}

#[test]
fn a_link_planted_at_the_old_predictable_temporary_name_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (mlp(dir.path(), 0), mlp(dir.path(), 1));
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, "precious").unwrap();
    // `exec` keeps the shell's PID, which older versions put in the name.
    let status = std::process::Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(r#"ln -s victim.txt ".out.safetensors.polymerge-tmp-$$" && exec "$0" avg "$1" "$2" -o out.safetensors -q --no-basin-check"#)
        .arg(polymerge_path())
        .args([s(&a), s(&b)])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        fs::metadata(dir.path().join("out.safetensors"))
            .unwrap()
            .len()
            > 1000
    );
}

#[test]
fn a_character_device_output_is_refused_even_with_force() {
    // The device is a fresh node in a temporary directory (as /dev/null's
    // numbers, 1:3), never the system's own /dev/null: a regression must not
    // be able to replace a device the machine needs. Where mknod is not
    // permitted (not root), a link to /dev/null stands in: replacing the link
    // would leave /dev/null itself untouched.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (mlp(dir.path(), 0), mlp(dir.path(), 1));
    let node = dir.path().join("null");
    let made = std::process::Command::new("mknod")
        .args([s(&node), "c", "1", "3"])
        .status()
        .is_ok_and(|st| st.success());
    if !made {
        std::os::unix::fs::symlink("/dev/null", &node).unwrap();
    }
    let out = polymerge()
        .args(["avg", s(&a), s(&b), "-o", s(&node), "--force"])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["null", "character device"]);
    use std::os::unix::fs::FileTypeExt;
    let kind = fs::metadata(&node).unwrap().file_type();
    assert!(kind.is_char_device());
}

#[test]
fn a_fifo_output_is_refused_even_with_force_and_stays_a_fifo() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (mlp(dir.path(), 0), mlp(dir.path(), 1));
    let fifo = dir.path().join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = polymerge()
        .args(["avg", s(&a), s(&b), "-o", s(&fifo), "--force"])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["pipe", "FIFO"]);
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_file_size_limit_ends_in_one_error_line_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (mlp(dir.path(), 0), mlp(dir.path(), 1));
    // 100 blocks (51 KB in sh's 512-byte blocks) for a 1.2 MB output.
    let out = std::process::Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(r#"ulimit -f 100 && exec "$0" avg "$1" "$2" -o out.safetensors -q --no-basin-check"#)
        .arg(polymerge_path())
        .args([s(&a), s(&b)])
        .output()
        .unwrap();
    assert_one_error_line(&out, &["out.safetensors", "file too large"]);
    assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    assert!(!dir.path().join("out.safetensors").exists());
}

#[test]
fn an_input_truncated_while_read_ends_in_one_error_line_naming_the_tensor_and_no_temporary() {
    // Read with `pread`: the short read is an error naming file and tensor.
    truncate_mid_merge(
        None,
        &["big.safetensors", "tensor `", "input changed while reading"],
    );
}

#[test]
fn an_input_truncated_while_mapped_ends_in_one_error_line_and_no_temporary() {
    // Under `ulimit -n 32` no input keeps a descriptor: both are read
    // through the mapping, and the truncation raises SIGBUS.
    truncate_mid_merge(
        Some(32),
        &["big.safetensors", "input changed while reading"],
    );
}

/// Averages a 128 MiB input with itself (under `ulimit -n` when given),
/// truncates it mid-merge, and expects one error line holding `words`, no
/// temporary and no output.
fn truncate_mid_merge(descriptors: Option<u32>, words: &[&str]) {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    // 2 × 16 Mi f32 (128 MiB): long enough to average that it is caught
    // mid-read even when the machine is busy (with 2 × 4 Mi, a loaded
    // 2-core machine once let the merge finish before the stop landed).
    let big = dir.path().join("big.safetensors");
    let n = 16 << 20;
    let data: Vec<u8> = (0..n).flat_map(|i: u32| (i as f32).to_le_bytes()).collect();
    crate::common::write_safetensors(
        &big,
        &[
            ("a", safetensors::Dtype::F32, vec![n as usize], data.clone()),
            ("b", safetensors::Dtype::F32, vec![n as usize], data),
        ],
        None,
    );
    let out = dir.path().join("out.safetensors");
    let args = [
        "avg",
        s(&big),
        s(&big),
        "-o",
        s(&out),
        "-q",
        "--no-basin-check",
    ];
    let mut child = crate::common::polymerge_with_open_files(descriptors)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let maps = format!("/proc/{}/maps", child.id());
    let start = Instant::now();
    // Wait for the input to be mapped and the temporary to exist.
    loop {
        let mapped = fs::read_to_string(&maps).is_ok_and(|m| m.contains("big.safetensors"));
        if mapped && !temporaries(dir.path()).is_empty() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it was caught"
        );
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    kill("-STOP");
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(4096)
        .unwrap();
    kill("-CONT");
    let result = child.wait_with_output().unwrap();
    assert_one_error_line(&result, words);
    assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    assert!(!out.exists());
}
