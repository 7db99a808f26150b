//! `tesla distill`'s settings: the label, start-image and saved-label choices and the
//! configuration a run directory saves as `config.json`, with the checks that need no data.

use super::gradient::Mode;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the labels of the synthetic images come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    /// Soft labels from the teacher at the target epoch (TESLA's default).
    Target,
    /// Soft labels from the teacher at its last epoch.
    Last,
    /// One-hot labels.
    Hard,
    /// Learned label logits (initialised at 10 for the class, 0 elsewhere).
    Learned,
}

/// Which label rows the distilled set is saved (and evaluated) with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalLabels {
    /// The rows the last iteration assigned (docs/method.md; the official code): one randomly drawn
    /// teacher's opinion.
    #[default]
    Last,
    /// The mean of the rows every teacher the run samples from (each expert at each target epoch
    /// for `--labels target`, at its last epoch for `--labels last`) gives the current images.
    Mean,
}

/// How synthetic images start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixInit {
    /// A class-balanced random real subset.
    Real,
    /// Standard normal noise.
    Noise,
    /// A class-balanced random real subset of images that every target-step teacher classifies
    /// correctly.
    #[serde(rename = "real-correct")]
    RealCorrect,
}

/// `tesla distill` settings (saved as `config.json` in the run directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistillConfig {
    /// Dataset spec.
    pub dataset: String,
    /// Model name (`--model`).
    pub model: String,
    /// Experts directory.
    pub experts: PathBuf,
    /// Images per class.
    pub ipc: usize,
    /// T.
    pub syn_steps: usize,
    /// M.
    pub expert_epochs: usize,
    /// Start epochs are drawn from `[0, max_start_epoch)`.
    pub max_start_epoch: usize,
    /// Iterations.
    pub iterations: usize,
    /// Image learning rate (of the formula's gradient; the official code's is twice this).
    pub lr_img: f64,
    /// Learning rate of β.
    pub lr_lr: f64,
    /// Initial β (`None`: the experts' step size, as docs/method.md's `β = lr_teacher`; with momentum
    /// `lr / (1 − momentum)`).
    #[serde(default)]
    pub lr_init: Option<f64>,
    /// Learning rate of learned label logits.
    pub lr_label: f64,
    /// Student batch (`None`: all synthetic images).
    pub batch_syn: Option<usize>,
    /// Image initialisation.
    pub pix_init: PixInit,
    /// Label source.
    pub labels: Labels,
    /// Differentiate through soft label assignment as well: the teacher's labels are a function of
    /// the images, and this adds that path to the image gradient (the paper holds them fixed).
    #[serde(default)]
    pub label_grad: bool,
    /// The label rows written to `distilled.safetensors`.
    #[serde(default)]
    pub final_labels: FinalLabels,
    /// Gradient mode.
    pub gradient: Mode,
    /// ZCA whitening.
    pub zca: bool,
    /// DSA strategy string.
    pub dsa_strategy: String,
    /// Backend.
    pub backend: String,
    /// Seed.
    pub seed: u64,
    /// Evaluate every this many iterations (0: never).
    pub eval_every: usize,
    /// Evaluation epochs for `eval_every`.
    pub eval_epochs: usize,
    /// Evaluation runs for `eval_every`.
    pub eval_runs: usize,
    /// Checkpoint every this many iterations.
    pub checkpoint_every: usize,
    /// Output directory.
    pub out: PathBuf,
}

impl DistillConfig {
    /// Whether the backward must also return ∂L/∂Y (learned labels, or `--label-grad`), which
    /// only the full pass-2 graph computes.
    pub fn needs_label_grad(&self) -> bool {
        self.labels == Labels::Learned || self.label_grad
    }
}

/// Checks settings that do not need data.
pub fn validate(cfg: &DistillConfig) -> Result<()> {
    if cfg.syn_steps == 0 {
        bail!("--syn-steps must be at least 1");
    }
    if cfg.ipc == 0 {
        bail!("--ipc must be at least 1");
    }
    if cfg.expert_epochs == 0 || cfg.max_start_epoch == 0 {
        bail!("--expert-epochs and --max-start-epoch must be at least 1");
    }
    if cfg.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    if cfg.checkpoint_every == 0 {
        bail!("--checkpoint-every must be at least 1");
    }
    if cfg.label_grad && !matches!(cfg.labels, Labels::Target | Labels::Last) {
        bail!("--label-grad differentiates through teacher-assigned labels: it needs --labels target or last");
    }
    if cfg.final_labels == FinalLabels::Mean && !matches!(cfg.labels, Labels::Target | Labels::Last)
    {
        bail!("--final-labels mean averages teacher-assigned labels: it needs --labels target or last");
    }
    Ok(())
}
