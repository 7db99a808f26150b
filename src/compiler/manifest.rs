//! The artifact directory's contract: `manifest.json` (serde). `onnx::artifacts` writes it beside
//! the ONNX files.

use super::model::{InitRule, NormStatistics};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The manifest format version.
pub const FORMAT: u32 = 1;
/// The ONNX opset the artifacts use.
pub const OPSET: i64 = 17;
/// The most parameters a manifest may declare: θ is one f32 vector, and 2²⁹ of them (2 GiB) is
/// far beyond the models this tool trains, so a larger count is taken for a corrupt file rather
/// than allocated.
pub const MAX_PARAMS: usize = 1 << 29;

/// One parameter's place in the flat vector `theta`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamEntry {
    /// PyTorch-style name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Offset in `theta`.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
    /// Init rule.
    pub init: InitRule,
}

/// A graph input or output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoEntry {
    /// Name.
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
}

/// One artifact file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    /// File name in the directory.
    pub file: String,
    /// Inputs, in order.
    pub inputs: Vec<IoEntry>,
    /// Outputs, in order.
    pub outputs: Vec<IoEntry>,
    /// FLOPs per sample (matrix products and convolutions count 2 per multiply-add).
    pub flops_per_sample: f64,
    /// Node count per ONNX-level op of the IR.
    pub ops: BTreeMap<String, usize>,
}

/// A hash of the compiler's and exporter's sources: artifacts are reused only by the revision
/// that wrote them, so a changed compiler never runs graphs an older one emitted.
pub const COMPILER_REVISION: &str = env!("TESLA_COMPILER_REVISION");

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Where the model came from.
    pub model: String,
    /// SHA-256 of the forward graph as exported (ONNX bytes).
    pub source_hash: String,
    /// The revision of the compiler that wrote the artifacts ([`COMPILER_REVISION`]; empty in
    /// manifests written before it was recorded).
    #[serde(default)]
    pub compiler: String,
    /// ONNX opset.
    pub opset: i64,
    /// Batch size every graph is compiled for (fixed, not symbolic).
    pub batch: usize,
    /// Image shape \[C,H,W\].
    pub input: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
    /// Total parameters P.
    pub num_params: usize,
    /// Parameters in `theta` order.
    pub params: Vec<ParamEntry>,
    /// The artifacts, by role name.
    pub graphs: BTreeMap<String, GraphEntry>,
    /// Import warnings (folded or shared parameters).
    pub warnings: Vec<String>,
    /// The statistics each batch-norm node normalises with (empty for models without one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub batchnorm: BTreeMap<String, NormStatistics>,
}

impl Manifest {
    /// Whether each image's outputs depend on that image alone, so that a short batch may be
    /// padded to the compiled size: false when a batch-norm node normalises with the statistics
    /// of the batch (the built-in models normalise each image on its own).
    pub fn images_independent(&self) -> bool {
        self.batchnorm.values().all(|s| *s != NormStatistics::Batch)
    }

    /// Reads `dir/manifest.json` and checks its parameter layout (see [`Manifest::check_layout`]).
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join("manifest.json");
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let m: Manifest = serde_json::from_str(&s)
            .with_context(|| format!("{} is not a valid manifest", p.display()))?;
        m.check_layout()
            .with_context(|| format!("{} is not a valid manifest", p.display()))?;
        Ok(m)
    }

    /// Checks that `params` tile `theta` as the compiler writes them: in order from offset 0,
    /// each `len` the product of its shape, `num_params` in all and at most [`MAX_PARAMS`]. The
    /// file is outside input, and its offsets, lengths and count size and index buffers.
    pub fn check_layout(&self) -> Result<()> {
        let mut offset = 0usize;
        for p in &self.params {
            let numel = p.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if numel != Some(p.len) || p.offset != offset {
                anyhow::bail!(
                    "parameter '{}' (shape {:?}, {} values at offset {}) does not follow the \
                     previous ones (expected offset {offset})",
                    p.name,
                    p.shape,
                    p.len,
                    p.offset
                );
            }
            offset = offset
                .checked_add(p.len)
                .filter(|&o| o <= MAX_PARAMS)
                .with_context(|| format!("more than {MAX_PARAMS} parameters"))?;
        }
        if offset != self.num_params {
            anyhow::bail!(
                "num_params is {} but the parameters hold {offset} values",
                self.num_params
            );
        }
        Ok(())
    }

    /// Draws initial parameters with the manifest's rules (values stored in `init.safetensors` for
    /// imported models).
    pub fn initial_theta(&self, dir: &Path, seed: u64) -> Result<Vec<f32>> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let stored = if self.params.iter().any(|p| p.init == InitRule::FromFile) {
            let tensors = crate::tensor_file::read_safetensors(&dir.join("init.safetensors"))?;
            tensors
                .into_iter()
                .find(|(n, _)| n == "theta")
                .map(|(_, a)| a.iter().copied().collect::<Vec<f32>>())
        } else {
            None
        };
        // A manifest built in code has not been through `load`'s check; sizes come from it below.
        self.check_layout()
            .with_context(|| format!("{}: bad manifest", dir.display()))?;
        if let Some(s) = stored.as_ref().filter(|s| s.len() != self.num_params) {
            anyhow::bail!(
                "{}: init.safetensors holds {} values, the manifest {} parameters",
                dir.display(),
                s.len(),
                self.num_params
            );
        }
        let mut theta = Vec::with_capacity(self.num_params);
        for p in &self.params {
            match (&p.init, &stored) {
                // In range: the layout tiles 0..num_params, the stored length.
                (InitRule::FromFile, Some(s)) => {
                    theta.extend_from_slice(&s[p.offset..p.offset + p.len])
                }
                (InitRule::FromFile, None) => {
                    anyhow::bail!("{}: init.safetensors is missing", dir.display())
                }
                (rule, _) => theta.extend(rule.sample(p.len, &mut rng)),
            }
        }
        Ok(theta)
    }
}
