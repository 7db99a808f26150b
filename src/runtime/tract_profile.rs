//! Per-op time of one graph on tract: which of its kernels a graph spends its time in, to set
//! beside ONNX Runtime's own profile of the same file (`tools/profile_ort.py`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Result};
use tract_onnx::prelude::*;

use super::one_line;
use super::tract_backend::{load_state, prepare_process};

/// The largest input `profile_tract` makes up (8 GiB of f32): a declared shape beyond it is
/// refused rather than allocated.
const MAX_INPUT_ELEMENTS: usize = 1 << 31;

/// Where one graph's time goes on tract.
#[derive(Clone, Debug)]
pub struct OpProfile {
    /// Wall time of one whole run, seconds (mean over the timed runs).
    pub seconds_per_run: f64,
    /// Time per op type, seconds per run, slowest first.
    pub by_op: Vec<(String, f64)>,
    /// Time per node (op type, node name), seconds per run, slowest first.
    pub by_node: Vec<(String, String, f64)>,
}

/// Runs the graph at `path` once untimed, then `runs` times with each node of tract's optimized
/// plan timed, on deterministic inputs of each input's declared shape (small values, so every
/// op sees finite numbers).
pub fn profile_tract(path: &Path, runs: usize) -> Result<OpProfile> {
    prepare_process();
    let (info, mut state) = load_state(path)?;
    // Made once: each run gets shared handles to the same tensors, so input set-up is not timed.
    let inputs: TVec<TValue> = info
        .inputs
        .iter()
        .map(|spec| {
            let n = spec
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= MAX_INPUT_ELEMENTS)
                .ok_or_else(|| {
                    anyhow!(
                        "input '{}': shape {:?} is too large to profile",
                        spec.name,
                        spec.shape
                    )
                })?;
            let data: Vec<f32> = (0..n)
                .map(|i| (((i * 7919) % 101) as f32 / 101.0 - 0.5) * 0.1)
                .collect();
            Tensor::from_shape::<f32>(&spec.shape, &data)
                .map(|t| t.into_tvalue())
                .map_err(|e| anyhow!("input '{}': {e:#}", spec.name))
        })
        .collect::<Result<_>>()?;
    let failed = |e: anyhow::Error| anyhow!("tract run failed: {}", one_line(&format!("{e:#}")));
    state.run(inputs.clone()).map_err(failed)?;
    let mut by_node: HashMap<(String, String), f64> = HashMap::new();
    let runs = runs.max(1);
    let started = Instant::now();
    for _ in 0..runs {
        state
            .run_plan_with_eval(inputs.clone(), |ctx, op_state, node, input| {
                let t = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
                *by_node
                    .entry((node.op().name().to_string(), node.name.clone()))
                    .or_default() += t.elapsed().as_secs_f64();
                out
            })
            .map_err(failed)?;
    }
    let seconds_per_run = started.elapsed().as_secs_f64() / runs as f64;
    let mut by_op: HashMap<String, f64> = HashMap::new();
    for ((op, _), s) in &by_node {
        *by_op.entry(op.clone()).or_default() += s;
    }
    let per_run = |s: f64| s / runs as f64;
    let mut by_op: Vec<(String, f64)> = by_op.into_iter().map(|(k, s)| (k, per_run(s))).collect();
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut by_node: Vec<(String, String, f64)> = by_node
        .into_iter()
        .map(|((op, node), s)| (op, node, per_run(s)))
        .collect();
    by_node.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(OpProfile {
        seconds_per_run,
        by_op,
        by_node,
    })
}
