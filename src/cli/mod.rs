//! The `tesla` command line: argument parsing and the glue from each subcommand to the library.

pub mod bench;
mod progress_bars;
pub mod quickstart;
mod value_enums;

use crate::compiler::manifest::Manifest;
use crate::data::augment::Strategy;
use crate::data::Split;
use crate::distill::gradient::Mode;
use crate::distill::presets::preset;
use crate::distill::run::{DistillConfig, FinalLabels, Labels, PixInit};
use crate::distill::set_eval::{evaluate_set, SetEvaluation, SetLabels};
use crate::eval::baseline::{evaluate_baseline, Baseline};
use crate::eval::EvalConfig;
use crate::experts::ExpertsConfig;
use crate::onnx::artifacts::{compile_dir, standard_set};
use crate::onnx::import::BatchNormMode;
use crate::runtime::programs::Artifact;
use crate::runtime::BackendKind;
use crate::zoo::standard::write_standard_graphs;
use crate::zoo::ModelSpec;
use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Dataset distillation by matching training trajectories with constant memory (TESLA).
#[derive(Parser, Debug)]
#[command(name = "tesla", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Differentiate a forward model and write its training artifacts (ONNX + manifest.json).
    Compile(CompileArgs),
    /// Summarise an artifact directory: ops, parameters, FLOPs.
    Inspect {
        /// Artifact directory.
        dir: PathBuf,
    },
    /// Run one ONNX graph on tensors from a safetensors file.
    Run {
        /// The graph.
        graph: PathBuf,
        /// Input tensors, named as the graph inputs.
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the outputs.
        #[arg(long)]
        out: PathBuf,
        /// Backend. Default: ort when the ONNX Runtime library is found (ORT_DYLIB_PATH, or
        /// the pip package onnxruntime), else tract.
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
    },
    /// Write the standard artifact set (the committed `graphs/` folder).
    Graphs {
        /// Output folder.
        #[arg(long, default_value = "graphs")]
        out: PathBuf,
    },
    /// Train expert trajectories.
    Experts(ExpertsArgs),
    /// Distill a dataset (Algorithm 1).
    Distill(Box<DistillArgs>),
    /// Evaluate a distilled set, a random real subset or the whole training set.
    Eval(EvalArgs),
    /// Benchmarks: data path, step throughput, memory in T.
    Bench(bench::BenchArgs),
    /// The main job end to end on the embedded data: experts, distillation, evaluation, picture.
    Quickstart(quickstart::QuickstartArgs),
}

