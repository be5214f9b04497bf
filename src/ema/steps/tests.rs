//! Tests of step discovery from names, metadata and `--steps`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::*;
use crate::error::{Error, StepError};

// --- step discovery -----------------------------------------------------

fn name(p: &str) -> Option<u64> {
    step_from_name(Path::new(p)).unwrap()
}

#[test]
fn steps_are_read_from_every_common_file_naming_pattern() {
    assert_eq!(name("runs/a/step-1000.safetensors"), Some(1000));
    assert_eq!(name("checkpoint-1000.safetensors"), Some(1000));
    assert_eq!(name("global_step1000.safetensors"), Some(1000));
    assert_eq!(name("epoch_012.safetensors"), Some(12));
    assert_eq!(name("step_500.safetensors"), Some(500));
    assert_eq!(name("model-step=1000.safetensors"), Some(1000));
    assert_eq!(name("Model_STEP_77.safetensors"), Some(77));
    assert_eq!(name("ckpt-3000.safetensors"), Some(3000));
    assert_eq!(name("iter_250.safetensors"), Some(250));
    assert_eq!(name("ema_steps_64.safetensors"), Some(64));
    assert_eq!(name("001000.safetensors"), Some(1000));
    assert_eq!(name("model_v2.safetensors"), None);
    assert_eq!(name("model.safetensors"), None);
    assert_eq!(name("modèle_é-step-42.safetensors"), Some(42));
    assert_eq!(name("étape/模型.safetensors"), None);
}

#[test]
fn lightning_style_epoch_and_step_names_take_the_step() {
    assert_eq!(name("epoch=3-step=1000.safetensors"), Some(1000));
    assert_eq!(name("run7-step-400.safetensors"), Some(400));
}

#[test]
fn a_step_in_a_parent_directory_counts_when_the_file_name_has_none() {
    assert_eq!(name("out/checkpoint-1000/model.safetensors"), Some(1000));
    assert_eq!(
        name("out/checkpoint-1000/model-00001-of-00002.safetensors"),
        Some(1000)
    );
    assert_eq!(
        name("out/checkpoint-1000/unet/diffusion_pytorch_model.safetensors"),
        Some(1000)
    );
    assert_eq!(name("step-9/a/b/c/model.safetensors"), None, "too far up");
    assert_eq!(
        name("out/checkpoint-1000/step-5.safetensors"),
        Some(5),
        "nearest wins"
    );
}

#[test]
fn words_that_merely_contain_a_keyword_or_numbers_with_units_are_not_steps() {
    assert_eq!(name("timestep1000.safetensors"), None);
    assert_eq!(name("step10k.safetensors"), None);
    assert_eq!(name("epoch_1.5.safetensors"), None);
    assert_eq!(name("step-size-3.safetensors"), None);
}

#[test]
fn a_name_with_two_different_step_numbers_is_ambiguous() {
    let e = step_from_name(Path::new("x/step-1000-step-2000.safetensors")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "x/step-1000-step-2000.safetensors: ambiguous step in the name `step-1000-step-2000.safetensors`: could be 1000 or 2000"
    );
    // The binary adds " (pass --steps)" to this kind of error.
    assert!(matches!(e, Error::Steps(StepError::AmbiguousName { .. })));
    assert!(step_from_name(Path::new("ckpt3_step1000.safetensors")).is_err());
    assert!(step_from_name(Path::new("epoch_1_epoch_2.safetensors")).is_err());
    // The same number twice is fine.
    assert_eq!(name("checkpoint-1000/step-1000.safetensors"), Some(1000));
    assert_eq!(name("global_step1000.safetensors"), Some(1000));
}

