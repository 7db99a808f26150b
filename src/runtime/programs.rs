//! The artifacts of one compiled model as a set of runnable programs, addressed by role. The
//! scheduler talks to this, in f64 at the boundary, so the same loop runs on a backend (f32
//! inside) or on the f64 reference evaluator that the exactness tests use.

use super::{Backend, Session};
use crate::compiler::eval::eval;
use crate::compiler::ir::{DType, Graph, Tensor};
use anyhow::{anyhow, Context, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use crate::compiler::artifact::Artifact;

/// Runs artifacts with positional inputs (in the graph's declared order).
pub trait Exec {
    /// Runs `which` and returns its outputs in declared order.
    fn run(&mut self, which: Artifact, inputs: &[ArrayViewD<'_, f64>]) -> Result<Vec<ArrayD<f64>>>;
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

impl Exec for ReferenceExec {
    fn run(&mut self, which: Artifact, inputs: &[ArrayViewD<'_, f64>]) -> Result<Vec<ArrayD<f64>>> {
        let g = self
            .graphs
            .get(&which)
            .ok_or_else(|| anyhow!("no {which:?} graph loaded"))?;
        let ts: Vec<Tensor> = inputs
            .iter()
            .map(|a| Tensor::new(DType::F64, a.shape().to_vec(), a.iter().copied().collect()))
            .collect();
        let outs = eval(g, &ts)?;
        outs.into_iter()
            .map(|t| ArrayD::from_shape_vec(IxDyn(&t.shape), t.data).map_err(Into::into))
            .collect()
    }
}

/// Artifacts of one directory on a backend; sessions are loaded on first use and kept.
pub struct BackendExec {
    backend: Box<dyn Backend>,
    dir: PathBuf,
    sessions: HashMap<Artifact, Box<dyn Session>>,
}

impl BackendExec {
    /// Programs from the artifact directory `dir`.
    pub fn new(backend: Box<dyn Backend>, dir: &Path) -> BackendExec {
        BackendExec {
            backend,
            dir: dir.to_path_buf(),
            sessions: HashMap::new(),
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

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
}

impl Exec for BackendExec {
    fn run(&mut self, which: Artifact, inputs: &[ArrayViewD<'_, f64>]) -> Result<Vec<ArrayD<f64>>> {
        self.preload(which)?;
        let s = self.sessions.get_mut(&which).expect("preloaded");
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
            let f = a.mapv(|v| v as f32);
            s.bind(name, f.view())?;
        }
        Ok(s.run()?.into_iter().map(|a| a.mapv(f64::from)).collect())
    }
}
