//! The evaluation protocol of method.md: train freshly initialised networks on a (distilled)
//! set — SGD momentum 0.9, weight decay 5e-4, the learned learning rate, ×0.1 after half the
//! epochs, batch 256, DSA on every batch, soft-label cross-entropy when labels are soft — and
//! report real test accuracy as mean ± std over runs.

use crate::data::augment::Strategy;
use crate::data::Dataset;
use crate::runtime::programs::Artifact;
use crate::runtime::store::ProgramStore;
use crate::runtime::BackendKind;
use crate::train::{accuracy, derive_seed, init_theta, train, Sgd, SgdState, TrainSet};
use crate::zoo::ModelSpec;
use anyhow::Result;
use ndarray::{ArrayView2, ArrayView4};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Evaluation settings.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// Networks trained per model.
    pub runs: usize,
    /// Epochs per network (1000 in the paper, 300 for quick checks).
    pub epochs: usize,
    /// Batch size (256).
    pub batch: usize,
    /// DSA strategy on every batch.
    pub strategy: Strategy,
    /// Base seed.
    pub seed: u64,
    /// Backend.
    pub backend: BackendKind,
}

/// One model's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelResult {
    /// Model name.
    pub model: String,
    /// Accuracy of every run (0–1).
    pub accuracies: Vec<f64>,
    /// Mean accuracy.
    pub mean: f64,
    /// Standard deviation (population, as numpy's default).
    pub std: f64,
    /// Learning rate used.
    pub lr: f64,
}

impl ModelResult {
    /// `name: 71.23 ± 0.45 % (5 runs)`.
    pub fn line(&self) -> String {
        format!(
            "{}: {:.2} ± {:.2} % ({} runs, lr {:.5})",
            self.model,
            self.mean * 100.0,
            self.std * 100.0,
            self.accuracies.len(),
            self.lr
        )
    }
}

/// Mean and population standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// Trains `cfg.runs` fresh networks of `model` on `images`/`labels` with learning rate `lr` and
/// returns their test accuracies. `label_fn(run)` may swap the training set per run (the random
/// baseline draws a new subset each run); artifacts are cached under `work`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &ModelSpec,
    images: ArrayView4<f32>,
    labels: ArrayView2<f32>,
    lr: f64,
    test: &Dataset,
    cfg: &EvalConfig,
    work: &Path,
    run_offset: u64,
) -> Result<ModelResult> {
    let [c, h, w] = test.image_shape();
    let classes = labels.shape()[1];
    let mut store = ProgramStore::new(
        model.clone(),
        [c, h, w],
        classes,
        cfg.backend,
        &work.join(model.name().replace(['/', '.'], "_")),
        &[Artifact::Step, Artifact::Logits],
    );
    let mut accs = Vec::with_capacity(cfg.runs);
    let n = images.shape()[0];
    for run in 0..cfg.runs {
        let seed = derive_seed(cfg.seed, run as u64 + run_offset);
        let mut state = SgdState::new(init_theta(&mut store, cfg.batch.min(n), seed)?);
        let sgd = Sgd {
            lr,
            momentum: 0.9,
            weight_decay: 5e-4,
            batch: cfg.batch,
            epochs: cfg.epochs,
            decay_at_half: true,
            strategy: cfg.strategy.clone(),
            seed,
            start_epoch: 0,
        };
        let set = TrainSet::Memory {
            images: images.view(),
            labels: labels.view(),
        };
        train(
            &mut store,
            &set,
            classes,
            &mut state,
            &sgd,
            None,
            &mut |_, _, _, _| Ok(()),
        )?;
        accs.push(accuracy(&mut store, test, &state.theta, 500)?);
    }
    let (mean, std) = mean_std(&accs);
    Ok(ModelResult {
        model: model.name(),
        accuracies: accs,
        mean,
        std,
        lr,
    })
}
