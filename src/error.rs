//! The error types of the library: one [`Error`] for every stage, whose
//! variants say where (file, tensor, group) and carry the cause as a typed
//! [`std::error::Error::source`] (an I/O error, a JSON error, or one of the
//! per-stage enums below). Rendered as a chain joined by `": "` (what
//! `anyhow`'s `{:#}` does), every error reads as one lowercase line naming
//! the file and, where there is one, the tensor or group.
//!
//! No message names a command-line flag: the binary adds its flag hints
//! (`--force`, `--spec`, `--steps` …) where they help.

use std::path::PathBuf;

use safetensors::Dtype;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between reading checkpoints and writing a merge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a path (open, read, map, write, rename).
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a readable safetensors file (bad header, truncated, ...).
    #[error("{}: not a valid safetensors file", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },

    /// A sharded checkpoint index (`*.safetensors.index.json`) is wrong.
    #[error("{}: invalid checkpoint index", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: IndexError,
    },

    /// A problem with one tensor of one file.
    #[error("{}: tensor `{tensor}`", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        #[source]
        source: TensorError,
    },

    /// Inputs that cannot be merged together (different tensor sets, shapes ...).
    #[error("inputs do not match")]
    Mismatch(#[source] Box<MismatchError>),

    /// A permutation spec that does not fit the checkpoint, is malformed,
    /// or cannot be inferred.
    #[error("permutation spec{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Spec {
        path: Option<PathBuf>,
        #[source]
        source: Box<SpecError>,
    },

    /// A spec that does not fit one of the checkpoints it is used with.
    #[error("checking the spec against `{}`", path.display())]
    SpecCheck {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },

    /// A saved permutation file that cannot be used.
    #[error("{}: invalid permutation file", path.display())]
    Perm {
        path: PathBuf,
        #[source]
        source: PermError,
    },

    /// The linear assignment problem cannot be solved (NaN/Inf scores, bad shape).
    #[error("assignment problem for group `{group}`")]
    Assignment {
        group: String,
        #[source]
        source: AssignmentError,
    },

    /// Merge weights that cannot work.
    #[error(transparent)]
    Weights(#[from] WeightsError),

    /// An EMA profile or trajectory that cannot work.
    #[error(transparent)]
    Ema(#[from] EmaError),

    /// The training steps of an EMA's checkpoints cannot be worked out.
    #[error(transparent)]
    Steps(#[from] StepError),

    /// A model the MLP evaluator cannot run.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A call that cannot work as asked (no inputs, wrong counts ...).
    #[error(transparent)]
    Usage(#[from] UsageError),

    /// The output cannot be written (it exists, its directory is missing ...).
    #[error("{}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: OutputError,
    },

    /// The basin gate found pairs of inputs in different basins and was
    /// told to refuse: nothing was written.
    #[error("refusing to write: {} pair(s) of inputs look disconnected", pairs.len())]
    BasinRefused {
        pairs: Vec<crate::pipeline::RefusedPair>,
    },

    /// A broken invariant of polymerge itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Tensor`].
    pub fn tensor(path: impl Into<PathBuf>, tensor: &str, source: TensorError) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.to_string(),
            source,
        }
    }

    /// The error and its causes as one line, joined by `": "` (I/O causes
    /// lowercased, without the `(os error N)` suffix).
    pub fn one_line(&self) -> String {
        let mut parts = Vec::new();
        let mut under_io = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(c) = cause {
            parts.push(match c.downcast_ref::<std::io::Error>() {
                Some(io) if under_io => lowercase_io(io),
                _ => c.to_string(),
            });
            under_io = matches!(c.downcast_ref::<Error>(), Some(Error::Io { .. }));
            cause = c.source();
        }
        parts.join(": ").replace('\n', " ")
    }

    /// Builds an [`Error::Spec`] without a spec file.
    pub fn spec(source: SpecError) -> Self {
        Error::Spec {
            path: None,
            source: Box::new(source),
        }
    }
}

impl From<MismatchError> for Error {
    fn from(e: MismatchError) -> Self {
        Error::Mismatch(Box::new(e))
    }
}

/// `No such file or directory (os error 2)` → `no such file or directory`.
pub fn lowercase_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => s,
    }
}

/// Why a file is not a readable safetensors file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("file is {len} bytes, shorter than the 8-byte header length")]
    TooShort { len: usize },
    #[error("header length {declared} exceeds the file size {len} (truncated or not safetensors)")]
    HeaderBeyondEnd { declared: u64, len: usize },
    #[error("tensor data does not match the file size (truncated or padded file)")]
    DataSize,
    #[error("header is not valid JSON")]
    HeaderJson(#[source] serde_json::Error),
    #[error("header is not UTF-8")]
    HeaderUtf8(#[source] std::str::Utf8Error),
    #[error("header is larger than the 100 MB limit")]
    HeaderTooLarge,
    /// Another refusal of the `safetensors` crate, in its words (lowercased).
    #[error("{0}")]
    Rejected(String),
    #[error("not a regular file")]
    NotRegularFile,
    #[error(
        "directory has no {model} or {index} and {indexes} index file(s), {files} safetensors file(s); name the file to use",
        model = crate::checkpoint::MODEL_FILE,
        index = crate::checkpoint::INDEX_FILE
    )]
    NoWeights { indexes: usize, files: usize },
}

