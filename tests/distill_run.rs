//! The distillation run: soft labels come from the target-step teacher, and a killed and resumed
//! run ends with the same images as an uninterrupted one.

mod common;

use std::path::Path;
use tesla_distill::compiler::artifact::logits_graph;
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{DType, Tensor};
use tesla_distill::distill::run::{run, DistillConfig, FinalLabels, Labels, PixInit};
use tesla_distill::experts::trajectory::{list, Trajectory};
use tesla_distill::experts::{run_experts, ExpertsConfig};
use tesla_distill::runtime::read_safetensors;
use tesla_distill::zoo::ModelSpec;

const MODEL: &str = "convnet-d3-w4";

fn experts(dir: &Path) {
    experts_with_momentum(dir, 0.0)
}

fn experts_with_momentum(dir: &Path, momentum: f64) {
    experts_with(dir, 0.01, momentum, 200)
}

fn experts_with(dir: &Path, lr: f64, momentum: f64, limit: usize) {
    run_experts(&ExpertsConfig {
        lr,
        momentum,
        limit: Some(limit),
        ..common::tiny_experts_config(dir, 2, 2, 1)
    })
    .unwrap();
}

fn config(experts: &Path, out: &Path, iterations: usize, labels: Labels) -> DistillConfig {
    common::tiny_distill_config(experts, out, iterations, labels)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    experts(&ex);
    let full = run(
        config(&ex, &d.path().join("full"), 4, Labels::Target),
        false,
    )
    .unwrap();
    // "Killed" after the checkpoint at iteration 2, then resumed to 4.
    let part = d.path().join("part");
    run(config(&ex, &part, 2, Labels::Target), false).unwrap();
    // Resumed from a copy of the run directory: it continues in the copy, not where it began.
    let moved = d.path().join("moved");
    copy_dir(&part, &moved);
    let resumed = run(config(&ex, &moved, 4, Labels::Target), true).unwrap();
    let part = moved;
    assert_eq!(resumed.iteration, 4);
    assert!(full.images == resumed.images, "images differ after resume");
    assert_eq!(full.beta, resumed.beta);
    let a = read_safetensors(&d.path().join("full").join("distilled.safetensors")).unwrap();
    let b = read_safetensors(&part.join("distilled.safetensors")).unwrap();
    assert_eq!(a, b, "distilled files differ");
    assert!(part.join("grid.png").exists() && part.join("metrics.jsonl").exists());
    let metrics = std::fs::read_to_string(part.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);
}

#[test]
fn soft_labels_are_the_target_teachers_softmax() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    experts(&ex);
    let out = d.path().join("run");
    let st = run(config(&ex, &out, 1, Labels::Target), false).unwrap();
    // The iteration's expert and start epoch are in metrics.jsonl.
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let e = line["expert"].as_u64().unwrap() as usize;
    let t = line["start_epoch"].as_u64().unwrap() as usize;
    let traj = Trajectory::open(&list(&ex).unwrap()[e]).unwrap();
    let target = traj.epoch(t + 1).unwrap();
    // Images before the update: re-create the initial state from the same seed.
    let cfg = config(&ex, &out, 1, Labels::Target);
    let train =
        tesla_distill::data::load("fmnist-small", tesla_distill::data::Split::Train, None).unwrap();
    let init = tesla_distill::distill::run::initial_state(&cfg, &train).unwrap();
    let z = teacher_logits(target, &init.images);
    for (i, row) in z.data.chunks(10).enumerate() {
        let mx = row.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for (k, v) in row.iter().enumerate() {
            let p = (v - mx).exp() / s;
            let got = f64::from(st.last_labels[[i, k]]);
            assert!(
                (got - p).abs() < 1e-5,
                "label [{i},{k}]: {got} vs softmax {p}"
            );
        }
    }
}

