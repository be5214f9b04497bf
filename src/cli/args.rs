//! Argument definitions (clap derive), typed: every flag is parsed and
//! validated here, by clap, before any checkpoint is read — dtypes and
//! accumulation are value enums, sizes and step lists have value parsers,
//! the EMA profile is an argument group (exactly one profile flag), and
//! values out of range are usage errors (exit 2); the parsers are in
//! [`super::values`]. [`super::config`] turns
//! the result into the library's configuration.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use super::values::{
    ByteSize, StepList, decay_arg, half_life_arg, parse_budget, parse_size, parse_step_list,
    positive, power_arg, sigma_rel_arg, tau_arg,
};

#[derive(Parser, Debug)]
#[command(
    name = "polymerge",
    version,
    about = "Permutation-aware merging of neural-network checkpoints (safetensors)",
    long_about = "Permutation-aware merging of neural-network checkpoints.\n\n\
Reads safetensors checkpoints (single files, Hugging Face sharded checkpoints \
or model directories) memory-mapped, averages them with PyTorch's exact \
numerics, aligns hidden units by weight matching (Git Re-Basin), computes \
offline EMAs of checkpoint trajectories, and warns when runs sit in \
disconnected basins.",
    after_help = "Examples:\n  polymerge inspect model.safetensors --stats\n  polymerge avg a.safetensors b.safetensors -o merged.safetensors\n  polymerge avg run1/ run2/ run3/ --weights 0.5,0.25,0.25 -o soup/"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List a checkpoint's tensors (dtype, shape, size), totals and metadata.
    #[command(
        after_help = "Examples:\n  polymerge inspect model.safetensors\n  polymerge inspect path/to/model_dir --stats --json"
    )]
    Inspect(InspectArgs),
    /// Weighted average of N checkpoints of one architecture.
    #[command(
        after_help = "Examples:\n  polymerge avg a.safetensors b.safetensors\n  polymerge avg a.safetensors b.safetensors c.safetensors --weights 0.2,0.3,0.5 -o soup.safetensors\n  polymerge avg llama-a/ llama-b/model.safetensors.index.json -o merged/ --max-shard-size 2GB\n\nNumerics: (Σ wᵢ·xᵢ)/Σwᵢ with f32 accumulation in input order, rounded to nearest even:\nbit-identical to (sum(w*t.float() for ...)/sum(w)).to(dtype) in PyTorch."
    )]
    Avg(AvgArgs),
    /// Print the permutation spec polymerge infers for a checkpoint (JSON).
    #[command(
        after_help = "Examples:\n  polymerge spec model.safetensors > spec.json\n  polymerge align a.safetensors b.safetensors --spec spec.json -o b_aligned.safetensors"
    )]
    Spec(SpecArgs),
    /// Permute B's hidden units into A's order by weight matching (Git Re-Basin).
    #[command(
        after_help = "Examples:\n  polymerge align a.safetensors b.safetensors -o b_aligned.safetensors --save-perm perm.json\n  polymerge align a/ b/ -o b_aligned/ --spec spec.json --json\n\nThe output computes exactly the same function as B."
    )]
    Align(AlignArgs),
    /// Apply saved permutations (from `align --save-perm`) to a checkpoint.
    #[command(
        after_help = "Examples:\n  polymerge permute b_ema.safetensors --perm perm.json -o b_ema_aligned.safetensors"
    )]
    Permute(PermuteArgs),
    /// Loss and accuracy along the interpolation path between two MLPs (Linear/ReLU chains) on a data file, and the loss barrier.
    #[command(
        after_help = "Examples:\n  polymerge barrier a.safetensors b.safetensors --data test.safetensors\n  polymerge barrier a.safetensors b.safetensors --data test.safetensors --align --json\n\nThe data file is safetensors with `x` (float [N, D]) and `y` (int labels [N]).\nbarrier = max over alpha of L((1-alpha)A + alpha B) - ((1-alpha) L(A) + alpha L(B))."
    )]
    Barrier(BarrierArgs),
    /// Offline EMA (or power-function EMA, or window mean) of a checkpoint trajectory.
    #[command(
        after_help = "Examples:\n  polymerge ema ckpts/checkpoint-*.safetensors --half-life 2000 -o ema.safetensors\n  polymerge ema run/step-*/ --power 6.94 --print-weights -o ema/\n  polymerge ema a.safetensors b.safetensors c.safetensors --steps 100,200,400 --decay 0.999 --dry-run\n\nWeights: checkpoint k (steps sorted) gets (1-b^D_k) * prod_{j>k} b^D_j, the first one initialises the average.\nSteps come from --steps, file names (step-1000, checkpoint-1000, global_step1000, epoch_012 ...) or a `step` metadata key."
    )]
    Ema(EmaArgs),
    /// Are A and B in one basin (naive average fine) or disconnected (align first)? Data-free diagnostics and a verdict.
    #[command(
        after_help = "Examples:\n  polymerge basin a.safetensors b.safetensors\n  polymerge basin a.safetensors b.safetensors --align --json\n\nExit codes: 0 connected, 3 disconnected, 4 uncertain (1 error, 2 usage). See docs/basin.md."
    )]
    Basin(BasinArgs),
    /// Run a mergekit recipe (YAML, `merge_method: linear`) with mergekit's numerics.
    #[command(
        after_help = "Examples:\n  polymerge recipe merge.yml -o merged/\n  polymerge recipe soup.yml -o soup.safetensors --json\n\nUnderstood: merge_method: linear; models: [{model: PATH, parameters: {weight: W}}];\nparameters: {normalize, weight}; dtype; out_dtype; align: true|many (polymerge extension).\nModel paths are relative to the recipe file. Any other key is an error. See docs/recipes.md."
    )]
    Recipe(RecipeArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish) on stdout.
    #[command(
        after_help = "Examples:\n  polymerge completions bash > ~/.local/share/bash-completion/completions/polymerge\n  polymerge completions zsh > ~/.zfunc/_polymerge\n  polymerge completions fish > ~/.config/fish/completions/polymerge.fish"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff) of polymerge or of one of its commands on stdout.
    #[command(
        after_help = "Examples:\n  polymerge man > polymerge.1\n  polymerge man avg > polymerge-avg.1\n  polymerge man | man -l -"
    )]
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct RecipeArgs {
    /// The recipe: mergekit YAML.
    pub recipe: PathBuf,
    /// Make NaN/Inf values in the inputs an error instead of a warning.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub basin: CheckArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// A command (e.g. avg) whose own page to print; default: the main page.
    pub command: Option<String>,
}

