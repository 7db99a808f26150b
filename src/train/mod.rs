//! Plain SGD training of a network on a set of images (real data for experts, a distilled set for
//! evaluation) and test accuracy; shared by `experts`, `eval` and `distill --eval-every`.

use crate::compile_cache::ProgramStore;
#[cfg(doc)]
use crate::compiler::manifest::Manifest;
use crate::data::augment::{self, Strategy};
use crate::data::Dataset;
use crate::progress::{Event, Observer};
use crate::runtime::batches::for_each_batch;
use crate::runtime::programs::{Artifact, Exec, Scalar};
use crate::runtime::row_chunks::RowChunks;
use anyhow::{anyhow, bail, Result};
use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Axis};
use optimizer::MomentumSgd;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub mod optimizer;

/// Images to train on, with their label rows.
pub enum TrainSet<'a> {
    /// A real dataset with hard labels.
    Real(&'a Dataset),
    /// Images in memory with label rows (one-hot or soft).
    Memory {
        /// Images \[N,C,H,W\], normalised.
        images: ArrayView4<'a, f32>,
        /// Label rows \[N,K\].
        labels: ArrayView2<'a, f32>,
    },
}

impl TrainSet<'_> {
    /// Number of images.
    pub fn len(&self) -> usize {
        match self {
            TrainSet::Real(d) => d.len(),
            TrainSet::Memory { images, .. } => images.shape()[0],
        }
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn batch(&self, idx: &[usize], classes: usize) -> (Array4<f32>, Array2<f32>) {
        match self {
            TrainSet::Real(d) => (d.batch(idx), one_hot(&d.batch_labels(idx), classes)),
            TrainSet::Memory { images, labels } => {
                (images.select(Axis(0), idx), labels.select(Axis(0), idx))
            }
        }
    }
}

/// Index of the largest entry (the first on ties; NaN entries never win).
pub fn argmax<'a, F: Scalar>(row: impl IntoIterator<Item = &'a F>) -> usize {
    row.into_iter()
        .enumerate()
        .fold(
            (0, F::min_value()),
            |m, (k, &v)| if v > m.1 { (k, v) } else { m },
        )
        .0
}

/// One-hot rows for hard labels.
pub fn one_hot(labels: &[u32], classes: usize) -> Array2<f32> {
    let mut y = Array2::zeros((labels.len(), classes));
    for (i, &l) in labels.iter().enumerate() {
        y[[i, l as usize]] = 1.0;
    }
    y
}

/// SGD settings (PyTorch semantics: weight decay added to the gradient, momentum buffer started
/// at the first gradient).
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Batch size.
    pub batch: usize,
    /// Epochs.
    pub epochs: usize,
    /// Multiply the learning rate by 0.1 after half the epochs (the evaluation protocol).
    pub decay_at_half: bool,
    /// Augmentation applied to every batch.
    pub strategy: Strategy,
    /// Seed of the shuffles and augmentation draws.
    pub seed: u64,
    /// First epoch to run (a resumed run starts past 0).
    pub start_epoch: usize,
}

/// What SGD carries from one step to the next. A run that resumes mid-training must restore both:
/// with momentum, the parameters alone do not determine the next step.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdState {
    /// The parameters.
    pub theta: Vec<f32>,
    /// The momentum buffer: `None` before the first step (PyTorch starts it at the first
    /// gradient) and always when momentum is 0.
    pub velocity: Option<Vec<f32>>,
}

impl SgdState {
    /// A fresh start from `theta`.
    pub fn new(theta: Vec<f32>) -> Self {
        SgdState {
            theta,
            velocity: None,
        }
    }
}

/// Called after every epoch with the store, the epoch, the SGD state and the mean loss.
pub type EpochHook<'a> = dyn FnMut(&mut ProgramStore, usize, &SgdState, f64) -> Result<()> + 'a;

