//! Causes of errors of the later stages: specs, permutation files,
//! assignment, weights, EMA profiles and steps, the evaluator, calls that
//! cannot work, and the output.

use std::path::PathBuf;

use safetensors::Dtype;

/// What is wrong with a permutation spec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("not a valid spec")]
    Json(#[source] serde_json::Error),
    #[error("unknown format `{0}` (expected `{fmt}`)", fmt = crate::spec::SPEC_FORMAT)]
    UnknownFormat(String),
    #[error("no group of kind `{kind}` (this spec has: {})", known.join(", "))]
    NoSuchKind { kind: String, known: Vec<String> },
    #[error("group `{0}` is defined twice")]
    Duplicate(String),
    #[error("group `{0}` has size 0")]
    ZeroSize(String),
    #[error("group `{0}` has no members")]
    NoMembers(String),
    #[error("group `{group}`: tensor `{tensor}` is not in `{}`", checkpoint.display())]
    UnknownTensor {
        group: String,
        tensor: String,
        checkpoint: PathBuf,
    },
    #[error("group `{group}`: tensor `{tensor}` is {dtype:?}; only float tensors can be permuted")]
    NotFloat {
        group: String,
        tensor: String,
        dtype: Dtype,
    },
    #[error("group `{group}`: tensor `{tensor}` has {axes} axes, axis {axis} is out of range")]
    Axis {
        group: String,
        tensor: String,
        axes: usize,
        axis: usize,
    },
    #[error("group `{group}`: tensor `{tensor}`: block and repeat must be at least 1")]
    Block { group: String, tensor: String },
    #[error(
        "group `{group}` has {size} units but tensor `{tensor}` axis {axis} has length {len} (start {start}, block {block}, repeat {repeat} need {need})"
    )]
    Span {
        group: String,
        size: usize,
        tensor: String,
        axis: usize,
        len: usize,
        start: usize,
        block: usize,
        repeat: usize,
        need: String,
    },
    #[error("group `{group}`: tensor `{tensor}` has shape {shape:?} and no elements to permute")]
    Empty {
        group: String,
        tensor: String,
        shape: Vec<usize>,
    },
    /// A group that cannot be matched with sane resources.
    #[error("group `{group}`: {reason}")]
    Degenerate { group: String, reason: String },
    /// The tensor names are those of a built-in family, but the layout
    /// does not fit it.
    #[error("`{}` looks like a {family} checkpoint but {reason}", checkpoint.display())]
    Family {
        checkpoint: PathBuf,
        family: String,
        reason: String,
    },
    /// A chain of layers whose structure is ambiguous or unsupported.
    #[error("cannot infer a permutation spec for `{}`: {reason}", checkpoint.display())]
    Chain { checkpoint: PathBuf, reason: String },
    /// No built-in family and no chain: what was tried, then why the chain
    /// failed.
    #[error("unknown architecture{}: not an MLP/CNN chain, BERT/RoBERTa, GPT-2, LLaMA-family (Llama, Mistral, Qwen2) or torchvision ResNet. {chain}", config.as_ref().map(|a| format!(" (config.json: {a})")).unwrap_or_default())]
    UnknownArchitecture {
        config: Option<String>,
        chain: Box<SpecError>,
    },
}

/// What is wrong with a saved permutation file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PermError {
    #[error("not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("unknown format `{0}` (expected `{fmt}`)", fmt = crate::spec::PERM_FORMAT)]
    UnknownFormat(String),
    #[error("group `{0}` is not in the permutation spec")]
    UnknownGroup(String),
    #[error("group `{group}` has {entries} entries, the spec says {units} units")]
    Size {
        group: String,
        entries: usize,
        units: usize,
    },
    #[error("group `{group}` is not a permutation of 0..{size}")]
    NotPermutation { group: String, size: usize },
    /// The spec stored in the file does not fit the checkpoint.
    #[error("its spec does not fit `{}`", checkpoint.display())]
    SpecDoesNotFit {
        checkpoint: PathBuf,
        #[source]
        source: Box<crate::Error>,
    },
}

