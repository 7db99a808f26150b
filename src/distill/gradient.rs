//! The gradient of the matching loss `L = ‖θ_T − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²` with respect to
//! the student batches and the learning rate β, in the three modes of docs/method.md.
//!
//! Pass 1 keeps only the T parameter vectors; the batches are rebuilt on demand (from the stored
//! index set and augmentation draw), so graph and batch memory stay constant in T for the `tesla`
//! and `exact` modes. The `unrolled` mode runs the compiled T-step graph and holds everything.

use crate::runtime::programs::{Artifact, Exec, Scalar};
use anyhow::{anyhow, bail, Result};
use ndarray::{Array1, ArrayD, Axis};
use serde::{Deserialize, Serialize};

/// How ∂L/∂X̃ is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The paper's two passes: one fixed `v` for every step (drops the Hessian terms).
    Tesla,
    /// The reverse sweep with Hessian-vector products: the exact gradient, constant graph memory.
    Exact,
    /// The MTT baseline: the whole T-step graph, memory linear in T.
    Unrolled,
}

/// One iteration's segment of an expert trajectory and the student's learning rate.
pub struct Segment<'a, F> {
    /// θ*_t.
    pub start: &'a [F],
    /// θ*_{t+M}.
    pub target: &'a [F],
    /// β.
    pub beta: F,
    /// T.
    pub steps: usize,
}

/// What one iteration's backward produces.
#[derive(Debug, Clone)]
pub struct IterGrad {
    /// L.
    pub loss: f64,
    /// ∂L/∂β.
    pub dbeta: f64,
}

/// Student batch `i` (augmented images \[B,C,H,W\] and label rows \[B,K\]), rebuilt on demand.
pub type BatchFn<'a, F> = dyn FnMut(usize) -> Result<(ArrayD<F>, ArrayD<F>)> + 'a;
/// Receives step `i`'s gradient with respect to its (augmented) batch, and to its labels when
/// they are asked for.
pub type SinkFn<'a, F> = dyn FnMut(usize, ArrayD<F>, Option<ArrayD<F>>) -> Result<()> + 'a;

/// ⟨a, b⟩ over arrays of any memory layout, summed in f64 (a parameter vector has millions of
/// terms); the lengths must agree.
fn dot<'a, F: Scalar>(
    a: impl ExactSizeIterator<Item = &'a F>,
    b: impl ExactSizeIterator<Item = &'a F>,
) -> Result<f64> {
    if a.len() != b.len() {
        bail!(
            "a parameter vector has {} values, another {}",
            a.len(),
            b.len()
        );
    }
    Ok(a.zip(b).map(|(x, y)| x.wide() * y.wide()).sum())
}

fn check_finite<'a, F: Scalar>(what: &str, v: impl IntoIterator<Item = &'a F>) -> Result<()> {
    if v.into_iter().any(|x| !x.is_finite()) {
        bail!("the run diverged: {what} is not finite (NaN or Inf); lower --lr-img or --lr-lr, or resume from the last checkpoint");
    }
    Ok(())
}

/// Runs the student steps of pass 1: returns θ_0 … θ_T and `G = Σ g_i`.
fn pass1<F: Scalar>(
    exec: &mut dyn Exec<F>,
    seg: &Segment<F>,
    batch: &mut BatchFn<F>,
) -> Result<(Vec<Array1<F>>, Array1<F>)> {
    let mut theta = Array1::from(seg.start.to_vec());
    let mut sum = Array1::<F>::zeros(theta.len());
    let mut thetas = Vec::with_capacity(seg.steps + 1);
    for i in 0..seg.steps {
        let (x, y) = batch(i)?;
        let out = exec.run(
            Artifact::Step,
            &[theta.view().into_dyn(), x.view(), y.view()],
        )?;
        let g = out
            .get(1)
            .ok_or_else(|| anyhow!("the step artifact returns no gradient"))?
            .view()
            .into_shape_with_order(theta.len())?
            .to_owned();
        check_finite("a student gradient", g.iter())?;
        sum += &g;
        let next = &theta - &(&g * seg.beta);
        thetas.push(std::mem::replace(&mut theta, next));
    }
    thetas.push(theta);
    Ok((thetas, sum))
}

