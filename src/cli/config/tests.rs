//! Tests of the typed configuration: sizes, and the EMA profile group
//! (what `polymerge::ema::ProfileOptions` checked before it became clap's).

use clap::Parser;
use clap::error::ErrorKind;
use polymerge::ema::{EmaProfile, Warmup};

use super::*;
use crate::cli::args::Command;
use crate::cli::values::parse_size;

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Parses `polymerge ema a.safetensors ARGS…` and builds its profile.
fn ema_profile(args: &[&str]) -> Result<EmaProfile, clap::Error> {
    let argv = ["polymerge", "ema", "a.safetensors"]
        .into_iter()
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv)?;
    let Command::Ema(a) = cli.command else {
        panic!("not ema")
    };
    a.ema_profile()
}

#[test]
fn sizes_use_decimal_gb_and_binary_gib() {
    assert_eq!(parse_size("5GB").unwrap().0, 5_000_000_000);
    assert_eq!(parse_size("2GiB").unwrap().0, 2 * 1024 * 1024 * 1024);
    assert_eq!(parse_size("1.5MB").unwrap().0, 1_500_000);
    assert_eq!(parse_size("4096").unwrap().0, 4096);
    assert!(parse_size("5 parsecs").is_err());
}

#[test]
fn the_ema_profile_takes_exactly_one_profile_flag() {
    let EmaProfile::Decay {
        decay,
        warmup: None,
    } = ema_profile(&["--half-life", "10"]).unwrap()
    else {
        panic!()
    };
    assert!(close(decay.beta(), 0.5f64.powf(0.1), 1e-15));
    let EmaProfile::Power { gamma } = ema_profile(&["--sigma-rel", "0.1"]).unwrap() else {
        panic!()
    };
    assert!((gamma - 6.937).abs() < 1e-3);
    assert_eq!(
        ema_profile(&["--window", "3"]).unwrap(),
        EmaProfile::Window { k: 3 }
    );
    assert!(matches!(
        ema_profile(&["--tau", "0.01", "--warmup", "rational"]).unwrap(),
        EmaProfile::Decay {
            warmup: Some(Warmup::Rational),
            ..
        }
    ));

    // None, two, and a warm-up on a profile without decay: usage errors.
    let e = ema_profile(&[]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
    assert_eq!(e.exit_code(), 2);
    let e = ema_profile(&["--decay", "0.9", "--window", "2"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
    assert_eq!(e.exit_code(), 2);
    let text = e.to_string();
    assert!(
        text.contains("--decay") && text.contains("--window"),
        "{text}"
    );
    let e = ema_profile(&["--power", "3", "--warmup", "rational"]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("--warmup applies only"), "{e}");
}

#[test]
fn out_of_range_profile_values_and_bad_step_lists_are_usage_errors() {
    for args in [
        &["--decay", "1"][..],
        &["--tau", "0"],
        &["--half-life", "-3"],
        &["--power", "-1"],
        &["--sigma-rel", "0.5"],
        &["--window", "0"],
        &["--decay", "0.9", "--steps", "10,x"],
        &[
            "--decay",
            "0.9",
            "--warmup",
            "rational",
            "--warmup-power",
            "2",
        ],
        &["--decay", "0.9", "--warmup-power", "2"],
    ] {
        let e = ema_profile(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
    }
    let e = ema_profile(&["--decay", "1"]).unwrap_err().to_string();
    assert!(e.contains("decay must be in (0, 1)"), "{e}");
}
