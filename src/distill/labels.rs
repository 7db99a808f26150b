//! Soft label assignment: the label rows a teacher gives images (the softmax of its logits), shared
//! by the iteration (TESLA's target-step labels) and by the teacher-agreed start.
//! Also the way back through them, for runs that differentiate through the assignment.

use crate::compiler::artifact::Artifact;
use crate::experts::trajectory::Trajectory;
use crate::runtime::batches::{for_each_batch, BatchPrograms};
use crate::runtime::programs::Scalar;
use anyhow::Result;
use ndarray::{s, Array2, Array4, Axis, Ix2};
use std::ops::Range;

/// Softmax of each row.
pub fn softmax_rows<F: Scalar>(z: &Array2<F>) -> Array2<F> {
    let mut out = z.clone();
    for mut row in out.rows_mut() {
        let m = row.fold(F::min_value(), |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    out
}

/// Back through [`softmax_rows`]: with `p = softmax(z)` row by row and `dy = ∂L/∂p`, returns
/// `∂L/∂z = p ⊙ (dy − ⟨p, dy⟩)`.
pub fn softmax_rows_vjp<F: Scalar>(p: &Array2<F>, dy: &Array2<F>) -> Array2<F> {
    let mut dz = Array2::<F>::zeros(p.raw_dim());
    for ((mut dzr, pr), gr) in dz.rows_mut().into_iter().zip(p.rows()).zip(dy.rows()) {
        let inner = pr.dot(&gr);
        dzr.assign(&(&pr * &(&gr - inner)));
    }
    dz
}

/// Softmax of the teacher `theta`'s logits on `images`, in the batches of `programs` (see
/// [`for_each_batch`] for a short last batch).
pub fn teacher_labels<F: Scalar>(
    programs: &mut dyn BatchPrograms<F>,
    theta: &[F],
    images: &Array4<F>,
    classes: usize,
) -> Result<Array2<F>> {
    let n = images.shape()[0];
    let mut z = Array2::<F>::zeros((n, classes));
    let th = ndarray::ArrayView1::from(theta).into_dyn();
    for_each_batch(programs, n, |exec, b| {
        let x = images.select(Axis(0), &b.rows).into_dyn();
        let out = exec.run(Artifact::Logits, &[th.clone(), x.view()])?;
        let l = out
            .first()
            .ok_or_else(|| anyhow::anyhow!("the logits artifact returns nothing"))?
            .view()
            .into_dimensionality::<Ix2>()?;
        if l.dim() != (b.rows.len(), classes) {
            anyhow::bail!(
                "the logits artifact returned {:?} for {} images of {classes} classes",
                l.dim(),
                b.rows.len()
            );
        }
        z.slice_mut(s![b.start..b.end, ..])
            .assign(&l.slice(s![..b.len(), ..]));
        Ok(())
    })?;
    Ok(softmax_rows(&z))
}

/// The mean of [`teacher_labels`] over `epochs(expert)` of every expert: the rows a set gets from
/// all its teachers at once (`tesla distill --final-labels mean`, `tesla eval --teacher-labels`),
/// steadier than the one teacher an iteration draws.
pub fn mean_teacher_labels(
    programs: &mut dyn BatchPrograms<f32>,
    experts: &[Trajectory],
    epochs: impl Fn(&Trajectory) -> Range<usize>,
    images: &Array4<f32>,
    classes: usize,
) -> Result<Array2<f32>> {
    let mut sum = Array2::<f32>::zeros((images.shape()[0], classes));
    let mut count = 0usize;
    for traj in experts {
        // One teacher at a time: the whole set can be large (ImageNet-size trajectories).
        for e in epochs(traj) {
            sum += &teacher_labels(programs, &traj.epoch(e)?, images, classes)?;
            count += 1;
        }
    }
    Ok(sum / count.max(1) as f32)
}

/// The images' share of a gradient that reaches the teacher's soft labels: with
/// `Y = softmax(f(theta, X))` and `dy = ∂L/∂Y`, returns `∂L/∂X` along that path, in the batches
/// of `programs` (the padding rows of a short last batch carry a zero cotangent).
pub fn label_path_grad<F: Scalar>(
    programs: &mut dyn BatchPrograms<F>,
    theta: &[F],
    images: &Array4<F>,
    dy: &Array2<F>,
) -> Result<Array4<F>> {
    let n = images.shape()[0];
    let mut out = Array4::<F>::zeros(images.raw_dim());
    let th = ndarray::ArrayView1::from(theta).into_dyn();
    for_each_batch(programs, n, |exec, b| {
        let (start, end) = (b.start, b.end);
        let x = images.select(Axis(0), &b.rows).into_dyn();
        let mut w = dy.select(Axis(0), &b.rows);
        w.slice_mut(s![end - start.., ..]).fill(F::zero());
        let res = exec.run(
            Artifact::LabelVjp,
            &[th.clone(), x.view(), w.view().into_dyn()],
        )?;
        let dx = res
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("label_vjp returned no output"))?
            .into_dimensionality::<ndarray::Ix4>()?;
        if dx.shape() != x.shape() {
            anyhow::bail!(
                "label_vjp returned {:?} for images of shape {:?}",
                dx.shape(),
                x.shape()
            );
        }
        out.slice_mut(s![start..end, .., .., ..])
            .assign(&dx.slice(s![..end - start, .., .., ..]));
        Ok(())
    })?;
    Ok(out)
}

/// A synthetic image whose saved soft label no longer gives its own class the majority.
#[derive(Debug, Clone, PartialEq)]
pub struct WeakLabel {
    /// Row of the image in the distilled set.
    pub row: usize,
    /// The class the image stands for.
    pub class: usize,
    /// The label's mass on that class.
    pub own: f64,
    /// The other class the label gives the most mass to, and that mass.
    pub rival: (usize, f64),
}

/// The rows of `labels` that give their own class (`classes[row]`) less than half the mass.
/// An evaluation network trained on such a row learns the image mostly as another class, and a
/// class whose only image this is (IPC 1) can vanish from its predictions altogether.
pub fn weak_labels(labels: &Array2<f32>, classes: &[u32]) -> Vec<WeakLabel> {
    labels
        .rows()
        .into_iter()
        .zip(classes)
        .enumerate()
        .filter_map(|(row, (y, &c))| {
            let class = c as usize;
            let own = y.get(class).map_or(0.0, |&v| f64::from(v));
            let rival = y
                .iter()
                .map(|&v| f64::from(v))
                .enumerate()
                .filter(|&(k, _)| k != class)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((class, 0.0));
            (own < 0.5).then_some(WeakLabel {
                row,
                class,
                own,
                rival,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn weak_labels_names_rows_below_half_their_own_class() {
        let y = array![
            [0.9, 0.05, 0.05],
            [0.38, 0.43, 0.19], // own class 1 leads but holds under half
            [0.1, 0.2, 0.7],    // labelled class 0, mostly class 2
            [0.0, 0.0, 1.0],
        ];
        let weak = weak_labels(&y, &[0, 1, 0, 2]);
        assert_eq!(weak.len(), 2);
        assert_eq!((weak[0].row, weak[0].class, weak[0].rival.0), (1, 1, 0));
        assert!((weak[0].own - 0.43).abs() < 1e-6);
        assert!((weak[0].rival.1 - 0.38).abs() < 1e-6);
        assert_eq!((weak[1].row, weak[1].class, weak[1].rival.0), (2, 0, 2));
        assert!((weak[1].rival.1 - 0.7).abs() < 1e-6);
        assert!(weak_labels(&array![[1.0, 0.0], [0.0, 1.0]], &[0, 1]).is_empty());
    }
}