#[test]
fn beta_starts_at_the_experts_step_size_by_default() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    // lr 0.01 with momentum 0.5: a steady-state step of 0.02.
    experts_with_momentum(&ex, 0.5);
    let out = d.path().join("run");
    let mut cfg = config(&ex, &out, 1, Labels::Hard);
    cfg.lr_init = None;
    // β is not learned in this run, so it keeps its initial value.
    cfg.lr_lr = 0.0;
    let st = run(cfg, false).unwrap();
    // β lives in the state as f32.
    assert!((st.beta - 0.02).abs() < 1e-8, "beta {}", st.beta);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert!((saved["lr_init"].as_f64().unwrap() - 0.02).abs() < 1e-12);
}

#[test]
fn label_grad_runs_on_tract_and_changes_the_image_update() {
    // The gradient itself is checked against finite differences in tests/distill_label_grad.rs;
    // here the flag must reach the run: same seed, same labels, a different image update.
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    experts(&ex);
    let plain = run(
        config(&ex, &d.path().join("plain"), 2, Labels::Target),
        false,
    )
    .unwrap();
    let mut cfg = config(&ex, &d.path().join("lg"), 2, Labels::Target);
    cfg.label_grad = true;
    let lg = run(cfg, false).unwrap();
    assert!(lg.images.iter().all(|v| v.is_finite()));
    let diff = (&lg.images - &plain.images)
        .iter()
        .fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    assert!(
        diff > 1e-6,
        "--label-grad left the images unchanged ({diff:e})"
    );
    assert!(d.path().join("lg/artifacts/b5/label_vjp.onnx").exists());
}