/// Why a checkpoint index is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("not valid index JSON")]
    Json(#[source] serde_json::Error),
    #[error("missing `weight_map`")]
    NoWeightMap,
    #[error("`weight_map` is empty")]
    EmptyWeightMap,
    #[error("shard name `{name}` must be a file name in the index's directory")]
    ShardName { name: String },
    #[error("shard `{}` does not exist", shard.display())]
    MissingShard { shard: PathBuf },
    #[error("tensor `{tensor}` is mapped to `{shard}` but no shard contains it")]
    NotInShards { tensor: String, shard: String },
    #[error("tensor `{tensor}` is mapped to `{shard}` but stored in `{}`", actual.display())]
    WrongShard {
        tensor: String,
        shard: String,
        actual: PathBuf,
    },
    #[error("tensor `{tensor}` in shard `{}` is not listed in `weight_map`", shard.display())]
    Unlisted { tensor: String, shard: PathBuf },
    #[error("tensor `{tensor}` is present in two shards: `{}` and `{}`", first.display(), second.display())]
    TwoShards {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// What is wrong with one tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    #[error("no such tensor")]
    Missing,
    #[error("expected a float tensor, found {0:?}")]
    NotFloat(Dtype),
    #[error("{count} NaN/Inf value(s)")]
    NonFinite { count: u64 },
    #[error("must be a float matrix [N, D]")]
    NotAMatrix,
    #[error(transparent)]
    Shape(#[from] ndarray::ShapeError),
    #[error("labels must be I64 or I32, found {0:?}")]
    LabelDtype(Dtype),
    #[error("has {labels} labels for {rows} rows of `x`")]
    LabelCount { labels: usize, rows: usize },
    #[error("negative label {0}")]
    NegativeLabel(i64),
}

/// How inputs differ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MismatchError {
    /// `input` lacks tensors of `first` (`missing`) or has more (`extra`);
    /// the lists hold at most five names each.
    #[error("`{}` {}", input.display(), tensor_sets(first, *missing, missing_shown, *extra, extra_shown))]
    Tensors {
        input: PathBuf,
        first: PathBuf,
        missing: usize,
        missing_shown: Vec<String>,
        extra: usize,
        extra_shown: Vec<String>,
    },
    #[error("tensor `{tensor}` has shape {a_shape:?} in `{}` but {b_shape:?} in `{}`", a.display(), b.display())]
    Shape {
        tensor: String,
        a: PathBuf,
        a_shape: Vec<usize>,
        b: PathBuf,
        b_shape: Vec<usize>,
    },
    #[error("tensor `{tensor}` is {a_dtype:?} in `{}` but {b_dtype:?} in `{}`", a.display(), b.display())]
    Dtype {
        tensor: String,
        a: PathBuf,
        a_dtype: Dtype,
        b: PathBuf,
        b_dtype: Dtype,
    },
    #[error("tensor `{tensor}` is {a_dtype:?} {a_shape:?} in `{}` but {b_dtype:?} {b_shape:?} in `{}`", a.display(), b.display())]
    NotComparable {
        tensor: String,
        a: PathBuf,
        a_dtype: Dtype,
        a_shape: Vec<usize>,
        b: PathBuf,
        b_dtype: Dtype,
        b_shape: Vec<usize>,
    },
    #[error("{dtype:?} tensor `{tensor}` differs between `{}` and `{}`; integer and bool tensors must be identical to be merged", a.display(), b.display())]
    ExactDiffers {
        dtype: Dtype,
        tensor: String,
        a: PathBuf,
        b: PathBuf,
    },
}

fn names_list(total: usize, shown: &[String]) -> String {
    let mut s: Vec<String> = shown.iter().map(|n| format!("`{n}`")).collect();
    if total > shown.len() {
        s.push(format!("… {} more", total - shown.len()));
    }
    s.join(", ")
}

fn tensor_sets(
    first: &std::path::Path,
    missing: usize,
    missing_shown: &[String],
    extra: usize,
    extra_shown: &[String],
) -> String {
    let mut parts = Vec::new();
    if missing > 0 {
        parts.push(format!(
            "lacks {missing} of `{}`'s tensors ({})",
            first.display(),
            names_list(missing, missing_shown)
        ));
    }
    if extra > 0 {
        parts.push(format!(
            "has {extra} tensor(s) `{}` lacks ({})",
            first.display(),
            names_list(extra, extra_shown)
        ));
    }
    parts.join(" and ")
}

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
        need: usize,
    },
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
}

/// An EMA profile or trajectory that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmaError {
    #[error("decay must be in (0, 1), got {0}{why}", why = decay_why(*.0))]
    Decay(f64),
    #[error("tau must be in (0, 1), got {0}{why}", why = tau_why(*.0))]
    Tau(f64),
    #[error("half-life must be a positive number of steps, got {0}")]
    HalfLife(f64),
    #[error("half-life {0} steps is out of range (decay rounds to 0 or 1)")]
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

fn decay_why(beta: f64) -> &'static str {
    if beta >= 1.0 {
        ": β = 1 never moves the average off the first checkpoint"
    } else if beta == 0.0 {
        ": β = 0 keeps only the last checkpoint (use it directly)"
    } else {
        ""
    }
}

fn tau_why(tau: f64) -> &'static str {
    if tau <= 0.0 && tau.is_finite() {
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
    #[error("a path needs at least 2 points, got {0}")]
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
    /// Writing failed, at the target or at a temporary beside it.
    #[error("cannot write{}", temporary.as_ref().map(|t| format!(" (temporary `{}`)", t.display())).unwrap_or_default())]
    Write {
        temporary: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
}
