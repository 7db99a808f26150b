//! The standard artifact set: the paper's surrogate at each of its dataset shapes, compiled at a
//! fixed batch (the committed `graphs/` folder, `tesla graphs`).

use super::ModelSpec;
use crate::onnx::artifacts::{compile_dir, standard_set};
use anyhow::Result;
use std::path::Path;

/// The standard set: (folder, model, input, classes).
pub const STANDARD_GRAPHS: [(&str, &str, [usize; 3], usize); 5] = [
    ("convnet-d3-1x28x28-10", "convnet-d3", [1, 28, 28], 10),
    ("convnet-d3-3x32x32-10", "convnet-d3", [3, 32, 32], 10),
    ("convnet-d3-3x32x32-100", "convnet-d3", [3, 32, 32], 100),
    ("convnet-d4-3x64x64-200", "convnet-d4", [3, 64, 64], 200),
    ("convnet-d4-3x64x64-1000", "convnet-d4", [3, 64, 64], 1000),
];

/// Batch size of the committed standard set (one IPC-1 set of ten classes).
pub const STANDARD_BATCH: usize = 10;

/// Writes the standard artifact set under `out`.
pub fn write_standard_graphs(out: &Path) -> Result<Vec<(String, String)>> {
    let mut lines = Vec::new();
    for (name, model, input, classes) in STANDARD_GRAPHS {
        let m = ModelSpec::parse(model)?.build(STANDARD_BATCH, input, classes)?;
        let man = compile_dir(&m, &standard_set(), 0, &out.join(name))?;
        lines.push((
            name.to_string(),
            format!("{} parameters, {} graphs", man.num_params, man.graphs.len()),
        ));
    }
    Ok(lines)
}
