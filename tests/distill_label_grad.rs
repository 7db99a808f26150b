//! `--label-grad`: with teacher-assigned soft labels `Y = softmax(f(θ_L, X̃))`, the matching loss
//! depends on the images through the labels too. The exact sweep plus the label path must equal
//! central finite differences (f64) of L computed with the labels recomputed from the perturbed
//! images; the exact sweep alone (the labels held fixed, as the paper does) must not.

mod common;
use common::*;
use ndarray::{s, Array1, Array2, Array4, ArrayD, Axis, Ix2, Ix4};
use tesla_distill::compiler::artifact::{
    label_vjp_graph, logits_graph, pass2_graph, step_graph, unrolled_graph,
};
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{DType, Graph, Tensor};
use tesla_distill::distill::gradient::{backward, Mode, Segment};
use tesla_distill::distill::labels::{label_path_grad, teacher_labels};
use tesla_distill::runtime::batches::OneBatch;
use tesla_distill::runtime::programs::{Artifact, ReferenceExec};

const B: usize = 2;
const K: usize = 3;
const N: usize = 4;
const T: usize = 3;
// Images 1 and 3 appear in two steps, so the scatter-adds are exercised.
const ORDER: [[usize; B]; T] = [[0, 1], [2, 3], [1, 3]];

struct Setup {
    step: Graph,
    logits: Graph,
    exec: ReferenceExec,
    images: Array4<f64>,
    teacher: Vec<f64>,
    start: Vec<f64>,
    target: Vec<f64>,
    beta: f64,
}

fn setup() -> Setup {
    let m = tiny_convnet(B, K);
    let step = step_graph(&m).unwrap();
    let logits = logits_graph(&m).unwrap();
    let exec = ReferenceExec::new([
        (Artifact::Step, step.clone()),
        (Artifact::Pass2, pass2_graph(&m, false).unwrap()),
        (Artifact::Logits, logits.clone()),
        (Artifact::LabelVjp, label_vjp_graph(&m).unwrap()),
        (Artifact::Unrolled, unrolled_graph(&m, T).unwrap()),
    ]);
    let mut r = rng(11);
    let p = m.num_params();
    let start = uniform(&mut r, &[p], -0.5, 0.5).data;
    let target: Vec<f64> = start
        .iter()
        .zip(uniform(&mut r, &[p], -0.1, 0.1).data)
        .map(|(a, b)| a + b)
        .collect();
    // A teacher with larger weights than the students, so its labels are far from uniform.
    let teacher = uniform(&mut r, &[p], -1.5, 1.5).data;
    let images =
        Array4::from_shape_vec((N, 1, 6, 6), uniform(&mut r, &[N, 1, 6, 6], -1.0, 1.0).data)
            .unwrap();
    Setup {
        step,
        logits,
        exec,
        images,
        teacher,
        start,
        target,
        beta: 0.3,
    }
}

fn tensor(a: &ArrayD<f64>) -> Tensor {
    Tensor::new(DType::F64, a.shape().to_vec(), a.iter().copied().collect())
}

/// The teacher's soft labels, by the logits graph and a softmax written out here.
fn labels_of(s: &Setup, images: &Array4<f64>) -> Array2<f64> {
    let th = Tensor::new(DType::F64, vec![s.teacher.len()], s.teacher.clone());
    let mut y = Array2::<f64>::zeros((N, K));
    for c in 0..N / B {
        let x = images.slice(s![c * B..(c + 1) * B, .., .., ..]).to_owned();
        let z = eval(&s.logits, &[th.clone(), tensor(&x.into_dyn())]).unwrap()[0]
            .data
            .clone();
        for b in 0..B {
            let row = &z[b * K..(b + 1) * K];
            let m = row.iter().fold(f64::MIN, |a, &v| a.max(v));
            let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for k in 0..K {
                y[[c * B + b, k]] = e[k] / sum;
            }
        }
    }
    y
}

/// L by forward simulation, the labels recomputed from `images`.
fn matching_loss(s: &Setup, images: &Array4<f64>) -> f64 {
    let y = labels_of(s, images);
    let mut theta = Array1::from(s.start.clone());
    for idx in ORDER {
        let x = images.select(Axis(0), &idx).into_dyn();
        let yy = y.select(Axis(0), &idx).into_dyn();
        let th = Tensor::new(DType::F64, vec![theta.len()], theta.to_vec());
        let g = Array1::from(
            eval(&s.step, &[th, tensor(&x), tensor(&yy)]).unwrap()[1]
                .data
                .clone(),
        );
        theta = &theta - &(g * s.beta);
    }
    let t = Array1::from(s.target.clone());
    let st = Array1::from(s.start.clone());
    let r = &theta - &t;
    let d = &st - &t;
    r.dot(&r) / d.dot(&d)
}