#[derive(Args, Debug)]
struct CompileArgs {
    /// `convnet-d3`, `convnet-d4` (options: -wN, -ln, -nonorm, -leaky, -sigmoid, -max, -nopool), `resnet18[-wN]`, `vit[-pN-dN-lN-hN-mN]` or PATH.onnx.
    #[arg(long)]
    model: String,
    /// Batch norm of an ONNX model: `auto` (batch statistics for nodes the exporter traced from
    /// a model in train() or whose running statistics are untouched; else the file's running
    /// statistics), `batch` or `running`. Default: auto, or what the model name says.
    #[arg(long, value_parser = parse_batchnorm)]
    batchnorm: Option<BatchNormMode>,
    /// Image shape CxHxW.
    #[arg(long, default_value = "3x32x32")]
    input: String,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Batch size the graphs are compiled for.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Also write `unrolled.onnx` with this many student steps.
    #[arg(long)]
    unrolled_steps: Option<usize>,
    /// Also write `label_vjp.onnx` (the way back through teacher-assigned soft labels).
    #[arg(long)]
    label_vjp: bool,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct ExpertsArgs {
    /// Run with every setting from this file, the `config.json` an experts run wrote (beside it
    /// only --out and --backend may be given).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dataset spec (fashion-mnist[:DIR], fmnist-small, cifar10:DIR, …).
    #[arg(long, required_unless_present = "config")]
    dataset: Option<String>,
    /// Model: convnet-dN[-wN…], resnet18[-wN], vit[-pN-dN-lN-hN-mN] or a forward .onnx file.
    #[arg(long, default_value = "convnet-d3")]
    model: String,
    /// Batch norm of an ONNX model: `auto` (batch statistics for nodes the exporter traced from
    /// a model in train() or whose running statistics are untouched; else the file's running
    /// statistics), `batch` or `running`. Default: auto, or what the model name says.
    #[arg(long, value_parser = parse_batchnorm)]
    batchnorm: Option<BatchNormMode>,
    /// Number of experts.
    #[arg(long, default_value_t = 5)]
    experts: usize,
    /// Epochs per expert.
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Output directory.
    #[arg(long, required_unless_present = "config")]
    out: Option<PathBuf>,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// DSA strategy (`none` disables).
    #[arg(long, default_value = "color_crop_cutout_flip_scale_rotate")]
    dsa_strategy: String,
    /// ZCA-whiten images.
    #[arg(long)]
    zca: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train slice i of k (`0/1`: all).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Train on at most this many real images (class-balanced), for quick runs.
    #[arg(long)]
    limit: Option<usize>,
    /// Backend. Default: ort when the ONNX Runtime library is found (ORT_DYLIB_PATH, or the pip
    /// package onnxruntime), else tract.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
}

/// `tesla distill` arguments.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// Run with every setting from this file, the `config.json` a distillation wrote (beside it
    /// only --out, --backend and --resume may be given).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Paper settings: cifar10-ipc1|10|50, cifar100-ipc1|10|50, imagenet-ipc1|2|10|50, fmnist-ipc1|10.
    #[arg(long)]
    preset: Option<String>,
    /// Dataset: fashion-mnist[:DIR], fmnist-small (embedded), mnist:DIR, cifar10:DIR,
    /// cifar100:DIR, imagenet64:DIR, imagenet32:DIR, tiny:DIR or folder:DIR. Default: the
    /// preset's, else the experts' dataset.
    #[arg(long)]
    dataset: Option<String>,
    /// Model: convnet-dN[-wN…], resnet18[-wN], vit[-pN-dN-lN-hN-mN] or a forward .onnx file.
    /// Default: the preset's, else the experts' model.
    #[arg(long)]
    model: Option<String>,
    /// Batch norm of an ONNX model: `auto` (batch statistics for nodes the exporter traced from
    /// a model in train() or whose running statistics are untouched; else the file's running
    /// statistics), `batch` or `running`. Default: auto, or what the model name says.
    #[arg(long, value_parser = parse_batchnorm)]
    batchnorm: Option<BatchNormMode>,
    /// Experts directory.
    #[arg(long, required_unless_present = "config")]
    experts: Option<PathBuf>,
    /// Images per class (required unless a preset gives it).
    #[arg(long)]
    ipc: Option<usize>,
    /// Student steps T (required unless a preset gives it).
    #[arg(long)]
    syn_steps: Option<usize>,
    /// Expert epochs M (required unless a preset gives it).
    #[arg(long)]
    expert_epochs: Option<usize>,
    /// Start epochs are drawn below this (required unless a preset gives it).
    #[arg(long)]
    max_start_epoch: Option<usize>,
    /// Iterations. Default: 5000.
    #[arg(long)]
    iterations: Option<usize>,
    /// Image learning rate (half the reference code's value, whose image gradient is half of
    /// the formula's; see docs/method.md). Default: the preset's, else 500.
    #[arg(long)]
    lr_img: Option<f64>,
    /// Learning rate of β. Default: 1e-5.
    #[arg(long)]
    lr_lr: Option<f64>,
    /// Initial β (default: the experts' learning rate, divided by 1 − momentum if they used momentum).
    #[arg(long)]
    lr_init: Option<f64>,
    /// Learning rate of learned labels. Default: 2.
    #[arg(long)]
    lr_label: Option<f64>,
    /// Student batch. Default: the preset's, else all synthetic images.
    #[arg(long)]
    batch_syn: Option<usize>,
    /// Image initialisation. Default: real.
    #[arg(long, value_enum)]
    pix_init: Option<PixInit>,
    /// Labels. Default: target.
    #[arg(long, value_enum)]
    labels: Option<Labels>,
    /// Gradient mode. Default: tesla.
    #[arg(long, value_enum)]
    gradient: Option<Mode>,
    /// Also differentiate through soft label assignment (labels target|last): the teacher's
    /// labels depend on the images, and the paper's gradient holds them fixed.
    #[arg(long)]
    label_grad: bool,
    /// The label rows the distilled set is saved with: the last iteration's (default) or the
    /// mean over every teacher the run samples from.
    #[arg(long, value_enum)]
    final_labels: Option<FinalLabels>,
    /// ZCA whitening (also on when the preset says so).
    #[arg(long)]
    zca: bool,
    /// DSA strategy (`none` disables). Default: color_crop_cutout_flip_scale_rotate.
    #[arg(long)]
    dsa_strategy: Option<String>,
    /// Backend. Default: ort when the ONNX Runtime library is found (ORT_DYLIB_PATH, or the pip
    /// package onnxruntime), else tract.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate every this many iterations (0: never).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Epochs of those evaluations.
    #[arg(long, default_value_t = 300)]
    eval_epochs: usize,
    /// Runs of those evaluations.
    #[arg(long, default_value_t = 1)]
    eval_runs: usize,
    /// Checkpoint every this many iterations.
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
    /// Resume from the run directory's checkpoint.
    #[arg(long)]
    resume: bool,
    /// Run directory.
    #[arg(long, required_unless_present = "config")]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A distilled.safetensors file.
    #[arg(long, conflicts_with_all = ["random", "whole"])]
    distilled: Option<PathBuf>,
    /// Baseline: K random real images per class.
    #[arg(long, conflicts_with = "whole")]
    random: Option<usize>,
    /// Baseline: the whole training set.
    #[arg(long)]
    whole: bool,
    /// Dataset spec (see `tesla experts --help` for the forms). Default with `--distilled`: the
    /// dataset the set was distilled from.
    #[arg(long)]
    dataset: Option<String>,
    /// Models, comma-separated (e.g. convnet-d3,resnet18,vit for cross-architecture evaluation).
    #[arg(long, default_value = "convnet-d3")]
    models: String,
    /// Batch norm of an ONNX model: `auto` (batch statistics for nodes the exporter traced from
    /// a model in train() or whose running statistics are untouched; else the file's running
    /// statistics), `batch` or `running`. Default: auto, or what the model name says.
    #[arg(long, value_parser = parse_batchnorm)]
    batchnorm: Option<BatchNormMode>,
    /// Runs per model.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Epochs.
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
    /// Learning rate (default: the distilled set's learned one, else 0.01).
    #[arg(long)]
    lr: Option<f64>,
    /// Use hard labels even if the distilled set has soft ones.
    #[arg(long)]
    hard_labels: bool,
    /// Give the distilled images the mean soft labels of these experts' `--teacher-epochs` instead
    /// of their own labels (what `--final-labels mean` saves), to compare labels on equal images.
    #[arg(long, requires_all = ["distilled", "teacher_epochs"], conflicts_with = "hard_labels")]
    teacher_labels: Option<PathBuf>,
    /// The teachers' epochs for `--teacher-labels`, FIRST-LAST (a run's target-step teachers are
    /// epochs M to S−1+M).
    #[arg(long, requires = "teacher_labels")]
    teacher_epochs: Option<String>,
    /// DSA strategy.
    #[arg(long, default_value = "color_crop_cutout_flip_scale_rotate")]
    dsa_strategy: String,
    /// ZCA-whiten with the fit in this file (default: the distilled set's `zca.safetensors`, if
    /// it used ZCA).
    #[arg(long = "zca-file", value_name = "FILE")]
    zca: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend. Default: ort when the ONNX Runtime library is found (ORT_DYLIB_PATH, or the pip
    /// package onnxruntime), else tract.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Write results here (JSON, and the same as a Markdown table beside it with `.md`); default:
    /// beside the distilled file, or eval.json.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The backend asked for, else [`crate::runtime::default_backend`]; says which on stderr, so every
/// run's log records what computed it.
pub fn resolve_backend(asked: Option<BackendKind>) -> BackendKind {
    match asked {
        Some(k) => {
            eprintln!("backend: {k}");
            k
        }
        None => {
            let (k, why) = crate::runtime::default_backend();
            eprintln!("backend: {k} ({why})");
            k
        }
    }
}

fn parse_batchnorm(s: &str) -> Result<BatchNormMode> {
    s.parse()
}

/// Parses `CxHxW`.
pub fn parse_shape(s: &str) -> Result<[usize; 3]> {
    let v: Vec<usize> = s
        .split(['x', 'X', ','])
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("--input '{s}' must look like 3x32x32"))?;
    match v.as_slice() {
        [c, h, w] if *c > 0 && *h > 0 && *w > 0 => Ok([*c, *h, *w]),
        _ => bail!("--input '{s}' must have three positive dimensions, like 3x32x32"),
    }
}

/// Parses `i/k`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("--shard '{s}' must look like 0/4"))?;
    Ok((
        a.trim().parse().context("--shard index")?,
        b.trim().parse().context("--shard count")?,
    ))
}

