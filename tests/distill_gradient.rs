//! The three gradient modes on one full iteration, in f64 on the reference evaluator:
//! `exact` = `unrolled` = central finite differences of L (images and β); `tesla` = the docs/method.md
//! formula computed independently; with T = 1 all three agree.

#![allow(clippy::needless_range_loop)]

mod common;
use common::*;
use ndarray::{s, Array1, Array4, ArrayD, Axis, IxDyn};
use tesla_distill::compiler::artifact::{pass2_graph, step_graph, unrolled_graph};
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{DType, Graph, Tensor};
use tesla_distill::distill::gradient::{backward, Mode, Segment};
use tesla_distill::runtime::programs::{Artifact, ReferenceExec};

const B: usize = 2;
const K: usize = 3;

struct Setup {
    step: Graph,
    exec: ReferenceExec,
    images: Array4<f64>,
    labels: ArrayD<f64>,
    start: Vec<f64>,
    target: Vec<f64>,
    beta: f64,
    order: Vec<[usize; B]>,
}

fn setup(steps: usize) -> Setup {
    let m = tiny_convnet(B, K);
    let step = step_graph(&m).unwrap();
    let exec = ReferenceExec::new([
        (Artifact::Step, step.clone()),
        (Artifact::Pass2, pass2_graph(&m, false).unwrap()),
        (Artifact::Pass2Dx, pass2_graph(&m, true).unwrap()),
        (Artifact::Unrolled, unrolled_graph(&m, steps).unwrap()),
    ]);
    let mut r = rng(5);
    let p = m.num_params();
    let start = uniform(&mut r, &[p], -0.5, 0.5).data;
    let target: Vec<f64> = start
        .iter()
        .zip(uniform(&mut r, &[p], -0.1, 0.1).data)
        .map(|(a, b)| a + b)
        .collect();
    let images =
        Array4::from_shape_vec((4, 1, 6, 6), uniform(&mut r, &[4, 1, 6, 6], -1.0, 1.0).data)
            .unwrap();
    let mut lab = uniform(&mut r, &[4, K], 0.1, 1.0).data;
    for row in lab.chunks_mut(K) {
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    let labels = ArrayD::from_shape_vec(IxDyn(&[4, K]), lab).unwrap();
    // Image 1 and 3 appear in two steps, so the scatter-add is exercised.
    let order = [[0, 1], [2, 3], [1, 3]]
        .into_iter()
        .cycle()
        .take(steps)
        .collect();
    Setup {
        step,
        exec,
        images,
        labels,
        start,
        target,
        beta: 0.3,
        order,
    }
}

fn batch(s: &Setup, images: &Array4<f64>, i: usize) -> (ArrayD<f64>, ArrayD<f64>) {
    let idx = &s.order[i];
    (
        images.select(Axis(0), idx).into_dyn(),
        s.labels.select(Axis(0), idx),
    )
}

/// Runs a mode; returns (loss, dL/dimages, dL/dbeta).
fn run_mode(s: &mut Setup, mode: Mode, steps: usize) -> (f64, Array4<f64>, f64) {
    let mut grad = Array4::<f64>::zeros(s.images.raw_dim());
    let images = s.images.clone();
    let order = s.order.clone();
    let seg = Segment {
        start: &s.start,
        target: &s.target,
        beta: s.beta,
        steps,
    };
    let labels = s.labels.clone();
    let mut bf = |i: usize| {
        Ok((
            images.select(Axis(0), &order[i]).into_dyn(),
            labels.select(Axis(0), &order[i]),
        ))
    };
    let mut sink = |i: usize, dx: ArrayD<f64>, _dy: Option<ArrayD<f64>>| {
        let dx = dx.into_dimensionality::<ndarray::Ix4>()?;
        for (k, &j) in order[i].iter().enumerate() {
            let mut row = grad.slice_mut(s![j, .., .., ..]);
            row += &dx.index_axis(Axis(0), k);
        }
        Ok(())
    };
    let ig = backward(mode, &mut s.exec, &seg, &mut bf, &mut sink, false).unwrap();
    (ig.loss, grad, ig.dbeta)
}

fn step_grad(step: &Graph, theta: &[f64], x: &ArrayD<f64>, y: &ArrayD<f64>) -> Vec<f64> {
    let t =
        |a: &ArrayD<f64>| Tensor::new(DType::F64, a.shape().to_vec(), a.iter().copied().collect());
    let th = Tensor::new(DType::F64, vec![theta.len()], theta.to_vec());
    eval(step, &[th, t(x), t(y)]).unwrap()[1].data.clone()
}

/// L by plain forward simulation with the step graph.
fn matching_loss(s: &Setup, images: &Array4<f64>, beta: f64, steps: usize) -> f64 {
    let mut theta = Array1::from(s.start.clone());
    for i in 0..steps {
        let (x, y) = batch(s, images, i);
        let g = Array1::from(step_grad(&s.step, theta.as_slice().unwrap(), &x, &y));
        theta = &theta - &(g * beta);
    }
    let t = Array1::from(s.target.clone());
    let st = Array1::from(s.start.clone());
    let r = &theta - &t;
    let d = &st - &t;
    r.dot(&r) / d.dot(&d)
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    max_rel_err(a, b, 1e-12)
}

#[test]
fn exact_equals_unrolled_and_finite_differences() {
    let t = 3;
    let mut s = setup(t);
    let (le, ge, be) = run_mode(&mut s, Mode::Exact, t);
    let (lu, gu, bu) = run_mode(&mut s, Mode::Unrolled, t);
    let l0 = matching_loss(&s, &s.images, s.beta, t);
    assert!(
        (le - l0).abs() < 1e-12 && (lu - l0).abs() < 1e-12,
        "losses {le} {lu} {l0}"
    );
    let h = 1e-5;
    let mut fd = Array4::<f64>::zeros(s.images.raw_dim());
    for (idx, v) in fd.indexed_iter_mut() {
        let mut p = s.images.clone();
        p[idx] += h;
        let mut m = s.images.clone();
        m[idx] -= h;
        *v = (matching_loss(&s, &p, s.beta, t) - matching_loss(&s, &m, s.beta, t)) / (2.0 * h);
    }
    let fb = (matching_loss(&s, &s.images, s.beta + h, t)
        - matching_loss(&s, &s.images, s.beta - h, t))
        / (2.0 * h);
    let (fe, fu, fdv) = (
        ge.as_slice().unwrap(),
        gu.as_slice().unwrap(),
        fd.as_slice().unwrap(),
    );
    assert!(
        rel(fe, fdv) <= 1e-6,
        "exact vs finite differences: {:e}",
        rel(fe, fdv)
    );
    assert!(
        rel(fu, fdv) <= 1e-6,
        "unrolled vs finite differences: {:e}",
        rel(fu, fdv)
    );
    assert!(rel(fe, fu) <= 1e-9, "exact vs unrolled: {:e}", rel(fe, fu));
    assert!(
        rel(&[be], &[fb]) <= 1e-6 && rel(&[bu], &[fb]) <= 1e-6,
        "dbeta exact {be} unrolled {bu} fd {fb}"
    );
}

#[test]
fn tesla_matches_the_method_formula() {
    let t = 3;
    let mut s = setup(t);
    let (_, gt, bt) = run_mode(&mut s, Mode::Tesla, t);
    // Independently: pass 1 by hand, v = (2/D)(β(θ*_{t+M} − θ*_t) + β² G), then finite
    // differences of ⟨v, g(θ_i; X_i, Y_i)⟩ in X_i with θ_i held, scattered to the images.
    let mut thetas = vec![s.start.clone()];
    let mut big_g = vec![0.0; s.start.len()];
    for i in 0..t {
        let (x, y) = batch(&s, &s.images, i);
        let g = step_grad(&s.step, &thetas[i], &x, &y);
        big_g.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        thetas.push(
            thetas[i]
                .iter()
                .zip(&g)
                .map(|(a, b)| a - s.beta * b)
                .collect(),
        );
    }
    let d: f64 = s
        .start
        .iter()
        .zip(&s.target)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let v: Vec<f64> = (0..s.start.len())
        .map(|k| 2.0 / d * (s.beta * (s.target[k] - s.start[k]) + s.beta * s.beta * big_g[k]))
        .collect();
    let mut want = Array4::<f64>::zeros(s.images.raw_dim());
    let h = 1e-5;
    for i in 0..t {
        let (x, y) = batch(&s, &s.images, i);
        let f = |xx: &ArrayD<f64>| {
            step_grad(&s.step, &thetas[i], xx, &y)
                .iter()
                .zip(&v)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        for (k, &j) in s.order[i].iter().enumerate() {
            for c in 0..1 {
                for a in 0..6 {
                    for b in 0..6 {
                        let mut p = x.clone();
                        p[[k, c, a, b]] += h;
                        let mut m = x.clone();
                        m[[k, c, a, b]] -= h;
                        want[[j, c, a, b]] += (f(&p) - f(&m)) / (2.0 * h);
                    }
                }
            }
        }
    }
    let e = rel(gt.as_slice().unwrap(), want.as_slice().unwrap());
    assert!(e <= 1e-6, "tesla image gradient vs formula: {e:e}");
    let r: Vec<f64> = thetas[t]
        .iter()
        .zip(&s.target)
        .map(|(a, b)| a - b)
        .collect();
    let want_beta = 2.0 * r.iter().zip(&big_g).map(|(a, b)| -a * b).sum::<f64>() / d;
    assert!(
        rel(&[bt], &[want_beta]) <= 1e-9,
        "tesla dbeta {bt} vs {want_beta}"
    );
    // And it is not the exact gradient (the Hessian terms are dropped) for T > 1.
    let (_, ge, _) = run_mode(&mut s, Mode::Exact, t);
    assert!(rel(gt.as_slice().unwrap(), ge.as_slice().unwrap()) > 1e-4);
}

#[test]
fn one_step_all_modes_agree() {
    let mut s = setup(1);
    let (lt, gt, bt) = run_mode(&mut s, Mode::Tesla, 1);
    let (le, ge, be) = run_mode(&mut s, Mode::Exact, 1);
    let (lu, gu, bu) = run_mode(&mut s, Mode::Unrolled, 1);
    assert!((lt - le).abs() < 1e-12 && (lt - lu).abs() < 1e-12);
    assert!(rel(gt.as_slice().unwrap(), ge.as_slice().unwrap()) < 1e-9);
    assert!(rel(gt.as_slice().unwrap(), gu.as_slice().unwrap()) < 1e-9);
    assert!(
        rel(&[bt], &[be]) < 1e-9 && rel(&[bt], &[bu]) < 1e-9,
        "{bt} {be} {bu}"
    );
}