/// The image gradient of `mode` with the labels held fixed, and the label gradient ∂L/∂Y.
fn fixed_label_grads(s: &mut Setup, mode: Mode) -> (Array4<f64>, Array2<f64>) {
    let labels =
        teacher_labels(&mut OneBatch::new(&mut s.exec, B), &s.teacher, &s.images, K).unwrap();
    let mut gx = Array4::<f64>::zeros(s.images.raw_dim());
    let mut gy = Array2::<f64>::zeros((N, K));
    let images = s.images.clone();
    let mut bf = |i: usize| {
        Ok((
            images.select(Axis(0), &ORDER[i]).into_dyn(),
            labels.select(Axis(0), &ORDER[i]).into_dyn(),
        ))
    };
    let mut sink = |i: usize, dx: ArrayD<f64>, dy: Option<ArrayD<f64>>| {
        let dx = dx.into_dimensionality::<Ix4>()?;
        let dy = dy
            .expect("label gradients asked for")
            .into_dimensionality::<Ix2>()?;
        for (k, &j) in ORDER[i].iter().enumerate() {
            let mut row = gx.slice_mut(s![j, .., .., ..]);
            row += &dx.index_axis(Axis(0), k);
            let mut yr = gy.row_mut(j);
            yr += &dy.row(k);
        }
        Ok(())
    };
    let seg = Segment {
        start: &s.start,
        target: &s.target,
        beta: s.beta,
        steps: T,
    };
    backward(mode, &mut s.exec, &seg, &mut bf, &mut sink, true).unwrap();
    (gx, gy)
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    max_rel_err(a, b, 1e-12)
}

#[test]
fn exact_sweep_plus_label_path_equals_finite_differences() {
    let mut s = setup();
    let h = 1e-5;
    let mut fd = Array4::<f64>::zeros(s.images.raw_dim());
    for (idx, v) in fd.indexed_iter_mut() {
        let mut p = s.images.clone();
        p[idx] += h;
        let mut m = s.images.clone();
        m[idx] -= h;
        *v = (matching_loss(&s, &p) - matching_loss(&s, &m)) / (2.0 * h);
    }
    let fd = fd.as_slice().unwrap().to_vec();
    for mode in [Mode::Exact, Mode::Unrolled] {
        let (gx, gy) = fixed_label_grads(&mut s, mode);
        let teacher = s.teacher.clone();
        let images = s.images.clone();
        let path =
            label_path_grad(&mut OneBatch::new(&mut s.exec, B), &teacher, &images, &gy).unwrap();
        let total = &gx + &path;
        let e = rel(total.as_slice().unwrap(), &fd);
        assert!(
            e <= 1e-6,
            "{mode:?} + label path vs finite differences: {e:e}"
        );
        // The labels' share is not negligible here, so holding them fixed is measurably wrong.
        let e_fixed = rel(gx.as_slice().unwrap(), &fd);
        assert!(
            e_fixed > 1e-3,
            "{mode:?} without the label path: {e_fixed:e}"
        );
    }
}

#[test]
fn label_path_pads_a_short_last_batch_with_zero_cotangents() {
    // Three images through batch-2 graphs: the padded row must not leak into row 2's gradient.
    let mut s = setup();
    let teacher = s.teacher.clone();
    let three = s.images.slice(s![..3, .., .., ..]).to_owned();
    let mut r = rng(3);
    let dy = Array2::from_shape_vec((3, K), uniform(&mut r, &[3, K], -1.0, 1.0).data).unwrap();
    let got =
        label_path_grad(&mut OneBatch::padded(&mut s.exec, B), &teacher, &three, &dy).unwrap();
    // ⟨dy, Y(X)⟩ by central differences, through the full-batch label function.
    let f = |x: &Array4<f64>| {
        let mut four = s.images.clone();
        four.slice_mut(s![..3, .., .., ..]).assign(x);
        let y = labels_of(&s, &four);
        (&y.slice(s![..3, ..]) * &dy).sum()
    };
    let h = 1e-5;
    let mut fd = Array4::<f64>::zeros(three.raw_dim());
    for (idx, v) in fd.indexed_iter_mut() {
        let mut p = three.clone();
        p[idx] += h;
        let mut m = three.clone();
        m[idx] -= h;
        *v = (f(&p) - f(&m)) / (2.0 * h);
    }
    let e = rel(got.as_slice().unwrap(), fd.as_slice().unwrap());
    assert!(e <= 1e-6, "label path vs finite differences: {e:e}");
}
