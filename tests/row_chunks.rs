//! A student batch run as several calls of fewer images gives the whole batch's outputs: the
//! step's loss and gradient, both pass-2 products, the logits and the label VJP of a batch of 6,
//! computed directly and as calls of 1, 2 and 3 images, in f64 on the reference evaluator. On
//! the backends, calls run side by side give what the same calls give one after the other.

mod common;
use common::*;
use ndarray::{ArrayD, IxDyn};
use tesla_distill::compiler::artifact::{
    label_vjp_graph, logits_graph, pass2_graph, step_graph, unrolled_graph,
};
use tesla_distill::onnx::artifacts::compile_dir;
use tesla_distill::runtime::programs::{Artifact, BackendExec, Exec, ReferenceExec};
use tesla_distill::runtime::row_chunks::RowChunks;
use tesla_distill::runtime::{backend, ort_library_path, BackendKind};

const B: usize = 6;
const K: usize = 3;

fn programs(batch: usize) -> ReferenceExec {
    let m = tiny_convnet(batch, K);
    ReferenceExec::new([
        (Artifact::Step, step_graph(&m).unwrap()),
        (Artifact::Pass2, pass2_graph(&m, false).unwrap()),
        (Artifact::Pass2Dx, pass2_graph(&m, true).unwrap()),
        (Artifact::Logits, logits_graph(&m).unwrap()),
        (Artifact::LabelVjp, label_vjp_graph(&m).unwrap()),
        (Artifact::Unrolled, unrolled_graph(&m, 2).unwrap()),
    ])
}

fn array(t: tesla_distill::compiler::ir::Tensor) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(&t.shape), t.data).unwrap()
}

#[test]
fn calls_of_fewer_images_give_the_whole_batch() {
    let p = tiny_convnet(B, K).num_params();
    let mut r = rng(11);
    let theta = array(uniform(&mut r, &[p], -0.5, 0.5));
    let v = array(uniform(&mut r, &[p], -1.0, 1.0));
    let x = array(uniform(&mut r, &[B, 1, 6, 6], -1.0, 1.0));
    let mut y = array(uniform(&mut r, &[B, K], 0.1, 1.0));
    for mut row in y.rows_mut() {
        let s = row.sum();
        row.mapv_inplace(|a| a / s);
    }
    let w = array(uniform(&mut r, &[B, K], -1.0, 1.0));
    let cases: Vec<(Artifact, Vec<&ArrayD<f64>>)> = vec![
        (Artifact::Step, vec![&theta, &x, &y]),
        (Artifact::Pass2, vec![&theta, &x, &y, &v]),
        (Artifact::Pass2Dx, vec![&theta, &x, &y, &v]),
        (Artifact::Logits, vec![&theta, &x]),
        (Artifact::LabelVjp, vec![&theta, &x, &w]),
    ];
    let mut whole = programs(B);
    for per_call in [1, 2, 3] {
        let mut part = programs(per_call);
        let mut split = RowChunks::new(&mut part, B, per_call).unwrap();
        for (which, inputs) in &cases {
            let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
            let want = whole.run(*which, &views).unwrap();
            let got = split.run(*which, &views).unwrap();
            assert_eq!(want.len(), got.len(), "{which:?}");
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.shape(), b.shape(), "{which:?} output {k}");
                let (a, b) = (
                    a.iter().copied().collect::<Vec<_>>(),
                    b.iter().copied().collect::<Vec<_>>(),
                );
                let err = max_rel_err(&a, &b, 1e-12);
                assert!(
                    err < 1e-12,
                    "{which:?} output {k} in calls of {per_call}: relative error {err:e}"
                );
                assert!(
                    b.iter().any(|&t| t.abs() > 1e-6),
                    "{which:?} output {k} is all zero"
                );
            }
        }
    }
}

