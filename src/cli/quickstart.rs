//! `tesla quickstart`: the main job end to end on the embedded Fashion-MNIST subset, sized for a
//! few minutes on two CPU cores.

use crate::data::augment::Strategy;
use crate::data::Split;
use crate::distill::gradient::Mode;
use crate::distill::run::{DistillConfig, Labels, PixInit};
use crate::eval::{evaluate, EvalConfig};
use crate::experts::ExpertsConfig;
use crate::runtime::BackendKind;
use crate::train::{derive_seed, one_hot};
use crate::zoo::ModelSpec;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// `tesla quickstart` arguments.
#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Output folder.
    #[arg(long, default_value = "runs/quickstart")]
    pub out: PathBuf,
    /// Backend. Default: ort when the ONNX Runtime library is found (ORT_DYLIB_PATH, or the pip
    /// package onnxruntime), else tract.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Distillation iterations.
    #[arg(long, default_value_t = 300)]
    pub iterations: usize,
    /// Evaluation epochs.
    #[arg(long, default_value_t = 150)]
    pub eval_epochs: usize,
}

/// Experts and their epochs: with the iterations, sized for a few minutes on two cores with ONNX
/// Runtime, enough for the distilled set to beat one random real image per class clearly.
const EXPERTS: usize = 3;
const EPOCHS: usize = 5;

/// Runs the quickstart.
pub fn run(a: QuickstartArgs) -> Result<()> {
    let backend = super::resolve_backend(a.backend);
    let bars = super::progress_bars::bars();
    let dataset = "fmnist-small";
    let model = "convnet-d3-w32";
    let experts_dir = a.out.join("experts");
    println!(
        "1/3 training {EXPERTS} experts × {EPOCHS} epochs of {model} on the 5000 images of {dataset} → {}",
        experts_dir.display()
    );
    crate::experts::run_experts_with(
        &ExpertsConfig {
            dataset: dataset.into(),
            model: ModelSpec::parse(model)?,
            experts: EXPERTS,
            epochs: EPOCHS,
            lr: 0.01,
            batch: 256,
            momentum: 0.0,
            weight_decay: 0.0,
            strategy: Strategy::default(),
            zca: false,
            seed: 0,
            shard: (0, 1),
            backend,
            out: experts_dir.clone(),
            limit: None,
        },
        &bars,
    )?;
    let run_dir = a.out.join("distill-ipc1");
    println!(
        "2/3 distilling 1 image per class, {} iterations → {}",
        a.iterations,
        run_dir.display()
    );
    let cfg = DistillConfig {
        dataset: dataset.into(),
        model: model.into(),
        experts: experts_dir,
        ipc: 1,
        syn_steps: 10,
        expert_epochs: 2,
        max_start_epoch: 4,
        iterations: a.iterations,
        lr_img: 20.0,
        lr_lr: 1e-5,
        lr_init: Some(0.01),
        lr_label: 2.0,
        batch_syn: None,
        pix_init: PixInit::Real,
        labels: Labels::Hard,
        label_grad: false,
        final_labels: Default::default(),
        gradient: Mode::Tesla,
        zca: false,
        dsa_strategy: Strategy::default().to_string(),
        backend: backend.to_string(),
        seed: 0,
        eval_every: 0,
        eval_epochs: 300,
        eval_runs: 1,
        checkpoint_every: 20,
        out: run_dir.clone(),
    };
    // A re-run picks up where an interrupted one stopped.
    let resume = run_dir
        .join("checkpoint")
        .join("state.safetensors")
        .exists();
    let st = crate::distill::run::run_with(cfg, resume, &bars)?;
    println!(
        "3/3 evaluating (2 networks × {} epochs each) against 1 random real image per class",
        a.eval_epochs
    );
    let test = crate::data::load(dataset, Split::Test, None)?;
    let train = crate::data::load(dataset, Split::Train, None)?;
    let ecfg = EvalConfig {
        runs: 2,
        epochs: a.eval_epochs,
        batch: 256,
        strategy: Strategy::default(),
        seed: 0,
        backend,
    };
    let spec = ModelSpec::parse(model)?;
    let work = a.out.join("eval-artifacts");
    let d = evaluate(
        &spec,
        st.images.view(),
        st.last_labels.view(),
        st.beta,
        &test,
        &ecfg,
        &work,
        0,
        &bars,
    )?;
    let sel = crate::data::select::select_per_class(&train, 1, derive_seed(0, 7_000))?;
    let r = evaluate(
        &spec,
        sel.images(&train).view(),
        one_hot(&sel.labels, train.num_classes()).view(),
        0.01,
        &test,
        &ecfg,
        &work,
        0,
        &bars,
    )?;
    println!("distilled (trajectory matching, hard labels): {}", d.line());
    println!("random real subset:             {}", r.line());
    let eval_path = run_dir.join("eval.json");
    let json = serde_json::json!({
        "evaluated": "distilled.safetensors against 1 random real image per class",
        "dataset": dataset,
        "epochs": a.eval_epochs,
        "results": { "distilled": d, "random": r },
    });
    crate::atomic_file::write(&eval_path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    println!("outputs:");
    for p in crate::distill::run::describe_outputs(&run_dir) {
        println!("  {}", p.display());
    }
    println!("  {}", eval_path.display());
    Ok(())
}
