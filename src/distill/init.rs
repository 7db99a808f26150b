//! Where the synthetic images start. Besides a random real subset and noise, a run can start from
//! random real images that every target-step teacher classifies correctly: soft label assignment
//! then begins from images whose teacher labels name their own class (with a random subset, a
//! teacher's confusion, a shirt taken for a coat, turns that image into the wrong class for the
//! whole run).

use super::labels::teacher_labels;
use crate::data::select::Selection;
use crate::data::Dataset;
use crate::experts::trajectory::Trajectory;
use crate::runtime::batches::BatchPrograms;
use crate::train::argmax;
use anyhow::{bail, Result};
use ndarray::Axis;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The epochs of each expert that serve as target-step teachers: `M … max_start_epoch − 1 + M`.
pub fn target_epochs(max_start_epoch: usize, expert_epochs: usize) -> std::ops::Range<usize> {
    expert_epochs..max_start_epoch + expert_epochs
}

/// The teachers whose labels a run can use: the [`target_epochs`] of every expert.
pub fn target_teachers(
    experts: &[Trajectory],
    max_start_epoch: usize,
    expert_epochs: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(experts.len() * max_start_epoch);
    for e in experts {
        for t in target_epochs(max_start_epoch, expert_epochs) {
            out.push(e.epoch(t)?);
        }
    }
    Ok(out)
}

/// Picks `ipc` images of every class, in a random order fixed by `seed`, keeping only those that
/// all `teachers` classify as their class. `programs` run the logits graph; each class's images
/// are judged in full batches of theirs (the last one overlapping the one before), so that a model
/// with batch statistics sees a batch of the class's own images, never padding.
pub fn select_teacher_agreed(
    train: &Dataset,
    ipc: usize,
    seed: u64,
    teachers: &[Vec<f32>],
    programs: &mut dyn BatchPrograms<f32>,
) -> Result<Selection> {
    let k = train.num_classes();
    let b = programs.rows().max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut indices = Vec::with_capacity(ipc * k);
    let mut labels = Vec::with_capacity(ipc * k);
    for c in 0..k {
        let mut pool = train.class_indices(c).to_vec();
        if ipc > pool.len() {
            bail!(
                "--ipc {ipc} is larger than class {c} ({}), which has {} images",
                train.class_names()[c],
                pool.len()
            );
        }
        pool.shuffle(&mut rng);
        let mut taken = 0;
        let mut judged = 0;
        while judged < pool.len() && taken < ipc {
            // The window's first `skip` images were judged in the previous one.
            let end = (judged + b).min(pool.len());
            let begin = end.saturating_sub(b);
            let skip = judged - begin;
            let window = &pool[begin..end];
            let x = train.batch(window);
            let mut agreed = vec![true; window.len()];
            for theta in teachers {
                let p = teacher_labels(programs, theta, &x, k)?;
                for (i, row) in p.axis_iter(Axis(0)).enumerate() {
                    // A diverged teacher (NaN rows) agrees with nothing.
                    agreed[i] &= argmax(row) == c && row.iter().all(|v| v.is_finite());
                }
            }
            for (&i, ok) in window.iter().zip(agreed).skip(skip) {
                if ok && taken < ipc {
                    indices.push(i);
                    labels.push(c as u32);
                    taken += 1;
                }
            }
            judged = end;
        }
        if taken < ipc {
            bail!(
                "only {taken} images of class {c} ({}) are classified correctly by all {} target-step teachers, fewer than --ipc {ipc}; use --pix-init real",
                train.class_names()[c],
                teachers.len()
            );
        }
    }
    Ok(Selection { indices, labels })
}
