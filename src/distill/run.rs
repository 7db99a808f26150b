//! Algorithm 1: the distillation run. Samples an expert segment, assigns labels, runs the student
//! steps and the chosen backward, updates images, β (and labels), and keeps a resumable run
//! directory: `distilled.safetensors`, `checkpoint/`, `metrics.jsonl`, `grid.png`.

pub use super::checkpoint::State;
pub use super::config::{validate, DistillConfig, FinalLabels, Labels, PixInit};
use super::gradient::{backward, Mode, Segment};
pub use super::labels::softmax_rows;
use super::labels::{
    label_path_grad, mean_teacher_labels, softmax_rows_vjp, teacher_labels, weak_labels,
};
use super::set_file::DistilledSet;
use crate::compile_cache::ProgramStore;
use crate::data::augment::{self, Draw, Strategy};
use crate::data::bench::peak_rss_kib;
use crate::data::select::Selection;
use crate::data::{zca::Zca, Dataset};
use crate::experts::trajectory::{list, Trajectory};
use crate::progress::{Event, SharedObserver};
use crate::runtime::batches::OneBatch;
use crate::runtime::programs::{Artifact, Exec};
use crate::runtime::row_chunks::RowChunks;
use crate::runtime::BackendKind;
use crate::train::one_hot;
use crate::train::optimizer::MomentumSgd;
use crate::zoo::ModelSpec;
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{s, Array2, Array4, ArrayD, Axis, Ix2, Ix4};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct Metric {
    iteration: usize,
    loss: f64,
    beta: f64,
    expert: usize,
    start_epoch: usize,
    seconds: f64,
    peak_rss_mib: f64,
    grad_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_acc: Option<f64>,
}

/// Everything a run needs besides its state.
pub struct RunContext {
    /// Settings.
    pub cfg: DistillConfig,
    /// Expert trajectories.
    pub experts: Vec<Trajectory>,
    /// Augmentation.
    pub strategy: Strategy,
    /// Number of classes.
    pub classes: usize,
    /// Student batch.
    pub batch_syn: usize,
}

/// What one iteration reports (a line of `metrics.jsonl`, with the time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IterationReport {
    /// The matching loss L.
    pub loss: f64,
    /// ‖∂L/∂X̃‖.
    pub grad_norm: f64,
    /// The expert the segment came from.
    pub expert: usize,
    /// Its start epoch t.
    pub start_epoch: usize,
}

/// The expert segment an iteration matches: θ*_t, θ*_{t+M}, and the teacher of soft labels.
struct SampledSegment {
    expert: usize,
    start_epoch: usize,
    start: Vec<f32>,
    target: Vec<f32>,
    /// The teacher whose softmax labels the images (`--labels target|last`).
    teacher: Option<Vec<f32>>,
}

/// The student steps' batches: which images each step takes and how they are augmented.
struct BatchPlan {
    order: Vec<Vec<usize>>,
    draws: Vec<Draw>,
}

/// ∂L/∂X̃, ∂L/∂Y (when labels are learned or differentiated) and what the backward reports.
struct MatchingGradient {
    images: Array4<f32>,
    labels: Array2<f32>,
    loss: f64,
    dbeta: f64,
}

/// Draws the expert and its start epoch.
fn sample_segment(ctx: &RunContext, rng: &mut ChaCha8Rng) -> Result<SampledSegment> {
    let cfg = &ctx.cfg;
    let expert = rng.random_range(0..ctx.experts.len());
    let start_epoch = rng.random_range(0..cfg.max_start_epoch);
    let traj = ctx
        .experts
        .get(expert)
        .ok_or_else(|| anyhow!("no expert {expert}"))?;
    let target = traj.epoch(start_epoch + cfg.expert_epochs)?;
    let teacher = match cfg.labels {
        Labels::Target => Some(target.clone()),
        Labels::Last => Some(traj.epoch(traj.snapshots - 1)?),
        Labels::Hard | Labels::Learned => None,
    };
    Ok(SampledSegment {
        expert,
        start_epoch,
        start: traj.epoch(start_epoch)?,
        target,
        teacher,
    })
}

