//! The run state and its checkpoint file (`checkpoint/state.safetensors`): what a resumed run
//! continues from. Reading checks the tensors against each other, [`State::check_fits`] against
//! the dataset, so a damaged checkpoint is an error naming the file and the field.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::config::DistillConfig;
use crate::tensor_file::{read_safetensors_with_metadata, write_safetensors};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, Array2, Array4, ArrayD, Ix2, Ix4};
use std::collections::HashMap;
use std::path::Path;

/// The mutable state of a run (what a checkpoint holds).
pub struct State {
    /// Iterations done.
    pub iteration: usize,
    /// Synthetic images \[N,C,H,W\].
    pub images: Array4<f32>,
    /// Class of each synthetic image.
    pub classes: Vec<u32>,
    /// Image momentum buffer.
    pub images_mom: Array4<f32>,
    /// β, kept in f64 and rounded to f32 after every update (a fresh run's starting β, the
    /// teachers' step size, is kept in full).
    pub beta: f64,
    /// β's momentum buffer (f32-exact).
    pub beta_mom: f64,
    /// Learned label logits \[N,K\] (learned labels only).
    pub label_logits: Option<Array2<f32>>,
    /// Their momentum buffer.
    pub label_mom: Option<Array2<f32>>,
    /// The label rows of the last iteration.
    pub last_labels: Array2<f32>,
}

impl State {
    /// Checks a state read from `path` against the dataset it will continue on.
    pub fn check_fits(&self, path: &Path, classes: usize, image_shape: &[usize]) -> Result<()> {
        let f = path.display();
        if {
            let (_, c, h, w) = self.images.dim();
            [c, h, w]
        } != *image_shape
        {
            bail!(
                "{f}: the checkpoint's images are {:?}, the dataset's {image_shape:?}",
                {
                    let (_, c, h, w) = self.images.dim();
                    [c, h, w]
                }
            );
        }
        if self.last_labels.ncols() != classes {
            bail!(
                "{f}: the checkpoint's labels have {} columns, the dataset has {classes} classes",
                self.last_labels.ncols()
            );
        }
        if let Some((i, c)) = self
            .classes
            .iter()
            .enumerate()
            .find(|(_, &c)| c as usize >= classes)
        {
            bail!("{f}: checkpoint classes[{i}] = {c}, the dataset has {classes} classes");
        }
        Ok(())
    }
}

/// Writes `ck/state.safetensors` atomically: the state with the run's settings.
pub fn write(ck: &Path, st: &State, cfg: &DistillConfig) -> Result<()> {
    std::fs::create_dir_all(ck).with_context(|| format!("cannot create {}", ck.display()))?;
    let classes = Array1::from(st.classes.iter().map(|&c| c as f32).collect::<Vec<_>>());
    let beta = Array1::from(vec![st.beta as f32, st.beta_mom as f32]);
    let mut tensors = vec![
        ("images".to_string(), st.images.clone().into_dyn()),
        ("images_mom".to_string(), st.images_mom.clone().into_dyn()),
        ("classes".to_string(), classes.into_dyn()),
        ("beta".to_string(), beta.into_dyn()),
        ("last_labels".to_string(), st.last_labels.clone().into_dyn()),
    ];
    if let (Some(l), Some(m)) = (&st.label_logits, &st.label_mom) {
        tensors.push(("label_logits".to_string(), l.clone().into_dyn()));
        tensors.push(("label_mom".to_string(), m.clone().into_dyn()));
    }
    let mut meta = HashMap::new();
    meta.insert("iteration".to_string(), st.iteration.to_string());
    // β in full: the state is at f32 precision after the first iteration, but a fresh run's
    // starting β (the teachers' step size) is not, and a run resumed from iteration 0 must
    // continue with the very same value.
    meta.insert("beta".to_string(), format!("{:?}", st.beta));
    meta.insert("config".to_string(), serde_json::to_string(cfg)?);
    write_safetensors(&ck.join("state.safetensors"), &tensors, Some(meta))?;
    Ok(())
}

/// Reads a checkpoint, checking that its tensors agree with each other (shapes, finite values,
/// integral class ids); [`State::check_fits`] checks them against the dataset.
pub fn read(path: &Path) -> Result<(State, DistillConfig)> {
    let f = path.display();
    let (t, meta) = read_safetensors_with_metadata(path)?;
    let get = |n: &str| -> Result<Option<ArrayD<f32>>> {
        let Some(a) = t.iter().find(|(k, _)| k == n).map(|(_, a)| a) else {
            return Ok(None);
        };
        if let Some(v) = a.iter().find(|v| !v.is_finite()) {
            bail!("{f}: checkpoint tensor '{n}' holds {v}");
        }
        Ok(Some(a.clone()))
    };
    let need = |n: &str| get(n)?.ok_or_else(|| anyhow!("{f}: checkpoint lacks '{n}'"));
    let bad_shape = |n: &str| anyhow!("{f}: checkpoint tensor '{n}' has the wrong shape");
    let it: usize = meta
        .get("iteration")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{f}: no iteration in checkpoint"))?;
    let cfg: DistillConfig =
        serde_json::from_str(meta.get("config").map(String::as_str).unwrap_or(""))
            .with_context(|| format!("{f}: bad config"))?;
    let beta = need("beta")?;
    let beta: Vec<f64> = beta.iter().map(|&v| f64::from(v)).collect();
    let [beta, beta_mom] = beta.as_slice() else {
        bail!("{f}: checkpoint tensor 'beta' must hold β and its momentum");
    };
    let beta = match meta.get("beta").map(|s| s.parse::<f64>()) {
        None => *beta,
        Some(Ok(full)) if full as f32 == *beta as f32 => full,
        Some(_) => {
            bail!("{f}: the checkpoint's β in its metadata does not match its 'beta' tensor")
        }
    };
    let images = need("images")?
        .into_dimensionality::<Ix4>()
        .map_err(|_| bad_shape("images"))?;
    let n = images.dim().0;
    let mut classes = Vec::with_capacity(n);
    for (i, &c) in need("classes")?.iter().enumerate() {
        // f32 holds every integer up to 2^24 exactly, far beyond any class count.
        if c < 0.0 || c.fract() != 0.0 || c > 16_777_216.0 {
            bail!("{f}: checkpoint classes[{i}] = {c} is not a class id");
        }
        classes.push(c as u32);
    }
    let images_mom = need("images_mom")?
        .into_dimensionality::<Ix4>()
        .map_err(|_| bad_shape("images_mom"))?;
    let last_labels = need("last_labels")?
        .into_dimensionality::<Ix2>()
        .map_err(|_| bad_shape("last_labels"))?;
    let matrix = |n: &str| -> Result<Option<Array2<f32>>> {
        get(n)?
            .map(|a| a.into_dimensionality::<Ix2>().map_err(|_| bad_shape(n)))
            .transpose()
    };
    let label_logits = matrix("label_logits")?;
    let label_mom = matrix("label_mom")?;
    let rows_ok =
        |a: &Option<Array2<f32>>| a.as_ref().is_none_or(|a| a.shape() == last_labels.shape());
    if images_mom.shape() != images.shape()
        || classes.len() != n
        || last_labels.nrows() != n
        || !rows_ok(&label_logits)
        || !rows_ok(&label_mom)
    {
        bail!("{f}: the checkpoint's tensors disagree on the number of images or classes");
    }
    let st = State {
        iteration: it,
        images,
        images_mom,
        classes,
        beta,
        beta_mom: *beta_mom,
        label_logits,
        label_mom,
        last_labels,
    };
    Ok((st, cfg))
}
