//! A reference evaluator for MLP checkpoints (a chain of Linear layers with
//! ReLU between them), and the loss barrier along the linear interpolation
//! path between two such checkpoints (Frankle et al. 2020, "Linear Mode
//! Connectivity and the Lottery Ticket Hypothesis"; the barrier as defined in
//! Ainsworth et al. 2022, §3):
//!
//! `barrier = max_α [ L((1−α)A + αB) − ((1−α)L(A) + αL(B)) ]`
//!
//! with `L` the mean softmax cross-entropy over a data file holding `x`
//! (float `[N, D]`) and `y` (integer class labels `[N]`). A barrier near zero means
//! A and B are linearly connected (one basin); a clearly positive one means
//! the midpoint sits on a ridge of high loss.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::alignment::WeightSource;
use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, ModelError, Result, TensorError, UsageError};
use crate::spec::infer::natural_cmp;

/// Most points on an interpolation path (`barrier --steps`).
pub const MAX_PATH_POINTS: usize = 10_000;

/// A labelled data set.
pub struct Dataset {
    pub x: Array2<f32>,
    pub y: Vec<usize>,
    /// The file it was read from (named in errors), if any.
    pub path: Option<std::path::PathBuf>,
}

impl Dataset {
    /// Loads `x` and `y` from a safetensors file.
    pub fn load(path: &Path) -> Result<Self> {
        let ckpt = Checkpoint::open(path)?;
        let xt = ckpt.require("x")?;
        if xt.shape.len() != 2 || !dtype::is_float(xt.dtype) {
            return Err(Error::tensor(path, "x", TensorError::NotAMatrix));
        }
        if xt.shape[0] == 0 {
            return Err(Error::tensor(path, "x", TensorError::NoRows));
        }
        let x = Array2::from_shape_vec((xt.shape[0], xt.shape[1]), ckpt.read_f32(xt)?)
            .map_err(|e| Error::tensor(path, "x", TensorError::Shape(e)))?;
        let bad = x.iter().filter(|v| !v.is_finite()).count() as u64;
        if bad > 0 {
            return Err(Error::tensor(
                path,
                "x",
                TensorError::NonFinite { count: bad },
            ));
        }
        let yt = ckpt.require("y")?;
        let bytes = ckpt.bytes(yt);
        let y: Vec<i64> = match yt.dtype {
            safetensors::Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
            safetensors::Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
            other => {
                return Err(Error::tensor(path, "y", TensorError::LabelDtype(other)));
            }
        };
        if y.len() != x.nrows() {
            return Err(Error::tensor(
                path,
                "y",
                TensorError::LabelCount {
                    labels: y.len(),
                    rows: x.nrows(),
                },
            ));
        }
        let y = y
            .into_iter()
            .map(|v| {
                usize::try_from(v)
                    .map_err(|_| Error::tensor(path, "y", TensorError::NegativeLabel(v)))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            x,
            y,
            path: Some(path.to_path_buf()),
        })
    }
}

/// Loss and accuracy of a model on a data set.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
}

/// The Linear layers of an MLP, in order.
#[derive(Clone, Debug)]
pub struct MlpLayout {
    /// (weight name, bias name if any)
    pub layers: Vec<(String, Option<String>)>,
}

impl MlpLayout {
    /// Finds the Linear layers (2-D `*.weight`, optional `*.bias`) in natural
    /// name order and checks they chain.
    pub fn infer(src: &dyn WeightSource) -> Result<Self> {
        let names = src.float_names();
        let mut weights: Vec<String> = names
            .iter()
            .filter(|n| n.ends_with(".weight") || *n == "weight")
            .cloned()
            .collect();
        weights.sort_by(|a, b| natural_cmp(a, b));
        let mut layers = Vec::new();
        let mut prev_out: Option<usize> = None;
        for w in weights {
            let shape = src.shape(&w)?;
            if shape.len() != 2 {
                return Err(ModelError::NotLinear(w).into());
            }
            if let Some(p) = prev_out
                && shape[1] != p
            {
                return Err(ModelError::Chain {
                    tensor: w,
                    inputs: shape[1],
                    outputs: p,
                }
                .into());
            }
            prev_out = Some(shape[0]);
            let bias = w
                .strip_suffix("weight")
                .map(|p| format!("{p}bias"))
                .filter(|b| names.contains(b));
            if let Some(b) = &bias {
                let bs = src.shape(b)?;
                if bs != [shape[0]] {
                    return Err(ModelError::Bias {
                        tensor: b.clone(),
                        shape: bs,
                        outputs: shape[0],
                    }
                    .into());
                }
            }
            layers.push((w, bias));
        }
        let used: usize = layers
            .iter()
            .map(|(_, b)| 1 + usize::from(b.is_some()))
            .sum();
        if layers.is_empty() || used != names.len() {
            return Err(ModelError::NotAChain.into());
        }
        Ok(Self { layers })
    }
}

