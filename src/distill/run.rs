//! Algorithm 1: the distillation run. Samples an expert segment, assigns labels, runs the student
//! steps and the chosen backward, updates images, β (and labels), and keeps a resumable run
//! directory: `distilled.safetensors`, `checkpoint/`, `metrics.jsonl`, `grid.png`.

pub use super::checkpoint::State;
pub use super::config::{validate, DistillConfig, FinalLabels, Labels, PixInit};
use super::gradient::{backward, Mode, Segment};
pub use super::labels::softmax_rows;
use super::labels::{label_path_grad, mean_teacher_labels, teacher_labels, weak_labels};
use super::set_file::DistilledSet;
use crate::compile_cache::ProgramStore;
use crate::data::augment::{self, Draw, Strategy};
use crate::data::bench::peak_rss_kib;
use crate::data::select::Selection;
use crate::data::{zca::Zca, Dataset};
use crate::experts::trajectory::{list, Trajectory};
use crate::runtime::programs::{Artifact, Exec};
use crate::runtime::BackendKind;
use crate::train::one_hot;
use crate::zoo::ModelSpec;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
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

fn to_f64<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> ndarray::Array<f64, D> {
    a.mapv(f64::from)
}

/// One iteration of Algorithm 1 on `exec` (whose graphs take batches of `ctx.batch_syn`).
/// Returns (loss, grad norm, expert, start epoch).
pub fn iteration(
    ctx: &RunContext,
    exec: &mut dyn Exec,
    st: &mut State,
) -> Result<(f64, f64, usize, usize)> {
    let cfg = &ctx.cfg;
    let mut rng = ChaCha8Rng::seed_from_u64(crate::train::derive_seed(
        cfg.seed,
        1_000_000 + st.iteration as u64,
    ));
    let e = rng.random_range(0..ctx.experts.len());
    let t = rng.random_range(0..cfg.max_start_epoch);
    let traj = &ctx.experts[e];
    let start = traj.epoch(t)?;
    let target = traj.epoch(t + cfg.expert_epochs)?;
    let n = st.images.shape()[0];
    let last;
    let teacher: Option<&[f64]> = match cfg.labels {
        Labels::Target => Some(&target),
        Labels::Last => {
            last = traj.epoch(traj.snapshots - 1)?;
            Some(&last)
        }
        Labels::Hard | Labels::Learned => None,
    };
    let labels: Array2<f64> = match teacher {
        Some(th) => teacher_labels(exec, th, &st.images, ctx.batch_syn, ctx.classes)?,
        None if cfg.labels == Labels::Hard => to_f64(&one_hot(&st.classes, ctx.classes)),
        None => softmax_rows(
            st.label_logits
                .as_ref()
                .ok_or_else(|| anyhow!("learned labels missing from the state"))?,
        ),
    };
    // Student mini-batches: a fresh permutation cut into chunks, refilled when used up.
    let mut order: Vec<Vec<usize>> = Vec::with_capacity(cfg.syn_steps);
    let mut pool: Vec<Vec<usize>> = Vec::new();
    for _ in 0..cfg.syn_steps {
        if pool.is_empty() {
            let mut p: Vec<usize> = (0..n).collect();
            p.shuffle(&mut rng);
            pool = p
                .chunks(ctx.batch_syn)
                .rev()
                .map(<[usize]>::to_vec)
                .collect();
        }
        order.push(pool.pop().expect("refilled"));
    }
    let [_, c, h, w] = [
        n,
        st.images.shape()[1],
        st.images.shape()[2],
        st.images.shape()[3],
    ];
    let draws: Vec<Draw> = (0..cfg.syn_steps)
        .map(|_| ctx.strategy.draw(&mut rng, [ctx.batch_syn, c, h, w]))
        .collect();
    let images = &st.images;
    let mut grad = Array4::<f64>::zeros(images.raw_dim());
    let mut grad_y = Array2::<f64>::zeros((n, ctx.classes));
    let need_dy = cfg.needs_label_grad();
    {
        let mut batch = |i: usize| -> Result<(ArrayD<f64>, ArrayD<f64>)> {
            let x = images.select(Axis(0), &order[i]);
            let x = if draws[i].is_identity() {
                x
            } else {
                to_f64(&augment::try_apply(&draws[i], x.mapv(|v| v as f32).view())?)
            };
            Ok((x.into_dyn(), labels.select(Axis(0), &order[i]).into_dyn()))
        };
        let mut sink = |i: usize, dx: ArrayD<f64>, dy: Option<ArrayD<f64>>| -> Result<()> {
            let dx = dx.into_dimensionality::<Ix4>()?;
            let dx = if draws[i].is_identity() {
                dx
            } else {
                to_f64(&augment::try_apply_adjoint(
                    &draws[i],
                    dx.mapv(|v| v as f32).view(),
                )?)
            };
            for (k, &j) in order[i].iter().enumerate() {
                let mut row = grad.slice_mut(s![j, .., .., ..]);
                row += &dx.index_axis(Axis(0), k);
            }
            if let Some(dy) = dy {
                let dy = dy.into_dimensionality::<Ix2>()?;
                for (k, &j) in order[i].iter().enumerate() {
                    let mut row = grad_y.row_mut(j);
                    row += &dy.row(k);
                }
            }
            Ok(())
        };
        let seg = Segment {
            start: &start,
            target: &target,
            beta: st.beta,
            steps: cfg.syn_steps,
        };
        let ig = backward(cfg.gradient, exec, &seg, &mut batch, &mut sink, need_dy)?;
        if let (true, Some(th)) = (cfg.label_grad, teacher) {
            grad += &label_path_grad(exec, th, images, &grad_y, ctx.batch_syn)?;
        }
        let gnorm = grad.iter().map(|v| v * v).sum::<f64>().sqrt();
        if !gnorm.is_finite() || !ig.dbeta.is_finite() {
            bail!("the run diverged at iteration {}: the image gradient is not finite; lower --lr-img or resume from the last checkpoint", st.iteration);
        }
        // SGD with momentum 0.5 on the images, β and learned labels (the reference optimisers).
        st.images_mom.zip_mut_with(&grad, |m, g| *m = 0.5 * *m + g);
        let new_images = &st.images - &(&st.images_mom * cfg.lr_img);
        st.beta_mom = 0.5 * st.beta_mom + ig.dbeta;
        let new_beta = st.beta - cfg.lr_lr * st.beta_mom;
        if new_images.iter().any(|v| !v.is_finite()) || !new_beta.is_finite() {
            bail!("the run diverged at iteration {}: images or learning rate became NaN/Inf; lower --lr-img/--lr-lr or resume from the last checkpoint", st.iteration);
        }
        if let (Some(lg), Some(lm)) = (st.label_logits.as_mut(), st.label_mom.as_mut()) {
            // Back through the softmax: dz = p ⊙ (dy − ⟨p, dy⟩).
            let p = softmax_rows(lg);
            let mut dz = Array2::<f64>::zeros(p.raw_dim());
            for ((mut dzr, pr), gr) in dz.rows_mut().into_iter().zip(p.rows()).zip(grad_y.rows()) {
                let inner = pr.dot(&gr);
                dzr.assign(&(&pr * &(&gr - inner)));
            }
            lm.zip_mut_with(&dz, |m, g| *m = 0.5 * *m + g);
            *lg = &*lg - &(&*lm * cfg.lr_label);
        }
        // The state lives at f32 precision (what checkpoints store), so a resumed run continues
        // from exactly the values an uninterrupted one holds.
        let round = |v: &mut f64| *v = f64::from(*v as f32);
        st.images = new_images;
        st.images.iter_mut().for_each(round);
        st.images_mom.iter_mut().for_each(round);
        st.beta = f64::from(new_beta as f32);
        st.beta_mom = f64::from(st.beta_mom as f32);
        if let (Some(lg), Some(lm)) = (st.label_logits.as_mut(), st.label_mom.as_mut()) {
            lg.iter_mut().for_each(round);
            lm.iter_mut().for_each(round);
        }
        st.last_labels = labels.mapv(|v| f64::from(v as f32));
        st.iteration += 1;
        Ok((ig.loss, gnorm, e, t))
    }
}