/// Trains `state` in place; `on_epoch(store, epoch, state, mean_loss)` runs after every epoch (its
/// error stops training). The last partial batch is kept, as PyTorch's DataLoader does.
pub fn train(
    store: &mut ProgramStore,
    set: &TrainSet,
    classes: usize,
    state: &mut SgdState,
    cfg: &Sgd,
    observer: &dyn Observer,
    on_epoch: &mut EpochHook,
) -> Result<()> {
    let n = set.len();
    if n == 0 {
        bail!("nothing to train on: the training set is empty");
    }
    let b = cfg.batch.min(n).max(1);
    let per_call = store.rows_per_call(b)?;
    for epoch in cfg.start_epoch..cfg.epochs {
        // Each epoch's randomness depends only on (seed, epoch), so a resumed run repeats it.
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let lr = if cfg.decay_at_half && epoch >= cfg.epochs / 2 {
            cfg.lr * 0.1
        } else {
            cfg.lr
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for chunk in order.chunks(b) {
            let (x, y) = set.batch(chunk, classes);
            let x = if cfg.strategy.is_none() {
                x
            } else {
                let d = cfg.strategy.draw(
                    &mut rng,
                    [chunk.len(), x.shape()[1], x.shape()[2], x.shape()[3]],
                );
                augment::try_apply(&d, x.view())?
            };
            let (loss, g) = batch_gradient(store, &state.theta, x.view(), y.view(), b, per_call)?;
            if !loss.is_finite() {
                bail!(
                    "training diverged at epoch {epoch} (loss is {loss}); lower the learning rate"
                );
            }
            total += loss * chunk.len() as f64;
            // The f32 snapshots an expert writes are its whole state (with the momentum buffer),
            // so a resumed run continues exactly.
            let opt = MomentumSgd {
                lr: lr as f32,
                momentum: cfg.momentum as f32,
                weight_decay: cfg.weight_decay as f32,
            };
            let velocity = if cfg.momentum == 0.0 {
                None
            } else {
                let n = state.theta.len();
                Some(
                    state
                        .velocity
                        .get_or_insert_with(|| vec![0.0; n])
                        .as_mut_slice(),
                )
            };
            opt.step(&mut state.theta, velocity, &g)?;
            observer.event(Event::Advance {
                n: chunk.len() as u64,
                status: None,
            });
        }
        on_epoch(store, epoch, state, total / n as f64)?;
    }
    Ok(())
}

/// The mean loss and its gradient in θ over the images `x` with label rows `y`, for a batch of
/// `batch` images run as calls of `per_call` (see [`ProgramStore::rows_per_call`]; it must divide
/// `batch`, and be `batch` for a model that normalises with batch statistics). A shorter batch is
/// padded to `batch` when the model treats each image on its own (see
/// [`Manifest::images_independent`]): the padding repeats the first image under an all-zero
/// label row, which adds exactly zero to the loss and its gradient, and the real rows are scaled
/// by `batch / len` so that the graph's mean over `batch` rows is the mean over the real ones.
/// Otherwise (batch statistics) it runs the artifacts compiled for the short batch's own size.
pub fn batch_gradient(
    store: &mut ProgramStore,
    theta: &[f32],
    x: ArrayView4<f32>,
    y: ArrayView2<f32>,
    batch: usize,
    per_call: usize,
) -> Result<(f64, Vec<f32>)> {
    let n = x.shape()[0];
    if n == 0 || n > batch || y.nrows() != n {
        bail!(
            "a batch of {n} images and {} label rows does not fit artifacts for {batch}",
            y.nrows()
        );
    }
    let th = ndarray::ArrayView1::from(theta).into_dyn();
    let pad = n < batch && store.get(per_call)?.1.images_independent();
    let padded = pad.then(|| {
        let rows: Vec<usize> = (0..batch).map(|i| if i < n { i } else { 0 }).collect();
        let scale = batch as f32 / n as f32;
        let mut yp = Array2::<f32>::zeros((batch, y.ncols()));
        yp.slice_mut(ndarray::s![..n, ..]).assign(&(&y * scale));
        (x.select(Axis(0), &rows), yp)
    });
    let (x, y) = match &padded {
        Some((xp, yp)) => (xp.view(), yp.view()),
        None => (x, y),
    };
    let out = if x.shape()[0] == batch {
        let (exec, _) = store.get(per_call)?;
        RowChunks::new(exec, batch, per_call)?
            .run(Artifact::Step, &[th, x.into_dyn(), y.into_dyn()])?
    } else {
        let (exec, _) = store.get(n)?;
        exec.run(Artifact::Step, &[th, x.into_dyn(), y.into_dyn()])?
    };
    let Ok::<[ndarray::ArrayD<f32>; 2], _>([loss, g]) = out.try_into() else {
        bail!("the step artifact must return the loss and the gradient");
    };
    let loss = loss.iter().next().map_or(f64::NAN, |&v| f64::from(v));
    let len = g.len();
    if len != theta.len() {
        bail!(
            "the step artifact returned {len} gradient values for {} parameters",
            theta.len()
        );
    }
    let g = if g.is_standard_layout() {
        // A standard-layout array's elements are contiguous from its offset in the buffer, so
        // the gradient is taken without a copy.
        let (mut v, off) = g.into_raw_vec_and_offset();
        let off = off.unwrap_or(0);
        v.truncate(off + len);
        v.drain(..off);
        v
    } else {
        g.iter().copied().collect()
    };
    Ok((loss, g))
}

/// Correct top-1 predictions and images, per class, of one network on a test set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassCounts {
    /// Correctly classified test images of each class.
    pub correct: Vec<usize>,
    /// Test images of each class.
    pub total: Vec<usize>,
}

