//! Times the solve of one dense assignment problem read from a file.
//!
//! ```text
//! lap_bench MATRIX.bin N [--warm PERM.bin] [--repeat R] [--min-time SECONDS]
//!           [--kuhn-munkres [--scale S]]
//! ```
//!
//! `MATRIX.bin` holds `N*N` little-endian `f64` scores, row-major. The
//! program maximises Σ s[i, perm[i]] with `polymerge::assignment::maximize`
//! (with `--kuhn-munkres`: with `pathfinding::kuhn_munkres` on the scores
//! multiplied by `S`, default 1e6, and rounded to `i64`) and prints one JSON
//! line
//!
//! ```text
//! {"n":..,"seconds":..,"cpu_seconds":..,"score":.., <solver counters>}
//! ```
//!
//! The solve runs at least R times (default 1) and until SECONDS have
//! passed (default 0). `seconds` is the smallest wall time of one solve
//! (reading the file is not timed) and `cpu_seconds` the mean CPU time of
//! the solving thread per solve (from `/proc/thread-self/schedstat`, `null`
//! elsewhere), which other processes competing for the cores disturb less.
//! `score` is Σ s[i, perm[i]] of the permutation found, in `f64`. `--warm PERM.bin` passes `N`
//! little-endian `u64` column indices as the warm-start hint.

use std::process::ExitCode;
use std::time::Instant;

use polymerge::assignment::{SolveStats, maximize_with_stats};

const USAGE: &str = "usage: lap_bench MATRIX.bin N [--warm PERM.bin] [--repeat R] \
                     [--min-time SECONDS] [--kuhn-munkres [--scale S]]";

fn read_words(path: &str) -> Result<Vec<[u8; 8]>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() % 8 != 0 {
        return Err(format!(
            "{path}: length {} is not a multiple of 8",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|b| b.try_into().expect("chunks of 8 bytes"))
        .collect())
}

/// CPU time of the calling thread in seconds (Linux `schedstat`).
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

/// Runs `solve` at least `repeat` times and until `min_time` seconds have
/// passed; returns the smallest wall time, the mean CPU time per solve and
/// the last result. (The CPU clock advances in scheduler ticks, hence the
/// mean over a long enough run rather than a minimum.)
fn timed<T>(
    repeat: usize,
    min_time: f64,
    mut solve: impl FnMut() -> Result<T, String>,
) -> Result<(f64, Option<f64>, T), String> {
    let mut best_wall = f64::INFINITY;
    let mut runs = 0usize;
    let cpu0 = thread_cpu_seconds();
    let start = Instant::now();
    let mut last = None;
    while runs < repeat.max(1) || start.elapsed().as_secs_f64() < min_time {
        let t0 = Instant::now();
        last = Some(solve()?);
        best_wall = best_wall.min(t0.elapsed().as_secs_f64());
        runs += 1;
    }
    let cpu = cpu0
        .zip(thread_cpu_seconds())
        .map(|(a, b)| (b - a) / runs as f64);
    Ok((best_wall, cpu, last.expect("at least one run")))
}

fn stats_json(st: &SolveStats) -> String {
    format!(
        ",\"warm_used\":{},\"warm_kept\":{},\"warm_relaxations\":{},\"constant_rows\":{},\
         \"augmentations\":{},\"scanned_columns\":{},\"arr_steps\":{}",
        st.warm_used,
        st.warm_kept,
        st.warm_relaxations,
        st.constant_rows,
        st.augmentations,
        st.scanned_columns,
        st.arr_steps
    )
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(n)) = (args.first(), args.get(1)) else {
        return Err(USAGE.to_string());
    };
    let n: usize = n.parse().map_err(|_| format!("bad N `{n}`"))?;
    let mut warm = None;
    let mut kuhn_munkres = false;
    let mut scale = 1e6;
    let mut repeat = 1usize;
    let mut min_time = 0.0f64;
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().ok_or(USAGE.to_string());
        match flag.as_str() {
            "--warm" => {
                let words = read_words(value()?)?;
                warm = Some(
                    words
                        .into_iter()
                        .map(|w| u64::from_le_bytes(w) as usize)
                        .collect::<Vec<_>>(),
                );
            }
            "--kuhn-munkres" => kuhn_munkres = true,
            "--scale" => {
                let s = value()?;
                scale = s.parse().map_err(|_| format!("bad scale `{s}`"))?;
            }
            "--repeat" => {
                let r = value()?;
                repeat = r.parse().map_err(|_| format!("bad repeat count `{r}`"))?;
            }
            "--min-time" => {
                let t = value()?;
                min_time = t.parse().map_err(|_| format!("bad time `{t}`"))?;
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let scores: Vec<f64> = read_words(path)?
        .into_iter()
        .map(f64::from_le_bytes)
        .collect();
    if scores.len() != n * n {
        return Err(format!("{path}: {} values, expected {n}×{n}", scores.len()));
    }
    let (seconds, cpu, perm, extra) = if kuhn_munkres {
        let ints: Vec<i64> = scores.iter().map(|&s| (s * scale).round() as i64).collect();
        let (seconds, cpu, perm) = timed(repeat, min_time, || {
            let weights = pathfinding::matrix::Matrix::from_vec(n, n, ints.clone())
                .map_err(|e| format!("{e:?}"))?;
            Ok(pathfinding::kuhn_munkres::kuhn_munkres(&weights).1)
        })?;
        (seconds, cpu, perm, String::new())
    } else {
        let (seconds, cpu, (assignment, stats)) = timed(repeat, min_time, || {
            maximize_with_stats(&scores, n, warm.as_deref(), "bench").map_err(|e| e.to_string())
        })?;
        (seconds, cpu, assignment.perm, stats_json(&stats))
    };
    let score: f64 = perm
        .iter()
        .enumerate()
        .map(|(i, &j)| scores[i * n + j])
        .sum();
    let cpu = cpu.map_or("null".to_string(), |c| c.to_string());
    println!(
        "{{\"n\":{n},\"seconds\":{seconds},\"cpu_seconds\":{cpu},\"score\":{score:.17e}{extra}}}"
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lap_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