/// The label rows of this iteration: the teacher's softmax, one-hot rows, or the learned ones.
fn assign_labels(
    ctx: &RunContext,
    exec: &mut dyn Exec<f32>,
    st: &State,
    teacher: Option<&[f32]>,
) -> Result<Array2<f32>> {
    match teacher {
        Some(th) => teacher_labels(
            &mut OneBatch::new(exec, ctx.batch_syn),
            th,
            &st.images,
            ctx.classes,
        ),
        None if ctx.cfg.labels == Labels::Hard => Ok(one_hot(&st.classes, ctx.classes)),
        None => {
            Ok(softmax_rows(st.label_logits.as_ref().ok_or_else(|| {
                anyhow!("learned labels missing from the state")
            })?))
        }
    }
}

/// Student mini-batches: a fresh permutation cut into chunks, refilled when used up, and one
/// augmentation draw per step.
fn plan_batches(ctx: &RunContext, st: &State, rng: &mut ChaCha8Rng) -> BatchPlan {
    let steps = ctx.cfg.syn_steps;
    let (n, c, h, w) = st.images.dim();
    let mut order: Vec<Vec<usize>> = Vec::with_capacity(steps);
    let mut pool: Vec<Vec<usize>> = Vec::new();
    for _ in 0..steps {
        if pool.is_empty() {
            let mut p: Vec<usize> = (0..n).collect();
            p.shuffle(rng);
            pool = p
                .chunks(ctx.batch_syn)
                .rev()
                .map(<[usize]>::to_vec)
                .collect();
        }
        order.extend(pool.pop());
    }
    let draws = (0..steps)
        .map(|_| ctx.strategy.draw(rng, [ctx.batch_syn, c, h, w]))
        .collect();
    BatchPlan { order, draws }
}

/// Passes 1 and 2 (or the exact sweep, or the unrolled graph): the gradient of the matching loss
/// with respect to every synthetic image and label row, the batches rebuilt on demand.
fn matching_gradient(
    ctx: &RunContext,
    exec: &mut dyn Exec<f32>,
    st: &State,
    seg: &SampledSegment,
    labels: &Array2<f32>,
    plan: &BatchPlan,
) -> Result<MatchingGradient> {
    let cfg = &ctx.cfg;
    let images = &st.images;
    let mut grad = Array4::<f32>::zeros(images.raw_dim());
    let mut grad_y = Array2::<f32>::zeros((images.shape()[0], ctx.classes));
    let ig = {
        let mut batch = |i: usize| -> Result<(ArrayD<f32>, ArrayD<f32>)> {
            let (idx, draw) = (&plan.order[i], &plan.draws[i]);
            let x = images.select(Axis(0), idx);
            let x = if draw.is_identity() {
                x
            } else {
                augment::try_apply(draw, x.view())?
            };
            Ok((x.into_dyn(), labels.select(Axis(0), idx).into_dyn()))
        };
        let mut sink = |i: usize, dx: ArrayD<f32>, dy: Option<ArrayD<f32>>| -> Result<()> {
            let (idx, draw) = (&plan.order[i], &plan.draws[i]);
            let dx = dx.into_dimensionality::<Ix4>()?;
            let dx = if draw.is_identity() {
                dx
            } else {
                augment::try_apply_adjoint(draw, dx.view())?
            };
            for (k, &j) in idx.iter().enumerate() {
                let mut row = grad.slice_mut(s![j, .., .., ..]);
                row += &dx.index_axis(Axis(0), k);
            }
            if let Some(dy) = dy {
                let dy = dy.into_dimensionality::<Ix2>()?;
                for (k, &j) in idx.iter().enumerate() {
                    let mut row = grad_y.row_mut(j);
                    row += &dy.row(k);
                }
            }
            Ok(())
        };
        let segment = Segment {
            start: &seg.start,
            target: &seg.target,
            beta: st.beta as f32,
            steps: cfg.syn_steps,
        };
        let need_dy = cfg.needs_label_grad();
        backward(cfg.gradient, exec, &segment, &mut batch, &mut sink, need_dy)?
    };
    if let (true, Some(th)) = (cfg.label_grad, seg.teacher.as_deref()) {
        grad += &label_path_grad(&mut OneBatch::new(exec, ctx.batch_syn), th, images, &grad_y)?;
    }
    Ok(MatchingGradient {
        images: grad,
        labels: grad_y,
        loss: ig.loss,
        dbeta: ig.dbeta,
    })
}