impl ClassCounts {
    /// Overall top-1 accuracy (0–1).
    pub fn accuracy(&self) -> f64 {
        let n: usize = self.total.iter().sum();
        self.correct.iter().sum::<usize>() as f64 / n.max(1) as f64
    }

    /// Accuracy of each class (0–1); `None` for a class without test images.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.correct
            .iter()
            .zip(&self.total)
            .map(|(&c, &t)| (t > 0).then(|| c as f64 / t as f64))
            .collect()
    }
}

/// Top-1 accuracy of `theta` on a dataset (see [`class_accuracy`]).
pub fn accuracy(
    store: &mut ProgramStore,
    ds: &Dataset,
    theta: &[f32],
    batch: usize,
) -> Result<f64> {
    Ok(class_accuracy(store, ds, theta, batch)?.accuracy())
}

/// Per-class top-1 counts of `theta` on a dataset, evaluated in batches of `batch` in the
/// dataset's order, each run as calls of a few images when the model treats each image on its
/// own (see [`ProgramStore::rows_per_call`]: the logits are the same, and the smaller calls are faster and
/// hold a fraction of the activations). A short last batch is padded (the padding's logits
/// ignored) when each image's logits depend on it alone, and otherwise runs at its own size, as
/// PyTorch's `DataLoader` gives it, so padding never enters batch statistics.
pub fn class_accuracy(
    store: &mut ProgramStore,
    ds: &Dataset,
    theta: &[f32],
    batch: usize,
) -> Result<ClassCounts> {
    let n = ds.len();
    if n == 0 {
        bail!("the test set is empty");
    }
    let k = ds.num_classes();
    let mut counts = ClassCounts {
        correct: vec![0; k],
        total: vec![0; k],
    };
    let th = ndarray::ArrayView1::from(theta).into_dyn();
    let rows = store.rows_per_call(batch.clamp(1, n))?;
    let mut programs = store.batches(rows)?;
    for_each_batch(&mut programs, n, |exec, b| {
        let x = ds.batch(&b.rows).into_dyn();
        let out = exec.run(Artifact::Logits, &[th.clone(), x.view()])?;
        let z = out
            .first()
            .ok_or_else(|| anyhow!("the logits artifact returns nothing"))?
            .view()
            .into_dimensionality::<ndarray::Ix2>()?;
        if z.dim() != (b.rows.len(), k) {
            bail!(
                "the logits artifact returned {:?} for {} images of {k} classes",
                z.dim(),
                b.rows.len()
            );
        }
        let real: Vec<usize> = (b.start..b.end).collect();
        for (i, &l) in ds.batch_labels(&real).iter().enumerate() {
            let l = l as usize;
            counts.total[l] += 1;
            counts.correct[l] += usize::from(argmax(z.row(i)) == l);
        }
        Ok(())
    })?;
    Ok(counts)
}

/// Fresh initial parameters for a model, from the manifest's init rules.
pub fn init_theta(store: &mut ProgramStore, batch: usize, seed: u64) -> Result<Vec<f32>> {
    let dir = store.dir(batch);
    let (_, m) = store.get(batch)?;
    m.initial_theta(&dir, seed)
}

/// A random seed from a generator (for per-run seeds derived from a base seed).
pub fn derive_seed(base: u64, k: u64) -> u64 {
    ChaCha8Rng::seed_from_u64(base.wrapping_add(k.wrapping_mul(0xD134_2543_DE82_EF95))).random()
}
