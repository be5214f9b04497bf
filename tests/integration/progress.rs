//! Progress is drawn only on a terminal: with stderr captured (not a TTY)
//! the long phases (weight matching, basin pass, merge) leave no spinner or
//! bar behind, only the summary lines (issue 13, item 6; the events
//! themselves are tested in the library with a recording observer).

use crate::common::*;

#[test]
fn an_aligned_average_writes_no_progress_drawing_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = polymerge()
        .current_dir(dir.path())
        .args([
            "avg",
            &fx("cnn/cnn.safetensors"),
            &fx("cnn/cnn_permuted.safetensors"),
            "--align",
            "-o",
            "m.safetensors",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
    // The alignment table and the summary are still there.
    assert!(err.contains("aligned input 2 to input 1:"), "{err}");
    // (A BatchNorm note may follow the summary: this CNN holds BN statistics.)
    assert!(
        err.lines().any(|l| l.starts_with("averaged 2 input(s)")),
        "{err}"
    );
}
