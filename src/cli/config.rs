//! From parsed arguments to the library's configuration: conversions of
//! argument structs into
//! [`MatchOptions`], [`Output`], dtypes and EMA profiles. Combinations clap
//! cannot express are checked here, still before any checkpoint is read,
//! and reported as usage errors (exit 2).

use clap::CommandFactory;
use clap::error::ErrorKind;
use polymerge::alignment::AlignOptions;
use polymerge::average::Accumulation;
use polymerge::ema::{Decay, EmaProfile, Warmup};
use polymerge::pipeline::{BasinGate, MatchOptions, Output};
use polymerge::spec::{PermutationSpec, SpecSource};
use polymerge::write::WriteMode;
use safetensors::Dtype;

use super::args::{
    AccumKind, CheckArgs, Cli, EmaArgs, FloatDtype, MatchArgs, OutputArgs, WarmupKind,
};

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
    /// Weight matching as the flags ask (no starting permutations). A
    /// `--spec` file is read and parsed here, before any checkpoint.
    pub fn options(&self) -> polymerge::Result<MatchOptions> {
        Ok(MatchOptions {
            spec: match &self.spec {
                Some(p) => SpecSource::Given(PermutationSpec::load(p)?),
                None if self.shared_heads => SpecSource::InferSharedHeads,
                None => SpecSource::Infer,
            },
            groups: self.groups.clone(),
            align: AlignOptions {
                seed: self.seed,
                max_iter: self.max_iter,
                init: None,
                restarts: self.restarts as usize,
                term_cache: usize::try_from(self.term_cache.0).unwrap_or(usize::MAX),
                term_updates: !self.exact_terms,
            },
        })
    }
}

impl CheckArgs {
    /// The basin gate of `--strict-basin` / `--no-basin-check`.
    pub fn gate(&self) -> BasinGate {
        if self.no_basin_check {
            BasinGate::Off
        } else if self.strict_basin {
            BasinGate::Refuse
        } else {
            BasinGate::Warn
        }
    }
}

impl OutputArgs {
    /// The output: layout and `--force`.
    pub fn output(&self) -> Output {
        let mode = if self.direct_io {
            WriteMode::Direct
        } else {
            WriteMode::PageCache
        };
        Output::new(&self.output, self.max_shard_size.0)
            .force(self.force)
            .write_mode(mode)
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
