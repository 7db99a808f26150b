//! `tesla run`: feed a graph from a safetensors file and write its outputs to another.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use safetensors::tensor::SafeTensors;

use super::{backend, fmt_shape, BackendKind};
pub use crate::tensor_file::NamedTensors;
use crate::tensor_file::{view_to_f32, write_safetensors};

/// Runs the graph at `graph` on `kind`, with inputs read from the safetensors file `inputs`
/// (one f32 tensor per graph input, named like it; extra tensors are ignored), and writes every
/// output, named like the graph's outputs, to the safetensors file `out` atomically.
pub fn run_graph_file(graph: &Path, inputs: &Path, out: &Path, kind: BackendKind) -> Result<()> {
    let engine = backend(kind)?;
    let mut session = engine.load(graph)?;
    let bytes = fs::read(inputs).with_context(|| format!("cannot read {}", inputs.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", inputs.display()))?;
    let specs = session.inputs().to_vec();
    for spec in &specs {
        let view = file.tensor(&spec.name).map_err(|_| {
            anyhow!(
                "{} has no tensor '{}' (graph input of shape {})",
                inputs.display(),
                spec.name,
                fmt_shape(&spec.shape)
            )
        })?;
        // Only the tensors the graph reads must be f32; other entries are ignored.
        let value = view_to_f32(inputs, &spec.name, &view)?;
        session
            .bind(&spec.name, value.view())
            .with_context(|| format!("{}", inputs.display()))?;
    }
    let values = session
        .run()
        .with_context(|| format!("running {} on {kind}", graph.display()))?;
    let named: NamedTensors = session
        .outputs()
        .iter()
        .map(|s| s.name.clone())
        .zip(values)
        .collect();
    let mut metadata = HashMap::new();
    metadata.insert("graph".to_string(), graph.display().to_string());
    metadata.insert("backend".to_string(), kind.to_string());
    write_safetensors(out, &named, Some(metadata))
}
