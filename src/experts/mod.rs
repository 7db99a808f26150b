//! Expert (teacher) trajectories: `buffer.py` semantics. Each expert starts from fresh PyTorch-style
//! initial parameters, trains with SGD on the real training set (DSA on every batch), and is
//! snapshotted after every epoch.
pub mod trajectory;

use crate::compile_cache::ProgramStore;
use crate::data::augment::Strategy;
use crate::data::{zca::Zca, Dataset, Split};
use crate::progress::{Event, SharedObserver};
use crate::runtime::programs::Artifact;
use crate::runtime::{write_safetensors, BackendKind};
use crate::train::{accuracy, derive_seed, init_theta, train, Sgd, SgdState, TrainSet};
use crate::zoo::ModelSpec;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use trajectory::ExpertMeta;

/// `tesla experts` settings; a run writes them to `config.json` in its output directory, and the
/// same JSON read back is the same configuration.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ExpertsConfig {
    /// Dataset spec.
    pub dataset: String,
    /// Surrogate model.
    pub model: ModelSpec,
    /// Number of experts in total (across shards).
    pub experts: usize,
    /// Epochs per expert.
    pub epochs: usize,
    /// Learning rate (0.01).
    pub lr: f64,
    /// Batch (256).
    pub batch: usize,
    /// Momentum (0).
    pub momentum: f64,
    /// Weight decay (0).
    pub weight_decay: f64,
    /// DSA strategy on the real batches.
    pub strategy: Strategy,
    /// ZCA-whiten the images (CIFAR settings).
    pub zca: bool,
    /// Base seed.
    pub seed: u64,
    /// This process trains experts `i` of `k` slices.
    pub shard: (usize, usize),
    /// Backend.
    pub backend: BackendKind,
    /// Output directory.
    pub out: PathBuf,
    /// Use at most this many training images (class-balanced), for quick runs.
    pub limit: Option<usize>,
}

#[derive(Serialize)]
struct EpochLog {
    epoch: usize,
    train_loss: f64,
    test_acc: f64,
    seconds: f64,
}

/// Loads a dataset split, ZCA-whitened with the training set's fit when asked (the fit is saved
/// to / read from `zca_path`).
pub fn load_data(
    spec: &str,
    zca: bool,
    zca_path: &Path,
) -> Result<(Dataset, Dataset, Option<Zca>)> {
    let train = crate::data::load(spec, Split::Train, None)?;
    let test = crate::data::load(spec, Split::Test, None)?;
    if !zca {
        return Ok((train, test, None));
    }
    let z = if zca_path.exists() {
        Zca::load(zca_path)?
    } else {
        let z = Zca::fit_dataset(&train, 0.1)?;
        z.save(zca_path)?;
        z
    };
    let (tr, te) = (z.transform_dataset(&train)?, z.transform_dataset(&test)?);
    Ok((tr, te, Some(z)))
}

/// Which experts shard `i/k` trains: the contiguous slice `[i·n/k, (i+1)·n/k)`.
pub fn shard_range(n: usize, (i, k): (usize, usize)) -> Result<std::ops::Range<usize>> {
    if k == 0 || i >= k {
        bail!("--shard {i}/{k}: the shard index must be below the shard count");
    }
    Ok(i * n / k..(i + 1) * n / k)
}

/// Path of expert `j`.
pub fn expert_path(dir: &Path, j: usize) -> PathBuf {
    dir.join(format!("expert_{j:04}.safetensors"))
}

/// Path of expert `j`'s partial trajectory (an unfinished expert, with its momentum buffer).
fn partial_path(dir: &Path, j: usize) -> PathBuf {
    dir.join(format!("expert_{j:04}.partial.safetensors"))
}

/// Trains the configured experts, skipping finished ones and resuming a partial one; reports
/// nothing (see [`run_experts_with`]).
pub fn run_experts(cfg: &ExpertsConfig) -> Result<()> {
    run_experts_with(cfg, &crate::progress::quiet())
}

