//! The artifact directory: the compiler's training graphs written as ONNX files, with
//! `manifest.json` and (for models with stored initial values) `init.safetensors`.

use crate::compiler::artifact::{
    flops_per_sample, label_vjp_graph, logits_graph, pass2_graph, step_graph, unrolled_graph,
    Artifact,
};
use crate::compiler::ir::{numel, Graph};
use crate::compiler::manifest::{GraphEntry, IoEntry, Manifest, ParamEntry, FORMAT, OPSET};
use crate::compiler::model::ForwardModel;
use crate::onnx::export;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

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
        crate::tensor_file::write_safetensors(
            &dir.join("init.safetensors"),
            &[("theta".to_string(), arr)],
            None,
        )?;
    }
    let manifest = Manifest {
        format: FORMAT,
        model: m.source.clone(),
        source_hash,
        compiler: crate::compiler::manifest::COMPILER_REVISION.to_string(),
        opset: OPSET,
        batch,
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
