//! The evaluation's test accuracy: per-class counts agree with argmax over logits computed
//! independently (f64 reference evaluator, no batching), and runs are summarised per class.

use ndarray::Array4;
use rand::Rng;
use tesla_distill::compiler::artifact::logits_graph;
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{DType, Tensor};
use tesla_distill::data::Dataset;
use tesla_distill::eval::{eval_store, EvalConfig, ModelResult};
use tesla_distill::runtime::BackendKind;
use tesla_distill::train::{class_accuracy, init_theta, ClassCounts};
use tesla_distill::zoo::ModelSpec;

mod common;

const MODEL: &str = "convnet-d3-w4";

#[test]
fn class_counts_match_reference_argmax() {
    // 23 images in batches of 10: the last batch is padded, and class 2 has a single image.
    let labels: Vec<u32> = (0..23).map(|i| if i == 22 { 2 } else { i % 2 }).collect();
    let mut r = common::rng(11);
    let images = Array4::from_shape_fn((23, 1, 28, 28), |_| r.random_range(-1.0f32..1.0));
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let ds = Dataset::from_f32(
        "toy",
        images.clone(),
        labels.clone(),
        names,
        vec![0.0],
        vec![1.0],
    )
    .unwrap();
    let spec = ModelSpec::parse(MODEL).unwrap();
    let cfg = EvalConfig {
        runs: 1,
        epochs: 1,
        batch: 10,
        strategy: Default::default(),
        seed: 0,
        backend: BackendKind::Tract,
    };
    let work = tempfile::tempdir().unwrap();
    let mut store = eval_store(&spec, &ds, 3, &cfg, work.path());
    let theta = init_theta(&mut store, 10, 5).unwrap();
    let counts = class_accuracy(&mut store, &ds, &theta, 10).unwrap();

    let m = spec.build(23, [1, 28, 28], 3).unwrap();
    let z = eval(
        &logits_graph(&m).unwrap(),
        &[
            Tensor::new(
                DType::F64,
                vec![theta.len()],
                theta.iter().map(|&v| f64::from(v)).collect(),
            ),
            Tensor::new(
                DType::F64,
                vec![23, 1, 28, 28],
                images.iter().map(|&v| f64::from(v)).collect(),
            ),
        ],
    )
    .unwrap()
    .remove(0);
    let mut want = ClassCounts {
        correct: vec![0; 3],
        total: vec![0; 3],
    };
    for (row, &l) in z.data.chunks(3).zip(&labels) {
        let best = (0..3).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        want.total[l as usize] += 1;
        want.correct[l as usize] += usize::from(best == l as usize);
    }
    assert_eq!(counts, want);
    // Batches of 20 run as calls of 10 images: the same counts.
    assert_eq!(class_accuracy(&mut store, &ds, &theta, 20).unwrap(), want);
    assert!(store.dir(10).exists() && !store.dir(20).exists());
    assert_eq!(want.total, vec![11, 11, 1]);
    let overall = want.correct.iter().sum::<usize>() as f64 / 23.0;
    assert!((counts.accuracy() - overall).abs() < 1e-12);
}

#[test]
fn runs_are_summarised_per_class() {
    let runs = [
        ClassCounts {
            correct: vec![3, 0, 0],
            total: vec![4, 2, 0],
        },
        ClassCounts {
            correct: vec![2, 2, 0],
            total: vec![4, 2, 0],
        },
    ];
    let r = ModelResult::from_runs("m".into(), 0.1, &runs);
    assert_eq!(r.accuracies, vec![3.0 / 6.0, 4.0 / 6.0]);
    assert_eq!(r.per_class, vec![Some(0.625), Some(0.5), None]);
    assert!((r.mean - 7.0 / 12.0).abs() < 1e-12 && (r.std - 1.0 / 12.0).abs() < 1e-12);
    assert_eq!(
        r.per_class_line(&["x".into(), "y".into()]),
        "  per class: x 62.5 · y 50.0 · class 2 –"
    );
    // Older eval.json files carry no per-class field.
    let old = r#"{"model":"m","accuracies":[0.5],"mean":0.5,"std":0.0,"lr":0.1}"#;
    let back: ModelResult = serde_json::from_str(old).unwrap();
    assert!(back.per_class.is_empty());
}

