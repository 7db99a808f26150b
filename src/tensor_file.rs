//! Safetensors files of f32 tensors: the one reader and writer every layer uses (artifact
//! initial values, expert trajectories, checkpoints, distilled sets, `tesla run`'s inputs).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

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
pub(crate) fn view_to_f32(path: &Path, name: &str, view: &TensorView<'_>) -> Result<ArrayD<f32>> {
    if view.dtype() != Dtype::F32 {
        bail!(
            "{}: tensor '{name}' has dtype {:?}; only F32 is supported",
            path.display(),
            view.dtype()
        );
    }
    let data: Vec<f32> = le_f32s(view.data()).collect();
    ArrayD::from_shape_vec(IxDyn(view.shape()), data)
        .map_err(|e| anyhow!("{}: tensor '{name}': {e}", path.display()))
}

/// The little-endian f32 values in `bytes`, decoded bytewise since tensor data need not be
/// 4-byte aligned inside a file buffer; a trailing partial value is ignored.
pub(crate) fn le_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|&b| f32::from_le_bytes(b))
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