#[derive(Args, Debug)]
pub struct EmaArgs {
    /// Checkpoints of one trajectory (any order; sorted by step).
    #[arg(required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Decay warm-up schedule: rational ((1+t)/(10+t)) or inv-gamma (1-(1+t/g)^-p).
    #[arg(long, value_enum, ignore_case = true)]
    pub warmup: Option<WarmupKind>,
    /// inv_gamma of the inv-gamma warm-up (default 1).
    #[arg(long, requires = "warmup", value_parser = positive)]
    pub warmup_inv_gamma: Option<f64>,
    /// power of the inv-gamma warm-up (default 2/3).
    #[arg(long, requires = "warmup", value_parser = positive)]
    pub warmup_power: Option<f64>,
    /// Training step of each input, comma-separated, in the order given.
    #[arg(long, value_parser = parse_step_list)]
    pub steps: Option<StepList>,
    /// Accumulation precision: f32 (default) or f64 (very long trajectories).
    #[arg(long, value_enum, default_value = "f32", ignore_case = true)]
    pub accum: AccumKind,
    /// Output dtype for float tensors: f32, f16, bf16 (default: first input's).
    #[arg(long, value_enum, ignore_case = true)]
    pub dtype: Option<FloatDtype>,
    /// Print every checkpoint's step and effective weight (stderr; in the JSON with --json).
    #[arg(long)]
    pub print_weights: bool,
    /// Only compute and print the weights; write no checkpoint (a --plot is still drawn).
    #[arg(long)]
    pub dry_run: bool,
    /// Draw every checkpoint's weight over its step into this SVG file (--force replaces it).
    #[arg(long, value_name = "PATH.svg")]
    pub plot: Option<PathBuf>,
    /// Make NaN/Inf values in the inputs an error instead of a warning.
    #[arg(long)]
    pub strict: bool,
    /// Align every checkpoint to the first input (weight matching) before averaging.
    #[arg(long)]
    pub align: bool,
    #[command(flatten)]
    pub matching: MatchArgs,
    #[command(flatten)]
    pub basin: CheckArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// The EMA profile: exactly one of these flags (an argument group, so
/// none or two are usage errors). Each value is checked by the
/// constructor of the library's profile, so an out-of-range value is a
/// usage error too.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("profile").required(true).multiple(false)))]
pub struct ProfileArgs {
    /// EMA decay per training step (beta).
    #[arg(long, group = "profile", value_parser = decay_arg)]
    pub decay: Option<f64>,
    /// EMA half-life in training steps.
    #[arg(long, group = "profile", value_parser = half_life_arg)]
    pub half_life: Option<f64>,
    /// Soft-update rate tau = 1 - beta (RL naming).
    #[arg(long, group = "profile", value_parser = tau_arg)]
    pub tau: Option<f64>,
    /// Power-function EMA exponent gamma (Karras et al. 2024, EDM2).
    #[arg(long, group = "profile", value_parser = power_arg)]
    pub power: Option<f64>,
    /// Power-function EMA by relative width sigma_rel (EDM2).
    #[arg(long, group = "profile", value_parser = sigma_rel_arg)]
    pub sigma_rel: Option<f64>,
    /// Uniform mean of the last K checkpoints (LAWA / SWA style).
    #[arg(long, group = "profile", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub window: Option<usize>,
}

/// The warm-up schedules of `--warmup`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmupKind {
    /// (1+t)/(10+t) (TensorFlow, older diffusers).
    #[value(alias = "tf")]
    Rational,
    /// 1-(1+t/inv_gamma)^-power (diffusers, timm).
    #[value(alias = "inv_gamma", alias = "diffusers")]
    InvGamma,
}