/// Computes L, ∂L/∂β and (through `sink`) ∂L/∂batch_i for every step, in the given mode.
/// `need_dy` asks for label gradients too (learned labels).
pub fn backward<F: Scalar>(
    mode: Mode,
    exec: &mut dyn Exec<F>,
    seg: &Segment<F>,
    batch: &mut BatchFn<F>,
    sink: &mut SinkFn<F>,
    need_dy: bool,
) -> Result<IterGrad> {
    if seg.steps == 0 {
        bail!("syn-steps must be at least 1");
    }
    let start = ndarray::ArrayView1::from(seg.start);
    let target = ndarray::ArrayView1::from(seg.target);
    let denom = start
        .iter()
        .zip(target.iter())
        .map(|(a, b)| (a.wide() - b.wide()).powi(2))
        .sum::<f64>();
    if denom <= 0.0 || !denom.is_finite() {
        bail!("the expert did not move between the start and target epochs (‖θ*_t − θ*_t+M‖² = {denom}); check the expert files");
    }
    let p2 = if need_dy || mode == Mode::Exact {
        Artifact::Pass2
    } else {
        Artifact::Pass2Dx
    };
    match mode {
        Mode::Unrolled => unrolled(exec, seg, batch, sink),
        Mode::Tesla => {
            let (thetas, sum, loss, lambda_t) = pass1_loss(exec, seg, batch, denom)?;
            // v = −β λ_T = (2/D)(β(θ*_{t+M} − θ*_t) + β² G), the same for every step.
            let v = &lambda_t * (-seg.beta);
            for (i, theta) in thetas.iter().take(seg.steps).enumerate() {
                let (x, y) = batch(i)?;
                let out = exec.run(
                    p2,
                    &[
                        theta.view().into_dyn(),
                        x.view(),
                        y.view(),
                        v.view().into_dyn(),
                    ],
                )?;
                let mut it = out.into_iter();
                let dx = it
                    .next()
                    .ok_or_else(|| anyhow!("the pass-2 artifact returns no dx"))?;
                let dy = if need_dy { it.nth(1) } else { None };
                sink(i, dx, dy)?;
            }
            // The official update of β holds G constant: ∂L/∂β = 2⟨θ_T − θ*, −G⟩ / D.
            let dbeta = -dot(lambda_t.iter(), sum.iter())?;
            Ok(IterGrad { loss, dbeta })
        }
        Mode::Exact => {
            let (thetas, _, loss, mut lambda) = pass1_loss(exec, seg, batch, denom)?;
            let mut dbeta = 0.0;
            for i in (0..seg.steps).rev() {
                let u = &lambda * (-seg.beta);
                let (x, y) = batch(i)?;
                let out = exec.run(
                    p2,
                    &[
                        thetas[i].view().into_dyn(),
                        x.view(),
                        y.view(),
                        u.view().into_dyn(),
                    ],
                )?;
                let mut it = out.into_iter();
                let (dx, dth, dy, g) = (it.next(), it.next(), it.next(), it.next());
                let (Some(dx), Some(dth), Some(dy), Some(g)) = (dx, dth, dy, g) else {
                    bail!("pass2 artifact must return dx, dtheta, dy and grad");
                };
                // λ here is λ_{i+1}.
                dbeta -= dot(lambda.iter(), g.iter())?;
                lambda += &dth.into_shape_with_order(lambda.len())?;
                check_finite("the adjoint", lambda.iter())?;
                sink(i, dx, need_dy.then_some(dy))?;
            }
            Ok(IterGrad { loss, dbeta })
        }
    }
}

/// Pass 1 and the loss: θ_0 … θ_T, `G = Σ g_i`, L, and λ_T = ∂L/∂θ_T = 2(θ_T − θ*_{t+M})/D.
#[allow(clippy::type_complexity)]
fn pass1_loss<F: Scalar>(
    exec: &mut dyn Exec<F>,
    seg: &Segment<F>,
    batch: &mut BatchFn<F>,
    denom: f64,
) -> Result<(Vec<Array1<F>>, Array1<F>, f64, Array1<F>)> {
    let (thetas, sum) = pass1(exec, seg, batch)?;
    let last = thetas
        .last()
        .ok_or_else(|| anyhow!("pass 1 kept no parameters"))?;
    let resid = last - &ndarray::ArrayView1::from(seg.target);
    let loss = dot(resid.iter(), resid.iter())? / denom;
    check_finite("the matching loss", [&loss])?;
    let lambda_t = &resid * F::narrow(2.0 / denom);
    Ok((thetas, sum, loss, lambda_t))
}

fn unrolled<F: Scalar>(
    exec: &mut dyn Exec<F>,
    seg: &Segment<F>,
    batch: &mut BatchFn<F>,
    sink: &mut SinkFn<F>,
) -> Result<IterGrad> {
    let mut xs = Vec::with_capacity(seg.steps);
    let mut ys = Vec::with_capacity(seg.steps);
    for i in 0..seg.steps {
        let (x, y) = batch(i)?;
        xs.push(x.insert_axis(Axis(0)));
        ys.push(y.insert_axis(Axis(0)));
    }
    let xv: Vec<_> = xs.iter().map(|a| a.view()).collect();
    let yv: Vec<_> = ys.iter().map(|a| a.view()).collect();
    let xs = ndarray::concatenate(Axis(0), &xv)?;
    let ys = ndarray::concatenate(Axis(0), &yv)?;
    let start = ndarray::ArrayView1::from(seg.start).into_dyn();
    let target = ndarray::ArrayView1::from(seg.target).into_dyn();
    let beta = ndarray::arr1(&[seg.beta]).into_dyn();
    let out = exec.run(
        Artifact::Unrolled,
        &[start, target, beta.view(), xs.view(), ys.view()],
    )?;
    let [loss, dxs, dys, dbeta] = out.as_slice() else {
        bail!("the unrolled artifact must return the loss, dx, dy and dβ");
    };
    let loss = loss.iter().next().map_or(f64::NAN, |v| v.wide());
    check_finite("the matching loss", [&loss])?;
    for i in 0..seg.steps {
        let dx = dxs.index_axis(Axis(0), i).to_owned();
        let dy = dys.index_axis(Axis(0), i).to_owned();
        sink(i, dx, Some(dy))?;
    }
    let dbeta = dbeta.iter().next().map_or(f64::NAN, |v| v.wide());
    Ok(IterGrad { loss, dbeta })
}
