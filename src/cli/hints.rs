//! The flag hints of error messages: the library names no command-line
//! flag, so the binary adds, after the message, the flag that helps.

use polymerge::Error;
use polymerge::basin::ALIGN_ADVICE;
use polymerge::error::{OutputError, SpecError, StepError, TensorError};

/// The hint to append to an error line whose chain holds `e`.
pub fn flag_hint(e: &Error) -> Option<&'static str> {
    match e {
        Error::Output {
            source: OutputError::Exists,
            ..
        } => Some(" (use --force to overwrite)"),
        Error::Tensor {
            source: TensorError::NonFinite { .. },
            ..
        } => Some(" (--strict)"),
        Error::Spec { source, .. } => spec_hint(source),
        Error::Steps(s) => Some(match s {
            StepError::Missing { .. } => " (name it like step-1000.safetensors or pass --steps)",
            StepError::Duplicate { explicit: true, .. } => " in --steps",
            StepError::Count { .. } => " (--steps)",
            StepError::AmbiguousName { .. }
            | StepError::MetadataDisagree { .. }
            | StepError::NameAndMetadata { .. }
            | StepError::Duplicate { .. } => " (pass --steps)",
            _ => return None,
        }),
        _ => None,
    }
}

fn spec_hint(e: &SpecError) -> Option<&'static str> {
    match e {
        SpecError::Family { .. } => {
            Some("; write a spec (see `polymerge spec --help`) and pass it with --spec")
        }
        SpecError::Chain { .. } => {
            Some("; write one (see `polymerge spec --help`) and pass it with --spec")
        }
        SpecError::UnknownArchitecture { chain, .. } => spec_hint(chain),
        _ => None,
    }
}

/// A basin reason as the binary words it: the advice to align names the flag.
pub fn reason(r: &str) -> String {
    if r == ALIGN_ADVICE {
        "B is a permuted copy in another basin: align it (--align) before averaging".into()
    } else {
        r.to_string()
    }
}

/// [`reason`] over a list.
pub fn reasons(rs: &[String]) -> Vec<String> {
    rs.iter().map(|r| reason(r)).collect()
}