/// The reference optimisers' step: SGD with momentum 0.5 on the images, β and learned labels.
fn update(ctx: &RunContext, st: &mut State, g: &MatchingGradient) -> Result<()> {
    let cfg = &ctx.cfg;
    let diverged = |what: &str| {
        anyhow!(
            "the run diverged at iteration {}: {what} became NaN/Inf; lower --lr-img/--lr-lr or \
             resume from the last checkpoint",
            st.iteration + 1
        )
    };
    let mut images = st.images.as_standard_layout().into_owned();
    let mut images_mom = st.images_mom.as_standard_layout().into_owned();
    let grad = g.images.as_standard_layout();
    let contiguous = || anyhow!("the image state is not contiguous");
    MomentumSgd::new(cfg.lr_img as f32, 0.5).step(
        images.as_slice_mut().ok_or_else(contiguous)?,
        Some(images_mom.as_slice_mut().ok_or_else(contiguous)?),
        grad.as_slice().ok_or_else(contiguous)?,
    )?;
    // β in f64, rounded to f32 as the state keeps it: a fresh run's β is the teachers' step
    // size in full, and the first update must start from it.
    let (mut beta, mut beta_mom) = ([st.beta], [st.beta_mom]);
    MomentumSgd::new(cfg.lr_lr, 0.5).step(&mut beta, Some(&mut beta_mom), &[g.dbeta])?;
    if images.iter().any(|v| !v.is_finite()) {
        return Err(diverged("the images"));
    }
    if !beta[0].is_finite() {
        return Err(diverged("the learning rate"));
    }
    if let (Some(lg), Some(lm)) = (st.label_logits.as_mut(), st.label_mom.as_mut()) {
        let dz = softmax_rows_vjp(&softmax_rows(lg), &g.labels);
        let contiguous = || anyhow!("the label state is not contiguous");
        MomentumSgd::new(cfg.lr_label as f32, 0.5).step(
            lg.as_slice_mut().ok_or_else(contiguous)?,
            Some(lm.as_slice_mut().ok_or_else(contiguous)?),
            dz.as_slice().ok_or_else(contiguous)?,
        )?;
    }
    st.images = images;
    st.images_mom = images_mom;
    st.beta = f64::from(beta[0] as f32);
    st.beta_mom = f64::from(beta_mom[0] as f32);
    Ok(())
}

/// One iteration of Algorithm 1 on `exec` (whose graphs take batches of `ctx.batch_syn`): sample
/// a segment, assign labels, plan the student batches, compute the matching gradient, update.
pub fn iteration(
    ctx: &RunContext,
    exec: &mut dyn Exec<f32>,
    st: &mut State,
) -> Result<IterationReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(crate::train::derive_seed(
        ctx.cfg.seed,
        1_000_000 + st.iteration as u64,
    ));
    let seg = sample_segment(ctx, &mut rng)?;
    let labels = assign_labels(ctx, exec, st, seg.teacher.as_deref())?;
    let plan = plan_batches(ctx, st, &mut rng);
    let g = matching_gradient(ctx, exec, st, &seg, &labels, &plan)?;
    let grad_norm = g
        .images
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    if !grad_norm.is_finite() || !g.dbeta.is_finite() {
        bail!("the run diverged at iteration {}: the image gradient is not finite; lower --lr-img or resume from the last checkpoint", st.iteration + 1);
    }
    update(ctx, st, &g)?;
    st.last_labels = labels;
    st.iteration += 1;
    Ok(IterationReport {
        loss: g.loss,
        grad_norm,
        expert: seg.expert,
        start_epoch: seg.start_epoch,
    })
}

/// The label rows the distilled set is written with (see [`FinalLabels`]), at f32 precision.
pub fn saved_labels(ctx: &RunContext, exec: &mut dyn Exec<f32>, st: &State) -> Result<Array2<f32>> {
    let cfg = &ctx.cfg;
    if cfg.final_labels == FinalLabels::Last {
        return Ok(st.last_labels.clone());
    }
    let epochs = |traj: &Trajectory| match cfg.labels {
        Labels::Last => traj.snapshots - 1..traj.snapshots,
        _ => super::init::target_epochs(cfg.max_start_epoch, cfg.expert_epochs),
    };
    mean_teacher_labels(
        &mut OneBatch::new(exec, ctx.batch_syn),
        &ctx.experts,
        epochs,
        &st.images,
        ctx.classes,
    )
}

