//! Which training step each checkpoint was saved at: from `--steps`, from
//! path names, or from a `step` key of the `__metadata__`.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use crate::error::{EmaError, Result, StepError};

// ---------------------------------------------------------------------------
// Step discovery
// ---------------------------------------------------------------------------

/// Where a checkpoint's step came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepSource {
    /// `--steps`.
    Explicit,
    /// The file name, or the name of a directory above it.
    Name,
    /// The `step` (or `global_step`) key of the safetensors `__metadata__`.
    Metadata,
    /// Name and metadata, agreeing.
    NameAndMetadata,
}

/// One input checkpoint and its step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// Position of the input on the command line.
    pub index: usize,
    /// The input path as given.
    pub path: PathBuf,
    /// Its training step.
    pub step: u64,
    /// Where the step came from.
    pub source: StepSource,
}

/// Read access to a safetensors `__metadata__` map (string to string).
pub trait Metadata {
    /// The value of `key`, if present.
    fn get_str(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> Metadata for HashMap<String, String, S> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Metadata for BTreeMap<String, String> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<M: Metadata> Metadata for Option<M> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.as_ref().and_then(|m| m.get_str(key))
    }
}

impl<M: Metadata + ?Sized> Metadata for &M {
    fn get_str(&self, key: &str) -> Option<&str> {
        (**self).get_str(key)
    }
}

/// No metadata at all.
impl Metadata for () {
    fn get_str(&self, _key: &str) -> Option<&str> {
        None
    }
}

/// Metadata keys read for the step, in order.
pub const METADATA_STEP_KEYS: [&str; 2] = ["step", "global_step"];

/// Name keywords that introduce a step number, with their rank (lower wins):
/// step-like counters beat `epoch`, so Lightning's `epoch=3-step=1000` is
/// step 1000. Longer keywords first.
const KEYWORDS: [(&str, u8); 10] = [
    ("global_step", 1),
    ("global-step", 1),
    ("globalstep", 1),
    ("checkpoint", 1),
    ("iteration", 1),
    ("steps", 1),
    ("epoch", 2),
    ("step", 1),
    ("iter", 1),
    ("ckpt", 1),
];

/// How many directories above the file are searched for a step when the file
/// name has none (`checkpoint-1000/model.safetensors`,
/// `checkpoint-1000/unet/diffusion_pytorch_model.safetensors`).
pub const NAME_PARENT_DEPTH: usize = 2;

/// Candidate steps in one path component: `(value, rank)`.
fn name_candidates(component: &str, is_file: bool) -> Vec<(u64, u8)> {
    let s = component.to_ascii_lowercase();
    let b = s.as_bytes();
    let mut out = Vec::new();
    for i in 0..b.len() {
        if i > 0 && b[i - 1].is_ascii_alphabetic() {
            continue; // `timestep1000` is not `step1000`
        }
        let Some(&(kw, rank)) = KEYWORDS
            .iter()
            .find(|(kw, _)| b[i..].starts_with(kw.as_bytes()))
        else {
            continue;
        };
        let mut j = i + kw.len();
        if j < b.len() && matches!(b[j], b'-' | b'_' | b'=' | b':') {
            j += 1;
        }
        let start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == start {
            continue;
        }
        // `step10k` or `epoch_1.5` is not a whole step count.
        let next = b.get(j).copied();
        if next.is_some_and(|c| c.is_ascii_alphabetic())
            || (next == Some(b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit))
        {
            continue;
        }
        if let Ok(v) = s[start..j].parse::<u64>() {
            out.push((v, rank));
        }
    }
    if out.is_empty() && is_file {
        // A bare number as the whole stem: `001000.safetensors`.
        let stem = s.split('.').next().unwrap_or("");
        if !stem.is_empty()
            && stem.bytes().all(|c| c.is_ascii_digit())
            && let Ok(v) = stem.parse::<u64>()
        {
            out.push((v, 3));
        }
    }
    out
}

/// The step written in a checkpoint's path name, if any.
///
/// Looks at the file name first, then at up to [`NAME_PARENT_DEPTH`]
/// directories above it; the nearest name that has a step decides. Within a
/// name, a number counts when it directly follows a keyword (`step`, `steps`,
/// `global_step`, `checkpoint`, `ckpt`, `iter`, `iteration`, `epoch`; any
/// case, not preceded by a letter), optionally after one of `-`, `_`, `=`,
/// `:`: `step-1000`, `checkpoint-1000`, `global_step1000`, `epoch_012`,
/// `step_500.safetensors`, `model-step=1000`. Step-like keywords outrank
/// `epoch` (`epoch=3-step=1000` is 1000). A file name that is only digits
/// (`001000.safetensors`) is also a step.
///
/// Errors when one name holds two different candidate numbers of the same
/// rank (`step-1000-step-2000`, `ckpt3_step1000`).
pub fn step_from_name(path: &Path) -> Result<Option<u64>> {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let parents = path
        .parent()
        .into_iter()
        .flat_map(Path::ancestors)
        .filter_map(|p| p.file_name())
        .take(NAME_PARENT_DEPTH)
        .map(|f| f.to_string_lossy().into_owned());
    let components = file
        .into_iter()
        .map(|f| (f, true))
        .chain(parents.map(|d| (d, false)));
    for (name, is_file) in components {
        let cands = name_candidates(&name, is_file);
        let Some(best) = cands.iter().map(|&(_, r)| r).min() else {
            continue;
        };
        let mut values: Vec<u64> = cands
            .iter()
            .filter(|&&(_, r)| r == best)
            .map(|&(v, _)| v)
            .collect();
        values.sort_unstable();
        values.dedup();
        if values.len() > 1 {
            return Err(StepError::AmbiguousName {
                path: path.to_path_buf(),
                name,
                values,
            }
            .into());
        }
        return Ok(Some(values[0]));
    }
    Ok(None)
}

