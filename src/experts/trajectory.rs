//! Expert trajectory files: one safetensors file per expert with a tensor `trajectory`
//! \[E+1, P\] (θ*_0 … θ*_E, f32) and the parameter layout and provenance in its metadata. Read
//! through a memory map, so a distillation run touches only the two epochs it samples.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::compiler::manifest::ParamEntry;
use crate::tensor_file::le_f32s;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Provenance stored in every expert file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertMeta {
    /// Model name (`convnet-d3`, …).
    pub model: String,
    /// Dataset spec it was trained on.
    pub dataset: String,
    /// Whether images were ZCA-whitened.
    pub zca: bool,
    /// Epochs trained (the file holds E+1 snapshots).
    pub epochs: usize,
    /// Parameter layout of `theta`.
    pub params: Vec<ParamEntry>,
    /// Teacher learning rate.
    pub lr: f64,
    /// Teacher SGD momentum (absent in files written before it was recorded: 0).
    #[serde(default)]
    pub momentum: f64,
}

impl ExpertMeta {
    /// The teacher's step size in steady state, `lr / (1 − momentum)`: the student's initial β,
    /// since the plain-SGD student has to cover the same distance per step.
    pub fn effective_lr(&self) -> f64 {
        if self.momentum > 0.0 && self.momentum < 1.0 {
            self.lr / (1.0 - self.momentum)
        } else {
            self.lr
        }
    }

    /// As the string map safetensors stores.
    pub fn to_map(&self) -> Result<HashMap<String, String>> {
        let mut m = HashMap::new();
        m.insert("format".into(), "tesla-distill/expert-v1".into());
        m.insert("meta".into(), serde_json::to_string(self)?);
        m.insert("params".into(), serde_json::to_string(&self.params)?);
        Ok(m)
    }
}

/// A memory-mapped expert file.
pub struct Trajectory {
    path: PathBuf,
    map: Mmap,
    /// Provenance and layout.
    pub meta: ExpertMeta,
    /// Snapshots held (E+1).
    pub snapshots: usize,
    /// Parameters per snapshot.
    pub num_params: usize,
}

impl Trajectory {
    /// Opens and checks an expert file.
    pub fn open(path: &Path) -> Result<Trajectory> {
        let f = File::open(path)
            .with_context(|| format!("cannot open expert file {}", path.display()))?;
        // SAFETY: the file is only read; experts are written atomically (temp file + rename), so
        // a mapped file is never modified in place by this program.
        let map =
            unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&map)
            .map_err(|e| anyhow!("{} is not a valid expert file: {e}", path.display()))?;
        let meta_s = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("meta").cloned())
            .ok_or_else(|| {
                anyhow!(
                    "{} has no expert metadata (not written by `tesla experts`)",
                    path.display()
                )
            })?;
        let meta: ExpertMeta = serde_json::from_str(&meta_s)
            .with_context(|| format!("{}: bad expert metadata", path.display()))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| anyhow!("{} is not a valid expert file: {e}", path.display()))?;
        let t = st
            .tensor("trajectory")
            .map_err(|_| anyhow!("{} has no 'trajectory' tensor", path.display()))?;
        let (safetensors::Dtype::F32, &[snapshots, num_params]) = (t.dtype(), t.shape()) else {
            bail!(
                "{}: 'trajectory' must be f32 [epochs+1, params]",
                path.display()
            );
        };
        // Counts from the metadata are outside input: summed and incremented without overflow
        // (a wrapped sum could match the tensor and pass).
        let want = meta
            .params
            .iter()
            .try_fold(0usize, |a, p| a.checked_add(p.len));
        if want != Some(num_params) || meta.epochs.checked_add(1) != Some(snapshots) {
            let want = want.map_or("too many".to_string(), |w| w.to_string());
            bail!(
                "{}: trajectory shape {:?} does not match its metadata ({} epochs, {want} params)",
                path.display(),
                t.shape(),
                meta.epochs
            );
        }
        Ok(Trajectory {
            path: path.to_path_buf(),
            map,
            meta,
            snapshots,
            num_params,
        })
    }

    /// θ* after `epoch` epochs.
    pub fn epoch(&self, epoch: usize) -> Result<Vec<f32>> {
        if epoch >= self.snapshots {
            bail!(
                "{} holds epochs 0..={}, epoch {epoch} was asked for",
                self.path.display(),
                self.snapshots - 1
            );
        }
        let st = SafeTensors::deserialize(&self.map)
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        let t = st
            .tensor("trajectory")
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        let row_bytes = self.num_params.saturating_mul(4);
        let row = epoch
            .checked_mul(row_bytes)
            .and_then(|start| t.data().get(start..start.checked_add(row_bytes)?))
            .ok_or_else(|| {
                anyhow!(
                    "{}: trajectory data is too short for epoch {epoch}",
                    self.path.display()
                )
            })?;
        Ok(le_f32s(row).collect())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The expert files (`expert_NNNN.safetensors`) in a directory, sorted.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the experts directory {}", dir.display()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("expert_") && n.ends_with(".safetensors") && !n.contains(".partial")
            })
        })
        .collect();
    v.sort();
    Ok(v)
}
