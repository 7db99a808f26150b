//! The artifacts of one compiled model as a set of runnable programs, addressed by role. The
//! scheduler talks to this in the precision of its state: f32 on a backend (what the artifacts
//! take, so nothing is converted per call), f64 on the reference evaluator that the exactness
//! tests use.

use super::{side_by_side, Backend, Session};
use crate::compiler::eval::eval;
use crate::compiler::ir::{DType, Graph, Tensor};
use anyhow::{anyhow, Context, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use crate::compiler::artifact::Artifact;

/// The floating-point type a scheduler runs in: f32 on the backends, f64 on the reference
/// evaluator. Sums that decide the loss and the learning-rate gradient widen to f64 through
/// [`Scalar::wide`].
pub trait Scalar:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::iter::Sum
    + std::fmt::Debug
    + std::fmt::Display
    + Send
    + Sync
    + 'static
{
    /// The nearest value of this type.
    fn narrow(v: f64) -> Self;
    /// The exact value as f64.
    fn wide(self) -> f64;
}

impl Scalar for f32 {
    fn narrow(v: f64) -> f32 {
        v as f32
    }
    fn wide(self) -> f64 {
        f64::from(self)
    }
}

impl Scalar for f64 {
    fn narrow(v: f64) -> f64 {
        v
    }
    fn wide(self) -> f64 {
        self
    }
}

/// Runs artifacts with positional inputs (in the graph's declared order), in precision `F`.
pub trait Exec<F: Scalar = f32> {
    /// Runs `which` and returns its outputs in declared order.
    fn run(&mut self, which: Artifact, inputs: &[ArrayViewD<'_, F>]) -> Result<Vec<ArrayD<F>>>;

    /// How many calls of one artifact [`Exec::run_side_by_side`] runs at once.
    fn lanes(&self) -> usize {
        1
    }

    /// Runs `which` once for each set of inputs in `calls`, up to [`Exec::lanes`] of them at
    /// once, and returns their outputs in the order of `calls`.
    fn run_side_by_side(
        &mut self,
        which: Artifact,
        calls: &[Vec<ArrayViewD<'_, F>>],
    ) -> Result<Vec<Vec<ArrayD<F>>>> {
        calls.iter().map(|inputs| self.run(which, inputs)).collect()
    }
}

/// The f64 reference evaluator over in-memory IR graphs (tests and small checks).
#[derive(Default)]
pub struct ReferenceExec {
    graphs: HashMap<Artifact, Graph>,
}

impl ReferenceExec {
    /// An executor over the given graphs.
    pub fn new(graphs: impl IntoIterator<Item = (Artifact, Graph)>) -> ReferenceExec {
        ReferenceExec {
            graphs: graphs.into_iter().collect(),
        }
    }
}

impl ReferenceExec {
    fn eval_f64(&self, which: Artifact, inputs: Vec<Tensor>) -> Result<Vec<ArrayD<f64>>> {
        let g = self
            .graphs
            .get(&which)
            .ok_or_else(|| anyhow!("no {which:?} graph loaded"))?;
        let outs = eval(g, &inputs)?;
        outs.into_iter()
            .map(|t| ArrayD::from_shape_vec(IxDyn(&t.shape), t.data).map_err(Into::into))
            .collect()
    }
}

impl<F: Scalar> Exec<F> for ReferenceExec {
    fn run(&mut self, which: Artifact, inputs: &[ArrayViewD<'_, F>]) -> Result<Vec<ArrayD<F>>> {
        let ts: Vec<Tensor> = inputs
            .iter()
            .map(|a| {
                let data = a.iter().map(|v| v.wide()).collect();
                Tensor::new(DType::F64, a.shape().to_vec(), data)
            })
            .collect();
        Ok(self
            .eval_f64(which, ts)?
            .into_iter()
            .map(|a| a.mapv(F::narrow))
            .collect())
    }
}

/// Artifacts of one directory on a backend; sessions are loaded on first use and kept.
pub struct BackendExec {
    backend: Box<dyn Backend>,
    dir: PathBuf,
    sessions: HashMap<Artifact, Box<dyn Session>>,
    /// How many calls of one artifact run side by side.
    lane_count: usize,
    /// The sessions that run calls side by side, `lane_count` per artifact, loaded on the first
    /// split batch of that artifact.
    lanes: HashMap<Artifact, Vec<Box<dyn Session>>>,
}

impl BackendExec {
    /// Programs from the artifact directory `dir`.
    pub fn new(backend: Box<dyn Backend>, dir: &Path) -> BackendExec {
        BackendExec {
            lane_count: backend.lanes(),
            backend,
            dir: dir.to_path_buf(),
            sessions: HashMap::new(),
            lanes: HashMap::new(),
        }
    }

    /// Loads a program now (so load errors surface before a long run starts).
    pub fn preload(&mut self, which: Artifact) -> Result<()> {
        if !self.sessions.contains_key(&which) {
            let path = self.dir.join(which.file());
            let s = self
                .backend
                .load(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            self.sessions.insert(which, s);
        }
        Ok(())
    }

    /// Runs up to `lanes` calls of a split batch side by side, each on its share of the cores
    /// (1: one after the other); the backend's choice by default (see [`Backend::lanes`]).
    pub fn set_lanes(&mut self, lanes: usize) {
        if lanes.max(1) != self.lane_count {
            self.lane_count = lanes.max(1);
            self.lanes.clear();
        }
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
}

impl Exec<f32> for BackendExec {
    fn run(&mut self, which: Artifact, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>> {
        self.preload(which)?;
        let s = self
            .sessions
            .get_mut(&which)
            .ok_or_else(|| anyhow!("{} is not loaded", which.file()))?;
        run_session(s.as_mut(), which, inputs)
    }

    fn lanes(&self) -> usize {
        self.lane_count
    }

    fn run_side_by_side(
        &mut self,
        which: Artifact,
        calls: &[Vec<ArrayViewD<'_, f32>>],
    ) -> Result<Vec<Vec<ArrayD<f32>>>> {
        let lanes = self.lane_count;
        if lanes <= 1 || calls.len() <= 1 {
            return calls.iter().map(|inputs| self.run(which, inputs)).collect();
        }
        if !self.lanes.contains_key(&which) {
            let path = self.dir.join(which.file());
            let loaded = self
                .backend
                .load_lanes(&path, lanes)
                .with_context(|| format!("loading {}", path.display()))?;
            self.lanes.insert(which, loaded);
        }
        let sessions = self
            .lanes
            .get_mut(&which)
            .ok_or_else(|| anyhow!("{} is not loaded", which.file()))?;
        side_by_side::run(sessions, calls, |s, inputs| {
            run_session(s.as_mut(), which, inputs)
        })
    }
}

/// Binds `inputs` to the session's inputs in declared order and runs it.
fn run_session(
    s: &mut dyn Session,
    which: Artifact,
    inputs: &[ArrayViewD<'_, f32>],
) -> Result<Vec<ArrayD<f32>>> {
    let names: Vec<String> = s.inputs().iter().map(|i| i.name.clone()).collect();
    if names.len() != inputs.len() {
        return Err(anyhow!(
            "{} takes {} inputs, {} given",
            which.file(),
            names.len(),
            inputs.len()
        ));
    }
    for (name, a) in names.iter().zip(inputs) {
        s.bind(name, a.view())?;
    }
    s.run()
}
