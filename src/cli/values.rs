//! Value parsers of the flags: each checks one value (a size, a step list,
//! an EMA parameter) so that clap reports a bad one as a usage error before
//! anything is read.

use polymerge::ema::{self, Decay, EmaProfile};

/// A parsed `--steps` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepList(pub Vec<u64>);

/// A parsed size (`--max-shard-size`), in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A positive, finite number (`--warmup-inv-gamma`, `--warmup-power`).
pub fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a positive number, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

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

/// A memory budget: a size as [`parse_size`] reads it, or `0` for none.
pub fn parse_budget(s: &str) -> Result<ByteSize, String> {
    if s.trim() == "0" {
        return Ok(ByteSize(0));
    }
    parse_size(s)
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
