//! ZCA whitening with Kornia `ZCAWhitening(eps, unbiased=True)` semantics:
//! `C = X̄ᵀX̄/(N−1)` over centred flattened images, `C = U diag(λ) Uᵀ`,
//! `W = U diag(1/√(λ+eps)) Uᵀ`, `transform(x) = (x − μ)·W`, `inverse(y) = y·W⁻¹ + μ`
//! with `W⁻¹ = U diag(√(λ+eps)) Uᵀ`.
//!
//! The covariance is accumulated by faer matrix products over chunks of rows (so fitting streams
//! a u8-backed dataset); everything runs in f32, as Kornia does on f32 tensors.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par, Side};
use ndarray::{Array4, ArrayView4};

use super::dataset::Dataset;

/// Kornia's and MTT's regularisation.
pub const DEFAULT_EPS: f32 = 0.1;

/// Rows per chunk when accumulating the covariance or transforming.
const CHUNK: usize = 2048;

/// A fitted ZCA transform for images of one shape.
#[derive(Clone, Debug)]
pub struct Zca {
    eps: f32,
    chw: [usize; 3],
    mean: Vec<f32>,
    /// Eigenvalues of the covariance, ascending.
    eigenvalues: Vec<f32>,
    w: Mat<f32>,
    w_inv: Mat<f32>,
}

fn par() -> Par {
    Par::rayon(0)
}

impl Zca {
    /// Fits on a batch of images (N×C×H×W, N ≥ 2).
    pub fn fit(x: ArrayView4<f32>, eps: f32) -> Result<Self> {
        let (n, c, h, w) = x.dim();
        let x = x.as_standard_layout();
        let data = x
            .as_slice()
            .ok_or_else(|| anyhow!("non-contiguous input"))?;
        let d = c * h * w;
        Self::fit_rows(
            n,
            [c, h, w],
            eps,
            |r0, r1| Ok(data[r0 * d..r1 * d].to_vec()),
        )
    }

    /// Fits on every image of `ds` (normalised), streaming it in chunks.
    pub fn fit_dataset(ds: &Dataset, eps: f32) -> Result<Self> {
        Self::fit_rows(ds.len(), ds.image_shape(), eps, |r0, r1| {
            let idx: Vec<usize> = (r0..r1).collect();
            Ok(ds.batch(&idx).into_raw_vec_and_offset().0)
        })
    }

    /// Fits from rows produced by `rows(r0, r1)` (row-major, `(r1−r0)×D`).
    fn fit_rows(
        n: usize,
        chw: [usize; 3],
        eps: f32,
        rows: impl Fn(usize, usize) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        ensure!(n >= 2, "ZCA needs at least 2 images, got {n}");
        ensure!(eps >= 0.0, "ZCA eps must be non-negative");
        let d: usize = chw.iter().product();
        let chunks = || {
            (0..n)
                .step_by(CHUNK)
                .map(move |r0| (r0, (r0 + CHUNK).min(n)))
        };

        let mut sum = vec![0f64; d];
        for (r0, r1) in chunks() {
            let v = rows(r0, r1)?;
            for row in v.chunks_exact(d) {
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += f64::from(x);
                }
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();

        let scale = (1.0 / (n as f64 - 1.0)) as f32;
        // Only the lower triangle is accumulated (half the flops); the eigensolver reads no more.
        let mut cov = Mat::<f32>::zeros(d, d);
        for (r0, r1) in chunks() {
            let mut v = rows(r0, r1)?;
            for row in v.chunks_exact_mut(d) {
                for (x, m) in row.iter_mut().zip(&mean) {
                    *x -= m;
                }
            }
            let xc = MatRef::from_row_major_slice(&v, r1 - r0, d);
            triangular::matmul(
                cov.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Add,
                xc.transpose(),
                BlockStructure::Rectangular,
                xc,
                BlockStructure::Rectangular,
                scale,
                par(),
            );
        }
        // f32 like Kornia's SVD; eigenvalues below the 0.1 regularisation barely matter.
        let evd = cov
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| anyhow!("ZCA eigendecomposition failed: {e:?}"))?;
        drop(cov);
        let u = evd.U();
        let lam: Vec<f32> = (0..d)
            .map(|k| evd.S().column_vector()[k].max(0.0))
            .collect();
        let scaled = |f: &dyn Fn(f32) -> f32| -> Mat<f32> {
            let us = Mat::<f32>::from_fn(d, d, |i, k| u[(i, k)] * f(lam[k]));
            let mut m = Mat::<f32>::zeros(d, d);
            matmul(
                m.as_mut(),
                Accum::Replace,
                us.as_ref(),
                u.transpose(),
                1.0,
                par(),
            );
            m
        };
        let w = scaled(&|l| 1.0 / (l + eps).sqrt());
        let w_inv = scaled(&|l| (l + eps).sqrt());
        Ok(Self {
            eps,
            chw,
            mean,
            eigenvalues: lam,
            w,
            w_inv,
        })
    }

    /// The regularisation added to the eigenvalues.
    pub fn eps(&self) -> f32 {
        self.eps
    }
    /// `[C, H, W]` of the images it was fitted on.
    pub fn image_shape(&self) -> [usize; 3] {
        self.chw
    }
    /// Mean of the flattened training images.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
    /// Eigenvalues of the training covariance, ascending (clamped at 0).
    pub fn eigenvalues(&self) -> &[f32] {
        &self.eigenvalues
    }