/// The loss and gradient of a short batch against the f64 step graph compiled at that batch's
/// own size: padded to the compiled batch when the model normalises each image on its own, run
/// at its own size when a batch-norm node uses the batch's statistics.
#[test]
fn a_short_batch_gives_the_gradient_of_its_own_images() {
    let fixture = |f: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(f)
    };
    use tesla_distill::onnx::import::BatchNormMode;
    // (model, compiled batch, images per call, whether the short batch runs at its own size,
    // whether the file's batch is static, input, classes): a batch of 10 runs as two calls of 5,
    // one of 20 as two of 10, a batch-norm model's batch whole; the
    // exported ConvNet has a static batch of 4, so only the padded form can run 3 images on it.
    let cases = [
        (
            ModelSpec::parse(MODEL).unwrap(),
            10,
            5,
            false,
            false,
            [1, 28, 28],
            3,
        ),
        // Run as two calls of 10 images, the second all padding.
        (
            ModelSpec::parse(MODEL).unwrap(),
            20,
            10,
            false,
            false,
            [1, 28, 28],
            3,
        ),
        (
            ModelSpec::Onnx(fixture("convnet_dynamo_keep.onnx"), BatchNormMode::Auto),
            4,
            4,
            false,
            true,
            [1, 28, 28],
            10,
        ),
        (
            ModelSpec::Onnx(fixture("vgg11_bn_w4_dynamo.onnx"), BatchNormMode::Batch),
            10,
            10,
            true,
            false,
            [1, 28, 28],
            10,
        ),
    ];
    for (spec, batch, want_per_call, own_size, static_batch, [c, h, w], k) in cases {
        let work = tempfile::tempdir().unwrap();
        let mut store = tesla_distill::compile_cache::ProgramStore::new(
            spec.clone(),
            [c, h, w],
            k,
            BackendKind::Tract,
            work.path(),
            &[tesla_distill::runtime::programs::Artifact::Step],
        );
        let per_call = store.rows_per_call(batch).unwrap();
        let theta = init_theta(&mut store, per_call, 5).unwrap();
        let mut r = common::rng(3);
        let x = Array4::from_shape_fn((3, c, h, w), |_| r.random_range(-1.0f32..1.0));
        let mut y = ndarray::Array2::from_shape_fn((3, k), |_| r.random_range(0.1f32..1.0));
        for mut row in y.rows_mut() {
            let s = row.sum();
            row /= s;
        }
        let (loss, g) = tesla_distill::train::batch_gradient(
            &mut store,
            &theta,
            x.view(),
            y.view(),
            batch,
            per_call,
        )
        .unwrap();
        assert_eq!(store.dir(3).exists(), own_size, "{}", spec.name());
        assert!(store.dir(per_call).exists());
        assert_eq!(per_call, want_per_call, "{}", spec.name());

        let f64s = |shape: &[usize], v: &mut dyn Iterator<Item = f32>| {
            Tensor::new(DType::F64, shape.to_vec(), v.map(f64::from).collect())
        };
        let th = f64s(&[theta.len()], &mut theta.iter().copied());
        // The f64 step graph at 3 images; a file with a static batch builds only at its own
        // size, where the mean over 3 copies of one image is that image's loss and gradient.
        let groups: Vec<Vec<usize>> = if static_batch {
            (0..3).map(|i| vec![i; batch]).collect()
        } else {
            vec![vec![0, 1, 2]]
        };
        let m = spec.build(groups[0].len(), [c, h, w], k).unwrap();
        let step = tesla_distill::compiler::artifact::step_graph(&m).unwrap();
        let mut want = [
            Tensor::new(DType::F64, vec![], vec![0.0]),
            Tensor::new(DType::F64, vec![theta.len()], vec![0.0; theta.len()]),
        ];
        for rows in &groups {
            let xs = x.select(ndarray::Axis(0), rows);
            let ys = y.select(ndarray::Axis(0), rows);
            let out = eval(
                &step,
                &[
                    th.clone(),
                    f64s(xs.shape(), &mut xs.iter().copied()),
                    f64s(ys.shape(), &mut ys.iter().copied()),
                ],
            )
            .unwrap();
            for (acc, o) in want.iter_mut().zip(&out) {
                for (a, v) in acc.data.iter_mut().zip(&o.data) {
                    *a += v / groups.len() as f64;
                }
            }
        }
        let (want_loss, want_g) = (want[0].data[0], &want[1].data);
        assert!(
            (loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
            "{loss} vs {want_loss}"
        );
        let scale = want_g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        let worst = g
            .iter()
            .zip(want_g)
            .fold(0.0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
        assert!(
            worst < 1e-4 * scale,
            "{}: gradient off by {worst} (scale {scale})",
            spec.name()
        );
    }
}

/// A batch-norm model with batch statistics: 23 images in batches of 10 give, for the last three,
/// the logits of a batch of those three (as PyTorch's `DataLoader` batches them), both in the
/// teacher's labels and in the test accuracy. Padding the batch to 10 would change them.
#[test]
fn a_short_batch_of_a_batch_statistics_model_is_not_padded() {
    use tesla_distill::compile_cache::ProgramStore;
    use tesla_distill::distill::labels::{softmax_rows, teacher_labels};
    use tesla_distill::onnx::import::BatchNormMode;
    use tesla_distill::runtime::programs::Artifact;
    let spec = ModelSpec::Onnx(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/vgg11_bn_w4_dynamo.onnx"),
        BatchNormMode::Batch,
    );
    let (n, b, k) = (23, 10, 10);
    let mut r = common::rng(17);
    let images = Array4::from_shape_fn((n, 1, 28, 28), |_| r.random_range(-1.0f32..1.0));
    let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
    let names: Vec<String> = (0..k).map(|c| format!("c{c}")).collect();
    let ds = Dataset::from_f32(
        "toy",
        images.clone(),
        labels.clone(),
        names,
        vec![0.0],
        vec![1.0],
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut store = ProgramStore::new(
        spec.clone(),
        [1, 28, 28],
        k,
        BackendKind::Tract,
        work.path(),
        &[Artifact::Logits],
    );
    let theta = init_theta(&mut store, b, 5).unwrap();

    // f64 logits of the given rows as one batch.
    let reference = |rows: &[usize]| -> ndarray::Array2<f64> {
        let m = spec.build(rows.len(), [1, 28, 28], k).unwrap();
        let x = images.select(ndarray::Axis(0), rows);
        let z = eval(
            &logits_graph(&m).unwrap(),
            &[
                Tensor::new(
                    DType::F64,
                    vec![theta.len()],
                    theta.iter().map(|&v| f64::from(v)).collect(),
                ),
                Tensor::new(
                    DType::F64,
                    x.shape().to_vec(),
                    x.iter().map(|&v| f64::from(v)).collect(),
                ),
            ],
        )
        .unwrap()
        .remove(0);
        ndarray::Array2::from_shape_vec((rows.len(), k), z.data).unwrap()
    };
    let mut want = ndarray::Array2::<f64>::zeros((n, k));
    for start in (0..n).step_by(b) {
        let rows: Vec<usize> = (start..(start + b).min(n)).collect();
        want.slice_mut(ndarray::s![start..start + rows.len(), ..])
            .assign(&reference(&rows));
    }
    // The padded form really differs here, so the comparison below can tell the two apart.
    let mut padded: Vec<usize> = (20..23).collect();
    padded.resize(b, 20);
    let pz = reference(&padded);
    let gap = (&pz.slice(ndarray::s![..3, ..]) - &want.slice(ndarray::s![20.., ..]))
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(gap > 1e-2, "padding changes the logits by only {gap}");

    let got = teacher_labels(&mut store.batches(b).unwrap(), &theta, &images, k).unwrap();
    let want_p = softmax_rows(&want);
    let worst = got
        .iter()
        .zip(&want_p)
        .fold(0.0f64, |m, (&a, &w)| m.max((f64::from(a) - w).abs()));
    assert!(worst < 1e-4, "teacher labels off by {worst}");
    assert!(
        store.dir(3).exists(),
        "the short batch ran on its own programs"
    );

    let counts = class_accuracy(&mut store, &ds, &theta, b).unwrap();
    let mut expect = ClassCounts {
        correct: vec![0; k],
        total: vec![0; k],
    };
    for (row, &l) in want.rows().into_iter().zip(&labels) {
        let best = (0..k).fold(0, |bi, c| if row[c] > row[bi] { c } else { bi });
        expect.total[l as usize] += 1;
        expect.correct[l as usize] += usize::from(best == l as usize);
    }
    assert_eq!(counts, expect);
}