/// Output dtypes of float tensors.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    #[value(alias = "float32", alias = "float")]
    F32,
    #[value(alias = "float16", alias = "half")]
    F16,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float64", alias = "double")]
    F64,
}

/// Accumulation precision of `--accum`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccumKind {
    /// f32 for F32/F16/BF16 tensors, f64 for F64 ones.
    F32,
    /// f64 for every float tensor.
    F64,
}

#[derive(Args, Debug)]
pub struct BarrierArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Data file: safetensors with `x` [N, D] and `y` [N].
    #[arg(long)]
    pub data: PathBuf,
    /// Points on the path, including both ends (2 to 10000).
    #[arg(long, default_value_t = 11, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=polymerge::evaluate::MAX_PATH_POINTS as u64))]
    pub steps: usize,
    /// Align B to A (weight matching) before interpolating.
    #[arg(long)]
    pub align: bool,
    #[command(flatten)]
    pub matching: MatchArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub plot: PlotArgs,
}

/// `--plot` of commands that write no checkpoint (with a `--force` of its own).
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Draw the results into this SVG file.
    #[arg(long, value_name = "PATH.svg")]
    pub plot: Option<PathBuf>,
    /// Replace an existing plot file.
    #[arg(long, requires = "plot")]
    pub force: bool,
}

/// Options of weight matching, shared by `align` and `avg --align`.
#[derive(Args, Debug)]
pub struct MatchArgs {
    /// Permutation spec JSON (default: inferred from tensor names; see `polymerge spec`).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Only use these group kinds or names, comma-separated (e.g. ffn,heads,residual).
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Inferred spec: one within-head permutation shared by all heads of a layer (a subset of the per-head symmetry; the group names of older perm files).
    #[arg(long, conflicts_with = "spec")]
    pub shared_heads: bool,
    /// Seed of the random group order of each sweep.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Maximum number of coordinate-descent sweeps.
    #[arg(long, default_value_t = polymerge::alignment::DEFAULT_MAX_ITER)]
    pub max_iter: usize,
    /// Weight-matching descents run in parallel (restart r: seed+r, shuffled propagation); the highest objective is kept.
    #[arg(long, default_value_t = polymerge::alignment::DEFAULT_RESTARTS as u64, value_parser = clap::value_parser!(u64).range(1..1025))]
    pub restarts: u64,
    /// Memory for similarity terms kept between group visits and reused while their neighbouring groups stay put (same result, less work), e.g. 256MiB, 2GiB; 0 turns it off.
    #[arg(long, default_value = "256MiB", value_parser = parse_budget)]
    pub term_cache: ByteSize,
    /// Compute every similarity term that changed in full instead of updating a kept one where its neighbouring group moved a few units (slower; the result is then bit-identical to --term-cache 0).
    #[arg(long)]
    pub exact_terms: bool,
}