/// The step in a safetensors `__metadata__` (`step`, else `global_step`).
/// The value must be a whole number (`"1000"`; `"1000.0"` is accepted).
pub fn step_from_metadata(path: &Path, metadata: &impl Metadata) -> Result<Option<u64>> {
    let mut found: Option<(&str, u64)> = None;
    for key in METADATA_STEP_KEYS {
        let Some(raw) = metadata.get_str(key) else {
            continue;
        };
        let v = parse_whole(raw).ok_or_else(|| StepError::NotWhole {
            path: path.to_path_buf(),
            key: key.to_string(),
            raw: raw.to_string(),
        })?;
        match found {
            Some((k0, v0)) if v0 != v => {
                return Err(StepError::MetadataDisagree {
                    path: path.to_path_buf(),
                    key0: k0.to_string(),
                    value0: v0,
                    key1: key.to_string(),
                    value1: v,
                }
                .into());
            }
            Some(_) => {}
            None => found = Some((key, v)),
        }
    }
    Ok(found.map(|(_, v)| v))
}

fn parse_whole(raw: &str) -> Option<u64> {
    let s = raw.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0)
        .then_some(f as u64)
}

/// The step of one input, from its name and its metadata. Both may be
/// present if they agree; neither is an error (the caller should suggest
/// `--steps`).
pub fn discover_step(index: usize, path: &Path, metadata: &impl Metadata) -> Result<StepInfo> {
    let from_name = step_from_name(path)?;
    let from_meta = step_from_metadata(path, metadata)?;
    let (step, source) = match (from_name, from_meta) {
        (Some(a), Some(b)) if a != b => {
            return Err(StepError::NameAndMetadata {
                path: path.to_path_buf(),
                name: a,
                metadata: b,
            }
            .into());
        }
        (Some(a), Some(_)) => (a, StepSource::NameAndMetadata),
        (Some(a), None) => (a, StepSource::Name),
        (None, Some(b)) => (b, StepSource::Metadata),
        (None, None) => {
            return Err(StepError::Missing {
                path: path.to_path_buf(),
            }
            .into());
        }
    };
    Ok(StepInfo {
        index,
        path: path.to_path_buf(),
        step,
        source,
    })
}

/// Parses a comma-separated list of steps (`1000,2000,3000`).
pub fn parse_steps(arg: &str) -> Result<Vec<u64>> {
    arg.split(',')
        .map(|s| {
            let s = s.trim();
            s.parse::<u64>()
                .map_err(|_| StepError::NotANumber(s.to_string()).into())
        })
        .collect()
}

/// Pairs inputs with `--steps` values, in command-line order.
pub fn explicit_steps<P: AsRef<Path>>(paths: &[P], steps: &[u64]) -> Result<Vec<StepInfo>> {
    if paths.len() != steps.len() {
        return Err(StepError::Count {
            steps: steps.len(),
            checkpoints: paths.len(),
        }
        .into());
    }
    Ok(paths
        .iter()
        .zip(steps)
        .enumerate()
        .map(|(index, (p, &step))| StepInfo {
            index,
            path: p.as_ref().to_path_buf(),
            step,
            source: StepSource::Explicit,
        })
        .collect())
}

/// Sorts inputs by step (ascending); two inputs with the same step are an error.
pub fn order_by_step(mut inputs: Vec<StepInfo>) -> Result<Vec<StepInfo>> {
    inputs.sort_by_key(|i| (i.step, i.index));
    if let Some(w) = inputs.windows(2).find(|w| w[0].step == w[1].step) {
        return Err(StepError::Duplicate {
            first: w[0].path.clone(),
            second: w[1].path.clone(),
            step: w[0].step,
            explicit: w[0].source == StepSource::Explicit,
        }
        .into());
    }
    Ok(inputs)
}

/// The whole step resolution for `polymerge ema`: explicit `--steps` if
/// given (metadata and names are then ignored), else [`discover_step`] on
/// each input; sorted by step, duplicates rejected. `metadata(i)` gives the
/// `__metadata__` of input `i` (only called without `--steps`).
pub fn resolve_steps<P, M, F>(
    paths: &[P],
    explicit: Option<&[u64]>,
    mut metadata: F,
) -> Result<Vec<StepInfo>>
where
    P: AsRef<Path>,
    M: Metadata,
    F: FnMut(usize) -> Result<M>,
{
    if paths.is_empty() {
        return Err(EmaError::NoCheckpoints.into());
    }
    let inputs = match explicit {
        Some(steps) => explicit_steps(paths, steps)?,
        None => paths
            .iter()
            .enumerate()
            .map(|(i, p)| discover_step(i, p.as_ref(), &metadata(i)?))
            .collect::<Result<Vec<_>>>()?,
    };
    order_by_step(inputs)
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests;
