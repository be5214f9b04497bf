//! What weight matching reads: [`WeightSource`]s, i.e. checkpoints, views
//! of a source through a permutation ([`Permuted`]) and the mean of several
//! sources ([`Mean`], MergeMany's target), and the objective
//! `Σ_t ⟨A_t, B_t⟩` over them.

use rayon::prelude::*;

use crate::checkpoint::stream::TensorSource;
use crate::checkpoint::{Checkpoint, dtype};
use crate::error::Result;
use crate::permute::{ModelPermutation, permuted};

/// Weights that can be read as f32 tensors by name: a checkpoint, or a
/// virtual model such as the mean of several checkpoints.
pub trait WeightSource: Sync {
    /// Shape of a tensor.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// A float tensor decoded to f32.
    fn read(&self, name: &str) -> Result<Vec<f32>>;
    /// Names of all float tensors.
    fn float_names(&self) -> Vec<String>;
    /// The slices `rows` (indices along axis 0, in this order) of a float
    /// tensor, decoded to f32 and concatenated. The default reads the whole
    /// tensor; checkpoints and permuted views decode only what is asked, so
    /// large tensors can be streamed in row chunks.
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let shape = self.shape(name)?;
        let x = self.read(name)?;
        let row: usize = shape.iter().skip(1).product();
        let mut out = Vec::with_capacity(rows.len() * row);
        for &r in rows {
            out.extend_from_slice(&x[r * row..(r + 1) * row]);
        }
        Ok(out)
    }
}

/// Row chunks of a tensor streamed through a similarity matrix or the
/// objective: four stream chunks ([`crate::checkpoint::stream::CHUNK_ELEMS`]),
/// 16 MiB of f32, so each GEMM is large enough to run at full speed.
pub(crate) const ROWS_CHUNK_ELEMS: usize = 4 * crate::checkpoint::stream::CHUNK_ELEMS;

impl WeightSource for Checkpoint {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.require(name)?.shape.clone())
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        if !dtype::is_float(t.dtype) {
            return self.read_f32(t);
        }
        let src = TensorSource::plain(self, t);
        let mut out = Vec::new();
        src.decode_f32(0..t.numel(), &mut out, &mut Vec::new());
        src.release(0..t.numel());
        Ok(out)
    }
    fn float_names(&self) -> Vec<String> {
        self.tensors()
            .iter()
            .filter(|t| dtype::is_float(t.dtype))
            .map(|t| t.name.clone())
            .collect()
    }
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        if !dtype::is_float(t.dtype) {
            return self.read_f32(t);
        }
        let row: usize = t.shape.iter().skip(1).product();
        let src = TensorSource::plain(self, t);
        let mut out = vec![0f32; rows.len() * row];
        // Decode runs of consecutive rows at once, then drop their pages.
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[j - 1] + 1 {
                j += 1;
            }
            let elems = rows[i] * row..(rows[j - 1] + 1) * row;
            src.decode_f32_into(elems.clone(), &mut out[i * row..j * row], &mut Vec::new());
            src.release(elems);
            i = j;
        }
        Ok(out)
    }
}

/// A checkpoint seen through a permutation.
pub struct Permuted<'a> {
    pub source: &'a dyn WeightSource,
    pub perm: &'a ModelPermutation,
}

impl WeightSource for Permuted<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.source.shape(name)
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let x = self.source.read(name)?;
        Ok(match self.perm.get(name) {
            Some(p) => permuted(&x, &self.source.shape(name)?, p),
            None => x,
        })
    }
    fn float_names(&self) -> Vec<String> {
        self.source.float_names()
    }
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let Some(p) = self.perm.get(name) else {
            return self.source.read_rows(name, rows);
        };
        let shape = self.source.shape(name)?;
        let src_rows: Vec<usize> = match p.axes.first().and_then(|m| m.as_ref()) {
            Some(m) => rows.iter().map(|&r| m[r]).collect(),
            None => rows.to_vec(),
        };
        let x = self.source.read_rows(name, &src_rows)?;
        if p.axes.iter().skip(1).all(|m| m.is_none()) {
            return Ok(x);
        }
        let mut rest = p.clone();
        rest.axes[0] = None;
        let mut sub = shape;
        sub[0] = rows.len();
        Ok(permuted(&x, &sub, &rest))
    }
}

/// The element-wise mean of several sources (MergeMany's target).
pub struct Mean<'a> {
    pub sources: Vec<&'a dyn WeightSource>,
}

impl WeightSource for Mean<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.sources[0].shape(name)
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let mut acc = self.sources[0].read(name)?;
        for s in &self.sources[1..] {
            for (a, b) in acc.iter_mut().zip(s.read(name)?) {
                *a += b;
            }
        }
        let k = self.sources.len() as f32;
        acc.iter_mut().for_each(|a| *a /= k);
        Ok(acc)
    }
    fn float_names(&self) -> Vec<String> {
        self.sources[0].float_names()
    }
    fn read_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let mut acc = self.sources[0].read_rows(name, rows)?;
        for s in &self.sources[1..] {
            for (a, b) in acc.iter_mut().zip(s.read_rows(name, rows)?) {
                *a += b;
            }
        }
        let k = self.sources.len() as f32;
        acc.iter_mut().for_each(|a| *a /= k);
        Ok(acc)
    }
}

/// Σ_t ⟨A_t, B_t⟩ over the given float tensors, in f64.
pub fn objective(a: &dyn WeightSource, b: &dyn WeightSource, names: &[String]) -> Result<f64> {
    names
        .par_iter()
        .map(|n| {
            let dot = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| *p as f64 * *q as f64)
                    .sum::<f64>()
            };
            let shape = a.shape(n)?;
            let numel: usize = shape.iter().product();
            if numel <= ROWS_CHUNK_ELEMS || shape.len() < 2 {
                return Ok(dot(&a.read(n)?, &b.read(n)?));
            }
            // Large tensors in row chunks: no whole f32 copies.
            let row: usize = shape[1..].iter().product::<usize>().max(1);
            let per = (ROWS_CHUNK_ELEMS / row).max(1);
            let mut sum = 0.0;
            for start in (0..shape[0]).step_by(per) {
                let rows: Vec<usize> = (start..(start + per).min(shape[0])).collect();
                sum += dot(&a.read_rows(n, &rows)?, &b.read_rows(n, &rows)?);
            }
            Ok(sum)
        })
        .try_reduce(|| 0.0, |p, q| Ok(p + q))
}

/// Tensors in memory, by name: shape and f32 values (with the default
/// `read_rows`), for the tests of weight matching.
#[cfg(test)]
pub(crate) struct Mem(pub(crate) std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>);

#[cfg(test)]
impl WeightSource for Mem {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.0[name].0.clone())
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.0[name].1.clone())
    }
    fn float_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.keys().cloned().collect();
        v.sort();
        v
    }
}