/// Opens and validates the experts for a run.
pub fn open_experts(
    dir: &Path,
    model: &str,
    dataset: &str,
    zca: bool,
    need_epochs: usize,
    num_params: usize,
) -> Result<Vec<Trajectory>> {
    let files = list(dir)?;
    if files.is_empty() {
        bail!(
            "no expert files (expert_NNNN.safetensors) in {}; train them with `tesla experts`",
            dir.display()
        );
    }
    let mut v = Vec::with_capacity(files.len());
    for f in files {
        let t = Trajectory::open(&f)?;
        // Older expert files may name an ONNX file by a relative path.
        let recorded = ModelSpec::parse(&t.meta.model)
            .and_then(ModelSpec::resolved)
            .map(|m| m.name());
        if t.meta.model != model && recorded.ok().as_deref() != Some(model) {
            bail!(
                "{} was trained with model '{}', this run uses '{model}'",
                f.display(),
                t.meta.model
            );
        }
        if t.meta.dataset != dataset {
            bail!(
                "{} was trained on '{}', this run uses '{dataset}'",
                f.display(),
                t.meta.dataset
            );
        }
        if t.meta.zca != zca {
            bail!(
                "{} was trained {} ZCA, this run {} it",
                f.display(),
                if t.meta.zca { "with" } else { "without" },
                if zca { "uses" } else { "does not use" }
            );
        }
        if t.num_params != num_params {
            bail!(
                "{} has {} parameters per snapshot, the model has {num_params}",
                f.display(),
                t.num_params
            );
        }
        if t.snapshots < need_epochs + 1 {
            bail!(
                "{} has {} epochs; this run needs epoch {need_epochs}",
                f.display(),
                t.snapshots - 1
            );
        }
        v.push(t);
    }
    Ok(v)
}

/// Writes the checkpoint, `distilled.safetensors` and the grid, each atomically.
pub fn save(
    ctx: &RunContext,
    st: &State,
    labels: &Array2<f32>,
    ds_mean: &[f32],
    ds_std: &[f32],
    zca: Option<&Zca>,
) -> Result<()> {
    super::checkpoint::write(&ctx.cfg.out.join("checkpoint"), st, &ctx.cfg)?;
    save_set(ctx, st, labels, ds_mean, ds_std, zca)
}

/// Writes the distilled set and its picture (what [`save`] writes after the checkpoint).
fn save_set(
    ctx: &RunContext,
    st: &State,
    labels: &Array2<f32>,
    ds_mean: &[f32],
    ds_std: &[f32],
    zca: Option<&Zca>,
) -> Result<()> {
    let out = &ctx.cfg.out;
    let soft = ctx.cfg.labels != Labels::Hard;
    let mut dm = HashMap::new();
    dm.insert("dataset".to_string(), ctx.cfg.dataset.clone());
    dm.insert("model".to_string(), ctx.cfg.model.clone());
    dm.insert("iteration".to_string(), st.iteration.to_string());
    dm.insert(
        "labels".to_string(),
        if soft { "soft" } else { "hard" }.to_string(),
    );
    dm.insert(
        "label_mode".to_string(),
        format!("{:?}", ctx.cfg.labels).to_lowercase(),
    );
    dm.insert(
        "final_labels".to_string(),
        format!("{:?}", ctx.cfg.final_labels).to_lowercase(),
    );
    dm.insert("mean".to_string(), serde_json::to_string(ds_mean)?);
    dm.insert("std".to_string(), serde_json::to_string(ds_std)?);
    dm.insert(
        "zca".to_string(),
        if zca.is_some() {
            "zca.safetensors".to_string()
        } else {
            "none".to_string()
        },
    );
    dm.insert("ipc".to_string(), ctx.cfg.ipc.to_string());
    DistilledSet {
        images: st.images.clone(),
        labels: labels.clone(),
        classes: st.classes.clone(),
        lr: Some(st.beta),
        meta: dm,
    }
    .write(&out.join("distilled.safetensors"))?;
    crate::data::grid::save_grid(
        &out.join("grid.png"),
        st.images.view(),
        Some(&st.classes),
        ds_mean,
        ds_std,
        zca,
        &Default::default(),
    )?;
    Ok(())
}

