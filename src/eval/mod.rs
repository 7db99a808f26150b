//! The evaluation protocol of docs/method.md: train freshly initialised networks on a (distilled)
//! set — SGD momentum 0.9, weight decay 5e-4, the learned learning rate, ×0.1 after half the
//! epochs, batch 256, DSA on every batch, soft-label cross-entropy when labels are soft — and
//! report real test accuracy as mean ± std over runs.

pub mod baseline;

use crate::compile_cache::ProgramStore;
use crate::data::augment::Strategy;
use crate::data::Dataset;
use crate::progress::SharedObserver;
use crate::runtime::programs::Artifact;
use crate::runtime::BackendKind;
use crate::train::{
    class_accuracy, derive_seed, init_theta, train, ClassCounts, Sgd, SgdState, TrainSet,
};
use crate::zoo::ModelSpec;
use anyhow::Result;
use ndarray::{ArrayView2, ArrayView4};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Evaluation settings (serde, so a JSON file can hold them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Mean accuracy of each class over the runs (0–1; `None` for a class without test images).
    #[serde(default)]
    pub per_class: Vec<Option<f64>>,
}

impl ModelResult {
    /// Summarises the per-class counts of every run of `model` trained with `lr`.
    pub fn from_runs(model: String, lr: f64, runs: &[ClassCounts]) -> Self {
        let accuracies: Vec<f64> = runs.iter().map(ClassCounts::accuracy).collect();
        let (mean, std) = mean_std(&accuracies);
        let rows: Vec<Vec<Option<f64>>> = runs.iter().map(ClassCounts::per_class).collect();
        let classes = rows.iter().map(Vec::len).max().unwrap_or(0);
        let per_class = (0..classes)
            .map(|k| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter_map(|r| r.get(k).copied().flatten())
                    .collect();
                (!v.is_empty()).then(|| mean_std(&v).0)
            })
            .collect();
        Self {
            model,
            accuracies,
            mean,
            std,
            lr,
            per_class,
        }
    }

    /// `  per class: T-shirt/top 71.2 · Trouser 93.4 · …` (class names where known).
    pub fn per_class_line(&self, names: &[String]) -> String {
        let cells: Vec<String> = self
            .per_class
            .iter()
            .enumerate()
            .map(|(k, a)| {
                let name = crate::data::class_name(names, k);
                match a {
                    Some(a) => format!("{name} {:.1}", a * 100.0),
                    None => format!("{name} –"),
                }
            })
            .collect();
        format!("  per class: {}", cells.join(" · "))
    }

    /// `name: 71.23 ± 0.45 % (5 runs)`.
    pub fn line(&self) -> String {
        format!(
            "{}: {:.2} ± {:.2} % ({} run{}, lr {:.5})",
            self.model,
            self.mean * 100.0,
            self.std * 100.0,
            self.accuracies.len(),
            if self.accuracies.len() == 1 { "" } else { "s" },
            self.lr
        )
    }
}

/// The results as a Markdown table, one row per model, under a line saying what was evaluated
/// (what `tesla eval` writes beside its JSON, ready for a report).
pub fn markdown_table(
    results: &[ModelResult],
    evaluated: &str,
    dataset: &str,
    epochs: usize,
) -> String {
    let mut s = format!(
        "{evaluated} on {dataset}, {epochs} epochs per run\n\n\
         | model | test accuracy (mean ± std) | runs | lr |\n|---|---|---|---|\n"
    );
    for r in results {
        s += &format!(
            "| {} | {:.2} ± {:.2} % | {} | {:.5} |\n",
            r.model.replace('|', "\\|"),
            r.mean * 100.0,
            r.std * 100.0,
            r.accuracies.len(),
            r.lr
        );
    }
    s
}

/// Mean and population standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// Trains `cfg.runs` fresh networks of `model` on `images`/`labels` with learning rate `lr` and
/// returns their test accuracies; run `r` is seeded by `run_offset + r`. Artifacts are cached
/// under `work`.
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
    observer: &SharedObserver,
) -> Result<ModelResult> {
    let mut store = eval_store(model, test, labels.shape()[1], cfg, work).observed(observer);
    let runs = (0..cfg.runs as u64)
        .map(|r| evaluate_run(&mut store, images, labels, lr, test, cfg, run_offset + r))
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelResult::from_runs(model.name(), lr, &runs))
}

/// The step and logits programs of `model` for evaluation on `test`'s image shape, cached under
/// `work`.
pub fn eval_store(
    model: &ModelSpec,
    test: &Dataset,
    classes: usize,
    cfg: &EvalConfig,
    work: &Path,
) -> ProgramStore {
    ProgramStore::new(
        model.clone(),
        test.image_shape(),
        classes,
        cfg.backend,
        &work.join(model.folder_name()),
        &[Artifact::Step, Artifact::Logits],
    )
}

/// Trains one freshly initialised network (seeded by `cfg.seed` and `run`) on `images`/`labels`
/// with the protocol's optimiser and returns its per-class test counts.
pub fn evaluate_run(
    store: &mut ProgramStore,
    images: ArrayView4<f32>,
    labels: ArrayView2<f32>,
    lr: f64,
    test: &Dataset,
    cfg: &EvalConfig,
    run: u64,
) -> Result<ClassCounts> {
    let classes = labels.shape()[1];
    let n = images.shape()[0];
    let seed = derive_seed(cfg.seed, run);
    let per_call = store.rows_per_call(cfg.batch.min(n).max(1))?;
    let mut state = SgdState::new(init_theta(store, per_call, seed)?);
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
    let set = TrainSet::Memory { images, labels };
    train(
        store,
        &set,
        classes,
        &mut state,
        &sgd,
        &crate::progress::Quiet,
        &mut |_, _, _, _| Ok(()),
    )?;
    class_accuracy(store, test, &state.theta, 500)
}
