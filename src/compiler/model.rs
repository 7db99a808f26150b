//! A forward model: the graph a builder from `zoo` or the ONNX importer hands to the compiler.

use super::ir::{Graph, Tensor, ValueId};
use serde::{Deserialize, Serialize};

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
    /// Normal(0, std), truncated at ±2 std (ViT embeddings).
    TruncNormal {
        /// Standard deviation.
        std: f64,
    },
    /// Values taken from the imported file (stored in the artifact directory's `init.safetensors`).
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
