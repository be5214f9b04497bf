//! Tests of the input gate, the signal registries and the descriptor
//! budget.

use std::path::Path;

use super::read::{open_regular, read_limited};
use super::signals::{live_temporaries, register_temporary, retire_temporary};
use crate::error::{Error, ReadError};

#[test]
fn retired_temporaries_are_no_longer_listed() {
    let p = Path::new("/nonexistent/polymerge-registry-test");
    register_temporary(p);
    assert!(live_temporaries().iter().any(|x| x == p));
    retire_temporary(p);
    assert!(!live_temporaries().iter().any(|x| x == p));
}

#[test]
fn a_side_file_one_byte_over_the_limit_is_refused_and_one_at_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.json");
    std::fs::write(&p, b"12345").unwrap();
    assert_eq!(read_limited(&p, 5).unwrap(), b"12345");
    match read_limited(&p, 4) {
        Err(Error::Read {
            source: ReadError::TooLarge { size: 5, limit: 4 },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fifo_and_a_directory_are_refused_without_opening_them() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for (p, kind) in [(fifo.as_path(), "a FIFO"), (dir.path(), "a directory")] {
        match open_regular(p) {
            Err(Error::Read {
                source: ReadError::NotRegular(k),
                ..
            }) => assert_eq!(k, kind),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn inputs_keep_half_the_descriptors_the_reserve_leaves() {
    use super::descriptors::budget_for;
    // (1024 − 32) / 2 = 496; (64 − 32) / 2 = 16; nothing under 32 + 2.
    assert_eq!(budget_for(1024), 496);
    assert_eq!(budget_for(64), 16);
    assert_eq!(budget_for(33), 0);
    assert_eq!(budget_for(32), 0);
    assert_eq!(budget_for(0), 0);
    assert_eq!(
        budget_for(libc::RLIM_INFINITY),
        (u64::MAX - 32) as usize / 2
    );
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one_up_to_65536_and_never_lowered() {
    use super::descriptors::raised;
    // The usual Linux limits: soft 1024, hard 524288 → 65536.
    assert_eq!(raised(1024, 524_288), Some(65_536));
    assert_eq!(raised(1024, 4096), Some(4096));
    // `ulimit -n 64` sets both: nothing to raise.
    assert_eq!(raised(64, 64), None);
    // Already above what we would ask for: left alone, never lowered.
    assert_eq!(raised(100_000, 200_000), None);
    assert_eq!(raised(65_536, libc::RLIM_INFINITY), None);
}