/// [`run_experts`], reporting progress, each epoch's result and notices to `observer`.
pub fn run_experts_with(cfg: &ExpertsConfig, observer: &SharedObserver) -> Result<()> {
    if cfg.experts == 0 || cfg.epochs == 0 {
        bail!("--experts and --epochs must be at least 1");
    }
    let cfg = &ExpertsConfig {
        model: cfg.model.clone().resolved()?,
        ..cfg.clone()
    };
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create the output directory {}", cfg.out.display()))?;
    crate::config_file::write(&cfg.out.join("config.json"), cfg)?;
    let (mut train_set, test, _) =
        load_data(&cfg.dataset, cfg.zca, &cfg.out.join("zca.safetensors"))?;
    if let Some(n) = cfg.limit {
        let per = (n / train_set.num_classes()).max(1);
        let sel = crate::data::select::select_per_class(&train_set, per, cfg.seed)?;
        train_set = train_set.subset(&sel.indices);
    }
    let [c, h, w] = train_set.image_shape();
    let classes = train_set.num_classes();
    let mut store = ProgramStore::new(
        cfg.model.clone(),
        [c, h, w],
        classes,
        cfg.backend,
        &cfg.out.join("artifacts"),
        &[Artifact::Step, Artifact::Logits],
    )
    .observed(observer);
    let range = shard_range(cfg.experts, cfg.shard)?;
    for j in range {
        let path = expert_path(&cfg.out, j);
        if path.exists() {
            // A kill between the final write and the clean-up leaves the partial file behind;
            // the finished expert supersedes it.
            let partial = partial_path(&cfg.out, j);
            if partial.exists() {
                std::fs::remove_file(&partial)
                    .with_context(|| format!("cannot remove {}", partial.display()))?;
            }
            observer.event(Event::Notice(&format!(
                "expert {j}: already trained ({}), skipped",
                path.display()
            )));
            continue;
        }
        train_one(cfg, j, &train_set, &test, classes, &mut store, observer)?;
    }
    Ok(())
}