/// The label rows the distilled set is written with (see [`FinalLabels`]), at f32 precision.
pub fn saved_labels(ctx: &RunContext, exec: &mut dyn Exec, st: &State) -> Result<Array2<f64>> {
    let cfg = &ctx.cfg;
    if cfg.final_labels == FinalLabels::Last {
        return Ok(st.last_labels.clone());
    }
    let epochs = |traj: &Trajectory| match cfg.labels {
        Labels::Last => traj.snapshots - 1..traj.snapshots,
        _ => super::init::target_epochs(cfg.max_start_epoch, cfg.expert_epochs),
    };
    let y = mean_teacher_labels(
        exec,
        &ctx.experts,
        epochs,
        &st.images,
        ctx.batch_syn,
        ctx.classes,
    )?;
    Ok(y.mapv(|v| f64::from(v as f32)))
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
        if t.meta.model != model {
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
    labels: &Array2<f64>,
    ds_mean: &[f32],
    ds_std: &[f32],
    zca: Option<&Zca>,
) -> Result<()> {
    let out = &ctx.cfg.out;
    super::checkpoint::write(&out.join("checkpoint"), st, &ctx.cfg)?;
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
        images: st.images.mapv(|v| v as f32),
        labels: labels.mapv(|v| v as f32),
        classes: st.classes.clone(),
        lr: Some(st.beta),
        meta: dm,
    }
    .write(&out.join("distilled.safetensors"))?;
    let imgs = st.images.mapv(|v| v as f32);
    crate::data::grid::save_grid(
        &out.join("grid.png"),
        imgs.view(),
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
        PixInit::Real | PixInit::RealCorrect => to_f64(&sel.images(train)),
        PixInit::Noise => {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            let [c, h, w] = train.image_shape();
            Array4::from_shape_fn((sel.indices.len(), c, h, w), |_| {
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random_range(0.0..1.0);
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
        }
    };
    let n = images.shape()[0];
    let hard = to_f64(&one_hot(&sel.labels, k));
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
            eprintln!("no checkpoint in {}: starting a new run", out.display());
        }
        (cfg, None)
    };
    let model = ModelSpec::parse(&cfg.model)?;
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
    );
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
        .with_unrolled(cfg.syn_steps);
    }
    let num_params = store.get(batch_syn)?.1.num_params;
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
            let exec = store.get(batch_syn)?.0;
            let sel = super::init::select_teacher_agreed(
                &train, cfg.ipc, cfg.seed, &teachers, exec, batch_syn,
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
        let y = saved_labels(&ctx, store.get(batch_syn)?.0, &st)?;
        save(&ctx, &st, &y, train.mean(), train.std(), zca.as_ref())?;
    }
    let cfg_path = out.join("config.json");
    crate::atomic_file::write(&cfg_path, serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    let metrics_path = out.join("metrics.jsonl");
    truncate_metrics(&metrics_path, st.iteration)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("cannot open {}", metrics_path.display()))?;
    let pb = ProgressBar::new(cfg.iterations as u64);
    pb.set_style(
        ProgressStyle::with_template("distill [{bar:30}] {pos}/{len} it, {msg}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_position(st.iteration as u64);
    let mut written_labels = None;
    while st.iteration < cfg.iterations {
        let t0 = Instant::now();
        let exec = store.get(batch_syn)?.0;
        let (loss, gnorm, e, t) = match iteration(&ctx, exec, &mut st) {
            Ok(v) => v,
            Err(err) => {
                pb.abandon();
                return Err(err.context(format!(
                    "stopped; the last good checkpoint is in {}",
                    out.join("checkpoint").display()
                )));
            }
        };
        let evaluate = cfg.eval_every > 0
            && (st.iteration % cfg.eval_every == 0 || st.iteration == cfg.iterations);
        let checkpoint = st.iteration % cfg.checkpoint_every == 0 || st.iteration == cfg.iterations;
        let y = if evaluate || checkpoint {
            Some(saved_labels(&ctx, store.get(batch_syn)?.0, &st)?)
        } else {
            None
        };
        let eval_acc = match y.as_ref().filter(|_| evaluate) {
            Some(y) => Some(quick_eval(&ctx, &st, y, &model, &test, &out, kind)?),
            None => None,
        };
        let m = Metric {
            iteration: st.iteration,
            loss,
            beta: st.beta,
            expert: e,
            start_epoch: t,
            seconds: t0.elapsed().as_secs_f64(),
            peak_rss_mib: peak_rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0),
            grad_norm: gnorm,
            eval_acc,
        };
        writeln!(metrics, "{}", serde_json::to_string(&m)?).context("writing metrics.jsonl")?;
        pb.set_message(format!("loss {loss:.4}, lr {:.5}", st.beta));
        pb.inc(1);
        if let Some(y) = y.filter(|_| checkpoint) {
            save(&ctx, &st, &y, train.mean(), train.std(), zca.as_ref())?;
            written_labels = Some(y);
        }
    }
    pb.finish_and_clear();
    // One-hot rows never warn, so hard-label runs need no special case.
    if let Some(y) = written_labels {
        warn_weak_labels(&y, &st.classes, train.class_names());
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
fn warn_weak_labels(labels: &Array2<f64>, classes: &[u32], names: &[String]) {
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
    eprintln!(
        "warning: {count} give {what} own class under half the mass ({}{}); networks trained on the set \
         may miss those classes: try another --seed, or --labels hard",
        shown.join("; "),
        if weak.len() > 3 { "; …" } else { "" }
    );
}

fn quick_eval(
    ctx: &RunContext,
    st: &State,
    labels: &Array2<f64>,
    model: &ModelSpec,
    test: &Dataset,
    out: &Path,
    kind: BackendKind,
) -> Result<f64> {
    let cfg = crate::eval::EvalConfig {
        runs: ctx.cfg.eval_runs.max(1),
        epochs: ctx.cfg.eval_epochs,
        batch: 256,
        strategy: ctx.strategy.clone(),
        seed: ctx.cfg.seed,
        backend: kind,
    };
    let images = st.images.mapv(|v| v as f32);
    let labels = labels.mapv(|v| v as f32);
    let r = crate::eval::evaluate(
        model,
        images.view(),
        labels.view(),
        st.beta,
        test,
        &cfg,
        &out.join("artifacts").join("eval"),
        0,
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
