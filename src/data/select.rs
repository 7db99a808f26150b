//! Class-balanced random subsets: the "Random" baseline and the real-image initialisation of
//! synthetic images.

use anyhow::{ensure, Result};
use ndarray::Array4;
use rand::seq::index::sample;
use rand::SeedableRng;

use super::dataset::Dataset;

/// A class-balanced selection: `k` images of every class, class after class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Indices into the dataset, grouped by class (class 0 first).
    pub indices: Vec<usize>,
    /// The label of each selected image.
    pub labels: Vec<u32>,
}

impl Selection {
    /// The selected images, normalised.
    pub fn images(&self, ds: &Dataset) -> Array4<f32> {
        ds.batch(&self.indices)
    }
}

/// Picks `k` distinct images of every class uniformly at random, reproducibly from `seed`.
/// Errors if a class has fewer than `k` images.
pub fn select_per_class(ds: &Dataset, k: usize, seed: u64) -> Result<Selection> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut indices = Vec::with_capacity(k * ds.num_classes());
    let mut labels = Vec::with_capacity(k * ds.num_classes());
    for c in 0..ds.num_classes() {
        let pool = ds.class_indices(c);
        ensure!(
            k <= pool.len(),
            "asked for {k} images of class {c} ({}), which has only {}",
            ds.class_names()[c],
            pool.len()
        );
        for j in sample(&mut rng, pool.len(), k) {
            indices.push(pool[j]);
            labels.push(c as u32);
        }
    }
    Ok(Selection { indices, labels })
}