#[test]
fn the_unrolled_graph_and_a_wrong_batch_are_refused() {
    let mut part = programs(2);
    assert!(
        RowChunks::<f64>::new(&mut part, B, 4).is_err(),
        "4 does not divide 6"
    );
    let mut split = RowChunks::new(&mut part, B, 2).unwrap();
    let p = tiny_convnet(B, K).num_params();
    let theta = ArrayD::<f64>::zeros(IxDyn(&[p]));
    let x = ArrayD::<f64>::zeros(IxDyn(&[4, 1, 6, 6]));
    let e = split
        .run(Artifact::Logits, &[theta.view(), x.view()])
        .unwrap_err();
    assert!(format!("{e:#}").contains("rows"), "{e:#}");
    let e = split.run(Artifact::Unrolled, &[theta.view()]).unwrap_err();
    assert!(format!("{e:#}").contains("whole batches"), "{e:#}");
}

/// Inputs of every splittable artifact for a batch of `B`, in f32.
fn f32_cases(seed: u64) -> Vec<(Artifact, Vec<ArrayD<f32>>)> {
    let p = tiny_convnet(B, K).num_params();
    let mut r = rng(seed);
    let mut a = |shape: &[usize], lo: f64, hi: f64| {
        array(uniform(&mut r, shape, lo, hi)).mapv(|v| v as f32)
    };
    let theta = a(&[p], -0.5, 0.5);
    let v = a(&[p], -1.0, 1.0);
    let x = a(&[B, 1, 6, 6], -1.0, 1.0);
    let y = a(&[B, K], 0.0, 1.0);
    let w = a(&[B, K], -1.0, 1.0);
    vec![
        (Artifact::Step, vec![theta.clone(), x.clone(), y.clone()]),
        (
            Artifact::Pass2,
            vec![theta.clone(), x.clone(), y.clone(), v.clone()],
        ),
        (
            Artifact::Pass2Dx,
            vec![theta.clone(), x.clone(), y.clone(), v],
        ),
        (Artifact::Logits, vec![theta.clone(), x.clone()]),
        (Artifact::LabelVjp, vec![theta, x, w]),
    ]
}

#[test]
fn calls_side_by_side_give_the_calls_one_after_the_other() {
    let d = tempfile::tempdir().unwrap();
    let per_call = 2;
    let which = [
        Artifact::Step,
        Artifact::Pass2,
        Artifact::Pass2Dx,
        Artifact::Logits,
        Artifact::LabelVjp,
    ];
    compile_dir(&tiny_convnet(per_call, K), &which, 2, d.path()).unwrap();
    let mut kinds = vec![BackendKind::Tract];
    match ort_library_path() {
        Ok(_) => kinds.push(BackendKind::Ort),
        Err(e) => missing(&format!("the ONNX Runtime half: {e}")),
    }
    for kind in kinds {
        let mut one = BackendExec::new(backend(kind).unwrap(), d.path());
        one.set_lanes(1);
        let mut three = BackendExec::new(backend(kind).unwrap(), d.path());
        three.set_lanes(3);
        assert_eq!(three.lanes(), 3);
        for (artifact, inputs) in f32_cases(5) {
            let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
            let want = RowChunks::new(&mut one, B, per_call)
                .unwrap()
                .run(artifact, &views)
                .unwrap();
            let got = RowChunks::new(&mut three, B, per_call)
                .unwrap()
                .run(artifact, &views)
                .unwrap();
            assert_eq!(want.len(), got.len(), "{kind} {artifact:?}");
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.shape(), b.shape(), "{kind} {artifact:?} output {k}");
                let a: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
                let b: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
                assert!(
                    b.iter().any(|&t| t.abs() > 1e-6),
                    "{kind} {artifact:?} output {k} is all zero"
                );
                // tract computes each call the same way on one thread or on its pool; ONNX
                // Runtime promises the same sums only for the same thread count.
                let tol = if kind == BackendKind::Tract {
                    0.0
                } else {
                    1e-5
                };
                let err = max_rel_err(&a, &b, 1e-6);
                assert!(
                    err <= tol,
                    "{kind} {artifact:?} output {k}: side by side off by {err:e}"
                );
            }
        }
    }
}
