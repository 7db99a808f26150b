//! Evaluating a distilled set file, as `tesla eval --distilled` does: with its own label rows,
//! one-hot rows, or the mean soft labels its experts' teachers give its images; on the test set
//! whitened as the run whitened its images.

use super::labels::mean_teacher_labels;
use super::run::open_experts;
use super::set_file::DistilledSet;
use crate::compile_cache::ProgramStore;
use crate::data::Dataset;
use crate::eval::{evaluate, EvalConfig, ModelResult};
use crate::progress::{Event, SharedObserver};
use crate::runtime::programs::Artifact;
use crate::train::one_hot;
use crate::zoo::ModelSpec;
use anyhow::{anyhow, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The label rows the evaluation networks train on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetLabels {
    /// The rows saved with the set.
    Own,
    /// One-hot rows of the images' classes.
    Hard,
    /// The mean soft labels of every expert in `experts` at each epoch of `epochs`, on the set's
    /// images (the experts must fit the set's model, dataset and ZCA).
    Teachers {
        /// The experts' directory.
        experts: PathBuf,
        /// Their epochs.
        epochs: Range<usize>,
    },
}

/// What to evaluate, and how.
#[derive(Clone, Debug)]
pub struct SetEvaluation {
    /// The `distilled.safetensors` file.
    pub path: PathBuf,
    /// Its label rows.
    pub labels: SetLabels,
    /// The learning rate (default: the set's learned one, else 0.01).
    pub lr: Option<f64>,
    /// A ZCA fit to whiten the test set with (default: the run's `zca.safetensors` when the set
    /// used ZCA).
    pub zca: Option<PathBuf>,
}

/// Evaluates the set on every model (result lines go to `observer` as each model finishes);
/// returns the results and a description of what was evaluated.
pub fn evaluate_set(
    req: &SetEvaluation,
    models: &[ModelSpec],
    test: &Dataset,
    cfg: &EvalConfig,
    work: &Path,
    observer: &SharedObserver,
) -> Result<(Vec<ModelResult>, String)> {
    let f = &req.path;
    let set = DistilledSet::read(f)?;
    set.check_fits(f, test.num_classes(), &test.image_shape())?;
    let lr = req.lr.or(set.lr).unwrap_or(0.01);
    let labels = match &req.labels {
        SetLabels::Own => set.labels.clone(),
        SetLabels::Hard => one_hot(&set.classes, set.labels.ncols()),
        SetLabels::Teachers { experts, epochs } => {
            teacher_mean_labels(&set, f, experts, epochs, cfg, observer)?
        }
    };
    let mut zca = req.zca.clone();
    if set.meta.get("zca").is_some_and(|z| z != "none") && zca.is_none() {
        zca = Some(f.parent().unwrap_or(Path::new(".")).join("zca.safetensors"));
    }
    let test = match zca.as_deref() {
        Some(p) => crate::data::zca::Zca::load(p)?.transform_dataset(test)?,
        None => test.clone(),
    };
    let mut results = Vec::with_capacity(models.len());
    for m in models {
        let r = evaluate(
            m,
            set.images.view(),
            labels.view(),
            lr,
            &test,
            cfg,
            work,
            0,
            observer,
        )?;
        observer.event(Event::Line(&r.line()));
        observer.event(Event::Line(&r.per_class_line(test.class_names())));
        results.push(r);
    }
    let with = match &req.labels {
        SetLabels::Own => String::new(),
        SetLabels::Hard => ", hard labels".to_string(),
        SetLabels::Teachers { experts, epochs } => format!(
            ", labels of {} epochs {}-{}",
            experts.display(),
            epochs.start,
            epochs.end.saturating_sub(1)
        ),
    };
    Ok((results, format!("distilled {}{with}", f.display())))
}

/// The mean soft labels that the experts give the set's images, reporting each image's
/// own-class share.
fn teacher_mean_labels(
    set: &DistilledSet,
    f: &Path,
    dir: &Path,
    range: &Range<usize>,
    cfg: &EvalConfig,
    observer: &SharedObserver,
) -> Result<ndarray::Array2<f32>> {
    let field = |key: &str| {
        set.meta.get(key).ok_or_else(|| {
            anyhow!(
                "{}: no '{key}' in its metadata (not a distilled set?)",
                f.display()
            )
        })
    };
    let model = ModelSpec::parse(field("model")?)?;
    let zca = field("zca").is_ok_and(|z| z != "none");
    let (n, c, h, w) = set.images.dim();
    let k = set.labels.ncols();
    let b = n.clamp(1, 100);
    let mut store = ProgramStore::new(
        model.clone(),
        [c, h, w],
        k,
        cfg.backend,
        // Apart from the evaluation's own programs (same model, other artifacts) to keep both cached.
        &std::env::temp_dir()
            .join("tesla-eval-artifacts")
            .join("teachers")
            .join(model.folder_name()),
        &[Artifact::Logits],
    )
    .observed(observer);
    let num_params = store.get(b)?.1.num_params;
    let experts = open_experts(
        dir,
        &model.name(),
        field("dataset")?,
        zca,
        range.end.saturating_sub(1),
        num_params,
    )?;
    let y = mean_teacher_labels(
        &mut store.batches(b)?,
        &experts,
        |_| range.clone(),
        &set.images,
        k,
    )?;
    let own: Vec<String> = set
        .classes
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{:.2}", y.get([i, c as usize]).copied().unwrap_or(f32::NAN)))
        .collect();
    observer.event(Event::Line(&format!(
        "labels: the mean of {} teachers (epochs {}-{} of {} experts); own-class share per image: {}",
        experts.len() * range.len(),
        range.start,
        range.end.saturating_sub(1),
        experts.len(),
        own.join(" ")
    )));
    Ok(y)
}
