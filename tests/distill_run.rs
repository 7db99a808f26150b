//! The distillation run: soft labels come from the target-step teacher, and a killed and resumed
//! run ends with the same images as an uninterrupted one.

use std::path::Path;
use tesla_distill::compiler::artifact::logits_graph;
use tesla_distill::compiler::eval::eval;
use tesla_distill::compiler::ir::{DType, Tensor};
use tesla_distill::distill::gradient::Mode;
use tesla_distill::distill::run::{run, DistillConfig, Labels, PixInit};
use tesla_distill::experts::trajectory::{list, Trajectory};
use tesla_distill::experts::{run_experts, ExpertsConfig};
use tesla_distill::runtime::{read_safetensors, BackendKind};
use tesla_distill::zoo::ModelSpec;

const MODEL: &str = "convnet-d3-w4";

fn experts(dir: &Path) {
    run_experts(&ExpertsConfig {
        dataset: "fmnist-small".into(),
        model: ModelSpec::parse(MODEL).unwrap(),
        experts: 2,
        epochs: 2,
        lr: 0.01,
        batch: 64,
        momentum: 0.0,
        weight_decay: 0.0,
        strategy: Default::default(),
        zca: false,
        seed: 1,
        shard: (0, 1),
        backend: BackendKind::Tract,
        out: dir.to_path_buf(),
        limit: Some(200),
    })
    .unwrap();
}

fn config(experts: &Path, out: &Path, iterations: usize, labels: Labels) -> DistillConfig {
    DistillConfig {
        dataset: "fmnist-small".into(),
        model: MODEL.into(),
        experts: experts.to_path_buf(),
        ipc: 1,
        syn_steps: 3,
        expert_epochs: 1,
        max_start_epoch: 1,
        iterations,
        lr_img: 100.0,
        lr_lr: 1e-5,
        lr_init: 0.01,
        lr_label: 2.0,
        batch_syn: Some(5),
        pix_init: PixInit::Real,
        labels,
        gradient: Mode::Tesla,
        zca: false,
        dsa_strategy: "color_crop_cutout_flip_scale_rotate".into(),
        backend: "tract".into(),
        seed: 4,
        eval_every: 0,
        eval_epochs: 10,
        eval_runs: 1,
        checkpoint_every: 2,
        out: out.to_path_buf(),
    }
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
    let n = init.images.shape()[0];
    let m = ModelSpec::parse(MODEL)
        .unwrap()
        .build(n, [1, 28, 28], 10)
        .unwrap();
    let z = eval(
        &logits_graph(&m).unwrap(),
        &[
            Tensor::new(DType::F64, vec![target.len()], target),
            Tensor::new(
                DType::F64,
                init.images.shape().to_vec(),
                init.images.iter().copied().collect(),
            ),
        ],
    )
    .unwrap()
    .remove(0);
    for (i, row) in z.data.chunks(10).enumerate() {
        let mx = row.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for (k, v) in row.iter().enumerate() {
            let p = (v - mx).exp() / s;
            let got = st.last_labels[[i, k]];
            assert!(
                (got - p).abs() < 1e-5,
                "label [{i},{k}]: {got} vs softmax {p}"
            );
        }
    }
}
