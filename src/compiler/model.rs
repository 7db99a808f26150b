//! A forward model: the graph a builder from `zoo` or the ONNX importer hands to the compiler.

use super::ir::{Graph, Tensor, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a parameter is initialised (PyTorch's defaults for the layer it belongs to).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum InitRule {
    /// `kaiming_uniform_(a=√5)`: U(±1/√fan_in) (PyTorch's default for conv and linear weights).
    KaimingUniform {
        /// Inputs feeding one output unit.
        fan_in: usize,
    },
    /// U(±1/√fan_in), PyTorch's default for conv and linear biases.
    UniformBias {
        /// Inputs feeding one output unit.
        fan_in: usize,
    },
    /// All ones (norm scale).
    Ones,
    /// All zeros (norm shift).
    Zeros,
    /// Normal(0, std) (`torch.randn` scaled: the ViT's position embedding and class token).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// Normal(0, std), truncated at ±2 std (ViT embeddings).
    TruncNormal {
        /// Standard deviation.
        std: f64,
    },
    /// Values taken from the imported file (stored in the artifact directory's `init.safetensors`):
    /// a parameter of a layer with no recognised PyTorch default.
    FromFile,
}

/// One trainable parameter: a graph input of the forward model.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// PyTorch-style name (`features.0.weight`).
    pub name: String,
    /// The graph input holding it.
    pub value: ValueId,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Init rule.
    pub init: InitRule,
    /// Initial values when the source carried them (imported models).
    pub initial: Option<Tensor>,
}

/// A forward network `logits = f(θ, x)` with parameters as graph inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardModel {
    /// The graph; its inputs are `x` then the parameters, its single output the logits.
    pub graph: Graph,
    /// The image input \[B,C,H,W\].
    pub x: ValueId,
    /// The logits \[B,K\].
    pub logits: ValueId,
    /// Parameters in PyTorch `parameters()` order.
    pub params: Vec<Param>,
    /// A short description of where it came from (builder name and options, or the file).
    pub source: String,
    /// Messages for the user (folded or shared parameters detected on import, say).
    pub warnings: Vec<String>,
    /// Which statistics each batch-norm node normalises with, by node name (imported models).
    pub batchnorm: BTreeMap<String, NormStatistics>,
}

/// The statistics a batch-norm layer normalises with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormStatistics {
    /// Mean and variance of the current batch (PyTorch's `train()` forward).
    Batch,
    /// The running statistics stored in the file (PyTorch's `eval()` forward).
    Running,
}

impl NormStatistics {
    /// `batch` or `running`, as the manifest writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            NormStatistics::Batch => "batch",
            NormStatistics::Running => "running",
        }
    }
}

impl ForwardModel {
    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }
}

impl InitRule {
    /// Draws `n` initial values (PyTorch's default initialisers). `FromFile` has no rule to draw
    /// from: the caller takes the stored values instead.
    pub fn sample(&self, n: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
        let uniform = |rng: &mut dyn rand::RngCore, b: f64| -> Vec<f32> {
            (0..n)
                .map(|_| rand::Rng::random_range(rng, -b..b) as f32)
                .collect()
        };
        match self {
            // kaiming_uniform_(a=√5): gain √(2/(1+5)) · √(3/fan_in) = 1/√fan_in.
            InitRule::KaimingUniform { fan_in } | InitRule::UniformBias { fan_in } => {
                uniform(rng, 1.0 / (*fan_in.max(&1) as f64).sqrt())
            }
            InitRule::Ones => vec![1.0; n],
            InitRule::Zeros | InitRule::FromFile => vec![0.0; n],
            InitRule::Normal { std } => (0..n)
                .map(|_| (standard_normal(rng) * std) as f32)
                .collect(),
            InitRule::TruncNormal { std } => (0..n)
                .map(|_| loop {
                    // Rejecting beyond ±2 std, as timm's trunc_normal_ does.
                    let z = standard_normal(rng);
                    if z.abs() <= 2.0 {
                        break (z * std) as f32;
                    }
                })
                .collect(),
        }
    }
}

/// One N(0, 1) draw (Box–Muller).
fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
