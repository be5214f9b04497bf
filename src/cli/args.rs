//! Argument definitions (clap derive). Only shapes and parsing live here;
//! semantic validation happens in each command and in the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "polymerge",
    version,
    about = "Permutation-aware merging of neural-network checkpoints (safetensors)",
    long_about = "Permutation-aware merging of neural-network checkpoints.\n\n\
Reads safetensors checkpoints (single files, Hugging Face sharded checkpoints \
or model directories) memory-mapped, averages them with PyTorch's exact \
numerics, aligns hidden units by weight matching (Git Re-Basin) and computes \
offline EMAs of checkpoint trajectories.",
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
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
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
    #[arg(long)]
    pub dtype: Option<String>,
    /// Make NaN/Inf values in the inputs an error instead of a warning.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}