/// Entry point: parses the arguments and runs the command.
pub fn main() -> Result<()> {
    let command = Cli::command();
    let matches = command.clone().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The options written on the command line (not defaulted), for `--config`'s check.
    let given: Vec<String> = matches
        .subcommand()
        .and_then(|(name, m)| {
            let sub = command.find_subcommand(name)?;
            Some(
                sub.get_arguments()
                    .map(|arg| arg.get_id().as_str())
                    .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
                    .map(str::to_string)
                    .collect(),
            )
        })
        .unwrap_or_default();
    match cli.command {
        Command::Compile(a) => {
            let spec = ModelSpec::parse(&a.model)?.with_batchnorm_given(a.batchnorm);
            let input = parse_shape(&a.input)?;
            let m = spec.build(a.batch, input, a.classes)?;
            for w in &m.warnings {
                eprintln!("warning: {w}");
            }
            let mut which = standard_set();
            if a.unrolled_steps.is_some() {
                which.push(Artifact::Unrolled);
            }
            if a.label_vjp {
                which.push(Artifact::LabelVjp);
            }
            let man = compile_dir(&m, &which, a.unrolled_steps.unwrap_or(0), &a.out)?;
            println!(
                "wrote {} artifacts for {} ({} parameters, batch {}) to {}",
                man.graphs.len(),
                man.model,
                man.num_params,
                man.batch,
                a.out.display()
            );
            Ok(())
        }
        Command::Inspect { dir } => inspect(&dir),
        Command::Run {
            graph,
            inputs,
            out,
            backend,
        } => {
            crate::runtime::run_graph_file(&graph, &inputs, &out, resolve_backend(backend))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Graphs { out } => {
            for (name, line) in write_standard_graphs(&out)? {
                println!("{name}: {line}");
            }
            Ok(())
        }
        Command::Experts(a) => {
            let cfg = match &a.config {
                Some(file) => {
                    only_beside_config(&given, &["out", "backend"])?;
                    let cfg: ExpertsConfig = crate::config_file::read(file)?;
                    ExpertsConfig {
                        out: a.out.clone().unwrap_or(cfg.out),
                        backend: a.backend.map_or(cfg.backend, |b| resolve_backend(Some(b))),
                        ..cfg
                    }
                }
                None => experts_config(&a)?,
            };
            crate::experts::run_experts_with(&cfg, &progress_bars::bars())?;
            println!("experts in {}", cfg.out.display());
            Ok(())
        }
        Command::Distill(a) => {
            let resume = a.resume;
            let cfg = match &a.config {
                Some(file) => {
                    only_beside_config(&given, &["out", "backend", "resume"])?;
                    let cfg: DistillConfig = crate::config_file::read(file)?;
                    DistillConfig {
                        out: a.out.clone().unwrap_or(cfg.out),
                        backend: a
                            .backend
                            .map_or(cfg.backend, |b| resolve_backend(Some(b)).to_string()),
                        ..cfg
                    }
                }
                None => distill_config(*a)?,
            };
            let out = cfg.out.clone();
            let st = crate::distill::run::run_with(cfg, resume, &progress_bars::bars())?;
            println!(
                "distilled {} images in {} iterations (learned lr {:.5})",
                st.images.shape()[0],
                st.iteration,
                st.beta
            );
            for p in crate::distill::run::describe_outputs(&out) {
                println!("  {}", p.display());
            }
            Ok(())
        }
        Command::Eval(a) => eval_cmd(a),
        Command::Bench(a) => bench::run(a),
        Command::Quickstart(a) => quickstart::run(a),
    }
}

/// With `--config`, every setting comes from the file: an option given beside it (other than
/// `allowed`) would be silently overridden or ignored, so it is an error.
fn only_beside_config(given: &[String], allowed: &[&str]) -> Result<()> {
    let extra: Vec<String> = given
        .iter()
        .filter(|id| id.as_str() != "config" && !allowed.contains(&id.as_str()))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    bail!(
        "--config takes every setting from its file; {} cannot be given beside it (edit the file, \
         or give only {})",
        extra.join(", "),
        allowed
            .iter()
            .map(|a| format!("--{a}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn experts_config(a: &ExpertsArgs) -> Result<ExpertsConfig> {
    let (Some(dataset), Some(out)) = (a.dataset.clone(), a.out.clone()) else {
        bail!("--dataset and --out are required (or --config FILE)");
    };
    Ok(ExpertsConfig {
        dataset,
        model: ModelSpec::parse(&a.model)?.with_batchnorm_given(a.batchnorm),
        experts: a.experts,
        epochs: a.epochs,
        lr: a.lr,
        batch: a.batch,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        strategy: Strategy::parse(&a.dsa_strategy)?,
        zca: a.zca,
        seed: a.seed,
        shard: parse_shard(&a.shard)?,
        backend: resolve_backend(a.backend),
        out,
        limit: a.limit,
    })
}

fn inspect(dir: &Path) -> Result<()> {
    let m = Manifest::load(dir)?;
    println!("model: {}", m.model);
    println!(
        "input: {:?}, classes: {}, batch: {} (fixed), opset {}",
        m.input, m.classes, m.batch, m.opset
    );
    println!("parameters: {} in {} tensors", m.num_params, m.params.len());
    for p in &m.params {
        println!(
            "  {:<28} {:>14} @ {:<9} {:?}",
            p.name,
            format!("{:?}", p.shape),
            p.offset,
            p.init
        );
    }
    for (role, g) in &m.graphs {
        println!(
            "{role} ({}): {:.1} MFLOP/sample",
            g.file,
            g.flops_per_sample / 1e6
        );
        let io = |v: &[crate::compiler::manifest::IoEntry]| {
            v.iter()
                .map(|i| format!("{}{:?}", i.name, i.shape))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("  inputs: {}", io(&g.inputs));
        println!("  outputs: {}", io(&g.outputs));
        let ops: Vec<String> = g.ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        println!("  ops: {}", ops.join(" "));
    }
    if !m.batchnorm.is_empty() {
        let nodes: Vec<String> = m
            .batchnorm
            .iter()
            .map(|(n, s)| format!("{n}={}", s.as_str()))
            .collect();
        println!("batch norm statistics: {}", nodes.join(" "));
    }
    for w in &m.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

fn distill_config(a: DistillArgs) -> Result<DistillConfig> {
    let (Some(experts), Some(out)) = (a.experts.clone(), a.out.clone()) else {
        bail!("--experts and --out are required (or --config FILE)");
    };
    let p = a.preset.as_deref().map(preset).transpose()?;
    // What the experts were trained with fills what neither the flags nor a preset give, so a
    // run matches its experts without restating them.
    let mut from_experts: Option<crate::experts::trajectory::ExpertMeta> = None;
    let mut experts_meta = || -> Result<crate::experts::trajectory::ExpertMeta> {
        if let Some(m) = &from_experts {
            return Ok(m.clone());
        }
        let files = crate::experts::trajectory::list(&experts)?;
        let first = files.first().ok_or_else(|| {
            anyhow!(
                "no expert files (expert_NNNN.safetensors) in {}; train them with `tesla experts`",
                experts.display()
            )
        })?;
        let meta = crate::experts::trajectory::Trajectory::open(first)?.meta;
        from_experts = Some(meta.clone());
        Ok(meta)
    };
    let dataset = match (&a.dataset, &p) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) if p.dataset != "fashion-mnist" => bail!(
            "preset '{}' is for {}: give --dataset {}:DIR",
            a.preset.clone().unwrap_or_default(),
            p.dataset,
            p.dataset,
        ),
        (None, _) => {
            let d = experts_meta()?.dataset;
            eprintln!("dataset: {d} (from the experts)");
            d
        }
    };
    let model = match (&a.model, &p) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => p.model.to_string(),
        (None, None) => {
            let m = experts_meta()?.model;
            eprintln!("model: {m} (from the experts)");
            m
        }
    };
    let pick = |v: Option<usize>, pv: Option<usize>, name: &str| {
        v.or(pv)
            .ok_or_else(|| anyhow!("--{name} is required (or use --preset)"))
    };
    Ok(DistillConfig {
        dataset,
        model: ModelSpec::parse(&model)?
            .with_batchnorm_given(a.batchnorm)
            .name(),
        experts: experts.clone(),
        ipc: pick(a.ipc, p.map(|p| p.ipc), "ipc")?,
        syn_steps: pick(a.syn_steps, p.map(|p| p.syn_steps), "syn-steps")?,
        expert_epochs: pick(a.expert_epochs, p.map(|p| p.expert_epochs), "expert-epochs")?,
        max_start_epoch: pick(
            a.max_start_epoch,
            p.map(|p| p.max_start_epoch),
            "max-start-epoch",
        )?,
        iterations: a.iterations.unwrap_or(5000),
        lr_img: a.lr_img.or(p.map(|p| p.lr_img)).unwrap_or(500.0),
        lr_lr: a.lr_lr.unwrap_or(1e-5),
        lr_init: a.lr_init,
        lr_label: a.lr_label.unwrap_or(2.0),
        batch_syn: a.batch_syn.or(p.and_then(|p| p.batch_syn)),
        pix_init: a.pix_init.unwrap_or(PixInit::Real),
        labels: a.labels.unwrap_or(Labels::Target),
        label_grad: a.label_grad,
        final_labels: a.final_labels.unwrap_or_default(),
        gradient: a.gradient.unwrap_or(Mode::Tesla),
        zca: a.zca || p.is_some_and(|p| p.zca),
        dsa_strategy: a
            .dsa_strategy
            .unwrap_or_else(|| "color_crop_cutout_flip_scale_rotate".into()),
        backend: resolve_backend(a.backend).to_string(),
        seed: a.seed,
        eval_every: a.eval_every,
        eval_epochs: a.eval_epochs,
        eval_runs: a.eval_runs,
        checkpoint_every: a.checkpoint_every,
        out,
    })
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    let models: Vec<ModelSpec> = a
        .models
        .split(',')
        .map(|m| Ok(ModelSpec::parse(m.trim())?.with_batchnorm_given(a.batchnorm)))
        .collect::<Result<_>>()?;
    let cfg = EvalConfig {
        runs: a.runs,
        epochs: a.epochs,
        batch: 256,
        strategy: Strategy::parse(&a.dsa_strategy)?,
        seed: a.seed,
        backend: resolve_backend(a.backend),
    };
    if a.runs == 0 || a.epochs == 0 {
        bail!("--runs and --epochs must be at least 1");
    }
    let dataset = match (&a.dataset, &a.distilled) {
        (Some(d), _) => d.clone(),
        (None, Some(f)) => {
            let set = crate::distill::set_file::DistilledSet::read(f)?;
            let d = set.meta.get("dataset").cloned().ok_or_else(|| {
                anyhow!(
                    "{} does not say which dataset it was distilled from; give --dataset",
                    f.display()
                )
            })?;
            eprintln!("dataset: {d} (from the distilled set)");
            d
        }
        (None, None) => bail!("a baseline (--random or --whole) needs --dataset"),
    };
    let test = crate::data::load(&dataset, Split::Test, None)?;
    let bars = progress_bars::bars_with_results_on_stdout();
    let work = std::env::temp_dir().join("tesla-eval-artifacts");
    let out = match (&a.out, &a.distilled) {
        (Some(o), _) => o.clone(),
        (None, Some(f)) => f.with_file_name("eval.json"),
        (None, None) => PathBuf::from("eval.json"),
    };
    if out.extension().is_some_and(|e| e == "md") {
        bail!(
            "--out {} names the JSON file; the Markdown table is written beside it as .md",
            out.display()
        );
    }
    crate::atomic_file::check_writable(&out)?;
    crate::atomic_file::check_writable(&out.with_extension("md"))?;
    let (results, what) = if let Some(f) = &a.distilled {
        let labels = match (&a.teacher_labels, &a.teacher_epochs, a.hard_labels) {
            (Some(experts), Some(epochs), _) => SetLabels::Teachers {
                experts: experts.clone(),
                epochs: parse_epochs(epochs)?,
            },
            (Some(_), None, _) => bail!("--teacher-labels needs --teacher-epochs"),
            (None, _, true) => SetLabels::Hard,
            (None, _, false) => SetLabels::Own,
        };
        let req = SetEvaluation {
            path: f.clone(),
            labels,
            lr: a.lr,
            zca: a.zca.clone(),
        };
        evaluate_set(&req, &models, &test, &cfg, &work, &bars)?
    } else {
        let baseline = match (a.random, a.whole) {
            (Some(k), _) => Baseline::Random(k),
            (None, true) => Baseline::Whole,
            (None, false) => bail!("give one of --distilled FILE, --random K or --whole"),
        };
        let lr = a.lr.unwrap_or(0.01);
        let results = evaluate_baseline(
            &dataset,
            baseline,
            &models,
            lr,
            &test,
            a.zca.as_deref(),
            &cfg,
            &work,
            &bars,
        )?;
        (results, baseline.describe())
    };
    let json = serde_json::json!({ "evaluated": what, "dataset": dataset, "epochs": a.epochs, "results": results });
    crate::atomic_file::write(&out, serde_json::to_string_pretty(&json)?.as_bytes())?;
    let md = out.with_extension("md");
    let table = crate::eval::markdown_table(&results, &what, &dataset, a.epochs);
    crate::atomic_file::write(&md, table.as_bytes())?;
    println!("results in {} and {}", out.display(), md.display());
    Ok(())
}

/// Parses `FIRST-LAST` (inclusive) as a range of expert epochs.
pub fn parse_epochs(s: &str) -> Result<std::ops::Range<usize>> {
    let bad = || anyhow!("--teacher-epochs '{s}' must look like 2-6 (first and last epoch)");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(bad());
    }
    Ok(a..b + 1)
}