#[test]
fn final_labels_mean_averages_every_target_teacher_on_the_final_images() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    experts(&ex);
    let out = d.path().join("run");
    let mut cfg = config(&ex, &out, 2, Labels::Target);
    cfg.max_start_epoch = 2;
    cfg.final_labels = FinalLabels::Mean;
    let st = run(cfg, false).unwrap();
    let saved = read_safetensors(&out.join("distilled.safetensors")).unwrap();
    let labels = &saved.iter().find(|(k, _)| k == "labels").unwrap().1;
    // Two experts × target epochs 1 and 2, each a softmax of its logits on the saved images.
    let mut want = vec![0.0f64; 10 * 10];
    for f in list(&ex).unwrap() {
        let traj = Trajectory::open(&f).unwrap();
        for e in 1..=2 {
            let z = teacher_logits(traj.epoch(e).unwrap(), &st.images);
            for (i, row) in z.data.chunks(10).enumerate() {
                let mx = row.iter().cloned().fold(f64::MIN, f64::max);
                let s: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                for (k, v) in row.iter().enumerate() {
                    want[i * 10 + k] += (v - mx).exp() / s / 4.0;
                }
            }
        }
    }
    for (got, want) in labels.iter().zip(&want) {
        assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
    }
    // `tesla eval --teacher-labels` recomputes the same rows for any set's images.
    let set = out.join("distilled.safetensors");
    let eval = |epochs: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tesla"))
            .args(["eval", "--distilled", set.to_str().unwrap()])
            .args([
                "--teacher-labels",
                ex.to_str().unwrap(),
                "--teacher-epochs",
                epochs,
            ])
            .args([
                "--dataset",
                "fmnist-small",
                "--models",
                MODEL,
                "--epochs",
                "1",
            ])
            .args([
                "--runs",
                "1",
                "--out",
                d.path().join("e.json").to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let o = eval("1-2");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shares: Vec<f64> = stdout
        .lines()
        .find_map(|l| l.split_once("own-class share per image: "))
        .unwrap_or_else(|| panic!("no own-class line in {stdout}"))
        .1
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(shares.len(), 10);
    for (i, got) in shares.iter().enumerate() {
        // One image per class, in class order: image i's own class is i.
        assert!(
            (got - want[i * 10 + i]).abs() <= 0.0051,
            "{got} vs {}",
            want[i * 10 + i]
        );
    }
    // Epochs the experts do not have, or backwards: one error line, no panic.
    for (epochs, needle) in [("1-5", "epoch 5"), ("2-1", "--teacher-epochs")] {
        let o = eval(epochs);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(lines.len() == 1 && lines[0].contains(needle), "{err}");
    }
    // Not what the last iteration alone assigned.
    let last = st
        .last_labels
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    assert!(
        last > 1e-4,
        "the mean equals the last iteration's rows ({last:e})"
    );
}

/// The teacher's logits by the f64 reference evaluator, from the f32 values the run holds.
fn teacher_logits(theta: Vec<f32>, images: &ndarray::Array4<f32>) -> Tensor {
    let m = ModelSpec::parse(MODEL)
        .unwrap()
        .build(images.shape()[0], [1, 28, 28], 10)
        .unwrap();
    eval(
        &logits_graph(&m).unwrap(),
        &[
            Tensor::new(
                DType::F64,
                vec![theta.len()],
                theta.iter().map(|&v| f64::from(v)).collect(),
            ),
            Tensor::new(
                DType::F64,
                images.shape().to_vec(),
                images.iter().map(|&v| f64::from(v)).collect(),
            ),
        ],
    )
    .unwrap()
    .remove(0)
}

/// Indices of the `images` rows whose argmax under the teacher `theta` is not `classes[i]`.
fn misclassified(theta: Vec<f32>, images: &ndarray::Array4<f32>, classes: &[u32]) -> Vec<usize> {
    teacher_logits(theta, images)
        .data
        .chunks(10)
        .enumerate()
        .filter(|(i, row)| {
            let best = (0..10).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            best != classes[*i] as usize
        })
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn real_correct_starts_from_real_images_every_target_teacher_gets_right() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    // Teachers good enough to get some image of every class right.
    experts_with(&ex, 0.05, 0.9, 2000);
    let out = d.path().join("run");
    let mut cfg = config(&ex, &out, 1, Labels::Target);
    cfg.pix_init = PixInit::RealCorrect;
    // Images that do not move: the state after one iteration is the start.
    cfg.lr_img = 0.0;
    cfg.max_start_epoch = 2;
    cfg.expert_epochs = 1;
    let st = run(cfg.clone(), false).unwrap();
    let train =
        tesla_distill::data::load("fmnist-small", tesla_distill::data::Split::Train, None).unwrap();
    // Every image is a training image of its own class.
    for (i, &c) in st.classes.iter().enumerate() {
        assert_eq!(c as usize, i, "one image per class, class order");
        let img = st.images.index_axis(ndarray::Axis(0), i);
        let found = train.class_indices(i).iter().any(|&j| {
            let x = train.batch(&[j]);
            x.index_axis(ndarray::Axis(0), 0)
                .iter()
                .zip(img.iter())
                .all(|(a, b)| a == b)
        });
        assert!(found, "image {i} is not a training image of class {i}");
    }
    // Every target-step teacher (epochs 1 and 2 of both experts) classifies every image right.
    for f in list(&ex).unwrap() {
        let traj = Trajectory::open(&f).unwrap();
        for epoch in 1..=2 {
            let wrong = misclassified(traj.epoch(epoch).unwrap(), &st.images, &st.classes);
            assert!(
                wrong.is_empty(),
                "{} epoch {epoch}: images {wrong:?} misclassified",
                f.display()
            );
        }
    }
    // A random real start with the same seed does include images some teacher gets wrong, so the
    // check above is not vacuous.
    let mut plain = cfg.clone();
    plain.pix_init = PixInit::Real;
    let random = tesla_distill::distill::run::initial_state(&plain, &train).unwrap();
    let wrong: usize = list(&ex)
        .unwrap()
        .iter()
        .map(|f| {
            let traj = Trajectory::open(f).unwrap();
            (1..=2)
                .map(|e| {
                    misclassified(traj.epoch(e).unwrap(), &random.images, &random.classes).len()
                })
                .sum::<usize>()
        })
        .sum();
    assert!(
        wrong > 0,
        "every teacher already gets the random start right"
    );
    // Asking for more agreed images than a class holds fails with a clear message.
    let mut all = cfg;
    all.ipc = 500;
    all.batch_syn = Some(10);
    all.out = d.path().join("all");
    let err = match run(all, false) {
        Ok(_) => panic!("500 agreed images of every class were found"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("classified correctly by all 4 target-step teachers"),
        "{err}"
    );
}
