//! The distilled-set file (`distilled.safetensors`): its tensors and metadata, written by a run
//! and read by every consumer through [`DistilledSet::read`], which rejects a file whose values
//! cannot be what a run wrote (wrong ranks or lengths, class ids outside the label width,
//! non-finite pixels, label rows that are not distributions) before any work starts. A value
//! that is wrong but well-formed would otherwise be evaluated into a meaningless accuracy.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::runtime::{read_safetensors_with_metadata, write_safetensors};
use anyhow::{anyhow, bail, Result};
use ndarray::{Array1, Array2, Array4, ArrayD, Ix2, Ix4};
use std::collections::HashMap;
use std::path::Path;

/// The `format` metadata value of files this version writes.
pub const FORMAT: &str = "tesla-distill/distilled-v1";

/// How far a saved label row's sum may be from 1 (rows are written in f32).
const ROW_SUM_TOLERANCE: f32 = 1e-3;

/// A distilled set: images, their label rows and classes, the learned learning rate and the
/// metadata (dataset, model, normalisation, ZCA, label kind).
#[derive(Clone, Debug)]
pub struct DistilledSet {
    /// Images \[N, C, H, W\] in the training normalisation.
    pub images: Array4<f32>,
    /// Label rows \[N, K\]: probability distributions (one-hot for hard labels).
    pub labels: Array2<f32>,
    /// The class each image was initialised for, each below K.
    pub classes: Vec<u32>,
    /// The learned student learning rate β, if the file has one.
    pub lr: Option<f64>,
    /// String metadata (`dataset`, `model`, `zca`, `mean`, `std`, …).
    pub meta: HashMap<String, String>,
}

impl DistilledSet {
    /// Reads and checks `path` (see the module documentation); every error names the file and
    /// the field.
    pub fn read(path: &Path) -> Result<DistilledSet> {
        let f = path.display();
        let (tensors, meta) = read_safetensors_with_metadata(path)?;
        let take = |name: &str| -> Result<ArrayD<f32>> {
            tensors
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| anyhow!("{f} has no '{name}' tensor (not a distilled set?)"))
        };
        let images = take("images")?
            .into_dimensionality::<Ix4>()
            .map_err(|_| anyhow!("{f}: 'images' must be [N, C, H, W]"))?;
        let labels = take("labels")?
            .into_dimensionality::<Ix2>()
            .map_err(|_| anyhow!("{f}: 'labels' must be [N, classes]"))?;
        let class_values = take("classes")?;
        let n = images.dim().0;
        let k = labels.ncols();
        if n == 0 {
            bail!("{f}: 'images' holds no image");
        }
        if labels.nrows() != n || class_values.len() != n {
            bail!(
                "{f}: {n} images but {} label rows and {} classes",
                labels.nrows(),
                class_values.len()
            );
        }
        let mut classes = Vec::with_capacity(n);
        for (i, &c) in class_values.iter().enumerate() {
            if !(c >= 0.0 && c.fract() == 0.0 && (c as usize) < k) {
                bail!("{f}: classes[{i}] = {c} is not a class id below the labels' {k} columns");
            }
            classes.push(c as u32);
        }
        if let Some((pos, v)) = first_non_finite(images.indexed_iter().map(|(p, &v)| (p, v))) {
            bail!(
                "{f}: images[{}, {}, {}, {}] is {v}",
                pos.0,
                pos.1,
                pos.2,
                pos.3
            );
        }
        for (i, row) in labels.outer_iter().enumerate() {
            if let Some((j, &v)) = row
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                bail!("{f}: labels[{i}, {j}] = {v}: label rows must be probabilities");
            }
            let sum: f32 = row.sum();
            if (sum - 1.0).abs() > ROW_SUM_TOLERANCE {
                bail!("{f}: label row {i} sums to {sum}, not 1: label rows must be probabilities");
            }
        }
        let lr = match tensors.iter().find(|(k, _)| k == "lr") {
            None => None,
            Some((_, a)) => match a.iter().next().map(|&v| f64::from(v)) {
                Some(v) if v.is_finite() && v > 0.0 && a.len() == 1 => Some(v),
                _ => bail!("{f}: 'lr' must hold one positive finite learning rate"),
            },
        };
        Ok(DistilledSet {
            images,
            labels,
            classes,
            lr,
            meta,
        })
    }

    /// Checks that the set fits a dataset with `classes` classes and images of `image_shape`.
    pub fn check_fits(&self, path: &Path, classes: usize, image_shape: &[usize]) -> Result<()> {
        let f = path.display();
        let k = self.labels.ncols();
        if k != classes {
            bail!("{f}: the labels have {k} columns, the dataset has {classes} classes");
        }
        if {
            let (_, c, h, w) = self.images.dim();
            [c, h, w]
        } != *image_shape
        {
            bail!("{f}: images are {:?}, the dataset's are {image_shape:?}", {
                let (_, c, h, w) = self.images.dim();
                [c, h, w]
            });
        }
        Ok(())
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.images.dim().0
    }

    /// Whether the set holds no image (never, for a file [`DistilledSet::read`] accepted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the set atomically, with [`FORMAT`] in its metadata.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut meta = self.meta.clone();
        meta.insert("format".to_string(), FORMAT.to_string());
        let classes: Vec<f32> = self.classes.iter().map(|&c| c as f32).collect();
        let mut tensors = vec![
            ("images".to_string(), self.images.clone().into_dyn()),
            ("labels".to_string(), self.labels.clone().into_dyn()),
            ("classes".to_string(), Array1::from(classes).into_dyn()),
        ];
        if let Some(lr) = self.lr {
            tensors.push(("lr".to_string(), Array1::from(vec![lr as f32]).into_dyn()));
        }
        write_safetensors(path, &tensors, Some(meta))
    }
}

/// The first value that is NaN or infinite, with its position.
pub fn first_non_finite<P>(values: impl IntoIterator<Item = (P, f32)>) -> Option<(P, f32)> {
    values.into_iter().find(|(_, v)| !v.is_finite())
}
