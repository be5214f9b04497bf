//! Placeholder: replaced by the exact LAPJV solver.
use crate::error::{Error, Result};

pub struct Assignment {
    pub perm: Vec<usize>,
    pub score: f64,
}

pub fn maximize(
    scores: &[f64],
    n: usize,
    _warm: Option<&[usize]>,
    group: &str,
) -> Result<Assignment> {
    if scores.iter().any(|x| !x.is_finite()) {
        return Err(Error::Assignment {
            group: group.into(),
            reason: "non-finite".into(),
        });
    }
    // shortest augmenting path (minimise -s)
    let c = |i: usize, j: usize| -scores[i * n + j];
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = c(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut perm = vec![0; n];
    for j in 1..=n {
        if p[j] > 0 {
            perm[p[j] - 1] = j - 1;
        }
    }
    let score = (0..n).map(|i| scores[i * n + perm[i]]).sum();
    Ok(Assignment { perm, score })
}
