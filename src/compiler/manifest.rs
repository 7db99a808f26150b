//! The artifact directory's contract: `manifest.json` (serde) and the compile step that writes it
//! beside the ONNX files.

use super::artifact::{
    flops_per_sample, label_vjp_graph, logits_graph, pass2_graph, step_graph, unrolled_graph,
    Artifact,
};
use super::ir::{numel, Graph};
use super::model::{ForwardModel, InitRule, NormStatistics};
use crate::onnx::export;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The manifest format version.
pub const FORMAT: u32 = 1;
/// The ONNX opset the artifacts use.
pub const OPSET: i64 = 17;

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

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Where the model came from.
    pub model: String,
    /// SHA-256 of the forward graph as exported (ONNX bytes).
    pub source_hash: String,
    /// ONNX opset.
    pub opset: i64,
    /// Batch size every graph is compiled for (fixed, not symbolic).
    pub batch: usize,
    /// Whether the batch dimension is symbolic (never, in this format).
    pub batch_symbolic: bool,
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
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join("manifest.json");
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&s).with_context(|| format!("{} is not a valid manifest", p.display()))
    }

    /// Draws initial parameters with the manifest's rules (values stored in `init.safetensors` for
    /// imported models).
    pub fn initial_theta(&self, dir: &Path, seed: u64) -> Result<Vec<f32>> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let stored = if self.params.iter().any(|p| p.init == InitRule::FromFile) {
            let tensors = crate::runtime::read_safetensors(&dir.join("init.safetensors"))?;
            tensors
                .into_iter()
                .find(|(n, _)| n == "theta")
                .map(|(_, a)| a.iter().copied().collect::<Vec<f32>>())
        } else {
            None
        };
        let mut theta = Vec::with_capacity(self.num_params);
        for p in &self.params {
            match (&p.init, &stored) {
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

fn entry(g: &Graph, file: &str, batch: usize) -> GraphEntry {
    let io = |ids: &[usize]| {
        ids.iter()
            .map(|&i| IoEntry {
                name: g.info(i).name.clone(),
                shape: g.shape(i).to_vec(),
            })
            .collect()
    };
    let mut ops = BTreeMap::new();
    for n in &g.nodes {
        *ops.entry(n.op.name().to_string()).or_insert(0) += 1;
    }
    GraphEntry {
        file: file.to_string(),
        inputs: io(&g.inputs),
        outputs: io(&g.outputs),
        flops_per_sample: flops_per_sample(g, batch),
        ops,
    }
}

/// Which artifacts to write.
pub fn standard_set() -> Vec<Artifact> {
    vec![
        Artifact::Step,
        Artifact::Pass2,
        Artifact::Pass2Dx,
        Artifact::Logits,
    ]
}

/// Differentiates `m` and writes the requested artifacts, `manifest.json` and (for models with
/// stored initial values) `init.safetensors` into `dir`. `unrolled_steps` is T for the unrolled
/// graph.
pub fn compile_dir(
    m: &ForwardModel,
    which: &[Artifact],
    unrolled_steps: usize,
    dir: &Path,
) -> Result<Manifest> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let xs = m.graph.shape(m.x).to_vec();
    let batch = xs[0];
    let classes = m.graph.shape(m.logits)[1];
    let fwd = export::to_model_proto(&m.graph);
    let source_hash = format!("{:x}", Sha256::digest(prost::Message::encode_to_vec(&fwd)));
    let mut graphs = BTreeMap::new();
    for &a in which {
        let g = match a {
            Artifact::Step => step_graph(m)?,
            Artifact::Pass2 => pass2_graph(m, false)?,
            Artifact::Pass2Dx => pass2_graph(m, true)?,
            Artifact::Logits => logits_graph(m)?,
            Artifact::LabelVjp => label_vjp_graph(m)?,
            Artifact::Unrolled => unrolled_graph(m, unrolled_steps)?,
        };
        export::write(&g, &dir.join(a.file()))?;
        let role = a.file().trim_end_matches(".onnx").to_string();
        graphs.insert(role, entry(&g, a.file(), batch));
    }
    let mut params = Vec::with_capacity(m.params.len());
    let mut offset = 0;
    for p in &m.params {
        let len = numel(&p.shape);
        params.push(ParamEntry {
            name: p.name.clone(),
            shape: p.shape.clone(),
            offset,
            len,
            init: p.init.clone(),
        });
        offset += len;
    }
    if m.params.iter().any(|p| p.initial.is_some()) {
        let mut theta = Vec::with_capacity(offset);
        for p in &m.params {
            match &p.initial {
                Some(t) => theta.extend(t.data.iter().map(|&v| v as f32)),
                None => theta.extend(std::iter::repeat_n(0.0f32, numel(&p.shape))),
            }
        }
        let arr = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[offset]), theta)?;
        crate::runtime::write_safetensors(
            &dir.join("init.safetensors"),
            &[("theta".to_string(), arr)],
            None,
        )?;
    }
    let manifest = Manifest {
        format: FORMAT,
        model: m.source.clone(),
        source_hash,
        opset: OPSET,
        batch,
        batch_symbolic: false,
        input: xs[1..].to_vec(),
        classes,
        num_params: offset,
        params,
        graphs,
        warnings: m.warnings.clone(),
        batchnorm: m.batchnorm.clone(),
    };
    let json = serde_json::to_string_pretty(&manifest)?;
    crate::atomic_file::write(&dir.join("manifest.json"), json.as_bytes())?;
    Ok(manifest)
}
