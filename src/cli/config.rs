//! From parsed arguments to the library's configuration: value parsers
//! used by [`super::args`], and conversions of argument structs into
//! [`MatchOptions`], [`Output`], dtypes and EMA profiles. Combinations clap
//! cannot express are checked here, still before any checkpoint is read,
//! and reported as usage errors (exit 2).

use clap::CommandFactory;
use clap::error::ErrorKind;
use polymerge::alignment::AlignOptions;
use polymerge::average::Accumulation;
use polymerge::ema::{self, Decay, EmaProfile, Warmup};
use polymerge::pipeline::{MatchOptions, Output};
use polymerge::spec::SpecSource;
use safetensors::Dtype;

use super::args::{
    AccumKind, ByteSize, Cli, EmaArgs, FloatDtype, MatchArgs, OutputArgs, StepList, WarmupKind,
};

/// Parses sizes like `5GB` (decimal), `2GiB` (binary), `500MB`, `123`.
pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size `{s}` (expected e.g. 5GB, 500MB, 2GiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => {
            return Err(format!(
                "invalid size unit in `{s}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    let bytes = (value * mult).round();
    if bytes < 1.0 {
        return Err(format!("size `{s}` must be at least one byte"));
    }
    Ok(ByteSize(bytes as u64))
}

/// Parses `--steps 1000,2000,3000`.
pub fn parse_step_list(s: &str) -> Result<StepList, String> {
    ema::parse_steps(s).map(StepList).map_err(|e| e.to_string())
}

/// `--decay β`, checked by [`Decay::from_beta`].
pub fn decay_arg(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    Decay::from_beta(v).map(|_| v).map_err(|e| e.to_string())
}

/// `--half-life STEPS`, checked by [`Decay::from_half_life`].
pub fn half_life_arg(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    Decay::from_half_life(v)
        .map(|_| v)
        .map_err(|e| e.to_string())
}

/// `--tau τ`, checked by [`Decay::from_tau`].
pub fn tau_arg(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    Decay::from_tau(v).map(|_| v).map_err(|e| e.to_string())
}

/// `--power γ`, checked by [`EmaProfile::power`].
pub fn power_arg(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    EmaProfile::power(v).map(|_| v).map_err(|e| e.to_string())
}

/// `--sigma-rel σ`, checked by [`EmaProfile::power_from_sigma_rel`].
pub fn sigma_rel_arg(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    EmaProfile::power_from_sigma_rel(v)
        .map(|_| v)
        .map_err(|e| e.to_string())
}

fn number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("`{s}` is not a number"))
}

/// A usage error (exit 2) in clap's format.
fn usage(kind: ErrorKind, msg: impl std::fmt::Display) -> clap::Error {
    Cli::command().error(kind, msg)
}

/// A usage error about values that do not fit together (exit 2).
pub fn usage_error(msg: impl std::fmt::Display) -> clap::Error {
    usage(ErrorKind::ValueValidation, msg)
}

impl FloatDtype {
    pub fn dtype(self) -> Dtype {
        match self {
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::Bf16 => Dtype::BF16,
            FloatDtype::F64 => Dtype::F64,
        }
    }
}

impl AccumKind {
    pub fn accumulation(self) -> Accumulation {
        match self {
            AccumKind::F32 => Accumulation::Auto,
            AccumKind::F64 => Accumulation::F64,
        }
    }
}

impl MatchArgs {
    /// Weight matching as the flags ask (no starting permutations).
    pub fn options(&self) -> MatchOptions {
        MatchOptions {
            spec: match &self.spec {
                Some(p) => SpecSource::File(p.clone()),
                None => SpecSource::Infer,
            },
            groups: self.groups.clone(),
            align: AlignOptions {
                seed: self.seed,
                max_iter: self.max_iter,
                init: None,
            },
        }
    }
}

impl OutputArgs {
    /// The output: layout and `--force`.
    pub fn output(&self) -> Output {
        Output::new(&self.output, self.max_shard_size.0).force(self.force)
    }

    /// No progress bars or notes: `--quiet`, or `--json` (stdout is for JSON).
    pub fn quiet(&self) -> bool {
        self.quiet || self.json
    }
}

impl EmaArgs {
    /// The EMA profile of the flags; the combinations clap's argument group
    /// cannot rule out are usage errors.
    pub fn ema_profile(&self) -> Result<EmaProfile, clap::Error> {
        let p = &self.profile;
        let warmup = match self.warmup {
            None => None,
            Some(WarmupKind::Rational) => Some(Warmup::Rational),
            Some(WarmupKind::InvGamma) => Some(Warmup::InvGamma {
                inv_gamma: self.warmup_inv_gamma.unwrap_or(1.0),
                power: self.warmup_power.unwrap_or(2.0 / 3.0),
            }),
        };
        if warmup == Some(Warmup::Rational)
            && (self.warmup_inv_gamma.is_some() || self.warmup_power.is_some())
        {
            return Err(usage(
                ErrorKind::ArgumentConflict,
                "the rational warm-up (1+t)/(10+t) takes no --warmup-inv-gamma or --warmup-power",
            ));
        }
        let decay = if let Some(b) = p.decay {
            Some(Decay::from_beta(b))
        } else if let Some(h) = p.half_life {
            Some(Decay::from_half_life(h))
        } else {
            p.tau.map(Decay::from_tau)
        };
        let invalid = |e: polymerge::Error| usage(ErrorKind::ValueValidation, e);
        if let Some(decay) = decay {
            let profile = EmaProfile::Decay {
                decay: decay.map_err(invalid)?,
                warmup,
            };
            profile.validate().map_err(invalid)?;
            return Ok(profile);
        }
        let flag = if p.power.is_some() {
            "--power"
        } else if p.sigma_rel.is_some() {
            "--sigma-rel"
        } else {
            "--window"
        };
        if warmup.is_some() {
            return Err(usage(
                ErrorKind::ArgumentConflict,
                format!("--warmup applies only to --decay, --half-life or --tau, not to {flag}"),
            ));
        }
        if let Some(g) = p.power {
            EmaProfile::power(g).map_err(invalid)
        } else if let Some(s) = p.sigma_rel {
            EmaProfile::power_from_sigma_rel(s).map_err(invalid)
        } else {
            // The argument group makes one profile flag required.
            EmaProfile::window(p.window.unwrap_or(0)).map_err(invalid)
        }
    }
}

#[cfg(test)]
mod tests;