#[derive(Args, Debug)]
pub struct SpecArgs {
    /// A .safetensors file, an index JSON or a model directory.
    pub path: PathBuf,
    /// Only keep these group kinds or names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// One within-head permutation shared by all heads of a layer instead of one per head.
    #[arg(long)]
    pub shared_heads: bool,
}

#[derive(Args, Debug)]
pub struct AlignArgs {
    /// The reference checkpoint (its unit order is kept).
    pub a: PathBuf,
    /// The checkpoint to permute into A's unit order.
    pub b: PathBuf,
    #[command(flatten)]
    pub matching: MatchArgs,
    /// Start from these permutations (a file written by --save-perm).
    #[arg(long)]
    pub init_perm: Option<PathBuf>,
    /// Save the permutations found (JSON; reusable with `polymerge permute`).
    #[arg(long)]
    pub save_perm: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct PermuteArgs {
    /// The checkpoint to permute.
    pub input: PathBuf,
    /// Permutation file written by `align --save-perm`.
    #[arg(long)]
    pub perm: PathBuf,
    /// Spec to use when the permutation file has none embedded.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// How `avg --align` aligns its inputs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignMode {
    /// Align every input to the first one.
    Pairwise,
    /// Git Re-Basin MergeMany: match each input to the mean of the others, repeatedly.
    Many,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A .safetensors file, an index JSON or a model directory.
    pub path: PathBuf,
    /// Add per-tensor mean/std/min/max and NaN/Inf counts (reads all data).
    #[arg(long)]
    pub stats: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Output options shared by every command that writes a checkpoint.
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Output: a .safetensors file, or a directory (Hugging Face layout).
    #[arg(short = 'o', long = "output", default_value = "merged.safetensors")]
    pub output: PathBuf,
    /// Overwrite an existing output (also allowed when it is an input).
    #[arg(long)]
    pub force: bool,
    /// Largest shard of a directory output, e.g. 5GB, 500MB, 2GiB or bytes.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub max_shard_size: ByteSize,
    /// Write large shards with direct I/O (O_DIRECT) instead of through the page cache: less CPU where the disk takes direct writes fast, slower where they land in a volatile cache first (virtual disks).
    #[arg(long)]
    pub direct_io: bool,
    /// Print a JSON summary on stdout instead of the human one.
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no summary on stderr (warnings and errors still shown).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct AvgArgs {
    /// Checkpoints to average (files, index JSONs or model directories).
    #[arg(required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Comma-separated weights, one per input (default: uniform).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub weights: Option<Vec<f64>>,
    /// Output dtype for float tensors: f32, f16, bf16 (default: first input's).
    #[arg(long, value_enum, ignore_case = true)]
    pub dtype: Option<FloatDtype>,
    /// Make NaN/Inf values in the inputs an error instead of a warning.
    #[arg(long)]
    pub strict: bool,
    /// Align hidden units before averaging: `--align` (= pairwise, to the first input) or `--align=many`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "pairwise", value_enum)]
    pub align: Option<AlignMode>,
    #[command(flatten)]
    pub matching: MatchArgs,
    #[command(flatten)]
    pub basin: CheckArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// When `basin` runs weight matching.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matching {
    /// When a spec is given or can be inferred and the model has at most 50M float parameters.
    Auto,
    /// Always (fails without a spec).
    Always,
    /// Never: data-free diagnostics only.
    Never,
}

#[derive(Args, Debug)]
pub struct BasinArgs {
    /// The reference checkpoint.
    pub a: PathBuf,
    /// The checkpoint to compare with A.
    pub b: PathBuf,
    /// Align B to A by weight matching first, and judge the aligned pair (what `avg --align` would average).
    #[arg(long)]
    pub align: bool,
    /// Weight matching for the per-group gain/churn diagnostics.
    #[arg(long = "matching", value_enum, default_value = "auto")]
    pub mode: Matching,
    #[command(flatten)]
    pub matching: MatchArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub plot: PlotArgs,
}

/// The basin check options of `avg` and `ema`.
#[derive(Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Refuse to write (exit 3) when the inputs look disconnected (different basins); after --align, also when the aligned pair is still uncertain.
    #[arg(long)]
    pub strict_basin: bool,
    /// Skip the basin check (one streaming pass over the inputs).
    #[arg(long, conflicts_with = "strict_basin")]
    pub no_basin_check: bool,
}
