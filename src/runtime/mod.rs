//! Backends that run ONNX artifacts: ONNX Runtime (CPU or CUDA execution provider, library loaded
//! at run time; the default where it is found) and tract (pure Rust).
//!
//! Every artifact takes and returns f32 tensors with static shapes. A [`Session`] keeps its bound
//! inputs resident between runs, so a training loop that rebinds only `x` does not pay for copying
//! `theta` on every step.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Result};
use ndarray::{ArrayD, ArrayViewD};

pub mod batches;
mod heap;
mod model_info;
mod ort_backend;
pub mod programs;
pub mod row_chunks;
pub mod run_file;
mod side_by_side;
mod tract_backend;
mod tract_instance_norm;
mod tract_profile;

pub use crate::tensor_file::{read_safetensors, read_safetensors_with_metadata, write_safetensors};
pub use model_info::ModelInfo;
pub use ort_backend::ort_library_path;
pub use run_file::run_graph_file;
pub use tract_profile::{profile_tract, OpProfile};

/// Which engine runs the graphs (see [`default_backend`] for the one a command gets by default).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// tract, pure Rust (needs nothing installed).
    #[default]
    Tract,
    /// ONNX Runtime with the CPU execution provider.
    Ort,
    /// ONNX Runtime with the CUDA execution provider (no silent fallback to the CPU).
    OrtCuda,
}

impl BackendKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Tract, BackendKind::Ort, BackendKind::OrtCuda];

    /// The name used on the command line (`tract`, `ort`, `ort-cuda`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
            BackendKind::OrtCuda => "ort-cuda",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tract" => Ok(BackendKind::Tract),
            "ort" => Ok(BackendKind::Ort),
            "ort-cuda" => Ok(BackendKind::OrtCuda),
            other => bail!("unknown backend '{other}': expected one of tract, ort, ort-cuda"),
        }
    }
}

/// An engine that loads ONNX graphs into runnable sessions.
pub trait Backend: Send + Sync {
    /// Short name, the same as the [`BackendKind`] it was made from.
    fn name(&self) -> &'static str;
    /// Loads and optimizes the graph at `path`. Errors name the file and fit on one line.
    fn load(&self, path: &Path) -> Result<Box<dyn Session>>;
    /// How many sessions of one graph run side by side by default when a batch is split into
    /// calls, each on its share of the cores (`runtime::side_by_side`); 1 where the calls share one
    /// device.
    fn lanes(&self) -> usize {
        1
    }
    /// Loads the graph at `path` as `lanes` sessions that run side by side, each on its share of
    /// the cores.
    fn load_lanes(&self, path: &Path, lanes: usize) -> Result<Vec<Box<dyn Session>>> {
        (0..lanes).map(|_| self.load(path)).collect()
    }
}

/// How many calls of a split batch a backend of `kind` runs side by side by default (see
/// [`Backend::lanes`]): one per CPU thread up to four, `TESLA_LANES` if set; 1 on the GPU.
pub fn default_lanes(kind: BackendKind) -> usize {
    match kind {
        BackendKind::Tract | BackendKind::Ort => side_by_side::cpu_lanes(cpu_threads()),
        BackendKind::OrtCuda => 1,
    }
}

/// The threads the CPU backends compute on: `TESLA_THREADS` if set, else every core.
pub(crate) fn cpu_threads() -> usize {
    std::env::var("TESLA_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Makes the backend of the given kind. For the ONNX Runtime kinds this loads the library (see
/// [`ort_library_path`]) and, for `ort-cuda`, checks that the CUDA execution provider registers.
pub fn backend(kind: BackendKind) -> Result<Box<dyn Backend>> {
    side_by_side::requested_lanes()?;
    match kind {
        BackendKind::Tract => Ok(Box::new(tract_backend::TractBackend::new())),
        BackendKind::Ort => Ok(Box::new(ort_backend::OrtBackend::new(false)?)),
        BackendKind::OrtCuda => Ok(Box::new(ort_backend::OrtBackend::new(true)?)),
    }
}

/// The backend a command gets when none is asked for: ONNX Runtime on the CPU when its library
/// is found and loads (it runs every artifact faster than tract; see docs/results.md), else
/// tract, which needs nothing installed. Also returns why, for the line every command prints.
pub fn default_backend() -> (BackendKind, String) {
    match ort_library_path() {
        Ok(p) => match ort_backend::OrtBackend::new(false) {
            Ok(_) => (BackendKind::Ort, format!("ONNX Runtime at {}", p.display())),
            Err(e) => (
                BackendKind::Tract,
                format!("ONNX Runtime at {} does not load: {e:#}", p.display()),
            ),
        },
        Err(e) => (BackendKind::Tract, format!("{e:#}")),
    }
}

/// Name and static shape of one graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    /// The ONNX value name.
    pub name: String,
    /// The static shape (empty for a scalar).
    pub shape: Vec<usize>,
}

/// A loaded graph with its bound inputs.
pub trait Session: Send {
    /// The graph inputs, in declared order.
    fn inputs(&self) -> &[IoSpec];
    /// The graph outputs, in declared order.
    fn outputs(&self) -> &[IoSpec];
    /// Binds an input by name; it stays bound (and, on a device backend, resident) across runs until rebound.
    fn bind(&mut self, name: &str, value: ArrayViewD<'_, f32>) -> Result<()>;
    /// Runs with the bound inputs; returns every output, in declared order.
    fn run(&mut self) -> Result<Vec<ArrayD<f32>>>;
}

/// Formats a shape as `[2, 3]` (`[]` for a scalar) for error messages.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    format!("{shape:?}")
}

/// Finds the input `name` and checks that `got` matches its shape; returns its index.
pub(crate) fn check_bind(inputs: &[IoSpec], name: &str, got: &[usize]) -> Result<usize> {
    let Some(ix) = inputs.iter().position(|s| s.name == name) else {
        let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "graph has no input named '{name}' (inputs: {})",
            names.join(", ")
        );
    };
    let want = &inputs[ix].shape;
    if want.as_slice() != got {
        bail!(
            "input '{name}': expected shape {} (rank {}), got {} (rank {})",
            fmt_shape(want),
            want.len(),
            fmt_shape(got),
            got.len()
        );
    }
    Ok(ix)
}

/// Error for running before every input is bound, naming the missing ones.
pub(crate) fn unbound_error(
    inputs: &[IoSpec],
    bound: impl Fn(usize) -> bool,
) -> Option<anyhow::Error> {
    let missing: Vec<String> = inputs
        .iter()
        .enumerate()
        .filter(|(ix, _)| !bound(*ix))
        .map(|(_, s)| format!("'{}' {}", s.name, fmt_shape(&s.shape)))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(anyhow::anyhow!(
            "cannot run: input{} {} not bound",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        ))
    }
}

/// Collapses a multi-line engine message into one line, so CLI errors stay one line.
pub(crate) fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `f`, turning a panic inside an engine into an error: tract and ONNX Runtime bindings may
/// panic on malformed graphs, and a CLI must answer those with one line, not an abort.
pub(crate) fn catch_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            bail!("{what}: internal engine error: {}", one_line(&msg))
        }
    }
}