    fn map(&self, x: ArrayView4<f32>, inverse: bool) -> Result<Array4<f32>> {
        let (n, c, h, w) = x.dim();
        ensure!(
            [c, h, w] == self.chw,
            "ZCA fitted on images {:?}, given {:?}",
            self.chw,
            [c, h, w]
        );
        let d = c * h * w;
        let mut data = x
            .as_standard_layout()
            .into_owned()
            .into_raw_vec_and_offset()
            .0;
        let mut out = vec![0f32; n * d];
        for r0 in (0..n).step_by(CHUNK) {
            let r1 = (r0 + CHUNK).min(n);
            let src = &mut data[r0 * d..r1 * d];
            if !inverse {
                for row in src.chunks_exact_mut(d) {
                    for (v, m) in row.iter_mut().zip(&self.mean) {
                        *v -= m;
                    }
                }
            }
            let a = MatRef::from_row_major_slice(src, r1 - r0, d);
            let mut y = Mat::<f32>::zeros(r1 - r0, d);
            let m = if inverse { &self.w_inv } else { &self.w };
            matmul(y.as_mut(), Accum::Replace, a, m.as_ref(), 1.0f32, par());
            for (i, row) in out[r0 * d..r1 * d].chunks_exact_mut(d).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = y[(i, j)] + if inverse { self.mean[j] } else { 0.0 };
                }
            }
        }
        Ok(Array4::from_shape_vec((n, c, h, w), out)?)
    }

    /// Whitens a batch: `(x − μ)·W`.
    pub fn transform(&self, x: ArrayView4<f32>) -> Result<Array4<f32>> {
        self.map(x, false)
    }

    /// Undoes [`Zca::transform`]: `y·W⁻¹ + μ`.
    pub fn inverse(&self, y: ArrayView4<f32>) -> Result<Array4<f32>> {
        self.map(y, true)
    }

    /// The whole dataset whitened (f32 storage, same labels and constants).
    pub fn transform_dataset(&self, ds: &Dataset) -> Result<Dataset> {
        ds.map_batches(CHUNK, |x| self.transform(x))
    }

    /// Saves as safetensors (`mean`, `w`, `w_inv`, `eigenvalues`; metadata `eps`, `shape`),
    /// atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.mean.len();
        let bytes = |v: &mut dyn Iterator<Item = f32>| -> Vec<u8> {
            v.flat_map(|x| x.to_le_bytes()).collect()
        };
        let mat = |m: &Mat<f32>| bytes(&mut (0..d * d).map(|k| m[(k / d, k % d)]));
        let mean = bytes(&mut self.mean.iter().copied());
        let eig = bytes(&mut self.eigenvalues.iter().copied());
        let (w, w_inv) = (mat(&self.w), mat(&self.w_inv));
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        let views = vec![
            ("mean", TensorView::new(Dtype::F32, vec![d], &mean)?),
            ("eigenvalues", TensorView::new(Dtype::F32, vec![d], &eig)?),
            ("w", TensorView::new(Dtype::F32, vec![d, d], &w)?),
            ("w_inv", TensorView::new(Dtype::F32, vec![d, d], &w_inv)?),
        ];
        let meta = HashMap::from([
            ("eps".to_string(), self.eps.to_string()),
            (
                "shape".to_string(),
                format!("{},{},{}", self.chw[0], self.chw[1], self.chw[2]),
            ),
            ("format".to_string(), "tesla-zca-1".to_string()),
        ]);
        let buf = safetensors::serialize(views, Some(meta))?;
        crate::atomic_file::write(path, &buf)
    }

    /// Loads a transform written by [`Zca::save`]; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let ctx = || format!("reading ZCA file {}", path.display());
        let buf = std::fs::read(path).with_context(ctx)?;
        Self::from_bytes(&buf).with_context(ctx)
    }

    fn from_bytes(buf: &[u8]) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(buf)?;
        let info = meta.metadata().clone().unwrap_or_default();
        let eps: f32 = info
            .get("eps")
            .context("no `eps` metadata")?
            .parse()
            .context("bad `eps` metadata")?;
        let chw: Vec<usize> = info
            .get("shape")
            .context("no `shape` metadata")?
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .context("bad `shape` metadata")?;
        ensure!(chw.len() == 3, "`shape` metadata must be C,H,W");
        let d: usize = chw.iter().product();
        let st = safetensors::SafeTensors::deserialize(buf)?;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .with_context(|| format!("no tensor `{name}`"))?;
            ensure!(
                t.dtype() == safetensors::Dtype::F32 && t.shape() == shape,
                "tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            );
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let mean = get("mean", &[d])?;
        let eigenvalues = get("eigenvalues", &[d])?;
        let wv = get("w", &[d, d])?;
        let wiv = get("w_inv", &[d, d])?;
        Ok(Self {
            eps,
            chw: [chw[0], chw[1], chw[2]],
            mean,
            eigenvalues,
            w: Mat::from_fn(d, d, |i, j| wv[i * d + j]),
            w_inv: Mat::from_fn(d, d, |i, j| wiv[i * d + j]),
        })
    }
}