/// The initial state: real or noise images, class-balanced, β = `lr_init` (the teacher's 0.01 when
/// unset; [`run`] resolves it from the expert files first). `real-correct` needs the teachers, so
/// only [`run`] can start it.
pub fn initial_state(cfg: &DistillConfig, train: &Dataset) -> Result<State> {
    if cfg.pix_init == PixInit::RealCorrect {
        bail!("--pix-init real-correct needs the expert teachers: start it with `tesla distill`");
    }
    let sel =
        crate::data::select::select_per_class(train, cfg.ipc, cfg.seed).with_context(|| {
            format!(
                "--ipc {} is larger than a class of {}",
                cfg.ipc, cfg.dataset
            )
        })?;
    initial_state_from(cfg, train, sel)
}

/// The initial state for the images `sel` picked (their pixels unless `--pix-init noise`).
pub fn initial_state_from(cfg: &DistillConfig, train: &Dataset, sel: Selection) -> Result<State> {
    let k = train.num_classes();
    let images = match cfg.pix_init {
        PixInit::Real | PixInit::RealCorrect => sel.images(train),
        PixInit::Noise => {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            let [c, h, w] = train.image_shape();
            Array4::from_shape_fn((sel.indices.len(), c, h, w), |_| {
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random_range(0.0..1.0);
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
        }
    };
    let n = images.shape()[0];
    let hard = one_hot(&sel.labels, k);
    let (label_logits, label_mom) = if cfg.labels == Labels::Learned {
        (Some(&hard * 10.0), Some(Array2::zeros((n, k))))
    } else {
        (None, None)
    };
    Ok(State {
        iteration: 0,
        images_mom: Array4::zeros(images.raw_dim()),
        images,
        classes: sel.labels,
        beta: cfg.lr_init.unwrap_or(0.01),
        beta_mom: 0.0,
        label_logits,
        label_mom,
        last_labels: hard,
    })
}

/// Runs (or resumes) a distillation. Returns the final state.
pub fn run(cfg: DistillConfig, resume: bool) -> Result<State> {
    run_with(cfg, resume, &crate::progress::quiet())
}

/// [`run`], reporting progress (iterations, loss and β), notices and warnings to `observer`.
pub fn run_with(cfg: DistillConfig, resume: bool, observer: &SharedObserver) -> Result<State> {
    validate(&cfg)?;
    let out = cfg.out.clone();
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("the output directory {} is not writable", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    let state_path = out.join("checkpoint").join("state.safetensors");
    let (mut cfg, resumed) = if resume && state_path.exists() {
        let (st, saved) = super::checkpoint::read(&state_path)?;
        let mut c = saved;
        // The run's settings are the saved ones, except where it is now (the directory may have
        // been moved or copied), what runs it, how long and how often it reports.
        c.iterations = cfg.iterations.max(c.iterations);
        c.out = cfg.out.clone();
        c.backend = cfg.backend.clone();
        c.checkpoint_every = cfg.checkpoint_every;
        c.eval_every = cfg.eval_every;
        c.eval_epochs = cfg.eval_epochs;
        c.eval_runs = cfg.eval_runs;
        (c, Some(st))
    } else {
        if resume {
            observer.event(Event::Notice(&format!(
                "no checkpoint in {}: starting a new run",
                out.display()
            )));
        }
        (cfg, None)
    };
    let model = ModelSpec::parse(&cfg.model)?.resolved()?;
    cfg.model = model.name();
    let kind: BackendKind = cfg.backend.parse()?;
    let strategy = Strategy::parse(&cfg.dsa_strategy)?;
    let zca_src = cfg.experts.join("zca.safetensors");
    let (train, test, zca) = crate::experts::load_data(&cfg.dataset, cfg.zca, &zca_src)?;
    if let Some(z) = &zca {
        z.save(&out.join("zca.safetensors"))?;
    }
    let k = train.num_classes();
    if let Some(st) = &resumed {
        st.check_fits(&state_path, k, &train.image_shape())?;
    }
    // A start from teacher-agreed images waits for the experts; the others fail fast on bad input.
    let st = match resumed {
        Some(s) => Some(s),
        None if cfg.pix_init == PixInit::RealCorrect => None,
        None => Some(initial_state(&cfg, &train)?),
    };
    let n = st.as_ref().map_or(cfg.ipc * k, |s| s.images.shape()[0]);
    let batch_syn = cfg.batch_syn.unwrap_or(n).min(n);
    if batch_syn == 0 || n % batch_syn != 0 {
        bail!("--batch-syn {batch_syn} must divide the number of synthetic images ({n})");
    }
    let mut which = vec![Artifact::Step, Artifact::Logits];
    which.push(if cfg.gradient == Mode::Exact || cfg.needs_label_grad() {
        Artifact::Pass2
    } else {
        Artifact::Pass2Dx
    });
    if cfg.label_grad {
        which.push(Artifact::LabelVjp);
    }
    let [c, h, w] = train.image_shape();
    let mut store = ProgramStore::new(
        model.clone(),
        [c, h, w],
        k,
        kind,
        &out.join("artifacts"),
        &which,
    )
    .observed(observer);
    if cfg.gradient == Mode::Unrolled {
        which.retain(|a| *a != Artifact::Pass2Dx && *a != Artifact::Pass2);
        store = ProgramStore::new(
            model.clone(),
            [c, h, w],
            k,
            kind,
            &out.join("artifacts"),
            &which,
        )
        .observed(observer)
        .with_unrolled(cfg.syn_steps);
    }
    // Independent images run in calls of a few each (runtime::row_chunks); the unrolled graph
    // couples a step's images with the next step and always takes the whole batch.
    let per_call = if cfg.gradient == Mode::Unrolled {
        batch_syn
    } else {
        store.rows_per_call(batch_syn)?
    };
    let num_params = store.get(per_call)?.1.num_params;
    let experts = open_experts(
        &cfg.experts,
        &model.name(),
        &cfg.dataset,
        cfg.zca,
        cfg.max_start_epoch - 1 + cfg.expert_epochs,
        num_params,
    )?;
    let mut st = match st {
        Some(s) => s,
        None => {
            let teachers =
                super::init::target_teachers(&experts, cfg.max_start_epoch, cfg.expert_epochs)?;
            let sel = super::init::select_teacher_agreed(
                &train,
                cfg.ipc,
                cfg.seed,
                &teachers,
                &mut store.batches(per_call)?,
            )?;
            initial_state_from(&cfg, &train, sel)?
        }
    };
    if cfg.lr_init.is_none() {
        // A fresh run starts β at the teachers' step size; a resumed one keeps its own β.
        let lr = experts[0].meta.effective_lr();
        if st.iteration == 0 {
            st.beta = lr;
        }
        cfg.lr_init = Some(lr);
    }
    let ctx = RunContext {
        cfg: cfg.clone(),
        experts,
        strategy,
        classes: k,
        batch_syn,
    };
    if st.iteration == 0 {
        let exec = &mut RowChunks::new(store.get(per_call)?.0, batch_syn, per_call)?;
        let y = saved_labels(&ctx, exec, &st)?;
        save(&ctx, &st, &y, train.mean(), train.std(), zca.as_ref())?;
    }
    crate::config_file::write(&out.join("config.json"), &cfg)?;
    let metrics_path = out.join("metrics.jsonl");
    truncate_metrics(&metrics_path, st.iteration)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("cannot open {}", metrics_path.display()))?;
    observer.event(Event::Begin {
        label: "distill",
        total: cfg.iterations as u64,
        done: st.iteration as u64,
        unit: "it",
    });
    let mut written_labels = None;
    let mut last_good = st.iteration;
    let stopped = |at: usize, last_good: usize| {
        format!(
            "stopped at iteration {at}; the last good checkpoint (iteration {last_good}) is in {}, \
             from which --resume continues",
            out.join("checkpoint").display()
        )
    };
    // Every failure inside the loop (a diverged run, a full disk) ends the task and names the
    // checkpoint the run can continue from.
    let mut at = st.iteration + 1;
    let looped = (|| -> Result<()> {
        while st.iteration < cfg.iterations {
            let t0 = Instant::now();
            at = st.iteration + 1;
            let exec = &mut RowChunks::new(store.get(per_call)?.0, batch_syn, per_call)?;
            let report = iteration(&ctx, exec, &mut st)?;
            let evaluate = cfg.eval_every > 0
                && (st.iteration % cfg.eval_every == 0 || st.iteration == cfg.iterations);
            let checkpoint =
                st.iteration % cfg.checkpoint_every == 0 || st.iteration == cfg.iterations;
            let y = if evaluate || checkpoint {
                Some(saved_labels(&ctx, exec, &st)?)
            } else {
                None
            };
            let eval_acc = match y.as_ref().filter(|_| evaluate) {
                Some(y) => Some(quick_eval(&ctx, &st, y, &model, &test, kind, observer)?),
                None => None,
            };
            let m = Metric {
                iteration: st.iteration,
                loss: report.loss,
                beta: st.beta,
                expert: report.expert,
                start_epoch: report.start_epoch,
                seconds: t0.elapsed().as_secs_f64(),
                peak_rss_mib: peak_rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0),
                grad_norm: report.grad_norm,
                eval_acc,
            };
            writeln!(metrics, "{}", serde_json::to_string(&m)?)
                .with_context(|| format!("writing {}", metrics_path.display()))?;
            observer.event(Event::Advance {
                n: 1,
                status: Some(&format!("loss {:.4}, lr {:.5}", report.loss, st.beta)),
            });
            if let Some(y) = y.filter(|_| checkpoint) {
                super::checkpoint::write(&out.join("checkpoint"), &st, &ctx.cfg)?;
                last_good = st.iteration;
                save_set(&ctx, &st, &y, train.mean(), train.std(), zca.as_ref())?;
                written_labels = Some(y);
            }
        }
        Ok(())
    })();
    observer.event(Event::End);
    looped.map_err(|err| err.context(stopped(at, last_good)))?;
    // One-hot rows never warn, so hard-label runs need no special case.
    if let Some(y) = written_labels {
        warn_weak_labels(&y, &st.classes, train.class_names(), observer.as_ref());
    }
    Ok(st)
}

/// Keeps the lines of `metrics.jsonl` up to iteration `upto` (the checkpoint a run continues
/// from): the iterations a killed run did after its last checkpoint are done again, and each must
/// appear once. A line cut by the kill is dropped too.
fn truncate_metrics(path: &Path, upto: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("iteration").and_then(serde_json::Value::as_u64))
                .is_some_and(|i| i as usize <= upto)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        crate::atomic_file::write(path, kept.as_bytes())?;
    }
    Ok(())
}