fn train_one(
    cfg: &ExpertsConfig,
    j: usize,
    train_set: &Dataset,
    test: &Dataset,
    classes: usize,
    store: &mut ProgramStore,
    observer: &SharedObserver,
) -> Result<()> {
    let seed = derive_seed(cfg.seed, j as u64);
    let partial = partial_path(&cfg.out, j);
    let log_path = cfg.out.join(format!("expert_{j:04}.json"));
    let per_call = store.rows_per_call(cfg.batch.min(train_set.len()).max(1))?;
    let (_, manifest) = store.get(per_call)?;
    let params = manifest.params.clone();
    let p = manifest.num_params;
    // Resume from the partial trajectory (an interrupted expert restarts at its last epoch, with
    // the momentum buffer it had there, so the resumed trajectory is the uninterrupted one).
    let mut snaps: Vec<Vec<f32>> = Vec::new();
    let mut velocity: Option<Vec<f32>> = None;
    let mut logs: Vec<serde_json::Value> = Vec::new();
    if partial.exists() {
        // Both files are written atomically, so one that does not fit this run is not a cut
        // write but another run's or a damaged file: resuming over it would lose or mix work.
        let bad = |what: &str| {
            anyhow::anyhow!(
                "{}: {what}; move it away to train expert {j} afresh",
                partial.display()
            )
        };
        for (name, a) in crate::runtime::read_safetensors(&partial)? {
            match name.as_str() {
                "trajectory" if a.ndim() == 2 && a.shape()[1] == p => {
                    if let Some(v) = a.iter().find(|v| !v.is_finite()) {
                        return Err(bad(&format!("its trajectory holds {v}")));
                    }
                    snaps = a
                        .outer_iter()
                        .map(|r| r.iter().copied().collect())
                        .collect();
                }
                "trajectory" => {
                    return Err(bad(&format!(
                        "its trajectory is {:?}, this model has {p} parameters",
                        a.shape()
                    )))
                }
                "velocity" if a.len() == p && a.iter().all(|v| v.is_finite()) => {
                    velocity = Some(a.iter().copied().collect());
                }
                "velocity" => return Err(bad("its momentum buffer does not fit this model")),
                _ => {}
            }
        }
        if snaps.len() > cfg.epochs + 1 {
            return Err(bad(&format!(
                "it holds {} epochs, this run trains {}",
                snaps.len().saturating_sub(1),
                cfg.epochs
            )));
        }
        if let Ok(s) = std::fs::read_to_string(&log_path) {
            logs = serde_json::from_str(&s).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not an epoch log ({e}); move it away to rewrite it",
                    log_path.display()
                )
            })?;
        }
        logs.truncate(snaps.len().saturating_sub(1));
        observer.event(Event::Notice(&format!(
            "expert {j}: resuming at epoch {}",
            snaps.len().saturating_sub(1)
        )));
        if cfg.momentum != 0.0 && velocity.is_none() && snaps.len() > 1 {
            observer.event(Event::Warning(&format!(
                "expert {j}: {} holds no momentum buffer; it restarts from zero",
                partial.display()
            )));
        }
    }
    if snaps.is_empty() {
        snaps.push(init_theta(store, per_call, seed)?);
        velocity = None;
    }
    let mut state = SgdState {
        theta: snaps.last().cloned().unwrap_or_default(),
        velocity,
    };
    let sgd = Sgd {
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        batch: cfg.batch,
        epochs: cfg.epochs,
        decay_at_half: false,
        strategy: cfg.strategy.clone(),
        seed,
        start_epoch: snaps.len() - 1,
    };
    let meta = ExpertMeta {
        model: cfg.model.name(),
        dataset: cfg.dataset.clone(),
        zca: cfg.zca,
        epochs: cfg.epochs,
        params,
        lr: cfg.lr,
        momentum: cfg.momentum,
    };
    let start_epoch = sgd.start_epoch;
    let mut t0 = std::time::Instant::now();
    let label = |epoch: usize| format!("expert {j} epoch {}/{}", epoch + 1, cfg.epochs);
    observer.event(Event::Begin {
        label: &label(start_epoch),
        total: train_set.len() as u64,
        done: 0,
        unit: "images",
    });
    train(
        store,
        &TrainSet::Real(train_set),
        classes,
        &mut state,
        &sgd,
        observer.as_ref(),
        &mut |store, epoch, st, loss| {
            let acc = accuracy(store, test, &st.theta, 500)?;
            snaps.push(st.theta.clone());
            logs.push(serde_json::to_value(EpochLog {
                epoch: epoch + 1,
                train_loss: loss,
                test_acc: acc,
                seconds: t0.elapsed().as_secs_f64(),
            })?);
            t0 = std::time::Instant::now();
            let arr = ndarray::Array2::from_shape_vec((snaps.len(), p), snaps.concat())?.into_dyn();
            let mut tensors = vec![("trajectory".to_string(), arr)];
            let target = if epoch + 1 == cfg.epochs {
                expert_path(&cfg.out, j)
            } else {
                // θ and the buffer are f32 throughout, so these copies are the whole state and a
                // resumed run continues bit for bit.
                if let Some(v) = &st.velocity {
                    let v = ndarray::Array1::from(v.clone()).into_dyn();
                    tensors.push(("velocity".to_string(), v));
                }
                partial.clone()
            };
            write_safetensors(&target, &tensors, Some(meta.to_map()?))?;
            crate::atomic_file::write(&log_path, serde_json::to_string_pretty(&logs)?.as_bytes())?;
            let line = format!(
                "expert {j} epoch {}: train loss {loss:.4}, test acc {:.2}%",
                epoch + 1,
                acc * 100.0
            );
            observer.event(Event::Line(&line));
            if epoch + 1 < cfg.epochs {
                observer.event(Event::Relabel(&label(epoch + 1)));
            }
            Ok(())
        },
    )
    .inspect_err(|_| observer.event(Event::End))?;
    observer.event(Event::End);
    if partial.exists() {
        std::fs::remove_file(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    Ok(())
}
