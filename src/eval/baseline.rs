//! The baselines a distilled set is compared with: K random real images per class, or the whole
//! training set, trained on with the same protocol.

use super::{eval_store, evaluate_run, EvalConfig, ModelResult};
use crate::data::{Dataset, Split};
use crate::progress::{Event, SharedObserver};
use crate::train::{derive_seed, one_hot};
use crate::zoo::ModelSpec;
use anyhow::Result;
use std::path::Path;

/// Which real images the networks train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// K random real images per class, drawn afresh for every run.
    Random(usize),
    /// The whole training set.
    Whole,
}

impl Baseline {
    /// `random K per class` or `whole training set`.
    pub fn describe(self) -> String {
        match self {
            Baseline::Random(k) => format!("random {k} per class"),
            Baseline::Whole => "whole training set".to_string(),
        }
    }
}

/// Evaluates the baseline of `dataset` (whitened with the fit in `zca` when given) on every
/// model with learning rate `lr`; result lines go to `observer` as each model finishes.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_baseline(
    dataset: &str,
    baseline: Baseline,
    models: &[ModelSpec],
    lr: f64,
    test: &Dataset,
    zca: Option<&Path>,
    cfg: &EvalConfig,
    work: &Path,
    observer: &SharedObserver,
) -> Result<Vec<ModelResult>> {
    let train = crate::data::load(dataset, Split::Train, None)?;
    let (train, test) = match zca {
        Some(z) => {
            let z = crate::data::zca::Zca::load(z)?;
            (z.transform_dataset(&train)?, z.transform_dataset(test)?)
        }
        None => (train, test.clone()),
    };
    let k = train.num_classes();
    let mut results = Vec::with_capacity(models.len());
    for m in models {
        let mut store = eval_store(m, &test, k, cfg, work).observed(observer);
        let mut runs = Vec::with_capacity(cfg.runs);
        for run in 0..cfg.runs {
            let (images, labels) = match baseline {
                Baseline::Random(per) => {
                    let seed = derive_seed(cfg.seed, 7_000 + run as u64);
                    let sel = crate::data::select::select_per_class(&train, per, seed)?;
                    (sel.images(&train), one_hot(&sel.labels, k))
                }
                Baseline::Whole => (train.images(), one_hot(train.labels(), k)),
            };
            runs.push(evaluate_run(
                &mut store,
                images.view(),
                labels.view(),
                lr,
                &test,
                cfg,
                run as u64,
            )?);
        }
        let r = ModelResult::from_runs(m.name(), lr, &runs);
        observer.event(Event::Line(&r.line()));
        observer.event(Event::Line(&r.per_class_line(test.class_names())));
        results.push(r);
    }
    Ok(results)
}
