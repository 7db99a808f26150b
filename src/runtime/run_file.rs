//! `tesla run`: feed a graph from a safetensors file and write its outputs to another, plus the
//! safetensors helpers the rest of the crate reuses.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{backend, fmt_shape, BackendKind};

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

/// Named f32 tensors, in file or graph order.
pub type NamedTensors = Vec<(String, ArrayD<f32>)>;

/// Reads every tensor of a safetensors file as f32, in file order. Any other dtype is an error
/// naming the tensor.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    read_safetensors_with_metadata(path).map(|(t, _)| t)
}

/// Like [`read_safetensors`], also returning the file's `__metadata__` map (empty if none).
pub fn read_safetensors_with_metadata(
    path: &Path,
) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let metadata = SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default();
    let mut views: Vec<(String, TensorView<'_>)> = file.tensors();
    // The header is a JSON map; file (data offset) order is the stable, meaningful one.
    views.sort_by(|(an, av), (bn, bv)| {
        (av.data().as_ptr() as usize, an).cmp(&(bv.data().as_ptr() as usize, bn))
    });
    let tensors = views
        .into_iter()
        .map(|(name, view)| view_to_f32(path, &name, &view).map(|a| (name, a)))
        .collect::<Result<Vec<_>>>()?;
    Ok((tensors, metadata))
}

/// Decodes one safetensors entry as an f32 array; another dtype is an error naming it.
fn view_to_f32(path: &Path, name: &str, view: &TensorView<'_>) -> Result<ArrayD<f32>> {
    if view.dtype() != Dtype::F32 {
        bail!(
            "{}: tensor '{name}' has dtype {:?}; only F32 is supported",
            path.display(),
            view.dtype()
        );
    }
    // The data may not be 4-byte aligned inside the file buffer, so decode bytewise.
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    ArrayD::from_shape_vec(IxDyn(view.shape()), data)
        .map_err(|e| anyhow!("{}: tensor '{name}': {e}", path.display()))
}

/// Writes f32 tensors to a safetensors file atomically: a temporary file in the same directory
/// is written, synced and renamed over `path`, so readers never see a partial file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, ArrayD<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, a)| a.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, a), b)| {
            TensorView::new(Dtype::F32, a.shape().to_vec(), b)
                .map(|v| (name.as_str(), v))
                .map_err(|e| anyhow!("tensor '{name}': {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, metadata)
        .map_err(|e| anyhow!("cannot serialize tensors for {}: {e}", path.display()))?;
    crate::atomic_file::write(path, &data)
}
