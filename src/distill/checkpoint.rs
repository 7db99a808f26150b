//! The run state and its checkpoint file (`checkpoint/state.safetensors`): what a resumed run
//! continues from. Reading checks the tensors against each other, [`State::check_fits`] against
//! the dataset, so a damaged checkpoint is an error naming the file and the field.

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
    /// Synthetic images \[N,C,H,W\] (f64: the exactness tests run the loop in f64).
    pub images: Array4<f64>,
    /// Class of each synthetic image.
    pub classes: Vec<u32>,
    /// Image momentum buffer.
    pub images_mom: Array4<f64>,
    /// β.
    pub beta: f64,
    /// β's momentum buffer.
    pub beta_mom: f64,
    /// Learned label logits \[N,K\] (learned labels only).
    pub label_logits: Option<Array2<f64>>,
    /// Their momentum buffer.
    pub label_mom: Option<Array2<f64>>,
    /// The label rows of the last iteration.
    pub last_labels: Array2<f64>,
}

impl State {
    /// Checks a state read from `path` against the dataset it will continue on.
    pub fn check_fits(&self, path: &Path, classes: usize, image_shape: &[usize]) -> Result<()> {
        let f = path.display();
        if self.images.shape()[1..] != *image_shape {
            bail!(
                "{f}: the checkpoint's images are {:?}, the dataset's {image_shape:?}",
                &self.images.shape()[1..]
            );
        }
        if self.last_labels.shape()[1] != classes {
            bail!(
                "{f}: the checkpoint's labels have {} columns, the dataset has {classes} classes",
                self.last_labels.shape()[1]
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

fn arr_f32<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> ArrayD<f32> {
    a.mapv(|v| v as f32).into_dyn()
}

/// Writes `ck/state.safetensors` atomically: the state with the run's settings.
pub fn write(ck: &Path, st: &State, cfg: &DistillConfig) -> Result<()> {
    std::fs::create_dir_all(ck).with_context(|| format!("cannot create {}", ck.display()))?;
    let classes = Array1::from(st.classes.iter().map(|&c| f64::from(c)).collect::<Vec<_>>());
    let mut tensors = vec![
        ("images".to_string(), arr_f32(&st.images)),
        ("images_mom".to_string(), arr_f32(&st.images_mom)),
        ("classes".to_string(), arr_f32(&classes)),
        (
            "beta".to_string(),
            arr_f32(&Array1::from(vec![st.beta, st.beta_mom])),
        ),
        ("last_labels".to_string(), arr_f32(&st.last_labels)),
    ];
    if let (Some(l), Some(m)) = (&st.label_logits, &st.label_mom) {
        tensors.push(("label_logits".to_string(), arr_f32(l)));
        tensors.push(("label_mom".to_string(), arr_f32(m)));
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
    let get = |n: &str| -> Result<Option<ArrayD<f64>>> {
        let Some(a) = t.iter().find(|(k, _)| k == n).map(|(_, a)| a) else {
            return Ok(None);
        };
        if let Some(v) = a.iter().find(|v| !v.is_finite()) {
            bail!("{f}: checkpoint tensor '{n}' holds {v}");
        }
        Ok(Some(a.mapv(f64::from)))
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
    let [beta, beta_mom] = beta.as_slice().unwrap_or(&[]) else {
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
    let n = images.shape()[0];
    let mut classes = Vec::with_capacity(n);
    for (i, &c) in need("classes")?.iter().enumerate() {
        if c < 0.0 || c.fract() != 0.0 || c > f64::from(u32::MAX) {
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
    let matrix = |n: &str| -> Result<Option<Array2<f64>>> {
        get(n)?
            .map(|a| a.into_dimensionality::<Ix2>().map_err(|_| bad_shape(n)))
            .transpose()
    };
    let label_logits = matrix("label_logits")?;
    let label_mom = matrix("label_mom")?;
    let rows_ok =
        |a: &Option<Array2<f64>>| a.as_ref().is_none_or(|a| a.shape() == last_labels.shape());
    if images_mom.shape() != images.shape()
        || classes.len() != n
        || last_labels.shape()[0] != n
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