/// Float tensors held in memory by name (an interpolated model).
pub struct InMemory {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl WeightSource for InMemory {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|t| t.0.clone())
            .ok_or_else(|| ModelError::NoTensor(name.to_string()).into())
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        self.tensors
            .get(name)
            .map(|t| t.1.clone())
            .ok_or_else(|| ModelError::NoTensor(name.to_string()).into())
    }
    fn float_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// `(1−α)·A + α·B` per tensor, in f32 as `torch.lerp`-free scripts compute it.
pub fn interpolate(a: &dyn WeightSource, b: &dyn WeightSource, alpha: f32) -> Result<InMemory> {
    let tensors = a
        .float_names()
        .into_par_iter()
        .map(|n| {
            let x = a.read(&n)?;
            let y = b.read(&n)?;
            let v = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (1.0 - alpha) * p + alpha * q)
                .collect();
            Ok((n.clone(), (a.shape(&n)?, v)))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(InMemory { tensors })
}

/// Logits of the MLP `model` for inputs `x` ([N, D]).
pub fn forward(
    model: &dyn WeightSource,
    layout: &MlpLayout,
    x: &Array2<f32>,
) -> Result<Array2<f32>> {
    let mut h = x.clone();
    for (k, (w, b)) in layout.layers.iter().enumerate() {
        let shape = model.shape(w)?;
        if k == 0 && shape[1] != h.ncols() {
            return Err(ModelError::Features {
                tensor: w.clone(),
                expects: shape[1],
                features: h.ncols(),
            }
            .into());
        }
        let wv = model.read(w)?;
        let wm = ArrayView2::from_shape((shape[0], shape[1]), &wv).map_err(ModelError::Shape)?;
        let mut z = h.dot(&wm.t());
        if let Some(b) = b {
            let bv = model.read(b)?;
            for mut row in z.axis_iter_mut(Axis(0)) {
                row.iter_mut().zip(&bv).for_each(|(x, b)| *x += b);
            }
        }
        if k + 1 < layout.layers.len() {
            z.mapv_inplace(|v| v.max(0.0));
        }
        h = z;
    }
    Ok(h)
}

/// Mean cross-entropy and accuracy of the MLP `model` on `data`.
pub fn evaluate(
    model: &dyn WeightSource,
    layout: &MlpLayout,
    data: &Dataset,
) -> Result<Evaluation> {
    let h = forward(model, layout, &data.x)?;
    let classes = h.ncols();
    let mut loss = 0.0f64;
    let mut correct = 0usize;
    for (row, &y) in h.axis_iter(Axis(0)).zip(&data.y) {
        if y >= classes {
            return Err(ModelError::Label { label: y, classes }.into());
        }
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        loss += lse - row[y] as f64;
        let argmax = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            )
            .0;
        correct += usize::from(argmax == y);
    }
    let n = data.y.len().max(1) as f64;
    Ok(Evaluation {
        loss: loss / n,
        accuracy: correct as f64 / n,
    })
}

/// One point of the interpolation path.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PathPoint {
    pub alpha: f64,
    pub loss: f64,
    pub accuracy: f64,
}

/// The loss barrier along `(1−α)A + αB` at `steps` evenly spaced α in [0, 1].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Barrier {
    pub path: Vec<PathPoint>,
    /// max_α L(mix) − ((1−α)L(A) + αL(B)).
    pub barrier: f64,
    /// α where the barrier is attained.
    pub alpha_max: f64,
}

/// Measures the loss barrier between two MLPs on `data`.
pub fn barrier(
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    data: &Dataset,
    steps: usize,
) -> Result<Barrier> {
    if !(2..=MAX_PATH_POINTS).contains(&steps) {
        return Err(UsageError::PathPoints(steps).into());
    }
    let layout = MlpLayout::infer(a)?;
    // Errors that come from the data (feature count, labels) name its file.
    let on_data = |e: Error| match (&data.path, e) {
        (Some(p), Error::Model(m @ (ModelError::Features { .. } | ModelError::Label { .. }))) => {
            Error::Data {
                path: p.clone(),
                source: m,
            }
        }
        (_, e) => e,
    };
    let mut path = Vec::with_capacity(steps);
    for i in 0..steps {
        let alpha = i as f64 / (steps - 1) as f64;
        let e = if i == 0 {
            evaluate(a, &layout, data)
        } else if i + 1 == steps {
            evaluate(b, &layout, data)
        } else {
            evaluate(&interpolate(a, b, alpha as f32)?, &layout, data)
        }
        .map_err(on_data)?;
        path.push(PathPoint {
            alpha,
            loss: e.loss,
            accuracy: e.accuracy,
        });
    }
    let (la, lb) = (path[0].loss, path[steps - 1].loss);
    let (mut best, mut at) = (f64::NEG_INFINITY, 0.0);
    for p in &path {
        let excess = p.loss - ((1.0 - p.alpha) * la + p.alpha * lb);
        if excess > best {
            best = excess;
            at = p.alpha;
        }
    }
    Ok(Barrier {
        path,
        barrier: best,
        alpha_max: at,
    })
}