/// One warning line for every synthetic image whose saved soft label gives its own class under
/// half the mass, naming the three weakest (at 1000 classes there can be hundreds): at IPC 1 the
/// evaluation networks can then lose that class entirely, which the run's loss does not show.
fn warn_weak_labels(
    labels: &Array2<f32>,
    classes: &[u32],
    names: &[String],
    observer: &dyn crate::progress::Observer,
) {
    let name = |c: usize| crate::data::class_name(names, c);
    let mut weak = weak_labels(labels, classes);
    if weak.is_empty() {
        return;
    }
    weak.sort_by(|a, b| a.own.total_cmp(&b.own));
    let shown: Vec<String> = weak
        .iter()
        .take(3)
        .map(|w| {
            format!(
                "image {} ({}) {:.2}, {} {:.2}",
                w.row,
                name(w.class),
                w.own,
                name(w.rival.0),
                w.rival.1
            )
        })
        .collect();
    let (count, what) = match weak.len() {
        1 => ("the label of 1 synthetic image".to_string(), "its"),
        n => (format!("the labels of {n} synthetic images"), "their"),
    };
    observer.event(Event::Warning(&format!(
        "{count} give {what} own class under half the mass ({}{}); networks trained on the set \
         may miss those classes: try another --seed, or --labels hard",
        shown.join("; "),
        if weak.len() > 3 { "; …" } else { "" }
    )));
}

fn quick_eval(
    ctx: &RunContext,
    st: &State,
    labels: &Array2<f32>,
    model: &ModelSpec,
    test: &Dataset,
    kind: BackendKind,
    observer: &SharedObserver,
) -> Result<f64> {
    let out = &ctx.cfg.out;
    let cfg = crate::eval::EvalConfig {
        runs: ctx.cfg.eval_runs.max(1),
        epochs: ctx.cfg.eval_epochs,
        batch: 256,
        strategy: ctx.strategy.clone(),
        seed: ctx.cfg.seed,
        backend: kind,
    };
    let r = crate::eval::evaluate(
        model,
        st.images.view(),
        labels.view(),
        st.beta,
        test,
        &cfg,
        &out.join("artifacts").join("eval"),
        0,
        observer,
    )?;
    Ok(r.mean)
}

/// The run directory's expected files (for messages).
pub fn describe_outputs(out: &Path) -> Vec<PathBuf> {
    [
        "distilled.safetensors",
        "grid.png",
        "metrics.jsonl",
        "checkpoint/state.safetensors",
    ]
    .iter()
    .map(|f| out.join(f))
    .collect()
}