/// Why an assignment problem cannot be solved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssignmentError {
    #[error("matrix size {n}×{n} overflows")]
    Overflow { n: usize },
    #[error("score matrix has {len} entries, expected {n}×{n} = {}", n * n)]
    Length { len: usize, n: usize },
    #[error("warm-start permutation has length {len}, expected {n}")]
    HintLength { len: usize, n: usize },
    #[error("warm-start permutation is not a permutation of 0..{n}: entry {entry} is {column}")]
    HintRange {
        n: usize,
        entry: usize,
        column: usize,
    },
    #[error(
        "warm-start permutation is not a permutation of 0..{n}: column {column} appears twice (again at entry {entry})"
    )]
    HintRepeat {
        n: usize,
        column: usize,
        entry: usize,
    },
    #[error("score matrix has {count} non-finite {} (first at row {row}, column {column}: {value})", if *count == 1 { "entry" } else { "entries" })]
    NonFinite {
        count: usize,
        row: usize,
        column: usize,
        value: f64,
    },
    #[error("score matrix has an entry of magnitude above {max:e} (row {row}, column {column}: {value:e}); rescale the scores", max = crate::assignment::MAX_ABS_SCORE)]
    TooLarge {
        row: usize,
        column: usize,
        value: f64,
    },
}

/// Merge weights that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    #[error("{weights} weights given for {inputs} inputs")]
    Count { weights: usize, inputs: usize },
    #[error("weight {position} is {value}; weights must be finite")]
    NotFinite { position: usize, value: f64 },
    #[error("weights sum to zero")]
    SumZero,
    #[error(
        "weight {position} is {value:e}, beyond the f32 range the average is computed in (about ±3.4e38)"
    )]
    F32Range { position: usize, value: f64 },
    #[error(
        "the weights' sum overflows f32, which the average is computed in; scale them down (only their ratios matter)"
    )]
    SumRange,
}

/// An EMA profile or trajectory that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmaError {
    #[error("decay must be in (0, 1), got {}{why}", num(*.0), why = decay_why(*.0))]
    Decay(f64),
    #[error("tau must be in (0, 1), got {}{why}", num(*.0), why = tau_why(*.0))]
    Tau(f64),
    #[error("half-life must be a positive number of steps, got {}", num(*.0))]
    HalfLife(f64),
    #[error("half-life {} steps is out of range (decay rounds to 0 or 1)", num(*.0))]
    HalfLifeRange(f64),
    #[error("the rational warm-up (1+t)/(10+t) takes no inv-gamma or power")]
    RationalParams,
    #[error(
        "unknown warm-up `{0}`: expected `rational` ((1+t)/(10+t)) or `inv-gamma` (1-(1+t/inv_gamma)^-power)"
    )]
    UnknownWarmup(String),
    #[error("warm-up inv_gamma must be positive, got {0}")]
    InvGamma(f64),
    #[error("warm-up power must be positive, got {0}")]
    WarmupPower(f64),
    #[error("sigma-rel must be in (0, {max:.4}], got {0} (1/√12 ≈ 0.2887 is γ = 0, the running mean)", max = crate::ema::SIGMA_REL_MAX)]
    SigmaRel(f64),
    #[error("power exponent γ must be ≥ 0, got {0} (γ < 0 weights the earliest steps most)")]
    Gamma(f64),
    #[error("window must hold at least 1 checkpoint, got 0")]
    EmptyWindow,
    #[error("window of {k} checkpoints needs at least {k} inputs, got {n}")]
    WindowTooLarge { k: usize, n: usize },
    #[error("no checkpoints to average")]
    NoCheckpoints,
    #[error("steps must be strictly increasing, but step {next} follows step {prev}")]
    NotIncreasing { prev: u64, next: u64 },
}

/// A number as a person reads it: plain when moderate, in scientific
/// notation when tiny or huge (`1e-320`, not 320 digits).
fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-4..1e15).contains(&v.abs()) {
        v.to_string()
    } else {
        format!("{v:e}")
    }
}

fn decay_why(beta: f64) -> &'static str {
    if beta > 1.0 {
        ": β > 1 is not a decay (the average would grow without bound)"
    } else if beta == 1.0 {
        ": β = 1 never moves the average off the first checkpoint"
    } else if beta == 0.0 {
        ": β = 0 keeps only the last checkpoint (use it directly)"
    } else {
        ""
    }
}

fn tau_why(tau: f64) -> &'static str {
    if tau < 0.0 {
        ": τ < 0 is not a decay (the average would grow without bound)"
    } else if tau == 0.0 {
        ": τ = 0 never moves the average off the first checkpoint"
    } else if tau == 1.0 {
        ": τ = 1 keeps only the last checkpoint (use it directly)"
    } else {
        ""
    }
}

