//! Soft label assignment: the label rows a teacher gives images (the softmax of its logits), shared
//! by the iteration (TESLA's target-step labels) and by the teacher-agreed start.
//! Also the way back through them, for runs that differentiate through the assignment.

use crate::compiler::artifact::Artifact;
use crate::runtime::programs::Exec;
use anyhow::Result;
use ndarray::{s, Array2, Array4, Axis, Ix2};

/// Softmax of each row.
pub fn softmax_rows(z: &Array2<f64>) -> Array2<f64> {
    let mut out = z.clone();
    for mut row in out.rows_mut() {
        let m = row.fold(f64::MIN, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    out
}

/// The batches of `b` rows covering `n` rows, as (start, end, row indices): the graphs take exactly
/// `b` rows, so a short last batch repeats its first row.
fn padded_batches(n: usize, b: usize) -> impl Iterator<Item = (usize, usize, Vec<usize>)> {
    (0..n).step_by(b.max(1)).map(move |start| {
        let end = (start + b).min(n);
        let mut idx: Vec<usize> = (start..end).collect();
        idx.resize(b, start);
        (start, end, idx)
    })
}

/// Softmax of the teacher `theta`'s logits on `images`, in batches of `b`.
pub fn teacher_labels(
    exec: &mut dyn Exec,
    theta: &[f64],
    images: &Array4<f64>,
    b: usize,
    classes: usize,
) -> Result<Array2<f64>> {
    let n = images.shape()[0];
    let mut z = Array2::<f64>::zeros((n, classes));
    let th = ndarray::ArrayView1::from(theta).into_dyn();
    for (start, end, idx) in padded_batches(n, b) {
        let x = images.select(Axis(0), &idx).into_dyn();
        let out = exec.run(Artifact::Logits, &[th.clone(), x.view()])?;
        let l = out[0].view().into_dimensionality::<Ix2>()?;
        z.slice_mut(s![start..end, ..])
            .assign(&l.slice(s![..end - start, ..]));
    }
    Ok(softmax_rows(&z))
}

/// The images' share of a gradient that reaches the teacher's soft labels: with
/// `Y = softmax(f(theta, X))` and `dy = ∂L/∂Y`, returns `∂L/∂X` along that path, in batches of `b`
/// (the padding rows of a short last batch carry a zero cotangent).
pub fn label_path_grad(
    exec: &mut dyn Exec,
    theta: &[f64],
    images: &Array4<f64>,
    dy: &Array2<f64>,
    b: usize,
) -> Result<Array4<f64>> {
    let n = images.shape()[0];
    let mut out = Array4::<f64>::zeros(images.raw_dim());
    let th = ndarray::ArrayView1::from(theta).into_dyn();
    for (start, end, idx) in padded_batches(n, b) {
        let x = images.select(Axis(0), &idx).into_dyn();
        let mut w = dy.select(Axis(0), &idx);
        w.slice_mut(s![end - start.., ..]).fill(0.0);
        let res = exec.run(
            Artifact::LabelVjp,
            &[th.clone(), x.view(), w.view().into_dyn()],
        )?;
        let dx = res
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("label_vjp returned no output"))?
            .into_dimensionality::<ndarray::Ix4>()?;
        out.slice_mut(s![start..end, .., .., ..])
            .assign(&dx.slice(s![..end - start, .., .., ..]));
    }
    Ok(out)
}