#[test]
fn a_step_metadata_key_works_in_a_hashmap_or_a_btreemap() {
    let p = Path::new("model_a.safetensors");
    let h: HashMap<String, String> = [("step".to_string(), "1500".to_string())].into();
    let info = discover_step(0, p, &h).unwrap();
    assert_eq!((info.step, info.source), (1500, StepSource::Metadata));
    let b: BTreeMap<String, String> = [("global_step".to_string(), " 20.0 ".to_string())].into();
    assert_eq!(step_from_metadata(p, &b).unwrap(), Some(20));
    assert_eq!(step_from_metadata(p, &Some(h)).unwrap(), Some(1500));
    assert_eq!(
        step_from_metadata(p, &None::<BTreeMap<String, String>>).unwrap(),
        None
    );
    let bad: BTreeMap<String, String> = [("step".to_string(), "soon".to_string())].into();
    assert_eq!(
        step_from_metadata(p, &bad).unwrap_err().to_string(),
        "model_a.safetensors: metadata `step` = `soon` is not a whole number of steps"
    );
}

#[test]
fn name_and_metadata_must_agree_when_both_are_present() {
    let m: BTreeMap<String, String> = [("step".to_string(), "1000".to_string())].into();
    let ok = discover_step(3, Path::new("step-1000.safetensors"), &m).unwrap();
    assert_eq!(
        (ok.index, ok.step, ok.source),
        (3, 1000, StepSource::NameAndMetadata)
    );
    let e = discover_step(0, Path::new("step-999.safetensors"), &m).unwrap_err();
    assert_eq!(
        e.to_string(),
        "step-999.safetensors: the name says step 999 but metadata `step` says 1000"
    );
    assert!(matches!(e, Error::Steps(StepError::NameAndMetadata { .. })));
}

#[test]
fn a_missing_step_is_an_error_that_suggests_steps() {
    let e = discover_step(0, Path::new("a/model.safetensors"), &()).unwrap_err();
    assert!(
        e.to_string().starts_with("a/model.safetensors: no step"),
        "{e}"
    );
    // The binary suggests naming the file or passing --steps for this one.
    assert!(matches!(e, Error::Steps(StepError::Missing { .. })));
}

#[test]
fn inputs_are_ordered_by_step_and_duplicates_are_an_error() {
    let paths = [
        "c/step-300.safetensors",
        "a/step-100.safetensors",
        "b/step-20.safetensors",
    ];
    let got = resolve_steps(&paths, None, |_| Ok(())).unwrap();
    let order: Vec<(usize, u64)> = got.iter().map(|i| (i.index, i.step)).collect();
    assert_eq!(order, vec![(2, 20), (1, 100), (0, 300)]);

    let paths = ["x/step-100.safetensors", "y/checkpoint-100.safetensors"];
    let e = resolve_steps(&paths, None, |_| Ok(())).unwrap_err();
    assert_eq!(
        e.to_string(),
        "x/step-100.safetensors and y/checkpoint-100.safetensors both have step 100"
    );
    assert!(matches!(
        e,
        Error::Steps(StepError::Duplicate {
            explicit: false,
            ..
        })
    ));
}

#[test]
fn explicit_steps_override_names_and_must_match_the_input_count() {
    let paths = ["step-1.safetensors", "model.safetensors"];
    let got = resolve_steps(&paths, Some(&[500, 200]), |_| -> Result<()> {
        panic!("metadata is not read with --steps")
    })
    .unwrap();
    assert_eq!(got[0].path, Path::new("model.safetensors"));
    assert_eq!((got[0].step, got[0].source), (200, StepSource::Explicit));
    let e = resolve_steps(&paths, Some(&[1]), |_| Ok(())).unwrap_err();
    assert_eq!(e.to_string(), "1 explicit steps for 2 checkpoints");
    let e = resolve_steps(&paths, Some(&[7, 7]), |_| Ok(())).unwrap_err();
    assert!(e.to_string().ends_with("both have step 7"), "{e}");
    assert!(matches!(
        e,
        Error::Steps(StepError::Duplicate { explicit: true, .. })
    ));
}

#[test]
fn steps_argument_parses_a_comma_separated_list() {
    assert_eq!(
        parse_steps("1000, 2000,3000").unwrap(),
        vec![1000, 2000, 3000]
    );
    assert!(parse_steps("1000,,2000").is_err());
    assert!(parse_steps("1e3").is_err());
}