/// Why a checkpoint's training step cannot be worked out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    #[error("{}: ambiguous step in the name `{name}`: could be {}", path.display(), values.iter().map(u64::to_string).collect::<Vec<_>>().join(" or "))]
    AmbiguousName {
        path: PathBuf,
        name: String,
        values: Vec<u64>,
    },
    #[error("{}: metadata `{key}` = `{raw}` is not a whole number of steps", path.display())]
    NotWhole {
        path: PathBuf,
        key: String,
        raw: String,
    },
    #[error("{}: metadata `{key0}` = {value0} and `{key1}` = {value1} disagree", path.display())]
    MetadataDisagree {
        path: PathBuf,
        key0: String,
        value0: u64,
        key1: String,
        value1: u64,
    },
    #[error("{}: the name says step {name} but metadata `step` says {metadata}", path.display())]
    NameAndMetadata {
        path: PathBuf,
        name: u64,
        metadata: u64,
    },
    #[error("{}: no step in the file name or in the `step` metadata key", path.display())]
    Missing { path: PathBuf },
    #[error("`{0}` is not a whole number (expected a comma-separated list like 1000,2000,3000)")]
    NotANumber(String),
    #[error("{steps} explicit steps for {checkpoints} checkpoints")]
    Count { steps: usize, checkpoints: usize },
    /// Two checkpoints at one step; `explicit` when the steps were given.
    #[error("{} and {} both have step {step}", first.display(), second.display())]
    Duplicate {
        first: PathBuf,
        second: PathBuf,
        step: u64,
        explicit: bool,
    },
}

/// A model the MLP evaluator cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(
        "tensor `{0}` is not a Linear weight [out, in]; the evaluator handles Linear/ReLU chains only"
    )]
    NotLinear(String),
    #[error("tensor `{tensor}` has {inputs} inputs but the previous layer has {outputs} outputs")]
    Chain {
        tensor: String,
        inputs: usize,
        outputs: usize,
    },
    #[error("not a Linear/ReLU chain: found tensors other than Linear weights and biases")]
    NotAChain,
    #[error("no tensor `{0}`")]
    NoTensor(String),
    #[error("`{tensor}` expects {expects} inputs but the data has {features} features")]
    Features {
        tensor: String,
        expects: usize,
        features: usize,
    },
    #[error(transparent)]
    Shape(#[from] ndarray::ShapeError),
    #[error("label {label} out of range for {classes} outputs")]
    Label { label: usize, classes: usize },
    #[error("bias `{tensor}` has shape {shape:?} but its layer has {outputs} outputs")]
    Bias {
        tensor: String,
        shape: Vec<usize>,
        outputs: usize,
    },
}

/// A call that cannot work as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    #[error("no inputs to merge")]
    NoInputs,
    #[error("no inputs to check")]
    NothingToCheck,
    #[error("no input {0} to check")]
    NoSuchInput(usize),
    #[error("no checkpoint to infer a spec from")]
    NoCheckpoint,
    #[error("{given} permutations given for {inputs} inputs")]
    Permutations { given: usize, inputs: usize },
    #[error("{given} initial permutations for {groups} groups")]
    InitialPermutations { given: usize, groups: usize },
    #[error("a path needs 2 to {max} points, got {0}", max = crate::evaluate::MAX_PATH_POINTS)]
    PathPoints(usize),
}

/// Why an output cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    #[error("already exists")]
    Exists,
    #[error("is a directory; a .safetensors output must be a file")]
    IsDirectory,
    #[error("directory `{}` does not exist", .0.display())]
    NoDirectory(PathBuf),
    /// A device node, FIFO or socket: never replaced, even with `--force`.
    #[error("is {0}; polymerge only replaces regular files and directories")]
    NotFileOrDirectory(&'static str),
    #[error("is the input `{}`", .0.display())]
    IsInput(PathBuf),
    #[error("is also the checkpoint output `{}`", .0.display())]
    IsOutput(PathBuf),
    #[error(
        "ends with `/` but names a .safetensors file; drop the `/` for a file or choose another name for a directory"
    )]
    TrailingSlash,
    /// No file can be created in the output's directory.
    #[error("cannot create a file in directory `{}`", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a plot is written as SVG: the path must end in .svg")]
    NotSvg,
    #[error("is not a regular file")]
    NotRegularFile,
    /// `--force` into an existing directory: something there cannot be
    /// replaced by the file polymerge writes (checked before anything moves).
    #[error("cannot replace `{}`: {reason}", .entry.display())]
    Blocked {
        entry: PathBuf,
        reason: &'static str,
    },
    /// Writing failed, at the target or at a temporary beside it.
    #[error("cannot write{}", temporary.as_ref().map(|t| format!(" (temporary `{}`)", t.display())).unwrap_or_default())]
    Write {
        temporary: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
}
