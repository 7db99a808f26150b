//! Reads the input/output contract of an ONNX file straight from its protobuf, independently of
//! any engine: both backends validate against the same answer, and a garbage file fails here
//! with a clear message before an engine sees it.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;

use super::IoSpec;
use crate::onnx::pb;

/// The graph inputs (initializers excluded) and outputs of an ONNX model, all f32 and static.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Graph inputs that must be fed, in declared order.
    pub inputs: Vec<IoSpec>,
    /// Graph outputs, in declared order.
    pub outputs: Vec<IoSpec>,
}

impl ModelInfo {
    /// Reads and decodes the file at `path`.
    pub fn from_path(path: &Path) -> Result<ModelInfo> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| anyhow!("cannot load {}: {e:#}", path.display()))
    }

    /// Decodes an ONNX model from bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelInfo> {
        let model = pb::ModelProto::decode(bytes).map_err(|e| {
            anyhow!("not a valid ONNX protobuf ({e}); truncated or not an .onnx file?")
        })?;
        Self::from_model(&model)
    }

    /// Extracts the contract from a decoded model.
    pub fn from_model(model: &pb::ModelProto) -> Result<ModelInfo> {
        // Protobuf decoding accepts many byte strings (an empty file is a valid empty message),
        // so require the parts every real ONNX model has.
        if model.ir_version.is_none() || model.opset_import.is_empty() {
            bail!("not an ONNX model (no ir_version or opset_import); truncated or not an .onnx file?");
        }
        let graph = model.graph.as_ref().ok_or_else(|| {
            anyhow!("not an ONNX model (no graph); truncated or not an .onnx file?")
        })?;
        if graph.output.is_empty() {
            bail!("ONNX graph has no outputs");
        }
        let initializers: HashSet<&str> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        let inputs = graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name.as_deref().unwrap_or("")))
            .map(|v| io_spec(v, "input"))
            .collect::<Result<Vec<_>>>()?;
        let outputs = graph
            .output
            .iter()
            .map(|v| io_spec(v, "output"))
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelInfo { inputs, outputs })
    }
}

fn io_spec(v: &pb::ValueInfoProto, role: &str) -> Result<IoSpec> {
    let name = v
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("graph {role} without a name"))?;
    let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t,
        _ => bail!("graph {role} '{name}' is not a tensor"),
    };
    let elem = tensor.elem_type.unwrap_or(0);
    if elem != pb::tensor_proto::DataType::Float as i32 {
        let dt = pb::tensor_proto::DataType::try_from(elem)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| format!("code {elem}"));
        bail!("graph {role} '{name}' has dtype {dt}; only f32 (FLOAT) artifacts are supported");
    }
    let shape = tensor.shape.as_ref().ok_or_else(|| {
        anyhow!("graph {role} '{name}' has no shape; artifacts need static shapes")
    })?;
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(axis, d)| match &d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                usize::try_from(*n).map_err(|_| anyhow!("dimension too large"))
            }
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => Err(anyhow!(
                "graph {role} '{name}' has symbolic dimension '{p}' on axis {axis}; artifacts need static shapes"
            )),
            _ => Err(anyhow!(
                "graph {role} '{name}' has an unknown dimension on axis {axis}; artifacts need static shapes"
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(IoSpec { name, shape: dims })
}
